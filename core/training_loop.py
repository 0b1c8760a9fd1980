"""The epoch loop every trainer of this project runs: steps, logging, evaluation, saving, stopping.

A trainer (the synthesizer's in `train.py`, the diffusion model's) subclasses
`EpochLoop` and supplies what is its own: `train_step`, `log_training`,
`evaluate`, `save`, and what happens at an epoch's start and end (warmup,
schedules). The loop supplies the rest, the same for every model: exact
resume in the middle of an epoch, the stop vote that lets every rank stop
at the same step after SIGTERM/Ctrl-C, `--max_steps`, and the progress bar.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from checkpoint import TrainState
from core.distributed import Runtime, StopVote
from core.lifecycle import StopRequest

logger = logging.getLogger("so-vits-svc")


@dataclass(frozen=True)
class LoopSettings:
    """How long to train and how often to log and evaluate (in global steps)."""

    epochs: int
    log_interval: int
    eval_interval: int
    batch_size: int  # per process


class EpochLoop:
    """Runs epochs of `train_step` until the last epoch, `max_steps`, a stop signal or a failure.

    A subclass sets, before `fit`: `runtime`, `state` (a `TrainState`),
    `train_loader` and its `sampler` (with `set_epoch(epoch, skip=items)`),
    `stop_request`, `stop_vote`, `max_steps`, `loop` (`LoopSettings`) and
    `last_saved_step`.
    """

    runtime: Runtime
    state: TrainState
    train_loader: torch.utils.data.DataLoader
    sampler: Any
    stop_request: StopRequest
    stop_vote: StopVote
    max_steps: int | None
    loop: LoopSettings
    last_saved_step: int

    # ----------------------------------------------------------------- the model's part

    def train_step(self, batch: Any) -> Any:
        """One update on `batch`; returns what `log_training` needs (device tensors)."""
        raise NotImplementedError

    def log_training(self, epoch: int, batch_index: int, output: Any) -> None:
        """Log one step (main process, every `log_interval` steps)."""
        raise NotImplementedError

    def evaluate(self) -> None:
        """Evaluate on the validation set (main process, every `eval_interval` steps)."""
        raise NotImplementedError

    def save(self) -> None:
        """Write a checkpoint of the whole run state (every process takes part)."""
        raise NotImplementedError

    def stop_reason_after_evaluation(self) -> str | None:
        """After an evaluation and its save: a reason to stop early (every rank alike), or None."""
        return None

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch (a warmup learning rate, say)."""

    def end_epoch(self, epoch: int) -> None:
        """Called after each finished epoch (a per-epoch schedule, say)."""

    # ----------------------------------------------------------------- the loop

    @property
    def batches_per_epoch(self) -> int:
        return len(self.train_loader)

    def fit(self) -> None:
        """Train from `state` to the last epoch; save the last steps if they are not saved yet."""
        state = self.state
        if self.max_steps is not None and state.step >= self.max_steps:
            logger.info(
                "step %d already reaches --max_steps %d: nothing to do", state.step, self.max_steps
            )
            return
        start_epoch = state.epoch
        for epoch in range(start_epoch, self.loop.epochs + 1):
            state.epoch = epoch
            self.start_epoch(epoch)
            skip = state.batches_done_in_epoch if epoch == start_epoch else 0
            if not self.train_epoch(epoch, skip):
                return
            self.end_epoch(epoch)
            state.epoch, state.batches_done_in_epoch = epoch + 1, 0
        # The last step's vote is still in flight: leaving the group under it aborts the
        # process (gloo's thread is torn down mid-work), after training had succeeded.
        self.stop_vote.close()
        # Upstream stops without saving the last steps; keep them.
        if self.last_saved_step != state.step:
            self.save()
        if self.runtime.is_main:
            logger.info("finished %d epochs at step %d", self.loop.epochs, state.step)

    def train_epoch(self, epoch: int, skip_batches: int) -> bool:
        """One pass over this rank's share; False when training must stop early."""
        self.sampler.set_epoch(epoch, skip=skip_batches * self.loop.batch_size)
        started = time.time()
        with self._progress_bar(epoch, skip_batches) as progress:
            for batch_index, batch in enumerate(self.train_loader, start=skip_batches):
                self.state.step += 1
                self.state.batches_done_in_epoch = batch_index + 1
                output = self.train_step(batch)
                if self.runtime.is_main and self.state.step % self.loop.log_interval == 0:
                    self.log_training(epoch, batch_index, output)
                stop_reason = self._after_step()
                progress.update(1)
                if stop_reason:
                    logger.info("%s: saved step %d, exiting", stop_reason, self.state.step)
                    return False
        if self.runtime.is_main:
            logger.info("====> Epoch: %d, cost %.2f s", epoch, time.time() - started)
        return True

    def _after_step(self) -> str | None:
        """Evaluate and save when due; the reason to stop now, if any."""
        step = self.state.step
        stop = self.stop_vote.poll(self.stop_request.requested)
        at_limit = self.max_steps is not None and step >= self.max_steps
        due = step % self.loop.eval_interval == 0
        if due or stop or at_limit:
            if due and self.runtime.is_main:
                self.evaluate()
            self.save()
        early = self.stop_reason_after_evaluation() if due else None
        if not (stop or at_limit or early):
            return None
        self.stop_vote.close()
        if stop:
            return f"{self.stop_request.signal_name or 'stop'} received"
        if at_limit:
            return f"reached --max_steps {self.max_steps}"
        return early

    def _progress_bar(self, epoch: int, done: int) -> Any:
        """The epoch's tqdm bar on the main process (closed on any exit), a stand-in elsewhere."""
        from tqdm import tqdm

        return tqdm(
            total=self.batches_per_epoch,
            initial=done,
            desc=f"epoch {epoch}",
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
            disable=not self.runtime.is_main,
        )
