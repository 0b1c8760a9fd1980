"""Pre-flight check of the training and validation filelists.

Upstream only notices a bad clip when the data loader reaches it, often hours
into training, as an AssertionError or a KeyError from a worker process. This
check reads every entry once before training starts, with the same rules the
loader applies (see `data_utils.TextAudioSpeakerLoader.get_audio`), and reports
every problem, one line each, naming the file and the fix.

It reads wav headers only (`soundfile.info`), and the feature files through the
safe loaders, so a tampered `.f0.npy` or `.pt` is refused without running code.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile
import torch

from core.errors import UserError
from core.safe_io import load_f0_uv, load_torch_data

ENCODER_SAMPLING_RATE = 16000
ENCODER_HOP = 320  # every upstream speech encoder emits one frame per 20 ms of 16 kHz audio
FRAME_TOLERANCE = 3  # the loader's allowed pitch/spectrogram/audio mismatch, in frames

RERUN_FEATURES = "rerun preprocess_hubert_f0.py"
RERUN_FILELISTS = "rerun preprocess_flist_config.py"


@dataclass(frozen=True)
class _Settings:
    sampling_rate: int
    hop_length: int
    filter_length: int
    ssl_dim: int
    vol_embedding: bool
    speakers: frozenset[str]


def _settings(hps: Any) -> _Settings:
    return _Settings(
        sampling_rate=int(hps.data.sampling_rate),
        hop_length=int(hps.data.hop_length),
        filter_length=int(hps.data.filter_length),
        ssl_dim=int(hps.model.ssl_dim),
        vol_embedding=bool(hps.model.get("vol_embedding", False)),
        speakers=frozenset(hps.spk.keys()),
    )


def spec_frames(num_samples: int, filter_length: int, hop_length: int) -> int:
    """Frames of `spectrogram_torch(center=False)` (reflect-padded by (n_fft - hop) / 2 a side)."""
    pad = int((filter_length - hop_length) / 2)
    return max(0, (num_samples + 2 * pad - filter_length) // hop_length + 1)


def expected_content_frames(num_samples: int, sampling_rate: int) -> float:
    """About how many content frames a speech encoder gives for this much audio."""
    return math.ceil(num_samples * ENCODER_SAMPLING_RATE / sampling_rate) / ENCODER_HOP


def _spec_path(wav: str) -> str:
    return wav.replace(".wav", ".spec.pt")


def _check_content(wav: str, settings: _Settings, problems: list[str]) -> int | None:
    """Check `X.wav.soft.pt`; return its frame count when usable."""
    path = wav + ".soft.pt"
    if not os.path.exists(path):
        problems.append(f"{path}: content features missing; {RERUN_FEATURES}")
        return None
    try:
        content = load_torch_data(path)
    except UserError as error:
        problems.append(str(error))
        return None
    if isinstance(content, torch.Tensor) and content.dim() == 3 and content.shape[0] == 1:
        content = content[0]
    if not isinstance(content, torch.Tensor) or content.dim() != 2 or content.shape[1] == 0:
        shape = tuple(getattr(content, "shape", ()))
        problems.append(
            f"{path}: expected a (1, ssl_dim, frames) tensor, found {type(content).__name__} "
            f"{shape}; {RERUN_FEATURES}"
        )
        return None
    if content.shape[0] != settings.ssl_dim:
        problems.append(
            f"{path}: content width {content.shape[0]} != model.ssl_dim {settings.ssl_dim}; "
            "the features come from another speech encoder: set model.speech_encoder and "
            f"ssl_dim to match, or {RERUN_FEATURES}"
        )
        return None
    if not torch.isfinite(content).all():
        problems.append(f"{path}: content features hold NaN or infinity; {RERUN_FEATURES}")
    return int(content.shape[1])


def _check_pitch(wav: str, problems: list[str]) -> int | None:
    """Check `X.wav.f0.npy`; return its frame count when usable."""
    path = wav + ".f0.npy"
    if not os.path.exists(path):
        problems.append(f"{path}: pitch file missing; {RERUN_FEATURES}")
        return None
    try:
        f0, uv = load_f0_uv(path)
    except UserError as error:
        problems.append(str(error))
        return None
    if f0.ndim != 1 or f0.shape != uv.shape:
        problems.append(
            f"{path}: f0 has {f0.shape} values but uv has {uv.shape}; they must be equal: "
            f"{RERUN_FEATURES}"
        )
        return None
    if f0.shape[0] == 0:
        problems.append(f"{path}: pitch file is empty; {RERUN_FEATURES}")
        return None
    if not (np.isfinite(f0).all() and np.isfinite(uv).all()):
        problems.append(f"{path}: pitch holds NaN or infinity; {RERUN_FEATURES}")
    return int(f0.shape[0])


def _check_cached_spec(wav: str, settings: _Settings, frames: int | None) -> list[str]:
    """A cached `X.spec.pt`, if present, must fit data.filter_length and the audio."""
    path = _spec_path(wav)
    if not os.path.exists(path):
        return []  # the loader computes it
    fix = "delete it (the trainer recomputes it) or " + RERUN_FEATURES
    try:
        spec = load_torch_data(path)
    except UserError as error:
        return [f"{error} ({fix})"]
    bins = settings.filter_length // 2 + 1
    if not isinstance(spec, torch.Tensor) or spec.dim() != 2 or spec.shape[0] != bins:
        shape = tuple(getattr(spec, "shape", ()))
        return [f"{path}: spectrogram shape {shape}, expected ({bins}, frames); {fix}"]
    if frames is not None and abs(spec.shape[1] - frames) >= FRAME_TOLERANCE:
        return [f"{path}: spectrogram has {spec.shape[1]} frames, the audio {frames}; {fix}"]
    return []


def _check_volume(wav: str, frames: int | None) -> list[str]:
    path = wav + ".vol.npy"
    if not os.path.exists(path):
        return [f"{path}: volume missing but model.vol_embedding is on; {RERUN_FEATURES}"]
    try:
        volume = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        return [f"{path}: cannot be read as an array ({error}); {RERUN_FEATURES}"]
    if volume.ndim != 1:
        return [f"{path}: volume has shape {volume.shape}, expected (frames,); {RERUN_FEATURES}"]
    if frames is not None and volume.shape[0] < frames - FRAME_TOLERANCE + 1:
        return [f"{path}: volume has {volume.shape[0]} frames, expected {frames}; {RERUN_FEATURES}"]
    return []


def check_item(wav: str, settings: _Settings) -> list[str]:
    """Every problem of one filelist entry, one line each."""
    wav = wav.replace("\\", "/")
    if not os.path.exists(wav):
        return [
            f"{wav}: audio file missing; remove it from the filelist ({RERUN_FILELISTS}) "
            "or restore it"
        ]
    try:
        info = soundfile.info(wav)
    except (RuntimeError, ValueError, OSError) as error:
        return [
            f"{wav}: cannot be read as audio ({str(error).strip()}); replace it (rerun "
            f"resample.py) or remove it from the filelist ({RERUN_FILELISTS})"
        ]
    problems: list[str] = []
    audio_frames: int | None = None
    if info.samplerate != settings.sampling_rate:
        problems.append(
            f"{wav}: sample rate {info.samplerate} Hz, but data.sampling_rate is "
            f"{settings.sampling_rate}; rerun resample.py --sr2 {settings.sampling_rate} "
            f"and preprocess_hubert_f0.py"
        )
    elif info.channels != 1:
        problems.append(f"{wav}: {info.channels} channels, expected mono; rerun resample.py")
    elif info.frames < 2 * settings.hop_length:
        problems.append(
            f"{wav}: too short ({info.frames} samples, need at least "
            f"{2 * settings.hop_length}); remove it from the filelist"
        )
    else:
        audio_frames = spec_frames(info.frames, settings.filter_length, settings.hop_length)

    speaker = os.path.basename(os.path.dirname(wav))
    if speaker not in settings.speakers:
        problems.append(
            f"{wav}: speaker folder {speaker!r} is not in the config's spk map; add it to spk "
            f"(with an id below model.n_speakers) or {RERUN_FILELISTS}"
        )

    content_frames = _check_content(wav, settings, problems)
    pitch_frames = _check_pitch(wav, problems)
    problems += _check_cached_spec(wav, settings, audio_frames)
    if settings.vol_embedding:
        problems += _check_volume(wav, audio_frames)

    if (
        audio_frames is not None
        and pitch_frames is not None
        and abs(pitch_frames - audio_frames) >= FRAME_TOLERANCE
    ):
        problems.append(
            f"{wav}.f0.npy: {pitch_frames} pitch frames, but the audio has {audio_frames} "
            f"frames of data.hop_length {settings.hop_length}; the pitch was extracted "
            f"with another hop or clip: {RERUN_FEATURES}"
        )
    if audio_frames is not None and content_frames is not None:
        expected = expected_content_frames(info.frames, settings.sampling_rate)
        if abs(content_frames - expected) > max(5.0, 0.25 * expected):
            problems.append(
                f"{wav}.soft.pt: {content_frames} content frames, expected about "
                f"{expected:.0f} for {info.frames / info.samplerate:.2f} s of audio; the "
                f"features belong to another clip: {RERUN_FEATURES}"
            )
    return problems


def check_filelists(hps: Any) -> list[str]:
    """Check every entry of the training and validation filelists; one line per problem."""
    settings = _settings(hps)
    problems: list[str] = []
    for key in ("training_files", "validation_files"):
        filelist = str(hps.data[key])
        if not os.path.isfile(filelist):
            problems.append(f"{filelist}: data.{key} filelist not found; {RERUN_FILELISTS}")
            continue
        try:
            with open(filelist, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            problems.append(f"{filelist}: data.{key} cannot be read ({error}); {RERUN_FILELISTS}")
            continue
        entries = [e for e in (line.strip().split("|")[0].strip() for line in lines) if e]
        if not entries:
            problems.append(
                f"{filelist}: data.{key} filelist is empty; put clips under "
                f"dataset/<sr>/<speaker>/ and {RERUN_FILELISTS}"
            )
        for wav in entries:
            problems += check_item(wav, settings)
    return problems


def raise_if_problems(problems: list[str], max_lines: int | None = 200) -> None:
    """Raise one UserError listing the problems (at most `max_lines` of them, then a count)."""
    if not problems:
        return
    shown = problems if max_lines is None else problems[:max_lines]
    lines = [f"  {p}" for p in shown]
    if len(shown) < len(problems):
        lines.append(f"  ... and {len(problems) - len(shown)} more")
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    raise UserError(
        f"dataset check found {count}; fix them before training:\n" + "\n".join(lines)
    )
