"""The step-by-step samplers on the discrete schedule: ancestral DDPM, DDIM and PNDM (PLMS).

They follow upstream so-vits-svc 4.1 where it departs from the papers,
because its released models are used that way: DDIM and PNDM visit the
steps `reversed(range(0, k, speedup))`, so a start noised to step k-1 is
first denoised as if it were at the highest multiple of `speedup` below k,
and the last DDIM/PNDM step ends at alphas_cumprod[0], not at 1.

Upstream's PNDM fails for a batch larger than 1 (it takes Python's `max` of a
tensor); here the clamped step is a tensor operation, so any batch works and
each item equals its batch-of-one result.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`denoise(x, steps)` -> predicted noise; `steps` (B,) discrete steps."""


class DiscreteSchedule(Protocol):
    """The schedule buffers the samplers read (GaussianDiffusion's)."""

    alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor


def _steps(x: torch.Tensor, step: int) -> torch.Tensor:
    return torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)


def ddpm(
    x: torch.Tensor, k_step: int, schedule: DiscreteSchedule, denoise: Denoiser
) -> torch.Tensor:
    """Ancestral sampling over steps k-1 … 0, x0 clamped to [-1, 1].

    One `torch.randn` of x's shape is drawn at every step, the last included
    (where it is multiplied by zero), so the global generator advances as
    upstream's does.
    """
    for i in reversed(range(k_step)):
        noise_pred = denoise(x, _steps(x, i))
        x_recon = (
            schedule.sqrt_recip_alphas_cumprod[i] * x
            - schedule.sqrt_recipm1_alphas_cumprod[i] * noise_pred
        ).clamp_(-1.0, 1.0)
        mean = schedule.posterior_mean_coef1[i] * x_recon + schedule.posterior_mean_coef2[i] * x
        noise = torch.randn(x.shape, device=x.device)
        keep = 0.0 if i == 0 else 1.0
        x = mean + keep * (0.5 * schedule.posterior_log_variance_clipped[i]).exp() * noise
    return x


def ddim(
    x: torch.Tensor, k_step: int, speedup: int, schedule: DiscreteSchedule, denoise: Denoiser
) -> torch.Tensor:
    """Deterministic DDIM (eta 0) from step i to max(i - speedup, 0), i in range(0, k, speedup)."""
    for i in reversed(range(0, k_step, speedup)):
        a_t = schedule.alphas_cumprod[i]
        a_prev = schedule.alphas_cumprod[max(i - speedup, 0)]
        noise_pred = denoise(x, _steps(x, i))
        slope = ((1 - a_prev) / a_prev).sqrt() - ((1 - a_t) / a_t).sqrt()
        x = a_prev.sqrt() * (x / a_t.sqrt() + slope * noise_pred)
    return x


def _plms_transfer(
    x: torch.Tensor, noise: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor
) -> torch.Tensor:
    """PNDM's transfer from alphas_cumprod a_t to a_prev with the noise estimate `noise`."""
    a_t_sq, a_prev_sq = a_t.sqrt(), a_prev.sqrt()
    x_coef = 1 / (a_t_sq * (a_t_sq + a_prev_sq))
    noise_coef = 1 / (a_t_sq * (((1 - a_prev) * a_t).sqrt() + ((1 - a_t) * a_prev).sqrt()))
    return x + (a_prev - a_t) * (x_coef * x - noise_coef * noise)


def _plms_combination(noise_pred: torch.Tensor, history: deque[torch.Tensor]) -> torch.Tensor:
    """Adams-Bashforth blend of the current and up to three earlier noise estimates."""
    if len(history) == 1:
        return (3 * noise_pred - history[-1]) / 2
    if len(history) == 2:
        return (23 * noise_pred - 16 * history[-1] + 5 * history[-2]) / 12
    return (55 * noise_pred - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24


def pndm(
    x: torch.Tensor, k_step: int, speedup: int, schedule: DiscreteSchedule, denoise: Denoiser
) -> torch.Tensor:
    """PLMS over the DDIM steps; the first step is a Heun-like pair of evaluations."""
    history: deque[torch.Tensor] = deque(maxlen=4)
    for i in reversed(range(0, k_step, speedup)):
        prev = max(i - speedup, 0)
        a_t, a_prev = schedule.alphas_cumprod[i], schedule.alphas_cumprod[prev]
        noise_pred = denoise(x, _steps(x, i))
        if not history:
            x_pred = _plms_transfer(x, noise_pred, a_t, a_prev)
            blended = (noise_pred + denoise(x_pred, _steps(x, prev))) / 2
        else:
            blended = _plms_combination(noise_pred, history)
        x = _plms_transfer(x, blended, a_t, a_prev)
        history.append(noise_pred)
    return x
