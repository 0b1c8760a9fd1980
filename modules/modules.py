"""Convolutional building blocks: the WaveNet stack and the flow's coupling layer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from modules import attentions, commons

LRELU_SLOPE = 0.1


class DepthwiseSeparableConv1d(nn.Module):
    """A depthwise conv followed by a 1x1 pointwise conv (fewer weights than Conv1d).

    Submodule names `depth_conv` / `point_conv` match upstream checkpoints.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.depth_conv = nn.Conv1d(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=bias,
        )
        self.point_conv = nn.Conv1d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


def make_conv1d(depthwise: bool, *args: int, **kwargs: int) -> nn.Module:
    """Build a plain or depthwise-separable Conv1d with the same signature."""
    return DepthwiseSeparableConv1d(*args, **kwargs) if depthwise else nn.Conv1d(*args, **kwargs)


def apply_weight_norm(module: nn.Module) -> nn.Module:
    """Weight-normalise a conv (both halves of a depthwise-separable one)."""
    if isinstance(module, DepthwiseSeparableConv1d):
        weight_norm(module.depth_conv)
        weight_norm(module.point_conv)
        return module
    return weight_norm(module)


def strip_weight_norm(module: nn.Module) -> None:
    """Fold every weight-norm parametrisation inside `module` into plain weights."""
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)


class WN(nn.Module):
    """Non-causal WaveNet stack with gated activations and global conditioning."""

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        p_dropout: float = 0.0,
        use_depthwise_conv: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("WN kernel_size must be odd")
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.gin_channels = gin_channels
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(p_dropout)
        if gin_channels != 0:
            cond_layer = nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1)
            self.cond_layer = weight_norm(cond_layer)
        for i in range(n_layers):
            dilation = dilation_rate**i
            padding = int((kernel_size * dilation - dilation) / 2)
            in_layer = make_conv1d(
                use_depthwise_conv,
                hidden_channels,
                2 * hidden_channels,
                kernel_size,
                dilation=dilation,
                padding=padding,
            )
            self.in_layers.append(apply_weight_norm(in_layer))
            # The last layer only feeds the skip path, so it needs half the channels.
            res_skip_channels = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(
                weight_norm(nn.Conv1d(hidden_channels, res_skip_channels, 1))
            )

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None
    ) -> torch.Tensor:
        output = torch.zeros_like(x)
        hidden = self.hidden_channels
        if g is not None:
            g = self.cond_layer(g)
        for i in range(self.n_layers):
            x_in = self.in_layers[i](x)
            if g is not None:
                g_l = g[:, i * 2 * hidden : (i + 1) * 2 * hidden, :]
            else:
                g_l = torch.zeros_like(x_in)
            acts = self.drop(commons.fused_add_tanh_sigmoid_multiply(x_in, g_l, hidden))
            res_skip = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :hidden, :]) * x_mask
                output = output + res_skip[:, hidden:, :]
            else:
                output = output + res_skip
        return output * x_mask

    def remove_weight_norm(self) -> None:
        strip_weight_norm(self)


class Flip(nn.Module):
    """Reverse the channel order so the next coupling layer transforms the other half."""

    def forward(
        self, x: torch.Tensor, *args: object, reverse: bool = False, **kwargs: object
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = torch.flip(x, [1])
        if reverse:
            return x
        return x, torch.zeros(x.size(0), dtype=x.dtype, device=x.device)


COUPLING_KINDS = ("residual", "transformer")


def coupling_encoder(
    kind: str,
    hidden_channels: int,
    kernel_size: int,
    n_layers: int,
    gin_channels: int = 0,
    dilation_rate: int = 1,
    p_dropout: float = 0.0,
    filter_channels: int = 0,
    n_heads: int = 0,
    use_depthwise_conv: bool = False,
) -> nn.Module:
    """What predicts the shift in a coupling layer: a WaveNet stack (`residual`, as in
    VITS) or a conditioned causal transformer (`transformer`, 4.1's transformer flow)."""
    if kind == "residual":
        return WN(
            hidden_channels,
            kernel_size,
            dilation_rate,
            n_layers,
            p_dropout=p_dropout,
            gin_channels=gin_channels,
            use_depthwise_conv=use_depthwise_conv,
        )
    if kind == "transformer":
        return attentions.FFT(
            hidden_channels,
            filter_channels,
            n_heads,
            n_layers,
            kernel_size,
            p_dropout,
            isflow=True,
            gin_channels=gin_channels,
        )
    raise ValueError(f"coupling kind {kind!r} is not one of {COUPLING_KINDS}")


class CouplingLayer(nn.Module):
    """Affine coupling: half the channels predict a shift (and scale) for the other half.

    `kind` chooses the stack that predicts them (`coupling_encoder`, built
    with `encoder_options`) unless the flow passes one `shared_encoder` for
    all its layers. Upstream's two coupling layer classes differ only in that
    stack; their state-dict keys (`pre`, `enc`, `post`) and initialisation
    order are these.
    """

    def __init__(
        self,
        kind: str,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        n_layers: int,
        gin_channels: int = 0,
        mean_only: bool = False,
        shared_encoder: nn.Module | None = None,
        **encoder_options: Any,
    ) -> None:
        if channels % 2 != 0:
            raise ValueError("coupling channels must be even")
        super().__init__()
        self.channels = channels
        self.half_channels = channels // 2
        self.mean_only = mean_only
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        if shared_encoder is None:
            shared_encoder = coupling_encoder(
                kind, hidden_channels, kernel_size, n_layers, gin_channels, **encoder_options
            )
        self.enc = shared_encoder
        self.post = nn.Conv1d(hidden_channels, self.half_channels * (2 - mean_only), 1)
        # Start as the identity map, as in VITS.
        self.post.weight.data.zero_()
        self.post.bias.data.zero_()

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        g: torch.Tensor | None = None,
        reverse: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x0, x1 = torch.split(x, [self.half_channels] * 2, 1)
        h = self.pre(x0) * x_mask
        h = self.enc(h, x_mask, g=g)
        stats = self.post(h) * x_mask
        if self.mean_only:
            m = stats
            logs = torch.zeros_like(m)
        else:
            m, logs = torch.split(stats, [self.half_channels] * 2, 1)
        if not reverse:
            x1 = m + x1 * torch.exp(logs) * x_mask
            return torch.cat([x0, x1], 1), torch.sum(logs, [1, 2])
        x1 = (x1 - m) * torch.exp(-logs) * x_mask
        return torch.cat([x0, x1], 1)
