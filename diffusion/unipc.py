"""Multistep UniPC of order 2, B(h) = expm1(h) ("bh2"), data prediction (Zhao et al. 2023).

Upstream samples with `UniPC(model_fn, schedule, variant="bh2")` and
`sample(order=2, skip_type="time_uniform", method="multistep")`: a
first-order predictor-corrector step to start, order-2 steps after it, and
(lower_order_final, for any number of steps) a first-order last step without
the corrector. The corrector re-uses the network output at the predicted
point as the next step's history, so there is one evaluation per step.
"""

from __future__ import annotations

import torch

from diffusion.noise_schedule import NoisePredictor, NoiseScheduleVP


class MultistepUniPC:
    """UniPC-bh2 with the network's clean-signal prediction."""

    def __init__(self, model: NoisePredictor, schedule: NoiseScheduleVP) -> None:
        self.model = model
        self.schedule = schedule

    def data_prediction(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = (x - sigma_t * eps) / alpha_t."""
        noise = self.model(x, t)
        ns = self.schedule
        return (x - ns.marginal_std(t) * noise) / ns.marginal_alpha(t)

    def _coefficients(
        self, h: torch.Tensor, r_prev: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h_phi_1, B(h), corrector weights rho_c) for an order-1 (r_prev None) or 2 step."""
        hh = -h
        h_phi_1 = torch.expm1(hh)
        b_h = torch.expm1(hh)
        if r_prev is None:
            return h_phi_1, b_h, torch.tensor([0.5], device=h.device)
        h_phi_k = h_phi_1 / hh - 1
        b = [h_phi_k / b_h]
        h_phi_k = h_phi_k / hh - 1 / 2
        b.append(h_phi_k * 2 / b_h)
        rks = torch.cat([r_prev.reshape(1), torch.ones(1, device=h.device)])
        r_matrix = torch.stack([torch.ones_like(rks), rks])
        return h_phi_1, b_h, torch.linalg.solve(r_matrix, torch.cat(b))

    def update(
        self,
        x: torch.Tensor,
        history: list[torch.Tensor],
        times: list[torch.Tensor],
        t: torch.Tensor,
        order: int,
        use_corrector: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step to t: (new x, network output at the predicted x, None without corrector)."""
        ns = self.schedule
        t_prev_0, model_prev_0 = times[-1], history[-1]
        lambda_prev_0 = ns.marginal_lambda(t_prev_0)
        h = ns.marginal_lambda(t) - lambda_prev_0
        d1 = None
        r_prev = None
        if order == 2:
            r_prev = (ns.marginal_lambda(times[-2]) - lambda_prev_0) / h
            d1 = (history[-2] - model_prev_0) / r_prev
        h_phi_1, b_h, rhos_c = self._coefficients(h, r_prev)
        alpha_t = torch.exp(ns.marginal_log_mean_coeff(t))
        x_base = (
            ns.marginal_std(t) / ns.marginal_std(t_prev_0) * x - alpha_t * h_phi_1 * model_prev_0
        )
        x_t = x_base if d1 is None else x_base - alpha_t * b_h * (0.5 * d1)
        if not use_corrector:
            return x_t, None
        model_t = self.data_prediction(x_t, t)
        correction = rhos_c[-1] * (model_t - model_prev_0)
        if d1 is not None:
            correction = rhos_c[0] * d1 + correction
        return x_base - alpha_t * b_h * correction, model_t

    def sample(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Integrate from t = 1 to t = 1/N in `steps` time-uniform steps (steps >= 2)."""
        times = self.schedule.time_uniform_steps(steps)
        history = [self.data_prediction(x, times[0])]
        x, model_x = self.update(x, history, [times[0]], times[1], 1, use_corrector=True)
        history.append(model_x)
        for step in range(2, steps + 1):
            order = 1 if step == steps else 2
            recent = [times[step - 2], times[step - 1]]
            x, model_x = self.update(x, history, recent, times[step], order, step < steps)
            if step < steps:
                history = [history[-1], model_x]
        return x
