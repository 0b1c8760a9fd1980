"""The best checkpoint so far, and when to stop: `<model_dir>/best.json`.

Each evaluation records its step's validation mel distance (inference path).
The lowest so far names the best G/D pair, which checkpoint rotation keeps;
its figures and the evaluations since it are in `best.json`, which users can
read. A new best must beat the old one by more than `MIN_RELATIVE_IMPROVEMENT`,
so rounding noise in unchanged weights is never taken for progress.
`train.patience` stops training after that many evaluations without a new best.

The file keeps each evaluation's (step, mel distance). A run resumed from step
S forgets the evaluations after S (their checkpoints were never saved, or
training goes over those steps again) and works out the best and the count
from what remains, exactly as if those evaluations had not happened.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from core.safe_io import atomic_write
from evaluation.figures import ValidationReport

logger = logging.getLogger("so-vits-svc")

BEST_FILE = "best.json"
CRITERION = "mel_distance"
MIN_RELATIVE_IMPROVEMENT = 1e-4


def improves(value: float, best: float | None) -> bool:
    """True when `value` is a new best against `best` (None: nothing recorded yet)."""
    if not math.isfinite(value):
        return False
    return best is None or value < best * (1.0 - MIN_RELATIVE_IMPROVEMENT)


class BestCheckpoint:
    """Tracks the best evaluation of a run and the evaluations since; reads and writes its file."""

    def __init__(self, model_dir: str | os.PathLike, patience: int | None = None) -> None:
        self.path = Path(model_dir) / BEST_FILE
        self.patience = patience
        self.history: list[tuple[int, float]] = []
        self.best_step: int | None = None
        self.best_value: float | None = None
        self.figures: dict[str, Any] = {}

    # ----------------------------------------------------------------- reading

    @classmethod
    def load(
        cls, model_dir: str | os.PathLike, resumed_step: int, patience: int | None = None
    ) -> BestCheckpoint:
        """The knowledge of `model_dir`'s file, up to and including `resumed_step`.

        A missing file starts afresh; so does an unreadable one, with a warning.
        """
        tracker = cls(model_dir, patience)
        if not tracker.path.is_file():
            return tracker
        try:
            saved = json.loads(tracker.path.read_text(encoding="utf-8"))
            history = [(int(step), float(value)) for step, value in saved["history"]]
            figures = dict(saved.get("figures", {}))
            saved_best = int(saved["step"]) if saved.get("step") is not None else None
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(
                "%s cannot be read (%s): the best checkpoint is chosen anew", tracker.path, error
            )
            return tracker
        kept = [(step, value) for step, value in history if step <= resumed_step]
        if len(kept) < len(history):
            logger.info(
                "%s: forgetting %d evaluations after step %d, where training resumes",
                tracker.path.name,
                len(history) - len(kept),
                resumed_step,
            )
        tracker._rebuild(kept)
        if tracker.best_step is not None:
            tracker.figures = (
                figures
                if tracker.best_step == saved_best
                else {"overall": {CRITERION: tracker.best_value}}
            )
            logger.info(
                "best checkpoint so far: step %d (validation %s %.4g)",
                tracker.best_step,
                CRITERION,
                tracker.best_value,
            )
        return tracker

    # ----------------------------------------------------------------- recording

    def _rebuild(self, history: list[tuple[int, float]]) -> None:
        """Replay `history` from nothing: the best and the count follow from it alone."""
        self.history, self.best_step, self.best_value = [], None, None
        for step, value in history:
            self._add(step, value)

    def _add(self, step: int, value: float) -> bool:
        self.history.append((step, value))
        if improves(value, self.best_value):
            self.best_step, self.best_value = step, value
            return True
        return False

    def record(self, step: int, report: ValidationReport) -> bool:
        """Record the evaluation at `step`, log what changed, rewrite the file; True if new best."""
        if any(seen >= step for seen, _ in self.history):  # evaluated again: replace
            best_before = self.best_step
            self._rebuild([(seen, value) for seen, value in self.history if seen < step])
            if self.best_step != best_before:
                self.figures = {"overall": {CRITERION: self.best_value}}
        previous_step, previous_value = self.best_step, self.best_value
        value = float(getattr(report.overall, CRITERION))
        is_new = self._add(step, value)
        if is_new:
            self.figures = report.to_dict()
            was = (
                ""
                if previous_step is None
                else f" (was {previous_value:.4g} at step {previous_step})"
            )
            logger.info(
                "new best checkpoint G_%d.pth/D_%d.pth: validation %s %.4g%s",
                step,
                step,
                CRITERION,
                value,
                was,
            )
        else:
            logger.info(
                "validation %s %.4g at step %d; the best is still step %s (%.4g), %s",
                CRITERION,
                value,
                step,
                self.best_step,
                math.nan if self.best_value is None else self.best_value,
                self._patience_note(),
            )
        self.write()
        return is_new

    def _patience_note(self) -> str:
        note = f"{self.evaluations_since_best} evaluations without a new best"
        return note if self.patience is None else f"{note} (train.patience {self.patience})"

    def write(self) -> None:
        """Rewrite `best.json` atomically."""
        content = {
            "step": self.best_step,
            "generator": None if self.best_step is None else f"G_{self.best_step}.pth",
            "discriminator": None if self.best_step is None else f"D_{self.best_step}.pth",
            "criterion": CRITERION,
            "figures": self.figures,
            "evaluations_since_best": self.evaluations_since_best,
            "history": [[step, value] for step, value in self.history],
        }
        with atomic_write(self.path) as handle:
            handle.write(json.dumps(content, indent=1).encode("utf-8"))

    # ----------------------------------------------------------------- decisions

    @property
    def evaluations_since_best(self) -> int:
        """Evaluations after the best one (all of them while none was finite)."""
        if self.best_step is None:
            return len(self.history)
        return sum(1 for step, _ in self.history if step > self.best_step)

    def protected_steps(self) -> tuple[int, ...]:
        """Steps whose pair checkpoint rotation must keep: the best one."""
        return () if self.best_step is None else (self.best_step,)

    @property
    def patience_exhausted(self) -> bool:
        """True when `patience` evaluations in a row brought no new best."""
        return self.patience is not None and self.evaluations_since_best >= self.patience

    def stop_reason(self) -> str:
        """Why training stops early, for the log."""
        best = (
            "none was finite"
            if self.best_step is None
            else f"the best is step {self.best_step}, G_{self.best_step}.pth"
        )
        return (
            f"train.patience {self.patience}: {self.evaluations_since_best} evaluations without "
            f"a new best validation {CRITERION} ({best})"
        )
