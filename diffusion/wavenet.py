"""The denoiser: a non-causal WaveNet that predicts the noise in a noised mel.

Layout and parameter names are upstream so-vits-svc 4.1's
(`decoder.denoise_fn.*` inside Unit2Mel), so its `model_*.pt` files load here.
Every residual block sees the same condition at every sampling step, so
`project_condition` computes the blocks' condition projections once per
conversion and the samplers reuse them: the numbers are those of a plain
forward pass, only computed fewer times.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(steps: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sin/cos features of the (possibly fractional) diffusion step, (B, dim).

    The continuous-time solvers hand the network fractional steps, so the
    step is embedded as a float.
    """
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    frequencies = torch.exp(torch.arange(half, device=steps.device) * -scale)
    angles = steps.float()[:, None] * frequencies[None, :]
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class ResidualBlock(nn.Module):
    """Gated dilated convolution with step and condition inputs; returns (residual out, skip)."""

    def __init__(self, condition_channels: int, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.dilated_conv = nn.Conv1d(
            channels, 2 * channels, kernel_size=3, padding=dilation, dilation=dilation
        )
        self.diffusion_projection = nn.Linear(channels, channels)
        self.conditioner_projection = nn.Conv1d(condition_channels, 2 * channels, 1)
        self.output_projection = nn.Conv1d(channels, 2 * channels, 1)

    def forward(
        self, x: torch.Tensor, projected_condition: torch.Tensor, step_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`projected_condition` is this block's `conditioner_projection(cond)`."""
        y = x + self.diffusion_projection(step_features).unsqueeze(-1)
        y = self.dilated_conv(y) + projected_condition
        gate, signal = torch.split(y, [self.channels, self.channels], dim=1)
        y = self.output_projection(torch.sigmoid(gate) * torch.tanh(signal))
        residual, skip = torch.split(y, [self.channels, self.channels], dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class WaveNet(nn.Module):
    """Noise predictor over (B, 1, mel_bins, T) given the step and a (B, hidden, T) condition."""

    def __init__(
        self, in_dims: int = 128, n_layers: int = 20, n_chans: int = 384, n_hidden: int = 256
    ) -> None:
        super().__init__()
        self.n_chans = n_chans
        self.input_projection = nn.Conv1d(in_dims, n_chans, 1)
        self.mlp = nn.Sequential(
            nn.Linear(n_chans, n_chans * 4), nn.Mish(), nn.Linear(n_chans * 4, n_chans)
        )
        self.residual_layers = nn.ModuleList(
            ResidualBlock(n_hidden, n_chans) for _ in range(n_layers)
        )
        self.skip_projection = nn.Conv1d(n_chans, n_chans, 1)
        self.output_projection = nn.Conv1d(n_chans, in_dims, 1)
        # Upstream's initialisation: He-normal input/skip weights, a zero output
        # layer (a fresh model predicts zero noise).
        nn.init.kaiming_normal_(self.input_projection.weight)
        nn.init.kaiming_normal_(self.skip_projection.weight)
        nn.init.zeros_(self.output_projection.weight)

    def project_condition(self, cond: torch.Tensor) -> list[torch.Tensor]:
        """Each block's condition projection of `cond` (B, hidden, T); constant over steps."""
        return [layer.conditioner_projection(cond) for layer in self.residual_layers]

    def denoise(
        self, spec: torch.Tensor, steps: torch.Tensor, projected: list[torch.Tensor]
    ) -> torch.Tensor:
        """Predicted noise (B, 1, M, T) for `spec` at `steps` (B,), condition pre-projected."""
        x = F.relu(self.input_projection(spec.squeeze(1)))
        step_features = self.mlp(sinusoidal_embedding(steps, self.n_chans))
        skip_sum = None
        for layer, condition in zip(self.residual_layers, projected, strict=True):
            x, skip = layer(x, condition, step_features)
            skip_sum = skip if skip_sum is None else skip_sum + skip
        x = skip_sum / math.sqrt(len(self.residual_layers))
        x = self.output_projection(F.relu(self.skip_projection(x)))
        return x[:, None]

    def forward(self, spec: torch.Tensor, steps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Upstream's call: the noise in `spec` (B, 1, M, T) at `steps` (B,), `cond` (B, H, T)."""
        return self.denoise(spec, steps, self.project_condition(cond))
