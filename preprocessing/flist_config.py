"""Filelists, config.json and diffusion.yaml, as upstream's preprocess_flist_config.

Speakers get ids 0, 1, ... in folder order (sorted, so runs are reproducible;
upstream uses the file system's listing order). Per speaker, wavs shorter than
0.3 s are skipped, the rest shuffled, the first two go to validation and the
others to training; both lists are shuffled again. One `random.Random(seed)`
drives every shuffle, so a seed always gives the same split.
"""

from __future__ import annotations

import copy
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile

from core import components
from core.errors import UserError
from core.safe_io import atomic_write
from preprocessing.diffusion_config import make_diffusion_config

MIN_SECONDS = 0.3
VAL_PER_SPEAKER = 2
TINY_FILTER_CHANNELS = 512
REPO_DIR = Path(__file__).resolve().parent.parent

_PLAIN_NAME = re.compile(r"^[.a-zA-Z0-9_/]+$")


@dataclass
class DatasetSplit:
    """Speaker ids, the two filelists, and notes about files left out."""

    speakers: dict[str, int] = field(default_factory=dict)
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def wav_duration(path: str) -> float:
    """Length in seconds from the file header (no decoding)."""
    info = soundfile.info(path)
    return info.frames / float(info.samplerate)


def list_speakers(source_dir: str) -> list[str]:
    """Speaker folder names under `source_dir`, sorted, hidden folders left out."""
    root = Path(source_dir)
    if not root.is_dir():
        raise UserError(
            f"{source_dir}: dataset folder not found: run resample.py first or pass --source_dir"
        )
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_dataset(
    source_dir: str,
    seed: int = 1234,
    min_seconds: float = MIN_SECONDS,
    val_per_speaker: int = VAL_PER_SPEAKER,
) -> DatasetSplit:
    """Assign speaker ids and split each speaker's wavs into training and validation.

    Paths are written as upstream writes them: `<source_dir>/<speaker>/<file>`
    joined with `/`, keeping `source_dir` as given.
    """
    rng = random.Random(seed)
    split = DatasetSplit()
    speakers = list_speakers(source_dir)
    if not speakers:
        raise UserError(
            f"{source_dir}: no speaker folders found: run resample.py first or pass --source_dir"
        )
    for speaker_id, speaker in enumerate(speakers):
        split.speakers[speaker] = speaker_id
        wavs: list[str] = []
        names = sorted(Path(source_dir, speaker).iterdir())
        for entry in names:
            name = entry.name
            if name.startswith(".") or not name.endswith(".wav") or not entry.is_file():
                continue
            path = "/".join([source_dir, speaker, name])
            if not _PLAIN_NAME.match(f"{speaker}/{name}"):
                split.notes.append(f"{path}: name has characters other than ASCII letters, "
                                   "digits and underscores (usually fine)")
            try:
                seconds = wav_duration(str(entry))
            except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
                split.notes.append(f"{path}: skipped, unreadable ({error})")
                continue
            if seconds < min_seconds:
                split.notes.append(
                    f"{path}: skipped, too short ({seconds:.2f} s < {min_seconds} s)"
                )
                continue
            wavs.append(path)
        if not wavs:
            split.notes.append(f"speaker {speaker!r} has no usable wav: it keeps id {speaker_id}")
        elif len(wavs) <= val_per_speaker:
            split.notes.append(
                f"speaker {speaker!r} has only {len(wavs)} wav(s): all go to validation, "
                "none to training; add more recordings"
            )
        rng.shuffle(wavs)
        split.val += wavs[:val_per_speaker]
        split.train += wavs[val_per_speaker:]
    rng.shuffle(split.train)
    rng.shuffle(split.val)
    if not split.train and not split.val:
        raise UserError(f"{source_dir}: no usable .wav files found: run resample.py first")
    return split


def template_path(tiny: bool, search_dirs: list[Path] | None = None) -> Path:
    """The config template in ./configs_template/, else in this repository's copy."""
    name = "config_tiny_template.json" if tiny else "config_template.json"
    for folder in search_dirs or [Path.cwd(), REPO_DIR]:
        candidate = folder / "configs_template" / name
        if candidate.is_file():
            return candidate
    raise UserError(f"configs_template/{name}: template not found: restore it from the repository")


def load_template(path: Path) -> dict[str, Any]:
    """Read a config template, with a clear error for a broken file."""
    try:
        with open(path, encoding="utf-8") as handle:
            template = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read the config template ({error})") from error
    for section in ("train", "data", "model"):
        if not isinstance(template.get(section), dict):
            raise UserError(f"{path}: section {section!r} missing: restore the template")
    return template


def build_config(
    template: dict[str, Any],
    speakers: dict[str, int],
    speech_encoder: str,
    vol_aug: bool = False,
    tiny: bool = False,
) -> dict[str, Any]:
    """Fill a template with the speakers and the encoder's width as upstream does."""
    encoder = components.speech_encoder(speech_encoder, where="--speech_encoder")
    config = copy.deepcopy(template)
    model = config["model"]
    config["spk"] = dict(speakers)
    model["n_speakers"] = len(speakers)
    model["speech_encoder"] = speech_encoder
    model["ssl_dim"] = encoder.width
    model["gin_channels"] = encoder.width
    if encoder.sets_filter_channels:
        model["filter_channels"] = encoder.width
    if vol_aug:
        config["train"]["vol_aug"] = True
        model["vol_embedding"] = True
    if tiny:
        model["filter_channels"] = TINY_FILTER_CHANNELS
    return config


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 text so a crash never leaves half a file."""
    with atomic_write(path) as handle:
        handle.write(text.encode("utf-8"))


def write_filelist(path: str | Path, entries: list[str]) -> None:
    """One path per line, each ending in a newline (upstream's format)."""
    write_text_atomic(path, "".join(f"{entry}\n" for entry in entries))


def write_config(path: str | Path, config: dict[str, Any]) -> None:
    """JSON with two-space indentation, as upstream writes it."""
    write_text_atomic(path, json.dumps(config, indent=2))


def make_filelists_and_config(
    source_dir: str,
    train_list: str,
    val_list: str,
    speech_encoder: str,
    vol_aug: bool,
    tiny: bool,
    seed: int,
    config_path: str = "configs/config.json",
    diffusion_config_path: str | None = None,
) -> DatasetSplit:
    """The whole command: split, write both filelists, the config and the diffusion config."""
    components.speech_encoder(speech_encoder, where="--speech_encoder")
    template = load_template(template_path(tiny))
    split = split_dataset(source_dir, seed=seed)
    config = build_config(template, split.speakers, speech_encoder, vol_aug=vol_aug, tiny=tiny)
    write_filelist(train_list, split.train)
    write_filelist(val_list, split.val)
    write_config(config_path, config)
    if diffusion_config_path is not None:
        make_diffusion_config(
            diffusion_config_path, split.speakers, speech_encoder, train_list, val_list
        )
    return split
