"""Pitch from the WORLD vocoder's estimators (pyworld): DIO and Harvest."""

from __future__ import annotations

import numpy as np
import pyworld

from modules.f0_predictors.base import F0Predictor, interpolate_f0, resize_f0


class _WorldF0Predictor(F0Predictor):
    """A WORLD estimator followed by StoneMask refinement and upstream's post-processing."""

    round_to_tenth_hz = False

    @staticmethod
    def estimate(
        signal: np.ndarray, fs: int, f0_floor: float, f0_ceil: float, frame_period: float
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def compute_f0_uv(
        self, wav: np.ndarray, p_len: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if p_len is None:
            p_len = self.default_length(wav)
        signal = np.asarray(wav, dtype=np.float64)
        f0, times = self.estimate(
            signal,
            fs=self.sampling_rate,
            f0_floor=self.f0_min,
            f0_ceil=self.f0_max,
            frame_period=1000 * self.hop_length / self.sampling_rate,
        )
        f0 = pyworld.stonemask(signal, f0, times, self.sampling_rate)
        if self.round_to_tenth_hz:
            f0 = np.round(f0, 1)
        return interpolate_f0(resize_f0(f0, p_len), self.hop_length, self.sampling_rate)


class DioF0Predictor(_WorldF0Predictor):
    """DIO: fast, a little less robust than Harvest."""

    # so-vits-svc rounds DIO's pitch to 0.1 Hz before resizing.
    round_to_tenth_hz = True
    estimate = staticmethod(pyworld.dio)


class HarvestF0Predictor(_WorldF0Predictor):
    """Harvest: slow but robust."""

    estimate = staticmethod(pyworld.harvest)
