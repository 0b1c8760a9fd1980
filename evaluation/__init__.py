"""Validation figures, the best checkpoint, and when to stop training.

- `figures`: convert and reconstruct every validation clip; mel distances,
  pitch accuracy, per speaker; TensorBoard scalars, a table, JSON.
- `pitch_accuracy`: cents and voicing errors of converted audio.
- `best`: the best checkpoint so far (`best.json`) and `train.patience`.
- `command`: `evaluate.py`, the same figures for any `G_*.pth` and filelist.
"""

from evaluation.best import BEST_FILE, BestCheckpoint
from evaluation.figures import Figures, ValidationReport, evaluate_generator

__all__ = ["BEST_FILE", "BestCheckpoint", "Figures", "ValidationReport", "evaluate_generator"]
