"""The discrete DDPM schedule seen as a continuous-time VP process, for DPM-Solver and UniPC.

A model trained on steps n = 0 … N-1 is read at continuous times
t_n = (n + 1) / N in (0, 1]; between them log(alpha_t) is interpolated
linearly, as upstream's vendored solvers do (DPM-Solver, Lu et al. 2022;
UniPC, Zhao et al. 2023). alpha_t is the signal scale sqrt(alphas_cumprod),
sigma_t = sqrt(1 - alpha_t^2), lambda_t = log(alpha_t / sigma_t) the half log-SNR.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`model(x, t_continuous)` -> predicted noise, `t_continuous` of shape (1,)."""


def interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear f(x) through the points (xp, fp), xp ascending; straight lines beyond.

    Outside [xp[0], xp[-1]] the first or last segment is extended, as
    upstream's interpolation does.
    """
    segment = (torch.searchsorted(xp, x.contiguous()) - 1).clamp(0, xp.numel() - 2)
    x0, x1, y0, y1 = xp[segment], xp[segment + 1], fp[segment], fp[segment + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def _clip_low_snr_tail(log_alphas: torch.Tensor, min_lambda: float) -> torch.Tensor:
    """Drop the last steps whose half log-SNR is below `min_lambda` (DPM-Solver's guard).

    With so-vits-svc's linear schedule (up to 1000 steps) nothing is dropped;
    it is kept so other schedules behave as upstream's solver would.
    """
    log_sigmas = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alphas))
    lambdas = log_alphas - log_sigmas
    below = int(torch.searchsorted(torch.flip(lambdas, [0]), min_lambda))
    return log_alphas[:-below] if below > 0 else log_alphas


class NoiseScheduleVP:
    """alpha_t, sigma_t, lambda_t and the inverse of lambda for a discrete beta schedule."""

    def __init__(self, betas: torch.Tensor, min_lambda: float | None = None) -> None:
        """`betas` (N,) float32; `min_lambda`: DPM-Solver clips its tail at -5.1, UniPC does not."""
        log_alphas = 0.5 * torch.log(1 - betas).cumsum(dim=0)
        if min_lambda is not None:
            log_alphas = _clip_low_snr_tail(log_alphas, min_lambda)
        self.log_alpha_array = log_alphas.to(torch.float32)
        self.total_N = self.log_alpha_array.numel()
        self.T = 1.0
        self.t_array = torch.linspace(0.0, 1.0, self.total_N + 1, device=betas.device)[1:]

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """log(alpha_t)."""
        return interpolate(t.reshape(-1), self.t_array, self.log_alpha_array)

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_t, the scale of the clean signal at time t."""
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_t, the scale of the noise at time t."""
        return torch.sqrt(1.0 - torch.exp(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        """lambda_t = log(alpha_t) - log(sigma_t)."""
        log_alpha = self.marginal_log_mean_coeff(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The (fractional) discrete step the network is trained on for continuous time t."""
        return (t - 1.0 / self.total_N) * self.total_N

    def time_uniform_steps(self, steps: int) -> torch.Tensor:
        """`steps + 1` times evenly spaced from T = 1 down to t_0 = 1/N."""
        return torch.linspace(self.T, 1.0 / self.total_N, steps + 1, device=self.t_array.device)
