"""Small tensor helpers shared by the so-vits-svc networks.

Random numbers are drawn only through `torch.rand` / `torch.randn` (looked up
at call time) so that tests can replace those functions and make every
sampling step deterministic.
"""

from __future__ import annotations

import torch
from torch import nn


def init_weights(module: nn.Module, mean: float = 0.0, std: float = 0.01) -> None:
    """Draw conv weights from N(mean, std), as the HiFi-GAN recipe does.

    On weight-normalised convs `module.weight` is recomputed from the
    parametrisation, so writing into it changes nothing: upstream behaves the
    same way (its init is a no-op there too), which keeps both identical.
    """
    if hasattr(module, "depth_conv") and hasattr(module, "point_conv"):
        module.depth_conv.weight.data.normal_(mean, std)
        module.point_conv.weight.data.normal_(mean, std)
    elif "Conv" in module.__class__.__name__ and hasattr(module, "weight"):
        module.weight.data.normal_(mean, std)


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the length of a stride-1 dilated convolution."""
    return int((kernel_size * dilation - dilation) / 2)


def sequence_mask(length: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Boolean mask (B, T): True for positions before each sequence's length."""
    if max_length is None:
        max_length = int(length.max())
    positions = torch.arange(max_length, dtype=length.dtype, device=length.device)
    return positions.unsqueeze(0) < length.unsqueeze(1)


def subsequent_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """Causal (lower-triangular) attention mask of shape (1, 1, T, T)."""
    return torch.tril(torch.ones(length, length, device=device)).unsqueeze(0).unsqueeze(0)


def fused_add_tanh_sigmoid_multiply(
    input_a: torch.Tensor, input_b: torch.Tensor, n_channels: int
) -> torch.Tensor:
    """WaveNet gate: tanh(first half of a+b) * sigmoid(second half of a+b)."""
    summed = input_a + input_b
    return torch.tanh(summed[:, :n_channels, :]) * torch.sigmoid(summed[:, n_channels:, :])


def slice_segments(x: torch.Tensor, ids_str: torch.Tensor, segment_size: int = 4) -> torch.Tensor:
    """Cut `segment_size` frames from the last axis of each batch item at ids_str.

    A batch shorter than the segment is zero-padded first (upstream would
    fail or return garbage there).
    """
    if x.size(-1) < segment_size:
        x = torch.nn.functional.pad(x, (0, segment_size - x.size(-1)))
    offsets = torch.arange(segment_size, device=x.device)
    index = ids_str.to(device=x.device, dtype=torch.long).unsqueeze(-1) + offsets  # (B, S)
    if x.dim() == 3:
        index = index.unsqueeze(1).expand(-1, x.size(1), -1)
    return torch.gather(x, -1, index)


def rand_slice_segments(
    x: torch.Tensor, x_lengths: torch.Tensor | int | None = None, segment_size: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows of `segment_size` frames inside each valid length."""
    batch = x.size(0)
    if x_lengths is None:
        x_lengths = x.size(-1)
    # A clip shorter than the segment starts at 0 (padded), never before it.
    ids_str_max = torch.clamp(
        torch.as_tensor(x_lengths, device=x.device) - segment_size + 1, min=1
    )
    ids_str = (torch.rand([batch], device=x.device) * ids_str_max).to(dtype=torch.long)
    return slice_segments(x, ids_str, segment_size), ids_str


def rand_slice_segments_with_pitch(
    x: torch.Tensor,
    pitch: torch.Tensor,
    x_lengths: torch.Tensor | int | None = None,
    segment_size: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like rand_slice_segments, also cutting the same window from pitch (B, T)."""
    segment, ids_str = rand_slice_segments(x, x_lengths, segment_size)
    return segment, slice_segments(pitch, ids_str, segment_size), ids_str


def draw_randn(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None,
    like: torch.Tensor,
) -> torch.Tensor:
    """Standard normal noise shaped `shape`, on like's device and dtype.

    Goes through `torch.randn` (not *_like, which takes no generator) so a
    local generator can replace the global stream.
    """
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype, device=like.device)


def draw_rand(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None,
    like: torch.Tensor,
) -> torch.Tensor:
    """Uniform [0, 1) noise shaped `shape`, on like's device and dtype."""
    return torch.rand(tuple(shape), generator=generator, dtype=like.dtype, device=like.device)
