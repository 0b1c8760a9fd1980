"""Pitch from Praat's autocorrelation method (parselmouth)."""

from __future__ import annotations

import numpy as np
import parselmouth

from modules.f0_predictors.base import F0Predictor, interpolate_f0

# Praat's voicing threshold as so-vits-svc sets it (Praat's own default is 0.45).
VOICING_THRESHOLD = 0.6


class PMF0Predictor(F0Predictor):
    """Praat ``To Pitch (ac)``: frames are centred, so the track is padded to ``p_len``."""

    def compute_f0_uv(
        self, wav: np.ndarray, p_len: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if p_len is None:
            p_len = self.default_length(wav)
        sound = parselmouth.Sound(np.asarray(wav), self.sampling_rate)
        pitch = sound.to_pitch_ac(
            time_step=self.hop_length / self.sampling_rate,
            voicing_threshold=VOICING_THRESHOLD,
            pitch_floor=self.f0_min,
            pitch_ceiling=self.f0_max,
        )
        f0 = np.asarray(pitch.selected_array["frequency"], dtype=np.float64)
        # Praat drops frames whose window would run off either end; pad with
        # unvoiced frames, one more on the left when the gap is odd.
        missing = p_len - len(f0)
        if missing > 0:
            left = (missing + 1) // 2
            f0 = np.pad(f0, (left, missing - left))
        elif missing < 0:
            f0 = f0[:p_len]
        return interpolate_f0(f0, self.hop_length, self.sampling_rate)
