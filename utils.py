"""Upstream so-vits-svc's `utils` names, for scripts that import them from here.

This module only re-exports; each name lives in its own home:
- configs: `core.hparams` (`HParams`, `get_hparams`, `get_hparams_from_file`);
- the checkpoint format: the `checkpoint` package (`load_checkpoint`,
  `save_checkpoint`, `latest_checkpoint_path`, `clean_checkpoints`, ...);
- the run log and code revision: `core.run_log`;
- TensorBoard figures and summaries: `core.summaries`.
"""

from checkpoint import (
    clean_checkpoints,
    latest_checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from core.hparams import HParams, get_hparams, get_hparams_from_file
from core.run_log import get_logger
from core.summaries import plot_data_to_numpy, plot_spectrogram_to_numpy, summarize

__all__ = [
    "HParams",
    "clean_checkpoints",
    "get_hparams",
    "get_hparams_from_file",
    "get_logger",
    "latest_checkpoint_path",
    "load_checkpoint",
    "plot_data_to_numpy",
    "plot_spectrogram_to_numpy",
    "save_checkpoint",
    "summarize",
]
