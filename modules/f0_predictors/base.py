"""Shared pieces of the pitch (F0) predictors.

Every predictor returns pitch on the model's frame grid (one value per
``hop_length`` samples at ``sampling_rate``) together with a voicing mask.
Unvoiced frames are filled by linear interpolation in time so the pitch curve
the model is conditioned on never drops to zero inside a phrase; the mask keeps
the voicing decision.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch.nn import functional as F


def resize_f0(f0: np.ndarray, target_len: int) -> np.ndarray:
    """Resample a pitch track to ``target_len`` frames by linear interpolation.

    Unvoiced frames (below 1 mHz) count as missing: any output frame that would
    draw on one becomes 0, so voicing is not smeared into silent regions.
    """
    source = np.array(f0, dtype=np.float64)
    source[source < 0.001] = np.nan
    n_source = len(source)
    # Output frame k sits at source position k * n_source / target_len.
    positions = np.arange(0, n_source * target_len, n_source) / target_len
    resized = np.interp(positions, np.arange(n_source), source)
    return np.nan_to_num(resized)


def interpolate_f0(
    f0: np.ndarray, hop_length: int, sampling_rate: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fill unvoiced frames by linear interpolation in time.

    Returns the filled pitch (float64, held flat before the first and after
    the last voiced frame; all zeros when nothing is voiced) and the voicing
    mask (1 voiced, 0 unvoiced, float64).
    """
    f0 = np.asarray(f0, dtype=np.float64)
    voiced = (f0 > 0.0).astype(np.float64)
    voiced_index = np.nonzero(f0)[0]
    if voiced_index.size == 0:
        return np.zeros(f0.shape[0], dtype=np.float64), voiced
    voiced_f0 = f0[voiced_index]
    frame_seconds = hop_length / sampling_rate
    # Upstream keeps the voiced frame times in float32; doing the same keeps
    # the interpolated values bit-identical to its output.
    voiced_times = voiced_index.astype(np.float32) * np.float32(frame_seconds)
    frame_times = np.arange(f0.shape[0]) * frame_seconds
    filled = np.interp(frame_times, voiced_times, voiced_f0, left=voiced_f0[0], right=voiced_f0[-1])
    return filled, voiced


def frames_to_grid(
    f0: torch.Tensor, p_len: int, hop_length: int, sampling_rate: int
) -> tuple[np.ndarray, np.ndarray]:
    """Put a neural predictor's frame pitch (0 = unvoiced) on the model's frame grid.

    Upstream's post-processing for rmvpe, crepe and fcpe: a nearest-neighbour
    stretch to ``p_len`` frames, the voicing mask, then unvoiced frames filled
    by linear interpolation in time (held flat at the ends). Returns float64
    (filled pitch, mask); both all zeros when nothing is voiced.
    """
    if p_len == 0 or not bool((f0 != 0).any()):
        silent = np.zeros(p_len, dtype=np.float64)
        return silent, silent.copy()
    stretched = F.interpolate(f0.reshape(1, 1, -1).float(), size=p_len, mode="nearest")[0, 0]
    stretched = stretched.cpu().numpy()
    voiced = (stretched > 0).astype(np.float64)
    voiced_index = np.nonzero(stretched)[0]
    if voiced_index.size == 0:
        return np.zeros(p_len, dtype=np.float64), voiced
    frame_seconds = hop_length / sampling_rate
    voiced_f0 = stretched[voiced_index]
    filled = np.interp(
        np.arange(p_len) * frame_seconds,
        voiced_index * frame_seconds,
        voiced_f0,
        left=voiced_f0[0],
        right=voiced_f0[-1],
    )
    return filled.astype(np.float64), voiced


class F0Predictor(ABC):
    """A pitch estimator on the ``hop_length`` / ``sampling_rate`` frame grid."""

    def __init__(
        self,
        hop_length: int = 512,
        sampling_rate: int = 44100,
        f0_min: float = 50,
        f0_max: float = 1100,
    ) -> None:
        self.hop_length = hop_length
        self.sampling_rate = sampling_rate
        self.f0_min = f0_min
        self.f0_max = f0_max

    def default_length(self, wav: np.ndarray) -> int:
        """Number of frames the acoustic model expects for ``wav``."""
        return int(wav.shape[0]) // self.hop_length

    @abstractmethod
    def compute_f0_uv(
        self, wav: np.ndarray, p_len: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (pitch in Hz with unvoiced frames filled, voicing mask), each ``p_len`` long."""

    def compute_f0(self, wav: np.ndarray, p_len: int | None = None) -> np.ndarray:
        """Return only the filled pitch of :meth:`compute_f0_uv`."""
        return self.compute_f0_uv(wav, p_len)[0]


class NeuralF0Predictor(F0Predictor):
    """A predictor with a network (rmvpe, crepe, fcpe): it runs on ``device`` (CUDA when
    there is one), takes voicing below ``threshold`` as unvoiced, and gives pitch per
    network frame, which upstream's post-processing puts on the model's grid."""

    def __init__(
        self,
        hop_length: int,
        sampling_rate: int,
        f0_min: float,
        f0_max: float,
        device: str | None,
        threshold: float,
    ) -> None:
        super().__init__(hop_length, sampling_rate, f0_min, f0_max)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.threshold = threshold

    @abstractmethod
    def frame_f0(self, wav: np.ndarray) -> torch.Tensor:
        """Pitch per network frame (0 = unvoiced), before the grid stretch."""

    def compute_f0_uv(
        self, wav: np.ndarray, p_len: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if p_len is None:
            p_len = self.default_length(wav)
        return frames_to_grid(self.frame_f0(wav), p_len, self.hop_length, self.sampling_rate)
