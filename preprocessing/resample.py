"""Raw recordings -> mono 16-bit wavs at the training sample rate, as upstream makes them.

Per recording (upstream's order): read it at its own rate and mix to mono by
averaging the channels, trim leading and trailing audio quieter than 40 dB
below the peak, scale to 0.98 of full scale only if it clips, resample
(librosa's default, soxr "hq"), then unless loudness matching is skipped divide
by the peak, and store `value * 32767` as int16. With slicing, a long
recording is first cut at its pauses and every clip goes through that chain.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile
from scipy.io import wavfile

from core.errors import UserError
from core.safe_io import atomic_write
from preprocessing.runner import ItemResult, RunSummary, run_parallel

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")
TRIM_TOP_DB = 40.0
CLIP_PEAK = 1.0
CLIP_SCALE = 0.98
INT16_SCALE = float(np.iinfo(np.int16).max)
# A peak below this (about -80 dBFS) holds nothing to train on.
SILENCE_PEAK = 1e-4


class BadAudioError(Exception):
    """A recording that cannot be used (unreadable, empty, silent); its file is skipped."""


@dataclass(frozen=True)
class ResampleJob:
    """One raw recording and where its converted wav(s) go."""

    source: str
    output: str
    target_sr: int
    loudnorm: bool
    slice_at_pauses: bool
    force: bool = False

    def first_output(self) -> str:
        return clip_output_path(self.output, 0) if self.slice_at_pauses else self.output

    def is_done(self) -> bool:
        """An output newer than its source means an earlier run converted it."""
        if self.force:
            return False
        try:
            return os.path.getmtime(self.first_output()) >= os.path.getmtime(self.source)
        except OSError:
            return False


# --------------------------------------------------------------------------- maths


def load_mono(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read any soundfile-readable file as float32 mono at its own rate (channels averaged)."""
    try:
        data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, OSError) as error:
        raise BadAudioError(f"unreadable audio ({error})") from error
    if data.shape[0] == 0:
        raise BadAudioError("empty (no samples)")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(mono)):
        raise BadAudioError("contains NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), int(sample_rate)


def trim_silence(wav: np.ndarray, top_db: float = TRIM_TOP_DB) -> np.ndarray:
    """Cut leading/trailing audio quieter than `top_db` below the peak (librosa's trim)."""
    trimmed, _ = librosa.effects.trim(wav, top_db=top_db)
    return trimmed


def limit_clipping(wav: np.ndarray) -> np.ndarray:
    """Scale to 0.98 of full scale only when the peak exceeds full scale."""
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak > CLIP_PEAK:
        return (CLIP_SCALE * wav / peak).astype(wav.dtype, copy=False)
    return wav


def peak_normalize(wav: np.ndarray) -> np.ndarray:
    """Divide by the absolute peak so the loudest sample sits at full scale."""
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak <= 0.0:
        raise BadAudioError("silent after resampling")
    return wav / peak


def to_int16(wav: np.ndarray) -> np.ndarray:
    """Store `value * 32767` as int16 (truncating, as upstream); out-of-range values saturate.

    Upstream casts without clipping, so a resampler overshoot above 1.0 wraps
    around to a loud click; saturating is the only deviation and only there.
    """
    samples = np.asarray(wav)
    if not np.issubdtype(samples.dtype, np.floating):
        samples = samples.astype(np.float64)
    # Scale in the samples' own precision (float32 from librosa), as upstream does.
    scaled = samples * samples.dtype.type(INT16_SCALE)
    return np.clip(scaled, -INT16_SCALE - 1.0, INT16_SCALE).astype(np.int16)


def convert_waveform(
    wav: np.ndarray, sample_rate: int, target_sr: int, loudnorm: bool
) -> np.ndarray:
    """Apply upstream's chain (trim, clip guard, resample, optional peak normalisation) -> int16."""
    if wav.size == 0:
        raise BadAudioError("empty (no samples)")
    if float(np.abs(wav).max()) < SILENCE_PEAK:
        raise BadAudioError("silent (peak below -80 dBFS)")
    audio = trim_silence(wav)
    if audio.size == 0:
        raise BadAudioError("nothing left after trimming silence")
    audio = limit_clipping(audio)
    if sample_rate != target_sr:
        audio = librosa.resample(audio, orig_sr=sample_rate, target_sr=target_sr)
    if audio.size == 0:
        raise BadAudioError("too short to resample")
    if loudnorm:
        audio = peak_normalize(audio)
    return to_int16(audio)


def wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    """Encode int16 samples as a plain PCM wav file."""
    buffer = io.BytesIO()
    wavfile.write(buffer, sample_rate, np.asarray(pcm, dtype=np.int16))
    return buffer.getvalue()


def write_wav_atomic(path: str | os.PathLike, pcm: np.ndarray, sample_rate: int) -> None:
    """Write an int16 wav so that a crash never leaves a truncated file."""
    payload = wav_bytes(pcm, sample_rate)
    with atomic_write(path) as handle:
        handle.write(payload)


SlicerFactory = Callable[[int], object]


def _default_slicer(sample_rate: int) -> object:
    from inference.slicer import Slicer

    return Slicer(
        sr=sample_rate,
        threshold=-40.0,
        min_length=5000,
        min_interval=300,
        hop_size=20,
        max_sil_kept=5000,
    )


def split_at_pauses(
    wav: np.ndarray, sample_rate: int, slicer_factory: SlicerFactory | None = None
) -> list[np.ndarray]:
    """Cut a recording at its pauses into clips of a few seconds; silent chunks are dropped."""
    slicer = (slicer_factory or _default_slicer)(sample_rate)
    chunks = slicer.slice(wav)  # type: ignore[attr-defined]
    clips: list[np.ndarray] = []
    for key in sorted(chunks, key=int):
        chunk = chunks[key]
        if chunk["slice"]:
            continue
        start, end = (int(value) for value in str(chunk["split_time"]).split(","))
        if end > start:
            clips.append(wav[start:end])
    return clips


# --------------------------------------------------------------------------- one file


def output_name(source_name: str) -> str:
    """Upstream keeps a wav's name; other formats keep their stem with a `.wav` suffix."""
    stem, extension = os.path.splitext(source_name)
    return source_name if extension == ".wav" else stem + ".wav"


def clip_output_path(output: str, index: int) -> str:
    """Name of the `index`-th clip cut from a recording: `<stem>_<index>.wav`."""
    stem, _ = os.path.splitext(output)
    return f"{stem}_{index:04d}.wav"


def process_job(job: ResampleJob) -> ItemResult:
    """Convert one raw recording; any problem with the file becomes a failed result."""
    if job.is_done():
        return ItemResult(source=job.source, status="skipped", reason="already converted")
    try:
        wav, sample_rate = load_mono(job.source)
        if job.slice_at_pauses:
            return _process_sliced(job, wav, sample_rate)
        pcm = convert_waveform(wav, sample_rate, job.target_sr, job.loudnorm)
        write_wav_atomic(job.output, pcm, job.target_sr)
        return ItemResult(source=job.source, status="done", outputs=(job.output,))
    except BadAudioError as error:
        return ItemResult(source=job.source, status="failed", reason=str(error))
    except OSError as error:
        return ItemResult(source=job.source, status="failed", reason=f"cannot write: {error}")


def _process_sliced(job: ResampleJob, wav: np.ndarray, sample_rate: int) -> ItemResult:
    if float(np.abs(wav).max()) < SILENCE_PEAK:
        raise BadAudioError("silent (peak below -80 dBFS)")
    outputs: list[str] = []
    notes: list[str] = []
    for clip in split_at_pauses(wav, sample_rate):
        try:
            pcm = convert_waveform(clip, sample_rate, job.target_sr, job.loudnorm)
        except BadAudioError as error:
            notes.append(f"a clip was dropped: {error}")
            continue
        path = clip_output_path(job.output, len(outputs))
        write_wav_atomic(path, pcm, job.target_sr)
        outputs.append(path)
    if not outputs:
        raise BadAudioError("no usable clip after cutting at pauses")
    return ItemResult(
        source=job.source, status="done", outputs=tuple(outputs), notes=tuple(notes)
    )


# --------------------------------------------------------------------------- whole run


def plan_jobs(
    in_dir: str,
    out_dir: str,
    target_sr: int,
    loudnorm: bool,
    slice_at_pauses: bool,
    force: bool = False,
) -> tuple[list[ResampleJob], list[ItemResult]]:
    """List every audio file under `in_dir/<speaker>/` and where it goes.

    Returns the jobs and, separately, results for files that are refused up
    front (two sources that would write the same output).
    """
    root = Path(in_dir)
    if not root.is_dir():
        raise UserError(f"{in_dir}: input folder not found: put recordings in <in_dir>/<speaker>/")
    jobs: list[ResampleJob] = []
    refused: list[ItemResult] = []
    for speaker_dir in sorted(path for path in root.iterdir() if path.is_dir()):
        if speaker_dir.name.startswith("."):
            continue
        claimed: dict[str, str] = {}
        for source in sorted(speaker_dir.iterdir()):
            if source.name.startswith(".") or not source.is_file():
                continue
            if source.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            output = str(Path(out_dir) / speaker_dir.name / output_name(source.name))
            if output in claimed:
                refused.append(
                    ItemResult(
                        source=str(source),
                        status="failed",
                        reason=f"same output name as {claimed[output]}: rename one of them",
                    )
                )
                continue
            claimed[output] = str(source)
            jobs.append(
                ResampleJob(str(source), output, target_sr, loudnorm, slice_at_pauses, force)
            )
    return jobs, refused


def resample_dataset(
    in_dir: str,
    out_dir: str,
    target_sr: int = 44100,
    loudnorm: bool = True,
    num_processes: int = 1,
    slice_at_pauses: bool = False,
    force: bool = False,
) -> RunSummary:
    """Convert every recording under `in_dir/<speaker>/` into `out_dir/<speaker>/`.

    Recordings converted by an earlier run (output newer than the source) are
    skipped unless `force`, so an interrupted run picks up where it stopped.
    """
    if target_sr <= 0:
        raise UserError(f"--sr2 {target_sr}: the sample rate must be a positive number of Hz")
    jobs, refused = plan_jobs(in_dir, out_dir, target_sr, loudnorm, slice_at_pauses, force)
    if not jobs and not refused:
        raise UserError(
            f"{in_dir}: no audio files found in speaker folders ({', '.join(AUDIO_EXTENSIONS)}): "
            "put recordings in <in_dir>/<speaker>/"
        )
    results = run_parallel(
        process_job,
        jobs,
        [job.source for job in jobs],
        num_processes=num_processes,
        description="resample",
    )
    return RunSummary(title="resample", results=results + refused)


def count_outputs(results: Sequence[ItemResult]) -> int:
    """How many wav files a run wrote (slicing may write several per recording)."""
    return sum(len(result.outputs) for result in results)
