"""Everything a run needs to continue exactly where it stopped.

Saved in the G checkpoint under the key `train_state` as tensors and plain
Python values only, so `torch.load(weights_only=True)` reads it and upstream
ignores it.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class TrainState:
    """Where a run is: counters, schedule and every rank's random streams."""

    step: int = 0  # global step of the last finished update
    epoch: int = 1
    batches_done_in_epoch: int = 0
    world_size: int = 1
    seed: int = 1234
    scheduler_g: dict[str, Any] = field(default_factory=dict)
    scheduler_d: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    rng_per_rank: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random streams: torch (CPU and the device), Python, numpy."""
    python_version, python_internal, python_gauss = random.getstate()
    numpy_name, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [python_version, list(python_internal), python_gauss],
        "numpy": [
            numpy_name,
            torch.from_numpy(np.asarray(numpy_keys, dtype=np.int64)),
            int(numpy_pos),
            int(numpy_has_gauss),
            float(numpy_gauss),
        ],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Put back what `capture_rng_state` saved."""
    torch.set_rng_state(state["torch"].cpu())
    python_version, python_internal, python_gauss = state["python"]
    random.setstate((python_version, tuple(python_internal), python_gauss))
    numpy_name, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = state["numpy"]
    np.random.set_state(
        (numpy_name, numpy_keys.numpy().astype(np.uint32), numpy_pos, numpy_has_gauss, numpy_gauss)
    )
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
