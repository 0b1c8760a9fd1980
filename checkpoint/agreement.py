"""Which checkpoint a job resumes from, agreed by every rank on every machine, and its run state.

No shared disk is assumed: one process per node (local rank 0) looks in its
own model folder, the newest resume point found on any node is read there and
sent to every rank, so which node the rendezvous makes global rank 0 does not
matter. Then each rank restores its own random streams, or, when the group
changed size, the epoch's progress is re-split for the new size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from checkpoint.resume import ResumePoint, find_resume_point
from checkpoint.train_state import TrainState, restore_rng_state
from core.distributed import Runtime, broadcast_object, gather_objects

logger = logging.getLogger("so-vits-svc")


def agree_on_resume_point(
    runtime: Runtime,
    model_dir: str | Path,
    find: Callable[[str | Path], Any] = find_resume_point,
) -> ResumePoint | Any | None:
    """The newest resume point of any node's folder, read once and broadcast to every rank.

    The rank with the newest step (the lowest such rank on a tie) sends what
    it read. Under torchrun's restarts the log says which restart this is.
    `find` reads one folder's resume point (anything with `step` and `name`):
    the synthesizer's G/D pairs by default, the diffusion model's `model_<step>.pt`.
    """
    local = find(model_dir) if runtime.local_rank == 0 else None
    point = local
    if runtime.distributed:
        steps = gather_objects(runtime, None if local is None else local.step)
        found = [(step, -rank) for rank, step in enumerate(steps) if step is not None]
        if not found:
            return None
        step, source = max(found)
        source = -source
        if source != 0:
            logger.info(
                "step %d was found by rank %d (global rank 0's folder has %s): it sends the "
                "checkpoint to every process",
                step,
                source,
                "nothing newer" if steps[0] is None else f"step {steps[0]}",
            )
        point = broadcast_object(runtime, local, source)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restart > 0:
        logger.info(
            "restart %d of the group by torchrun: resuming from %s",
            restart,
            point.name if point is not None else "the start (no checkpoint yet)",
        )
    return point


def restore_train_state(saved: dict, runtime: Runtime, batches_per_epoch: int) -> TrainState:
    """The saved run state, this rank's random streams restored, fitted to this group's size.

    With the same number of processes the run continues bit for bit. With
    another, every world size walks the same per-epoch permutation, rank r
    taking positions r, r + R, ...: after b batches on each of R_old ranks,
    each of R_new ranks skips b * R_old // R_new batches (a few items at the
    border may be seen twice, none skipped unseen).
    """
    state = TrainState.from_dict(saved)
    if state.world_size == runtime.world_size and state.rng_per_rank:
        restore_rng_state(state.rng_per_rank[runtime.rank], runtime.device)
        return state
    logger.warning(
        "resuming with %d processes where the checkpoint had %d: training continues, but not "
        "bit-for-bit as an uninterrupted run",
        runtime.world_size,
        state.world_size,
    )
    if state.world_size != runtime.world_size:
        carried = min(
            state.batches_done_in_epoch * state.world_size // runtime.world_size,
            batches_per_epoch,
        )
        logger.info(
            "the group changed from %d to %d processes: the data is now split %d ways; "
            "epoch %d continues after %d of its %d batches per process",
            state.world_size,
            runtime.world_size,
            runtime.world_size,
            state.epoch,
            carried,
            batches_per_epoch,
        )
        state.batches_done_in_epoch = carried
    return state
