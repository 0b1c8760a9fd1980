"""Linear and mel spectrograms with upstream so-vits-svc's framing and scaling."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_LOG_FROM_HZ = 1000.0
_SLANEY_LOG_FROM_MEL = _SLANEY_LOG_FROM_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _SLANEY_HZ_PER_MEL
    with np.errstate(divide="ignore"):
        logarithmic = _SLANEY_LOG_FROM_MEL + np.log(hz / _SLANEY_LOG_FROM_HZ) / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_LOG_FROM_HZ, logarithmic, linear)


def slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_LOG_FROM_HZ * np.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_LOG_FROM_MEL))
    return np.where(mel >= _SLANEY_LOG_FROM_MEL, logarithmic, linear)


def slaney_mel_filterbank(
    sampling_rate: int, n_fft: int, num_mels: int, fmin: float, fmax: float | None
) -> np.ndarray:
    """Triangular, area-normalised mel filters (num_mels, n_fft // 2 + 1), float32.

    The same numbers as `librosa.filters.mel` with its defaults (Slaney scale
    and norm), which upstream uses; computed here so that training does not
    import librosa (about a second per process start).
    """
    fmax = sampling_rate / 2 if fmax is None else fmax
    bin_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sampling_rate)
    mel_edges = np.linspace(hz_to_slaney_mel(fmin), hz_to_slaney_mel(fmax), num_mels + 2)
    edges_hz = slaney_mel_to_hz(mel_edges)
    widths = np.diff(edges_hz)
    distance = edges_hz[:, None] - bin_hz[None, :]  # edge minus bin frequency
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    # Each filter scaled to unit area: rounded to float32 first, as librosa stores them.
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return (triangles.astype(np.float64) * area_norm[:, None]).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _hann_window(win_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.hann_window(win_size, dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _mel_basis(
    sampling_rate: int,
    n_fft: int,
    num_mels: int,
    fmin: float,
    fmax: float | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    mel = slaney_mel_filterbank(sampling_rate, n_fft, num_mels, fmin, fmax)
    return torch.from_numpy(mel).to(dtype=dtype, device=device)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # The STFT has no half/bfloat16 CPU kernel: compute those in float32.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def spectrogram_torch(
    y: torch.Tensor,
    n_fft: int,
    sampling_rate: int,
    hop_size: int,
    win_size: int,
    center: bool = False,
) -> torch.Tensor:
    """Magnitude STFT (B, n_fft//2+1, frames) of y (B, T), one frame per hop.

    The signal is reflect-padded by (n_fft - hop)/2 on both sides, and the
    magnitude is sqrt(re^2 + im^2 + 1e-6), as upstream.
    """
    y = y.to(_compute_dtype(y.dtype))
    window = _hann_window(win_size, y.dtype, y.device)
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        y,
        n_fft,
        hop_length=hop_size,
        win_length=win_size,
        window=window,
        center=center,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.view_as_real(spec)
    return torch.sqrt(spec.pow(2).sum(-1) + 1e-6)


def spec_to_mel_torch(
    spec: torch.Tensor,
    n_fft: int,
    num_mels: int,
    sampling_rate: int,
    fmin: float,
    fmax: float | None,
) -> torch.Tensor:
    """Log-mel (natural log, floor 1e-5) of a magnitude spectrogram, Slaney mel basis."""
    basis = _mel_basis(sampling_rate, n_fft, num_mels, fmin, fmax, spec.dtype, spec.device)
    mel = torch.matmul(basis, spec)
    return torch.log(torch.clamp(mel, min=1e-5))


def mel_spectrogram_torch(
    y: torch.Tensor,
    n_fft: int,
    num_mels: int,
    sampling_rate: int,
    hop_size: int,
    win_size: int,
    fmin: float,
    fmax: float | None,
    center: bool = False,
) -> torch.Tensor:
    """spectrogram_torch followed by spec_to_mel_torch."""
    spec = spectrogram_torch(y, n_fft, sampling_rate, hop_size, win_size, center)
    return spec_to_mel_torch(spec, n_fft, num_mels, sampling_rate, fmin, fmax)


def vocoder_mel(
    y: torch.Tensor,
    sampling_rate: int,
    n_fft: int,
    win_size: int,
    hop_size: int,
    num_mels: int,
    fmin: float,
    fmax: float | None,
    keyshift: float = 0.0,
    speed: float = 1.0,
    clip_val: float = 1e-5,
) -> torch.Tensor:
    """Log-mel (B, num_mels, frames) of y (B, T) as the NSF-HiFiGAN vocoder's STFT makes it.

    Upstream's vdecoder/nsf_hifigan/nvSTFT: reflect padding of (win - hop) // 2
    left and enough right for one frame per hop, `center=False`, magnitude
    sqrt(re^2 + im^2 + 1e-9), natural log floored at `clip_val`. `keyshift`
    (semitones) stretches FFT and window by 2^(k/12), keeps the first
    n_fft // 2 + 1 bins scaled by win / new win, so the same mel filters read a
    pitch-shifted spectrum; `speed` scales the hop.
    """
    y = y.to(_compute_dtype(y.dtype))
    factor = 2 ** (keyshift / 12)
    n_fft_new = int(np.round(n_fft * factor))
    win_new = int(np.round(win_size * factor))
    hop_new = int(np.round(hop_size * speed))
    pad_left = (win_new - hop_new) // 2
    pad_right = max((win_new - hop_new + 1) // 2, win_new - y.size(-1) - pad_left)
    mode = "reflect" if pad_right < y.size(-1) else "constant"
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad_left, pad_right), mode=mode).squeeze(1)
    spec = torch.stft(
        y,
        n_fft_new,
        hop_length=hop_new,
        win_length=win_new,
        window=_hann_window(win_new, y.dtype, y.device),
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.view_as_real(spec)
    magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
    if keyshift != 0:
        bins = n_fft // 2 + 1
        if magnitude.size(1) < bins:
            magnitude = torch.nn.functional.pad(magnitude, (0, 0, 0, bins - magnitude.size(1)))
        magnitude = magnitude[:, :bins, :] * win_size / win_new
    basis = _mel_basis(sampling_rate, n_fft, num_mels, fmin, fmax, magnitude.dtype, y.device)
    return torch.log(torch.clamp(torch.matmul(basis, magnitude), min=clip_val))


def spec_to_config_mel(spec: torch.Tensor, data: Any) -> torch.Tensor:
    """Mel of a linear spectrogram with a config's `data` mel settings (as training uses them)."""
    return spec_to_mel_torch(
        spec, data.filter_length, data.n_mel_channels, data.sampling_rate,
        data.mel_fmin, data.mel_fmax,
    )  # fmt: skip


def audio_to_config_mel(audio: torch.Tensor, data: Any) -> torch.Tensor:
    """Mel of (B, 1, T) audio with a config's `data` settings, in float32 as upstream."""
    return mel_spectrogram_torch(
        audio.squeeze(1).float(), data.filter_length, data.n_mel_channels, data.sampling_rate,
        data.hop_length, data.win_length, data.mel_fmin, data.mel_fmax,
    )  # fmt: skip
