"""GaussianDiffusion: upstream so-vits-svc 4.1's mel diffusion (schedule, training loss, sampling).

Mels are normalised from [spec_min, spec_max] = [-12, 2] (natural-log mel)
to [-1, 1] and handled as (B, 1, M, T). The linear beta schedule's derived
quantities are buffers, as upstream stores them, so the state dict keeps
upstream's names (`decoder.betas`, …, `decoder.spec_max`).

Random draws happen exactly where and how upstream makes them, so a seed
gives upstream's numbers: training draws the steps, then the noise; the
shallow start draws its noise on the (B, 1, M, T) view of a (B, T, M) mel
(`randn_like` of a non-contiguous tensor fills it element by element in
memory order, which is not what a contiguous `randn` gives), the full start
is a contiguous `randn`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core.errors import UserError
from diffusion import samplers
from diffusion.dpm_solver import DPM_SOLVER_MIN_LAMBDA, MultistepDPMSolver
from diffusion.noise_schedule import NoiseScheduleVP
from diffusion.unipc import MultistepUniPC
from diffusion.wavenet import WaveNet

METHODS = ("ddim", "pndm", "dpm-solver", "dpm-solver++", "unipc")
"""Samplers for `infer_speedup` > 1; speedup 1 (or method None) is ancestral DDPM."""


def schedule_arrays(timesteps: int, max_beta: float = 0.02) -> dict[str, np.ndarray]:
    """Upstream's linear schedule and the quantities derived from it, in float64."""
    betas = np.linspace(1e-4, max_beta, timesteps)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    return {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    }


@dataclass
class LossTerms:
    """Everything one training loss computed, for tests and diagnostics."""

    t: torch.Tensor  # (B,) steps drawn
    noise: torch.Tensor  # (B, 1, M, T)
    x_start: torch.Tensor  # normalised mel (B, 1, M, T)
    x_noisy: torch.Tensor
    noise_pred: torch.Tensor
    loss: torch.Tensor  # mean squared error between noise and noise_pred


class GaussianDiffusion(nn.Module):
    """The diffusion over normalised mels around a WaveNet denoiser (`denoise_fn`)."""

    # Buffers named as upstream names them, filled from `schedule_arrays`.
    alphas_cumprod: torch.Tensor
    betas: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    spec_min: torch.Tensor
    spec_max: torch.Tensor

    def __init__(
        self,
        denoise_fn: WaveNet,
        out_dims: int = 128,
        timesteps: int = 1000,
        k_step: int = 1000,
        max_beta: float = 0.02,
        spec_min: float = -12,
        spec_max: float = 2,
    ) -> None:
        super().__init__()
        self.denoise_fn = denoise_fn
        self.out_dims = out_dims
        self.num_timesteps = int(timesteps)
        self.k_step = k_step if 0 < k_step < timesteps else timesteps
        for name, values in schedule_arrays(timesteps, max_beta).items():
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32))
        self.register_buffer("spec_min", torch.tensor([spec_min], dtype=torch.float32)[None, None])
        self.register_buffer("spec_max", torch.tensor([spec_max], dtype=torch.float32)[None, None])

    def norm_spec(self, x: torch.Tensor) -> torch.Tensor:
        """Log mel -> [-1, 1]."""
        return (x - self.spec_min) / (self.spec_max - self.spec_min) * 2 - 1

    def denorm_spec(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> log mel."""
        return (x + 1) / 2 * (self.spec_max - self.spec_min) + self.spec_min

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alphas_cumprod[t]) x_0 + sqrt(1 - alphas_cumprod[t]) noise; t (B,) or (1,)."""
        shape = (t.shape[0],) + (1,) * (x_start.dim() - 1)
        return (
            self.sqrt_alphas_cumprod[t].reshape(shape) * x_start
            + self.sqrt_one_minus_alphas_cumprod[t].reshape(shape) * noise
        )

    def normalised_view(self, gt_spec: torch.Tensor) -> torch.Tensor:
        """(B, T, M) log mel -> normalised (B, 1, M, T) view, strided as upstream's (module doc)."""
        return self.norm_spec(gt_spec).transpose(1, 2)[:, None, :, :]

    def loss_terms(self, condition: torch.Tensor, gt_spec: torch.Tensor) -> LossTerms:
        """The denoising loss at a random step below k_step for a (B, T, M) mel.

        Draws as upstream: `randint(0, k_step, (B,))`, then `randn_like` of the
        strided view; `condition` is (B, T, hidden).
        """
        x_start = self.normalised_view(gt_spec)
        t = torch.randint(0, self.k_step, (condition.shape[0],), device=condition.device).long()
        noise = torch.randn_like(x_start)
        x_noisy = self.q_sample(x_start, t, noise)
        noise_pred = self.denoise_fn(x_noisy, t, condition.transpose(1, 2))
        loss = F.mse_loss(noise, noise_pred)
        return LossTerms(t, noise, x_start, x_noisy, noise_pred, loss)

    def forward(
        self,
        condition: torch.Tensor,
        gt_spec: torch.Tensor | None = None,
        infer: bool = True,
        infer_speedup: int = 10,
        method: str | None = "dpm-solver",
        k_step: int = 300,
        use_tqdm: bool = True,
    ) -> torch.Tensor:
        """Upstream's call: the training loss (`infer=False`) or a (B, T, M) log mel.

        Shallow (`gt_spec` given) noises `gt_spec` to step k_step-1 and
        denoises from there; full (`gt_spec` None) starts from noise at
        self.k_step (the `k_step` argument is ignored, as upstream ignores it).
        """
        if not infer:
            if gt_spec is None:
                raise ValueError("training needs gt_spec")
            return self.loss_terms(condition, gt_spec).loss
        x, k = self.start(condition, gt_spec, k_step)
        x = self.sample(x, condition, k, infer_speedup, method, use_tqdm)
        return self.denorm_spec(x.squeeze(1).transpose(1, 2))

    def start(
        self, condition: torch.Tensor, gt_spec: torch.Tensor | None, k_step: int
    ) -> tuple[torch.Tensor, int]:
        """The sampling start (B, 1, M, T) and the number of steps k it sits at."""
        if gt_spec is None:
            shape = (condition.shape[0], 1, self.out_dims, condition.shape[1])
            return torch.randn(shape, device=condition.device), self.k_step
        if not 0 < k_step <= self.num_timesteps:
            raise UserError(
                f"k_step {k_step}: choose 1 … {self.num_timesteps} (the model's timesteps)"
            )
        x_start = self.normalised_view(gt_spec)
        t = torch.tensor([k_step - 1], device=condition.device, dtype=torch.long)
        return self.q_sample(x_start, t, torch.randn_like(x_start)), k_step

    @torch.no_grad()
    def sample(
        self,
        x: torch.Tensor,
        condition: torch.Tensor,
        k_step: int,
        speedup: int = 10,
        method: str | None = "dpm-solver",
        use_tqdm: bool = False,
    ) -> torch.Tensor:
        """Denoise a normalised start `x` at step k_step to a normalised mel (B, 1, M, T)."""
        use_ddpm = method is None or speedup <= 1
        if not use_ddpm and method not in METHODS:
            raise UserError(
                f"diffusion method {method!r} (infer.method): choose one of {', '.join(METHODS)}"
            )
        projected = self.denoise_fn.project_condition(condition.transpose(1, 2))
        total = k_step if use_ddpm else max(k_step // speedup, 1)
        with tqdm(total=total, desc="sample time step", disable=not use_tqdm) as bar:

            def denoise(x_t: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
                bar.update(1)
                return self.denoise_fn.denoise(x_t, steps, projected)

            if use_ddpm:
                return samplers.ddpm(x, k_step, self, denoise)
            return self._fast_sample(x, k_step, speedup, method, denoise)

    def _fast_sample(
        self, x: torch.Tensor, k_step: int, speedup: int, method: str, denoise: samplers.Denoiser
    ) -> torch.Tensor:
        """DDIM, PNDM, or a continuous-time solver on `betas[:k_step]` (k_step // speedup steps)."""
        if method == "ddim":
            return samplers.ddim(x, k_step, speedup, self, denoise)
        if method == "pndm":
            return samplers.pndm(x, k_step, speedup, self, denoise)
        steps = k_step // speedup
        if steps < 2:
            raise UserError(
                f"{method} with k_step {k_step} and speedup {speedup} gives {steps} step(s); "
                "it needs 2 or more: lower the speedup or raise k_step"
            )
        clip = DPM_SOLVER_MIN_LAMBDA if method.startswith("dpm") else None
        schedule = NoiseScheduleVP(self.betas[:k_step], min_lambda=clip)

        def model(x_t: torch.Tensor, t_continuous: torch.Tensor) -> torch.Tensor:
            return denoise(x_t, schedule.model_time(t_continuous).expand(x_t.shape[0]))

        if method == "unipc":
            return MultistepUniPC(model, schedule).sample(x, steps)
        solver = MultistepDPMSolver(model, schedule, data_prediction=method == "dpm-solver++")
        return solver.sample(x, steps)
