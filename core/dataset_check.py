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

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile
import torch

import feature_files as ff
from core.errors import UserError
from feature_files import RERUN_FEATURES

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


def _check_content(wav: str, settings: _Settings, problems: list[str]) -> int | None:
    """Check `X.wav.soft.pt`; return its frame count when usable."""
    path = ff.content_path(wav)
    try:
        content = ff.read_content(path, settings.ssl_dim)
    except UserError as error:
        problems.append(str(error))
        return None
    if not torch.isfinite(content).all():
        problems.append(f"{path}: content features hold NaN or infinity; {RERUN_FEATURES}")
    return int(content.shape[1])


def _check_pitch(wav: str, problems: list[str]) -> int | None:
    """Check `X.wav.f0.npy`; return its frame count when usable."""
    path = ff.pitch_path(wav)
    try:
        f0, uv = ff.read_pitch(path)
    except UserError as error:
        problems.append(str(error))
        return None
    if not (np.isfinite(f0).all() and np.isfinite(uv).all()):
        problems.append(f"{path}: pitch holds NaN or infinity; {RERUN_FEATURES}")
    return int(f0.shape[0])


def _check_cached_spec(wav: str, settings: _Settings, frames: int | None) -> list[str]:
    """A cached `X.spec.pt`, if present, must fit data.filter_length and the audio."""
    path = ff.spec_path(wav)
    if not os.path.exists(path):
        return []  # the loader computes it
    try:
        spec = ff.read_spec(path, settings.filter_length)
    except UserError as error:
        return [str(error)]
    if frames is not None and abs(spec.shape[1] - frames) >= ff.STREAM_TOLERANCE_FRAMES:
        return [
            f"{path}: spectrogram has {spec.shape[1]} frames, the audio {frames}; delete it "
            f"(the trainer recomputes it) or {RERUN_FEATURES}"
        ]
    return []


def _check_volume(wav: str, frames: int | None) -> list[str]:
    path = ff.volume_path(wav)
    try:
        volume = ff.read_volume(path)
    except UserError as error:
        return [str(error)]
    if frames is not None and volume.shape[0] < frames - ff.STREAM_TOLERANCE_FRAMES + 1:
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
        audio_frames = ff.spec_frames(info.frames, settings.filter_length, settings.hop_length)

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
        and abs(pitch_frames - audio_frames) >= ff.STREAM_TOLERANCE_FRAMES
    ):
        problems.append(
            f"{ff.pitch_path(wav)}: {pitch_frames} pitch frames, but the audio has {audio_frames} "
            f"frames of data.hop_length {settings.hop_length}; the pitch was extracted "
            f"with another hop or clip: {RERUN_FEATURES}"
        )
    if (
        audio_frames is not None
        and content_frames is not None
        and not ff.content_belongs_to_clip(content_frames, info.frames, settings.sampling_rate)
    ):
        expected = ff.expected_content_frames(info.frames, settings.sampling_rate)
        problems.append(
            f"{ff.content_path(wav)}: {content_frames} content frames, expected about "
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
