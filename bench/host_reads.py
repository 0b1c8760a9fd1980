"""Count host reads of tensor values: each one makes the CPU wait for the device.

Used by the benchmark and by the test that keeps the training step sync-free.
Only Python-level reads are seen (a C++ kernel that reads a value, such as
`torch.arange(tensor)`, is not); on CUDA `torch.cuda.set_sync_debug_mode`
sees those too.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch

HOST_READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy")


@contextlib.contextmanager
def counting_host_reads() -> Iterator[Counter]:
    """Within the block, count calls of every tensor method that hands a value to Python."""
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counter(name: str):
        original = originals[name]

        def counted(self: torch.Tensor, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return counted

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, counter(name))
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
