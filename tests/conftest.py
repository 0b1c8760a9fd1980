"""Suite-wide settings: under pytest-xdist each worker computes on one thread.

`make test` runs two workers on a 2-core machine. Torch's default of a thread
per core in each worker, and in every training process a test starts, would
oversubscribe the cores; one thread each keeps both busy without contention.
"""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the processes a test starts
    torch.set_num_threads(1)
