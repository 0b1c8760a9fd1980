"""Band-limited sinc resampling, numerically equal to torchaudio's default.

Upstream RMVPE resamples its input to 16 kHz with
``torchaudio.transforms.Resample(sr, 16000, lowpass_filter_width=128)``
(Hann-windowed sinc, roll-off 0.99). torchaudio is not a dependency here, so the
same polyphase filter is built directly in torch; matching it keeps the pitch
the network sees identical to what it was trained and tested with.

torchcrepe resamples with resampy's Kaiser filter instead; ``KaiserResampler``
rebuilds that one.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.signal
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


# resampy's "kaiser_best" filter (resampy/data/kaiser_best.npz): 50 zero crossings,
# 2**13 table entries per crossing, Kaiser window beta and roll-off as stored there.
KAISER_BEST_ZEROS = 50
KAISER_BEST_TABLE = 2**13
KAISER_BEST_BETA = 12.984585247040012
KAISER_BEST_ROLLOFF = 0.9173473712608761


def kaiser_best_half_window() -> np.ndarray:
    """The right half of resampy's kaiser_best interpolation filter, rebuilt (bit-exact)."""
    n = KAISER_BEST_TABLE * KAISER_BEST_ZEROS
    positions = np.linspace(0, KAISER_BEST_ZEROS, num=n + 1, endpoint=True)
    sinc = KAISER_BEST_ROLLOFF * np.sinc(KAISER_BEST_ROLLOFF * positions)
    return scipy.signal.windows.kaiser(2 * n + 1, KAISER_BEST_BETA)[n:] * sinc


class KaiserResampler:
    """resampy's default resampling (``resampy.resample(x, sr, new_sr)``), without resampy.

    torchcrepe resamples with it before both the network and the loudness
    gate; the same band-limited interpolation is done here with numpy, output
    by output (vectorised over blocks), summing in float64.
    """

    def __init__(self, orig_freq: int, new_freq: int) -> None:
        if orig_freq <= 0 or new_freq <= 0:
            raise ValueError("sample rates must be positive")
        self.orig_freq, self.new_freq = int(orig_freq), int(new_freq)
        ratio = float(new_freq) / orig_freq
        window = kaiser_best_half_window()
        if ratio < 1:
            window = ratio * window
        self.window = window
        self.delta = np.diff(window, append=window[-1])
        self.scale = min(1.0, ratio)
        self.step = int(self.scale * KAISER_BEST_TABLE)
        self.ratio = ratio

    def _wing(self, frac: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filter weights (outputs, taps) of one wing, zero beyond ``limit`` taps."""
        index_frac = frac * KAISER_BEST_TABLE
        offset = index_frac.astype(np.int64)
        eta = index_frac - offset
        n_taps = (len(self.window) - 1) // self.step + 1
        taps = np.arange(n_taps)
        index = offset[:, None] + taps[None, :] * self.step
        n_used = np.minimum(limit, (len(self.window) - offset) // self.step)
        inside = taps[None, :] < n_used[:, None]
        index = np.where(inside, index, 0)
        weights = self.window[index] + eta[:, None] * self.delta[index]
        return np.where(inside, weights, 0.0), taps

    def __call__(self, x: np.ndarray, block: int = 2048) -> np.ndarray:
        """Resample a 1-D signal; returns ``int(len(x) * new / orig)`` samples (x's float type)."""
        x = np.asarray(x)
        if self.orig_freq == self.new_freq:
            return x.copy()
        n_in = x.shape[0]
        n_out = int(n_in * float(self.new_freq) / float(self.orig_freq))
        padded = np.concatenate([np.zeros(1, x.dtype), x, np.zeros(1, x.dtype)]).astype(np.float64)
        out = np.empty(n_out, dtype=np.float64)
        times = np.arange(n_out) * (1.0 / self.ratio)
        for start in range(0, n_out, block):
            t = times[start : start + block]
            n = t.astype(np.int64)
            frac = self.scale * (t - n)
            left, taps = self._wing(frac, n + 1)
            right, _ = self._wing(self.scale - frac, n_in - n - 1)
            # Indices past either end only ever meet zero weights; point them at a pad sample.
            left_index = np.clip(n[:, None] - taps[None, :], -1, n_in) + 1
            right_index = np.clip(n[:, None] + taps[None, :] + 1, -1, n_in) + 1
            out[start : start + block] = (left * padded[left_index]).sum(axis=1) + (
                right * padded[right_index]
            ).sum(axis=1)
        return out.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)
