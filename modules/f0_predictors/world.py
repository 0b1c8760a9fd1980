"""Pitch from the WORLD vocoder's estimators (pyworld): DIO and Harvest."""

from __future__ import annotations

import numpy as np
import pyworld

from modules.f0_predictors.base import F0Predictor, interpolate_f0, resize_f0


class DioF0Predictor(F0Predictor):
    """DIO followed by StoneMask refinement: fast, a little less robust than Harvest."""

    def compute_f0_uv(
        self, wav: np.ndarray, p_len: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if p_len is None:
            p_len = self.default_length(wav)
        signal = np.asarray(wav, dtype=np.float64)
        f0, times = pyworld.dio(
            signal,
            fs=self.sampling_rate,
            f0_floor=self.f0_min,
            f0_ceil=self.f0_max,
            frame_period=1000 * self.hop_length / self.sampling_rate,
        )
        f0 = pyworld.stonemask(signal, f0, times, self.sampling_rate)
        # so-vits-svc rounds DIO's pitch to 0.1 Hz before resizing.
        f0 = np.round(f0, 1)
        return interpolate_f0(resize_f0(f0, p_len), self.hop_length, self.sampling_rate)


class HarvestF0Predictor(F0Predictor):
    """Harvest followed by StoneMask refinement: slow but robust."""

    def compute_f0_uv(
        self, wav: np.ndarray, p_len: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if p_len is None:
            p_len = self.default_length(wav)
        signal = np.asarray(wav, dtype=np.float64)
        f0, times = pyworld.harvest(
            signal,
            fs=self.sampling_rate,
            f0_floor=self.f0_min,
            f0_ceil=self.f0_max,
            frame_period=1000 * self.hop_length / self.sampling_rate,
        )
        f0 = pyworld.stonemask(signal, f0, times, self.sampling_rate)
        return interpolate_f0(resize_f0(f0, p_len), self.hop_length, self.sampling_rate)
