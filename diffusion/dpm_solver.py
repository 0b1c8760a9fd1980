"""Multistep DPM-Solver and DPM-Solver++ of order 2 (Lu et al. 2022), as upstream samples.

Upstream calls its vendored solver with `order=2, skip_type="time_uniform",
method="multistep"` and the defaults `lower_order_final=True`,
`solver_type="dpmsolver"`, no thresholding, no denoise-to-zero: one
first-order step to start, second-order multistep updates after it, and,
when there are fewer than 10 steps, a first-order last step. One network
evaluation per step; the last step needs none.

DPM-Solver works with the predicted noise, DPM-Solver++ with the predicted
clean signal x0 = (x - sigma_t * eps) / alpha_t.
"""

from __future__ import annotations

import torch

from diffusion.noise_schedule import NoisePredictor, NoiseScheduleVP

DPM_SOLVER_MIN_LAMBDA = -5.1  # DPM-Solver drops schedule steps whose half log-SNR is lower


class MultistepDPMSolver:
    """Order-2 multistep DPM-Solver (`data_prediction=False`) or DPM-Solver++ (True)."""

    def __init__(
        self, model: NoisePredictor, schedule: NoiseScheduleVP, data_prediction: bool
    ) -> None:
        self.model = model
        self.schedule = schedule
        self.data_prediction = data_prediction

    def model_output(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise, or for DPM-Solver++ the predicted clean signal."""
        noise = self.model(x, t)
        if not self.data_prediction:
            return noise
        ns = self.schedule
        return (x - ns.marginal_std(t) * noise) / ns.marginal_alpha(t)

    def first_order_update(
        self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, model_s: torch.Tensor
    ) -> torch.Tensor:
        """One DDIM-equivalent step from time s to t."""
        ns = self.schedule
        h = ns.marginal_lambda(t) - ns.marginal_lambda(s)
        if self.data_prediction:
            alpha_t = torch.exp(ns.marginal_log_mean_coeff(t))
            return ns.marginal_std(t) / ns.marginal_std(s) * x - alpha_t * torch.expm1(-h) * model_s
        log_alpha_s, log_alpha_t = ns.marginal_log_mean_coeff(s), ns.marginal_log_mean_coeff(t)
        return (
            torch.exp(log_alpha_t - log_alpha_s) * x
            - (ns.marginal_std(t) * torch.expm1(h)) * model_s
        )

    def second_order_update(
        self,
        x: torch.Tensor,
        outputs: tuple[torch.Tensor, torch.Tensor],
        times: tuple[torch.Tensor, torch.Tensor],
        t: torch.Tensor,
    ) -> torch.Tensor:
        """One multistep step to t from the last two (older, newer) outputs and times."""
        ns = self.schedule
        (model_prev_1, model_prev_0), (t_prev_1, t_prev_0) = outputs, times
        lambda_prev_0 = ns.marginal_lambda(t_prev_0)
        h_0 = lambda_prev_0 - ns.marginal_lambda(t_prev_1)
        h = ns.marginal_lambda(t) - lambda_prev_0
        d1 = (1.0 / (h_0 / h)) * (model_prev_0 - model_prev_1)
        log_alpha_prev_0, log_alpha_t = (
            ns.marginal_log_mean_coeff(t_prev_0),
            ns.marginal_log_mean_coeff(t),
        )
        sigma_prev_0, sigma_t = ns.marginal_std(t_prev_0), ns.marginal_std(t)
        if self.data_prediction:
            scaled = torch.exp(log_alpha_t) * torch.expm1(-h)
            return (sigma_t / sigma_prev_0) * x - scaled * model_prev_0 - 0.5 * scaled * d1
        scaled = sigma_t * torch.expm1(h)
        return (
            torch.exp(log_alpha_t - log_alpha_prev_0) * x
            - scaled * model_prev_0
            - 0.5 * scaled * d1
        )

    def sample(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Integrate from t = 1 to t = 1/N in `steps` time-uniform steps (steps >= 2)."""
        times = self.schedule.time_uniform_steps(steps)
        outputs = [self.model_output(x, times[0])]
        x = self.first_order_update(x, times[0], times[1], outputs[0])
        outputs.append(self.model_output(x, times[1]))
        for step in range(2, steps + 1):
            last_first_order = steps < 10 and step == steps
            if last_first_order:
                x = self.first_order_update(x, times[step - 1], times[step], outputs[-1])
            else:
                pair = (times[step - 2], times[step - 1])
                x = self.second_order_update(x, (outputs[-2], outputs[-1]), pair, times[step])
            if step < steps:
                outputs = [outputs[-1], self.model_output(x, times[step])]
        return x
