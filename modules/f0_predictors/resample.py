"""Band-limited sinc resampling, numerically equal to torchaudio's default.

Upstream RMVPE resamples its input to 16 kHz with
``torchaudio.transforms.Resample(sr, 16000, lowpass_filter_width=128)``
(Hann-windowed sinc, roll-off 0.99). torchaudio is not a dependency here, so the
same polyphase filter is built directly in torch; matching it keeps the pitch
the network sees identical to what it was trained and tested with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class SincResampler:
    """Resample ``orig_freq`` → ``new_freq`` with a windowed-sinc polyphase filter."""

    def __init__(
        self,
        orig_freq: int,
        new_freq: int,
        lowpass_filter_width: int = 128,
        rolloff: float = 0.99,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if orig_freq <= 0 or new_freq <= 0:
            raise ValueError("sample rates must be positive")
        divisor = math.gcd(int(orig_freq), int(new_freq))
        self.orig_step = int(orig_freq) // divisor
        self.new_step = int(new_freq) // divisor
        self.identity = self.orig_step == self.new_step
        self.kernel, self.width = self._build_kernel(lowpass_filter_width, rolloff, device)
        self.kernel = self.kernel.to(dtype)

    def _build_kernel(
        self, lowpass_filter_width: int, rolloff: float, device: torch.device | str
    ) -> tuple[torch.Tensor, int]:
        """One filter per output phase, computed in float64 as torchaudio does."""
        orig, new = self.orig_step, self.new_step
        # Cut off just below the lower Nyquist rate to avoid aliasing.
        cutoff = min(orig, new) * rolloff
        width = math.ceil(lowpass_filter_width * orig / cutoff)
        taps = torch.arange(-width, width + orig, device=device, dtype=torch.float64) / orig
        phases = torch.arange(0, -new, -1, device=device, dtype=torch.float64)[:, None] / new
        t = ((phases + taps[None, :]) * cutoff).clamp(-lowpass_filter_width, lowpass_filter_width)
        window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
        t = t * math.pi
        safe_t = torch.where(t == 0, torch.ones_like(t), t)
        sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(safe_t) / safe_t)
        kernel = sinc * window * (cutoff / orig)
        return kernel[:, None, :], width

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        """Resample the last axis of ``waveform`` (any leading shape)."""
        if self.identity:
            return waveform
        leading = waveform.shape[:-1]
        length = waveform.shape[-1]
        flat = waveform.reshape(-1, length)
        kernel = self.kernel.to(device=flat.device, dtype=flat.dtype)
        padded = F.pad(flat, (self.width, self.width + self.orig_step))
        phases = F.conv1d(padded[:, None], kernel, stride=self.orig_step)
        resampled = phases.transpose(1, 2).reshape(flat.shape[0], -1)
        target_length = math.ceil(self.new_step * length / self.orig_step)
        return resampled[..., :target_length].reshape(*leading, -1)
