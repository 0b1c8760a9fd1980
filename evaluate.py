"""Validation figures of a checkpoint, as training logs them under `eval/` in TensorBoard.

    python evaluate.py -c logs/44k/config.json -m logs/44k/G_800.pth
        [-f filelists/val.txt] [--json figures.json] [-d cuda]

Prints a table (all clips, then each speaker with several clips) and, with
`--json`, writes the same figures as JSON. The work is in `evaluation/`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluation.command import main
from preprocessing.runner import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
