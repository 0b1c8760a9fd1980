"""How well converted audio follows the pitch it was asked for.

Two figures per clip, both on the model's frame grid: the absolute error in
cents on the frames voiced both in the given f0 and in the converted audio,
and the voicing errors (frames the given voicing calls voiced and the audio
is not, or the reverse). A deterministic predictor (WORLD's DIO, no weights)
measures the audio, so equal audio always gives equal figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modules.f0_predictors import F0Predictor, get_f0_predictor

PITCH_PREDICTOR = "dio"


@dataclass(frozen=True)
class PitchAccuracy:
    """One clip's pitch errors, kept per frame so groups of clips can be pooled."""

    cents: np.ndarray  # |error| in cents on frames voiced in both
    voicing_errors: int
    frames: int


def build_pitch_meter(hop_length: int, sampling_rate: int) -> F0Predictor:
    """The predictor that measures converted audio (the default f0 range)."""
    return get_f0_predictor(PITCH_PREDICTOR, hop_length=hop_length, sampling_rate=sampling_rate)


def compare_pitch(
    given_f0: np.ndarray, given_uv: np.ndarray, measured_f0: np.ndarray, measured_uv: np.ndarray
) -> PitchAccuracy:
    """Errors of a measured pitch track against the given one (same frame grid)."""
    frames = min(len(given_f0), len(measured_f0))
    given_voiced = np.asarray(given_uv[:frames]) > 0.5
    measured_voiced = np.asarray(measured_uv[:frames]) > 0.5
    both = given_voiced & measured_voiced & (np.asarray(given_f0[:frames]) > 0)
    ratio = (
        np.asarray(measured_f0[:frames], np.float64)[both]
        / np.asarray(given_f0[:frames], np.float64)[both]
    )
    return PitchAccuracy(
        cents=np.abs(1200.0 * np.log2(ratio)),
        voicing_errors=int(np.count_nonzero(given_voiced != measured_voiced)),
        frames=frames,
    )


def measure_pitch_accuracy(
    audio: np.ndarray, given_f0: np.ndarray, given_uv: np.ndarray, meter: F0Predictor
) -> PitchAccuracy:
    """Measure `audio`'s pitch with `meter` and compare it with the given f0 and voicing."""
    measured_f0, measured_uv = meter.compute_f0_uv(
        np.asarray(audio, dtype=np.float64), p_len=len(given_f0)
    )
    return compare_pitch(given_f0, given_uv, measured_f0, measured_uv)


def pooled_median_cents(clips: list[PitchAccuracy]) -> float:
    """Median |cents| over every frame of `clips` voiced in both (nan when there is none)."""
    cents = np.concatenate([clip.cents for clip in clips]) if clips else np.zeros(0)
    return float(np.median(cents)) if cents.size else float("nan")


def pooled_voicing_error_rate(clips: list[PitchAccuracy]) -> float:
    """Share of all frames of `clips` whose voicing the audio gets wrong."""
    frames = sum(clip.frames for clip in clips)
    return sum(clip.voicing_errors for clip in clips) / frames if frames else float("nan")
