"""Pitch and frame helpers shared by preprocessing, training and inference.

The numbers follow upstream so-vits-svc 4.1 (utils.py): the coarse-pitch
scale, the log-F0 used by the F0 predictor, unvoiced-frame interpolation, the
volume envelope and the content-frame stretching.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

F0_BIN = 256
F0_MAX = 1100.0
F0_MIN = 50.0
F0_MEL_MIN = 1127 * math.log(1 + F0_MIN / 700)
F0_MEL_MAX = 1127 * math.log(1 + F0_MAX / 700)


def f0_to_coarse(f0: torch.Tensor) -> torch.Tensor:
    """Quantise F0 in Hz to the 1..255 mel-spaced bins the prior's pitch embedding reads.

    Unvoiced frames (0 Hz) map to bin 1. Returns int64.
    """
    f0_mel = 1127 * (1 + f0 / 700).log()
    scaled = (f0_mel - F0_MEL_MIN) * (F0_BIN - 2) / (F0_MEL_MAX - F0_MEL_MIN) + 1
    f0_mel = torch.where(f0_mel > 0, scaled, f0_mel)
    f0_mel = f0_mel.clamp(min=1, max=F0_BIN - 1)
    # Upstream sets values <= 1 to 1 (so NaN stays NaN there); clamp does the same for numbers.
    return (f0_mel + 0.5).long()


def f0_to_lf0(f0: torch.Tensor) -> torch.Tensor:
    """Log-scaled pitch the F0 decoder predicts: 2595 * log10(1 + f0 / 700) / 500."""
    return 2595.0 * torch.log10(1.0 + f0 / 700.0) / 500


def lf0_to_f0(lf0: torch.Tensor) -> torch.Tensor:
    """Inverse of f0_to_lf0."""
    return 700 * (torch.pow(10, lf0 * 500 / 2595) - 1)


def normalize_f0(
    lf0: torch.Tensor, x_mask: torch.Tensor, uv: torch.Tensor, random_scale: bool = True
) -> torch.Tensor:
    """Remove each item's mean voiced log-F0 (B, 1, T); in training also scale by U(0.8, 1.2).

    The random factor comes from the global RNG (training randomness), created
    on the input's device.
    """
    uv_sum = torch.sum(uv, dim=1, keepdim=True)
    uv_sum = torch.where(uv_sum == 0, torch.full_like(uv_sum, 9999), uv_sum)
    means = torch.sum(lf0[:, 0, :] * uv, dim=1, keepdim=True) / uv_sum
    if random_scale:
        factor = torch.empty(lf0.shape[0], 1, device=lf0.device, dtype=lf0.dtype).uniform_(0.8, 1.2)
    else:
        factor = torch.ones(lf0.shape[0], 1, device=lf0.device, dtype=lf0.dtype)
    f0_norm = (lf0 - means.unsqueeze(-1)) * factor.unsqueeze(-1)
    return f0_norm * x_mask


def interpolate_f0(f0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill unvoiced (<= 0) frames of a 1-D pitch track; returns (filled f0, voiced mask).

    Gaps between voiced frames are filled by linear interpolation, leading
    gaps by the first voiced value, trailing gaps by the last one. Faithful to
    upstream's quirk: a gap whose next voiced frame is the very last frame is
    treated as trailing (so that last frame takes the previous voiced value).
    The input is not modified.
    """
    data = np.array(f0, copy=True).reshape(-1)
    vuv = (data > 0.0).astype(np.float32)
    n_frames = data.size
    last_value = 0.0
    i = 0
    while i < n_frames:
        if data[i] > 0.0:
            last_value = data[i]
            i += 1
            continue
        voiced_after = np.flatnonzero(data[i + 1 :] > 0.0)
        next_voiced = i + 1 + int(voiced_after[0]) if voiced_after.size else n_frames - 1
        if next_voiced < n_frames - 1:
            if last_value > 0.0:
                step = (data[next_voiced] - data[i - 1]) / float(next_voiced - i)
                offsets = np.arange(1, next_voiced - i + 1)
                data[i:next_voiced] = data[i - 1] + step * offsets
            else:
                data[i:next_voiced] = data[next_voiced]
            i = next_voiced
        else:
            data[i:] = last_value
            i = n_frames
    return data, vuv


class VolumeExtractor:
    """RMS loudness per hop-sized frame, centred on each frame (reflect padding)."""

    def __init__(self, hop_size: int = 512) -> None:
        self.hop_size = hop_size

    def extract(self, audio: torch.Tensor | np.ndarray) -> torch.Tensor:
        """audio (B, T) -> volume (B, T // hop_size)."""
        if not isinstance(audio, torch.Tensor):
            audio = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
        hop = self.hop_size
        n_frames = int(audio.size(-1) // hop)
        power = audio**2
        power = F.pad(power, (hop // 2, (hop + 1) // 2), mode="reflect")
        frames = power[..., : n_frames * hop].reshape(*power.shape[:-1], n_frames, hop)
        return torch.sqrt(frames.mean(dim=-1))


def repeat_expand_2d(content: torch.Tensor, target_len: int, mode: str = "left") -> torch.Tensor:
    """Stretch (C, T) content features to target_len frames.

    "left" repeats each source frame over its share of the target (when
    shrinking it keeps the first target_len frames, as upstream's loop does);
    any other mode is passed to F.interpolate ("nearest", "linear", ...).
    """
    if mode != "left":
        return F.interpolate(content[None], size=target_len, mode=mode)[0]
    src_len = content.shape[-1]
    # Frame boundaries in float32, exactly as upstream computes them.
    bounds = (torch.arange(src_len + 1) * target_len / src_len).tolist()
    positions = []
    current = 0
    for i in range(target_len):
        if i >= bounds[current + 1]:
            current += 1
        positions.append(current)
    index = torch.tensor(positions, dtype=torch.long, device=content.device)
    return content[:, index].to(torch.float32)
