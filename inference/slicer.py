"""Silence slicer used before inference.

Long inputs are split at quiet stretches so each voiced chunk is converted on
its own and silences are passed through untouched. The slicer measures RMS in
``hop_size`` ms frames and, whenever a silence is long enough (or leads the
file), records the part of it to cut, keeping at most ``max_sil_kept`` ms of
silence next to the neighbouring sound.
"""

from __future__ import annotations

from os import PathLike

import librosa
import numpy as np
import soundfile

Chunks = dict[str, dict[str, object]]


def frame_rms(samples: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """RMS of centred, zero-padded frames, as ``librosa.feature.rms`` computes it.

    Uses a running sum of squares, so memory stays linear in the signal length.
    """
    half = frame_length // 2
    padded = np.pad(np.asarray(samples, dtype=np.float64), (half, half))
    n_frames = 1 + (len(padded) - frame_length) // hop_length
    energy = np.concatenate(([0.0], np.cumsum(padded * padded)))
    starts = np.arange(n_frames) * hop_length
    power = (energy[starts + frame_length] - energy[starts]) / frame_length
    return np.sqrt(np.maximum(power, 0.0))


def _silent_runs(silent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) frame of every maximal run of silent frames."""
    edges = np.diff(np.concatenate(([0], silent.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


class Slicer:
    """Find the silences to cut; times are ms, the threshold dB (full scale)."""

    def __init__(
        self,
        sr: int,
        threshold: float = -40.0,
        min_length: int = 5000,
        min_interval: int = 300,
        hop_size: int = 20,
        max_sil_kept: int = 5000,
    ) -> None:
        if not min_length >= min_interval >= hop_size:
            raise ValueError("Slicer needs min_length >= min_interval >= hop_size")
        if not max_sil_kept >= hop_size:
            raise ValueError("Slicer needs max_sil_kept >= hop_size")
        interval_samples = sr * min_interval / 1000
        self.threshold = 10 ** (threshold / 20.0)
        self.hop_size = round(sr * hop_size / 1000)
        self.win_size = min(round(interval_samples), 4 * self.hop_size)
        # The remaining lengths are counted in frames.
        self.min_length = round(sr * min_length / 1000 / self.hop_size)
        self.min_interval = round(interval_samples / self.hop_size)
        self.max_sil_kept = round(sr * max_sil_kept / 1000 / self.hop_size)

    def _silence_tags(self, rms: np.ndarray) -> list[tuple[int, int]]:
        """Frame ranges of silence to cut, as (first, last) frame pairs."""
        keep = self.max_sil_kept
        tags: list[tuple[int, int]] = []
        clip_start = 0
        starts, ends = _silent_runs(rms < self.threshold)
        total = len(rms)
        for start, end in zip(starts.tolist(), ends.tolist()):
            if end == total:
                # Trailing silence: cut from its quietest frame near the start.
                if total - start >= self.min_interval:
                    stop = min(total, start + keep)
                    quietest = int(rms[start : stop + 1].argmin()) + start
                    tags.append((quietest, total + 1))
                break
            leading = start == 0 and end > keep
            long_enough = end - start >= self.min_interval and end - clip_start >= self.min_length
            if not leading and not long_enough:
                continue
            if end - start <= keep:
                # Short silence: cut at its single quietest frame.
                quietest = int(rms[start : end + 1].argmin()) + start
                tags.append((0, quietest) if start == 0 else (quietest, quietest))
                clip_start = quietest
                continue
            left = int(rms[start : start + keep + 1].argmin()) + start
            right = int(rms[end - keep : end + 1].argmin()) + end - keep
            if end - start <= 2 * keep:
                # Medium silence: the kept margins overlap; split near the middle.
                middle = int(rms[end - keep : start + keep + 1].argmin()) + end - keep
                if start == 0:
                    tags.append((0, right))
                    clip_start = right
                else:
                    tags.append((min(left, middle), max(right, middle)))
                    clip_start = max(right, middle)
            else:
                tags.append((0, right) if start == 0 else (left, right))
                clip_start = right
        return tags

    def slice(self, waveform: np.ndarray) -> Chunks:
        """Label the waveform: ``{"0": {"slice": is_silence, "split_time": "start,end"}, ...}``.

        Sample offsets; silence chunks (``slice`` true) may be empty, as upstream's are.
        """
        samples = librosa.to_mono(waveform) if waveform.ndim > 1 else waveform
        n_samples = samples.shape[0]
        whole = {"0": {"slice": False, "split_time": f"0,{n_samples}"}}
        if n_samples <= self.min_length:
            return whole
        rms = frame_rms(samples, self.win_size, self.hop_size)
        tags = self._silence_tags(rms)
        if not tags:
            return whole
        hop = self.hop_size
        chunks: list[dict[str, object]] = []
        if tags[0][0]:
            chunks.append({"slice": False, "split_time": f"0,{min(n_samples, tags[0][0] * hop)}"})
        for index, (first, last) in enumerate(tags):
            if index:
                previous_end = tags[index - 1][1] * hop
                chunks.append(
                    {"slice": False, "split_time": f"{previous_end},{min(n_samples, first * hop)}"}
                )
            chunks.append(
                {"slice": True, "split_time": f"{first * hop},{min(n_samples, last * hop)}"}
            )
        if tags[-1][1] * hop < n_samples:
            chunks.append({"slice": False, "split_time": f"{tags[-1][1] * hop},{n_samples}"})
        return {str(index): chunk for index, chunk in enumerate(chunks)}


def slice_waveform(
    waveform: np.ndarray, sr: int, db_thresh: float = -30, min_len: int = 5000
) -> Chunks:
    """Slice an in-memory waveform with inference's settings (no file IO)."""
    return Slicer(sr=sr, threshold=db_thresh, min_length=min_len).slice(waveform)


def split_chunks(audio: np.ndarray, chunks: Chunks) -> list[tuple[bool, np.ndarray]]:
    """Cut ``audio`` into (is_silence, samples) pieces, skipping empty chunks."""
    pieces = []
    for chunk in chunks.values():
        start, end = (int(value) for value in str(chunk["split_time"]).split(","))
        if start != end:
            pieces.append((bool(chunk["slice"]), audio[start:end]))
    return pieces


def cut(audio_path: str | PathLike, db_thresh: float = -30, min_len: int = 5000) -> Chunks:
    """Slice an audio file at its native sample rate (mixed down to mono)."""
    audio, sr = librosa.load(audio_path, sr=None)
    return slice_waveform(audio, int(sr), db_thresh, min_len)


def chunks2audio(
    audio_path: str | PathLike, chunks: Chunks
) -> tuple[list[tuple[bool, np.ndarray]], int]:
    """Load ``audio_path`` as mono float32 and cut it into the labelled chunks."""
    audio, sr = soundfile.read(audio_path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1, dtype=np.float32)
    return split_chunks(mono, chunks), int(sr)
