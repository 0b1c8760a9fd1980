"""Which checkpoint a run continues from: naming, discovery, pruning, resume points.

Checkpoints are `G_<step>.pth`/`D_<step>.pth` pairs in the model folder. A
resume point is the newest pair that both load and agree on their step; an
interrupted save leaves at worst a hidden temporary file or an unpaired G,
which are skipped (and the temporaries removed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoint.files import read_checkpoint
from checkpoint.names import (
    checkpoint_steps,
    checkpoint_temp_files,
    discriminator_path,
    generator_path,
)
from core.errors import UserError
from core.safe_io import remove_temp_files

logger = logging.getLogger("so-vits-svc")

def latest_checkpoint_path(dir_path: str | os.PathLike, regex: str = "G_*.pth") -> str | None:
    """The newest checkpoint matching `regex` (G or D files) by step number (upstream's helper)."""
    path_of = discriminator_path if regex.startswith("D") else generator_path
    for step in checkpoint_steps(dir_path):
        candidate = path_of(dir_path, step)
        if candidate.is_file():
            return str(candidate)
    return None


def remove_stale_temp_files(model_dir: str | os.PathLike) -> list[str]:
    """Delete temporary files of checkpoints whose save was killed part-way."""
    return remove_temp_files(checkpoint_temp_files(model_dir))


def clean_checkpoints(
    path_to_models: str | os.PathLike,
    n_ckpts_to_keep: int = 2,
    protect: Collection[int] = (),
) -> list[str]:
    """Delete all but the newest `n_ckpts_to_keep` G/D pairs; never G_0/D_0.

    `n_ckpts_to_keep` of 0 or less keeps everything, as upstream. The pairs of
    the steps in `protect` (the best checkpoint so far) are kept beside the
    newest ones. Returns the removed paths.
    """
    if n_ckpts_to_keep <= 0:
        return []
    steps = [step for step in checkpoint_steps(path_to_models) if step != 0]
    removed = []
    for step in (step for step in steps[n_ckpts_to_keep:] if step not in protect):
        pair = (generator_path(path_to_models, step), discriminator_path(path_to_models, step))
        for path in pair:
            if path.exists():
                path.unlink()
                removed.append(str(path))
    return removed


@dataclass
class ResumePoint:
    """The G/D pair a run continues from."""

    step: int
    g_path: Path
    d_path: Path
    g_checkpoint: dict[str, Any]
    d_checkpoint: dict[str, Any]

    @property
    def name(self) -> str:
        """The pair's name in log lines: its G file."""
        return self.g_path.name

    @property
    def is_base_model(self) -> bool:
        """G_0/D_0 without our training state: a base model to fine-tune from."""
        return self.step == 0 and "train_state" not in self.g_checkpoint


def find_resume_point(model_dir: str | os.PathLike) -> ResumePoint | None:
    """The newest G/D pair in `model_dir` that both load and agree on their step.

    None when there are no checkpoints. Unusable newer files are named in one
    warning with the pair used instead; when checkpoints exist but none pair up
    and load, a `UserError` says so (starting over in silence would throw away
    the user's training).
    """
    directory = Path(model_dir)
    problems: list[str] = []
    interrupted_saves: list[str] = []
    for step in checkpoint_steps(directory):
        g_path, d_path = generator_path(directory, step), discriminator_path(directory, step)
        absent = [path.name for path in (g_path, d_path) if not path.is_file()]
        if absent:
            problems.append(f"{directory / absent[0]} is missing (its pair is incomplete)")
            if _written_by_an_interrupted_save(g_path, d_path):
                interrupted_saves.append(g_path.name)
            continue
        try:
            g_checkpoint = read_checkpoint(g_path)
            d_checkpoint = read_checkpoint(d_path)
        except UserError as error:
            problems.append(str(error))
            continue
        saved_state = g_checkpoint.get("train_state")
        if isinstance(saved_state, dict) and saved_state.get("step") != step:
            problems.append(f"{g_path}: records step {saved_state.get('step')}, not {step}")
            continue
        if problems:
            logger.warning(
                "skipping unusable checkpoints (%s); resuming from %s and %s",
                "; ".join(problems),
                g_path.name,
                d_path.name,
            )
        return ResumePoint(step, g_path, d_path, g_checkpoint, d_checkpoint)
    if problems and len(interrupted_saves) == len(problems):
        # Only the first save of a run was cut short (its G written, not its D):
        # nothing trained is lost by starting again, and the new run replaces it.
        logger.warning(
            "%s: left by a first save that was interrupted before its D file was written; "
            "starting a new run",
            ", ".join(interrupted_saves),
        )
        return None
    if problems:
        raise UserError(
            f"{directory}: checkpoints are present but none can be resumed from "
            f"({'; '.join(problems)}): restore a good copy, or move them away to start over"
        )
    return None



def _written_by_an_interrupted_save(g_path: Path, d_path: Path) -> bool:
    """A G file of ours (it records our train state) whose D was never written.

    Training writes G before D, each atomically, so a kill between the two
    leaves exactly this. A lone D, or a G without our state (a user's base
    model), is not explained by that and stays an error.
    """
    if d_path.is_file() or not g_path.is_file():
        return False
    try:
        return isinstance(read_checkpoint(g_path).get("train_state"), dict)
    except UserError:
        return False
