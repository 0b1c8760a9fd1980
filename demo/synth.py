"""A small synthetic multi-speaker singing set, made with the WORLD vocoder (pyworld).

The demo needs singing that anyone can regenerate without downloading a
corpus. Each clip is one phrase: a few notes from a major scale around the
singer's home pitch, joined by short glides, with vibrato that fades in on each
note, each note sung on a vowel (a/e/i/o/u). A singer is a voice: a home pitch,
a vocal-tract length (all formants scaled by one factor) and a breathiness
(aperiodicity level). WORLD then renders f0 + spectral envelope + aperiodicity
to audio, so every clip's true pitch contour is known exactly, which the demo
and its tests use to check pitch measurements.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from core.safe_io import atomic_write

SAMPLE_RATE = 44100
FRAME_PERIOD_MS = 5.0
FFT_SIZE = 2048  # pyworld.get_cheaptrick_fft_size(44100)
EDGE_SILENCE_S = 0.15
GLIDE_S = 0.06
VIBRATO_HZ = 5.5
VIBRATO_CENTS = 35.0
PEAK_LEVEL = 0.6
SILENT_POWER = 1e-12

# Formants (Hz) and bandwidths (Hz) of an adult voice for each vowel: F1..F5.
VOWEL_FORMANTS: dict[str, tuple[float, ...]] = {
    "a": (800.0, 1200.0, 2500.0, 3500.0, 4500.0),
    "e": (450.0, 2000.0, 2600.0, 3500.0, 4500.0),
    "i": (300.0, 2300.0, 3000.0, 3700.0, 4600.0),
    "o": (480.0, 850.0, 2500.0, 3400.0, 4400.0),
    "u": (330.0, 750.0, 2400.0, 3300.0, 4300.0),
}
FORMANT_BANDWIDTHS = (90.0, 110.0, 160.0, 220.0, 280.0)
FORMANT_GAINS_DB = (0.0, -6.0, -14.0, -20.0, -26.0)
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11, 12)

SPEAKER_NAMES = ("ada", "ben", "cleo", "dov", "eve", "finn")


@dataclass(frozen=True)
class Voice:
    """One synthetic singer: where they sing, how long their vocal tract is, how breathy."""

    name: str
    home_hz: float
    formant_scale: float
    breathiness: float  # aperiodicity of the low band, 0 (clean) .. 1 (whisper)


@dataclass(frozen=True)
class Clip:
    """A rendered phrase and the parameters WORLD rendered it from."""

    audio: np.ndarray  # float32, SAMPLE_RATE
    f0: np.ndarray  # Hz per 5 ms frame, 0 where silent
    spectral_envelope: np.ndarray  # (frames, FFT_SIZE // 2 + 1) power spectrum
    aperiodicity: np.ndarray  # same shape, 0..1


def make_voice(index: int) -> Voice:
    """The `index`-th singer: alternating low/high voices with distinct timbres."""
    name = SPEAKER_NAMES[index] if index < len(SPEAKER_NAMES) else f"singer{index}"
    home_hz = (196.0, 293.7, 146.8, 349.2, 174.6, 261.6)[index % 6]
    formant_scale = (1.0, 1.18, 0.86, 1.26, 0.92, 1.1)[index % 6]
    breathiness = (0.04, 0.22, 0.1, 0.35, 0.15, 0.06)[index % 6]
    return Voice(name, home_hz, formant_scale, breathiness)


def pitch_contour(
    note_hz: Sequence[float], note_seconds: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """f0 per frame for legato notes: glides between notes, vibrato fading in on each note."""
    frame_s = FRAME_PERIOD_MS / 1000.0
    segments = []
    for hz, seconds in zip(note_hz, note_seconds):
        frames = max(1, round(seconds / frame_s))
        t = np.arange(frames) * frame_s
        depth = VIBRATO_CENTS * np.clip((t - 0.25) / 0.3, 0.0, 1.0)
        phase = rng.uniform(0, 2 * np.pi)
        cents = depth * np.sin(2 * np.pi * VIBRATO_HZ * t + phase)
        segments.append(np.log2(hz) + cents / 1200.0)
    log_f0 = np.concatenate(segments)
    # Glide: smooth the steps between notes with a short raised-cosine kernel.
    width = max(3, round(GLIDE_S / frame_s))
    kernel = np.hanning(width)
    kernel /= kernel.sum()
    padded = np.pad(log_f0, (width // 2, width - 1 - width // 2), mode="edge")
    return 2.0 ** np.convolve(padded, kernel, mode="valid")


def formant_track(vowels: Sequence[str], note_frames: Sequence[int]) -> np.ndarray:
    """Formant frequencies per frame (frames, 5), moving smoothly from vowel to vowel."""
    track = np.concatenate(
        [np.tile(VOWEL_FORMANTS[vowel], (frames, 1)) for vowel, frames in zip(vowels, note_frames)]
    )
    width = 9  # 45 ms coarticulation
    kernel = np.hanning(width)
    kernel /= kernel.sum()
    padded = np.pad(track, ((width // 2, width // 2), (0, 0)), mode="edge")
    return np.stack(
        [np.convolve(padded[:, k], kernel, mode="valid") for k in range(track.shape[1])], axis=1
    )


def spectral_envelope(formants: np.ndarray, formant_scale: float) -> np.ndarray:
    """Power spectrum per frame: resonance peaks at the (scaled) formants on a falling tilt."""
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, FFT_SIZE // 2 + 1)
    scaled = formants * formant_scale
    level_db = np.full((formants.shape[0], freqs.size), -60.0)
    for k, (bandwidth, gain_db) in enumerate(zip(FORMANT_BANDWIDTHS, FORMANT_GAINS_DB)):
        bandwidth = bandwidth * formant_scale
        distance = (freqs[None, :] - scaled[:, k : k + 1]) / bandwidth
        # Resonance as a sum of powers (a Lorentzian peak), then back to dB.
        peak = 10.0 ** (gain_db / 10.0) / (1.0 + distance**2)
        level_db = 10.0 * np.log10(10.0 ** (level_db / 10.0) + peak)
    tilt_db = -6.0 * np.log2(np.maximum(freqs, 100.0) / 100.0)
    return 10.0 ** ((level_db + tilt_db[None, :]) / 10.0) * 1e-2


def aperiodicity(frames: int, breathiness: float) -> np.ndarray:
    """Aperiodicity rising from the voice's breathiness below ~3 kHz to pure noise above ~8 kHz."""
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, FFT_SIZE // 2 + 1)
    rise = 1.0 / (1.0 + np.exp(-(freqs - 5500.0) / 900.0))
    row = breathiness + (1.0 - breathiness) * rise
    return np.tile(np.clip(row, 0.001, 0.999), (frames, 1))


def render_phrase(voice: Voice, seconds: float, rng: np.random.Generator) -> Clip:
    """One phrase of 3-5 notes lasting about `seconds`, rendered with WORLD."""
    import pyworld

    note_count = int(rng.integers(3, 6))
    edge_frames = round(EDGE_SILENCE_S / (FRAME_PERIOD_MS / 1000.0))
    sung = max(0.5, seconds - 2 * EDGE_SILENCE_S)
    shares = rng.uniform(0.6, 1.4, note_count)
    note_seconds = sung * shares / shares.sum()
    degrees = rng.choice(MAJOR_SCALE, size=note_count)
    note_hz = [voice.home_hz * 2.0 ** (int(degree) / 12.0) for degree in degrees]
    vowels = [str(v) for v in rng.choice(list(VOWEL_FORMANTS), size=note_count)]

    voiced_f0 = pitch_contour(note_hz, note_seconds, rng)
    frames_per_note = [max(1, round(s / (FRAME_PERIOD_MS / 1000.0))) for s in note_seconds]
    formants = formant_track(vowels, frames_per_note)[: voiced_f0.size]
    voiced_sp = spectral_envelope(formants, voice.formant_scale)
    # Swell in and out over 80 ms so notes start and end like a voice, not a switch.
    ramp = np.minimum(1.0, np.minimum(np.arange(voiced_f0.size), np.arange(voiced_f0.size)[::-1])
                      / 16.0)
    voiced_sp *= (np.maximum(ramp, 1e-3) ** 2)[:, None]

    silence = np.zeros(edge_frames)
    f0 = np.concatenate([silence, voiced_f0, silence])
    quiet = np.full((edge_frames, voiced_sp.shape[1]), SILENT_POWER)
    sp = np.ascontiguousarray(np.concatenate([quiet, voiced_sp, quiet]))
    ap = np.ascontiguousarray(aperiodicity(f0.size, voice.breathiness))
    audio = pyworld.synthesize(
        np.ascontiguousarray(f0, dtype=np.float64), sp, ap, SAMPLE_RATE, FRAME_PERIOD_MS
    )
    audio = PEAK_LEVEL * audio / max(float(np.abs(audio).max()), 1e-9)
    return Clip(audio.astype(np.float32), f0, sp, ap)


def clip_seconds(rng: np.random.Generator, shortest: float, longest: float) -> float:
    """A clip length drawn uniformly in [shortest, longest]."""
    return float(rng.uniform(shortest, longest))


def write_wav(path: Path, audio: np.ndarray) -> None:
    """A 16-bit wav written atomically, so an interrupted demo never leaves half a file."""
    with atomic_write(path) as handle:
        soundfile.write(handle, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def build_singing_set(
    out_dir: str | os.PathLike,
    speakers: int = 3,
    clips: int = 8,
    shortest: float = 2.0,
    longest: float = 4.0,
    seed: int = 1234,
) -> list[Path]:
    """Write `<out_dir>/<speaker>/<speaker>_NN.wav`; existing clips are kept, not redrawn.

    Every clip has its own generator seeded from (seed, speaker, clip), so a
    clip's content never depends on which others were already on disk.
    """
    written: list[Path] = []
    for speaker_index in range(speakers):
        voice = make_voice(speaker_index)
        for clip_index in range(clips):
            path = Path(out_dir) / voice.name / f"{voice.name}_{clip_index:02d}.wav"
            written.append(path)
            if path.is_file():
                continue
            rng = np.random.default_rng([seed, speaker_index, clip_index])
            clip = render_phrase(voice, clip_seconds(rng, shortest, longest), rng)
            write_wav(path, clip.audio)
    return written
