"""The diffusion run's folder: `model_<step>.pt` names, rotation and the resume point.

Upstream's layout (`logs/44k/diffusion/model_<step>.pt`). Upstream keeps the
newest model and every `train.interval_force_save`-th one, deleting the
previous validation save; `rotate_models` applies that rule to every file in
the folder, so saves at other steps (a stop signal, `--max_steps`) are
rotated the same way. `model_0.pt`, the base model, is never deleted.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.safe_io import remove_temp_files
from diffusion.files import read_diffusion_checkpoint

logger = logging.getLogger("so-vits-svc")

_NAME = re.compile(r"^model_(\d+)\.pt$")
_TEMP_FILES = ".model_*.pt.*.tmp"  # what an interrupted atomic save leaves


def model_path(model_dir: str | os.PathLike, step: int) -> Path:
    return Path(model_dir) / f"model_{int(step)}.pt"


def model_steps(model_dir: str | os.PathLike) -> list[int]:
    """Steps that have a `model_<step>.pt` in `model_dir`, newest first."""
    steps = (_NAME.match(entry.name) for entry in Path(model_dir).glob("model_*.pt"))
    return sorted((int(match.group(1)) for match in steps if match), reverse=True)


def remove_stale_model_temp_files(model_dir: str | os.PathLike) -> list[str]:
    """Delete temporary files of saves that were killed part-way."""
    return remove_temp_files(sorted(Path(model_dir).glob(_TEMP_FILES)))


def rotate_models(model_dir: str | os.PathLike, newest: int, force_save_every: int) -> list[str]:
    """Delete every model but `newest`, model_0 and multiples of `force_save_every`.

    `force_save_every` of 0 or less keeps everything. Returns the removed paths.
    """
    if force_save_every <= 0:
        return []
    removed = []
    for step in model_steps(model_dir):
        if step != newest and step % force_save_every != 0:
            path = model_path(model_dir, step)
            path.unlink(missing_ok=True)
            removed.append(str(path))
    return removed


@dataclass
class DiffusionResumePoint:
    """The model file a run continues from, read once (as data)."""

    step: int
    path: Path
    checkpoint: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_ours(self) -> bool:
        """Written by this project's training: it carries the run state."""
        return isinstance(self.checkpoint.get("train_state"), dict)

    @property
    def is_base_model(self) -> bool:
        """model_0.pt without our run state: the shared base model to fine-tune from."""
        return self.step == 0 and not self.is_ours


def find_diffusion_resume_point(model_dir: str | os.PathLike) -> DiffusionResumePoint | None:
    """The newest `model_<step>.pt` in `model_dir` that loads; None when there is none.

    Unusable newer files are named in one warning; when files exist but none
    loads, a `UserError` says so (starting over in silence would throw the
    training away).
    """
    problems: list[str] = []
    for step in model_steps(model_dir):
        path = model_path(model_dir, step)
        try:
            checkpoint = read_diffusion_checkpoint(path)
        except UserError as error:
            problems.append(str(error))
            continue
        saved = checkpoint.get("train_state")
        if isinstance(saved, dict) and saved.get("step") != step:
            problems.append(f"{path}: records step {saved.get('step')}, not {step}")
            continue
        if problems:
            logger.warning(
                "skipping unusable models (%s); resuming from %s", "; ".join(problems), path.name
            )
        return DiffusionResumePoint(step, path, checkpoint)
    if problems:
        raise UserError(
            f"{model_dir}: diffusion models are present but none can be resumed from "
            f"({'; '.join(problems)}): restore a good copy, or move them away to start over"
        )
    return None
