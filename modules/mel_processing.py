"""Linear and mel spectrograms with upstream so-vits-svc's framing and scaling."""

from __future__ import annotations

import functools

import torch
from librosa.filters import mel as librosa_mel_fn


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
    mel = librosa_mel_fn(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax)
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
    """Log-mel (natural log, floor 1e-5) of a magnitude spectrogram, librosa Slaney basis."""
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
