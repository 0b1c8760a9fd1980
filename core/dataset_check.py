"""Pre-flight check of the training and validation filelists.

Upstream only notices a bad clip when the data loader reaches it, often hours
into training, as an AssertionError or a KeyError from a worker process. This
check reads every entry once before training starts and asks the verdict the
loader and preprocessing ask (`feature_files.clip_verdict`), so a clip it passes
never fails inside a data worker; it reports every problem, one line each,
naming the file and the fix.

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
        vol_embedding=bool(hps.model.vol_embedding),
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


def _check_cached_spec(wav: str, settings: _Settings, problems: list[str]) -> int | None:
    """Check a cached `X.spec.pt` if present (else the loader computes it); its frames."""
    path = ff.spec_path(wav)
    if not os.path.exists(path):
        return None
    try:
        return int(ff.read_spec(path, settings.filter_length).shape[1])
    except UserError as error:
        problems.append(str(error))
        return None


def _check_volume(wav: str, problems: list[str]) -> int | None:
    """Check `X.wav.vol.npy`; return its frame count when usable."""
    try:
        return int(ff.read_volume(ff.volume_path(wav)).shape[0])
    except UserError as error:
        problems.append(str(error))
        return None


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
    num_samples: int | None = None
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
        num_samples = int(info.frames)

    speaker = os.path.basename(os.path.dirname(wav))
    if speaker not in settings.speakers:
        problems.append(
            f"{wav}: speaker folder {speaker!r} is not in the config's spk map; add it to spk "
            f"(with an id below model.n_speakers) or {RERUN_FILELISTS}"
        )

    frames = {
        "content": _check_content(wav, settings, problems),
        "pitch": _check_pitch(wav, problems),
        "spec": _check_cached_spec(wav, settings, problems),
        "volume": _check_volume(wav, problems) if settings.vol_embedding else None,
    }
    if num_samples is not None:
        read = {stream: count for stream, count in frames.items() if count is not None}
        verdict = ff.clip_verdict(
            wav, num_samples, read, settings.sampling_rate, settings.hop_length
        )
        problems += verdict.values()
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
