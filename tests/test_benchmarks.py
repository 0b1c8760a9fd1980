"""The benchmarks run and print their figures (nothing here is timed: speed is theirs to show)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from diffusion.config import INFER_METHODS

REPO = Path(__file__).resolve().parent.parent


def test_bench_diff_prints_every_sampler_and_a_step_without_host_reads() -> None:
    tiny = ["--n_layers", "1", "--n_chans", "8", "--n_hidden", "8", "--seconds", "0.3",
            "--speedup", "50", "--batch_size", "2", "--train_seconds", "0.3", "--steps", "1",
            "--warmup", "1"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_diff.py"), *tiny],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for method in INFER_METHODS:
        row = next(line.split() for line in lines if line.split()[:1] == [method])
        assert all(float(figure) > 0 for figure in row[1:]) and len(row) == 3, row
    assert re.search(r"project step +[0-9.]+ samples/s", done.stdout)
    assert re.search(r"ratio \(project / bare\) [0-9.]+", done.stdout)
    assert "host reads per step 0" in done.stdout
