"""Checkpoint file names, in one place: `G_<step>.pth`, `D_<step>.pth` and release files.

Training writes a generator and a discriminator per saved step into the model
folder; resume, pruning, the web UI, the demo and the tools find them through
these functions and never spell the names themselves.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

GENERATOR_FILES = "G_*.pth"  # for messages and globs: any generator checkpoint
DISCRIMINATOR_FILES = "D_*.pth"
_NAME = re.compile(r"^([GD])_(\d+)\.pth$")
_TEMP_FILES = ".[GD]_*.pth.*.tmp"  # what an interrupted atomic save leaves


def generator_path(model_dir: str | os.PathLike, step: int) -> Path:
    return Path(model_dir) / f"G_{int(step)}.pth"


def discriminator_path(model_dir: str | os.PathLike, step: int) -> Path:
    return Path(model_dir) / f"D_{int(step)}.pth"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step in a `G_<step>.pth`/`D_<step>.pth` name; None for any other file."""
    match = _NAME.match(Path(path).name)
    return int(match.group(2)) if match else None


def _steps(model_dir: str | os.PathLike, pattern: str) -> list[int]:
    steps = {checkpoint_step(entry) for entry in Path(model_dir).glob(pattern)}
    return sorted((step for step in steps if step is not None), reverse=True)


def checkpoint_steps(model_dir: str | os.PathLike) -> list[int]:
    """Steps that have a G or a D file in `model_dir`, newest first."""
    return _steps(model_dir, "[GD]_*.pth")


def generator_steps(model_dir: str | os.PathLike) -> list[int]:
    """Steps that have a G file in `model_dir`, newest first."""
    return _steps(model_dir, GENERATOR_FILES)


def newest_generator(model_dir: str | os.PathLike) -> Path | None:
    """The G file of the highest step in `model_dir`, or None when there is none."""
    steps = generator_steps(model_dir)
    return generator_path(model_dir, steps[0]) if steps else None


def checkpoint_temp_files(model_dir: str | os.PathLike) -> list[Path]:
    """Temporary files of checkpoint saves that were killed part-way."""
    return sorted(Path(model_dir).glob(_TEMP_FILES))


def release_path(checkpoint_path: str | os.PathLike, half: bool = False) -> str:
    """Upstream's release name: `G_x.pth` -> `G_x_release.pth` (`G_x_release_half.pth`)."""
    stem, extension = os.path.splitext(str(checkpoint_path))
    return f"{stem}_release{'_half' if half else ''}{extension}"
