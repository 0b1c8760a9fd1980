"""Train a so-vits-svc 4.1 voice: `python train.py -c configs/config.json -m 44k`.

Rerunning the same command resumes. The model folder is `./logs/<name>`;
`tensorboard --logdir logs` shows the run. Under `torchrun` every process joins
the launcher's group; otherwise this script starts one process per GPU (or
`--nprocs` CPU processes) itself.

Reading order: `main` (checks, then launch) -> `train_worker` (one process:
build everything, resume, loop over epochs) -> `Trainer.train_step` (one GAN
update, as upstream: discriminator, then generator) -> `Trainer.evaluate` and
`Trainer.save`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from checkpoint import (
    ResumePoint,
    TrainState,
    build_discriminator,
    build_generator,
    capture_rng_state,
    clean_checkpoints,
    discriminator_path,
    find_resume_point,
    generator_path,
    load_checkpoint,
    remove_stale_temp_files,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
)
from core.compilation import compile_enabled, compile_function, compile_in_place
from core.config_schema import validate_config
from core.dataset_check import check_filelists, raise_if_problems
from core.distributed import (
    Runtime,
    StopRequest,
    StopVote,
    broadcast_object,
    count_processes,
    gather_objects,
    init_runtime,
    is_launch_main_process,
    refuse_mismatched_ranks,
    run_fingerprint,
    shutdown,
    spawn_workers,
    torchrun_placement,
)
from core.errors import UserError
from core.hparams import HParams, read_config_json
from core.run_log import get_logger, git_revision, record_git_revision
from core.safe_io import atomic_write
from core.summaries import plot_data_to_numpy, plot_spectrogram_to_numpy, summarize
from data_utils import (
    TextAudioSpeakerLoader,
    make_eval_loader,
    make_train_loader,
)
from modules import commons
from modules.losses import discriminator_loss, feature_loss, generator_loss, kl_loss
from modules.mel_processing import mel_spectrogram_torch, spec_to_mel_torch

logger = logging.getLogger("so-vits-svc")
REPO_DIR = Path(__file__).resolve().parent

MAX_CONSECUTIVE_NONFINITE = 20
# Skipped updates are counted on the device and read at most this many steps apart
# (and at every log step), so a step that does not log never waits for the device.
NONFINITE_CHECK_INTERVAL = 10


@dataclass
class StepOutput:
    """What one training step hands to logging: loss scalars, and tensors to plot."""

    losses: dict[str, torch.Tensor]
    plots: dict[str, torch.Tensor]


class NonFiniteTrainingError(RuntimeError):
    """Losses stayed non-finite: training stops, the last good checkpoint is kept."""


def gan_generator_losses(
    y_d_hat_g: list[torch.Tensor],
    fmap_r: list[list[torch.Tensor]],
    fmap_g: list[list[torch.Tensor]],
    y_mel: torch.Tensor,
    y_hat_mel: torch.Tensor,
    c_mel: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The generator's fixed-shape losses (adversarial, feature matching, weighted mel L1).

    One function so that `train.compile` can fuse them into a few kernels.
    """
    loss_gen, _ = generator_loss(y_d_hat_g)
    loss_fm = feature_loss(fmap_r, fmap_g)
    loss_mel = F.l1_loss(y_mel, y_hat_mel) * c_mel
    return loss_gen, loss_fm, loss_mel


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """`module`'s parameters take no gradient inside: autograd computes none for them.

    The generator's update needs gradients through the discriminator to its
    input, never for the discriminator's weights; upstream computed those and
    DDP all-reduced them every step, only for the next step to zero them.
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


def build_optimizer(parameters: Any, hps: HParams, device: torch.device) -> torch.optim.AdamW:
    """AdamW as upstream, fused into one kernel where the device has one.

    The fused kernel also takes the grad scaler's device-side `found_inf`, so
    a non-finite update is skipped without the host looking at it.
    """
    betas, eps = tuple(hps.train.betas), hps.train.eps
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        parameters,
        hps.train.learning_rate,
        betas=betas,
        eps=eps,
        fused=fused or None,
        foreach=None if fused else True,
    )


def keep_optimizer_fused(optimizer: torch.optim.Optimizer) -> None:
    """Restore the fused flags a loaded state dict (upstream's, say) may have switched off.

    `load_state_dict` takes the saved param groups whole; an unfused group
    would ignore `found_inf` and apply a non-finite update. The fused kernel
    keeps its step counts as float32 on the parameters' device.
    """
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if "step" in state:
                state["step"] = torch.as_tensor(
                    state["step"], dtype=torch.float32, device=parameter.device
                )


def build_grad_scaler(runtime: Runtime) -> torch.amp.GradScaler:
    """A grad scaler for every precision: dynamic for fp16, a fixed scale of 1 otherwise.

    At scale 1 scaling and unscaling are exact, and the scaler's inf check
    gives the optimizer a device-side `found_inf`: non-finite updates are
    skipped on the device in bf16 and float32 too.
    """
    if runtime.uses_grad_scaler:
        return torch.amp.GradScaler(runtime.device.type)
    scaler = torch.amp.GradScaler(runtime.device.type, init_scale=1.0)
    # The constructor insists on a growing scale; these setters do not.
    scaler.set_growth_factor(1.0)
    scaler.set_backoff_factor(1.0)
    return scaler


def poison_if_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """`loss` unchanged when finite; otherwise NaN gradients everywhere, so the update is skipped.

    A NaN loss term without a gradient (a constant) would leave finite
    gradients; multiplying by NaN folds the loss into the scaler's inf check.
    Multiplying by exactly 1.0 keeps finite steps bit-for-bit.
    """
    guard = torch.where(torch.isfinite(loss.detach()), 1.0, float("nan"))
    return loss * guard


# --------------------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", default="./configs/config.json", help="config JSON")
    parser.add_argument("-m", "--model", required=True, help="model name: logs/<name>")
    parser.add_argument(
        "--nprocs",
        type=int,
        default=None,
        help="processes on this machine: caps the GPUs used; CPU processes without GPUs "
        "(default: every GPU, or 1 on the CPU)",
    )
    parser.add_argument(
        "--max_steps",
        type=int,
        default=None,
        help="stop (with a checkpoint) once this global step is done",
    )
    parser.add_argument(
        "--rendezvous_timeout",
        type=float,
        default=300.0,
        help="seconds to wait for every process of a multi-process job to join before "
        "failing with an error (default 300)",
    )
    return parser.parse_args(argv)


def prepare_run(args: argparse.Namespace) -> tuple[HParams, dict[str, Any]]:
    """Check the config and data, make the model folder, copy the config into it.

    Everything a user can get wrong is found here, before any process starts,
    and reported in one error listing every problem.
    """
    raw_config = read_config_json(args.config)
    config, messages = validate_config(raw_config, str(args.config))
    model_dir = Path("logs") / args.model
    model_dir.mkdir(parents=True, exist_ok=True)
    writes = is_launch_main_process()  # global rank 0 under torchrun, on whichever node
    if writes:
        get_logger(model_dir)
    for message in messages:
        level = logging.WARNING if message.startswith("warning") else logging.INFO
        logger.log(level, "%s", message.removeprefix("warning: ").removeprefix("note: "))
    hps = HParams(**config)
    hps.model_dir = str(model_dir)
    raise_if_problems(check_filelists(hps))
    if writes:
        with atomic_write(model_dir / "config.json") as handle:
            handle.write(json.dumps(raw_config, indent=2).encode("utf-8"))
        record_git_revision(REPO_DIR, model_dir)
        for path in remove_stale_temp_files(model_dir):
            logger.info("removed %s, left by a save that was interrupted", path)
    return hps, config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    placement = torchrun_placement()
    try:
        hps, config = prepare_run(args)
        # Fail here, once per folder, if its checkpoints cannot be resumed from.
        # Under torchrun each node may have its own folder (no shared disk): a
        # node whose folder is empty finds nothing, and rank 0 decides later.
        if placement is None or placement.local_rank == 0:
            find_resume_point(hps.model_dir)
        if placement is not None:
            train_worker(
                placement.local_rank,
                config,
                hps.model_dir,
                args.max_steps,
                placement.device_type,
                placement.world_size,
                placement.rank,
                args.rendezvous_timeout,
            )
            return 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    nprocs, device_type = count_processes(args.nprocs)
    if nprocs == 1:
        train_worker(0, config, hps.model_dir, args.max_steps, device_type, 1, 0)
    else:
        logger.info("starting %d %s processes", nprocs, device_type)
        try:
            spawn_workers(
                train_worker,
                nprocs,
                hps.train.port,
                (
                    config,
                    hps.model_dir,
                    args.max_steps,
                    device_type,
                    nprocs,
                    None,
                    args.rendezvous_timeout,
                ),
            )
        except torch.multiprocessing.ProcessException as error:
            print(f"error: a training process failed:{error}", file=sys.stderr)
            return 1
    return 0


# --------------------------------------------------------------------------- one process


def train_worker(
    local_rank: int,
    config: dict[str, Any],
    model_dir: str,
    max_steps: int | None,
    device_type: str,
    world_size: int,
    rank: int | None,
    rendezvous_timeout_s: float = 300.0,
) -> None:
    """One training process: everything from building the models to the last epoch.

    Raises `UserError` when the group cannot meet or its ranks disagree on the
    config or code revision.
    """
    rank = local_rank if rank is None else rank
    hps = HParams(**config)
    hps.model_dir = model_dir
    if rank == 0:
        get_logger(model_dir)
    else:
        logging.getLogger("so-vits-svc").setLevel(logging.WARNING)
    runtime = init_runtime(
        rank,
        local_rank,
        world_size,
        device_type,
        hps.train.fp16_run,
        hps.train.get("half_type", "fp16"),
        rendezvous_timeout_s=rendezvous_timeout_s,
    )
    stop_request = StopRequest()
    stop_request.install()
    try:
        refuse_mismatched_ranks(runtime, run_fingerprint(config, git_revision(REPO_DIR)))
        trainer = Trainer(hps, runtime, stop_request, max_steps)
        trainer.fit()
    finally:
        shutdown(runtime)


class Trainer:
    """The run's state and the steps that change it."""

    def __init__(
        self,
        hps: HParams,
        runtime: Runtime,
        stop_request: StopRequest,
        max_steps: int | None,
    ) -> None:
        self.hps = hps
        self.runtime = runtime
        self.stop_request = stop_request
        self.max_steps = max_steps
        self.model_dir = Path(hps.model_dir)
        seed = int(hps.train.seed)
        # Every rank draws its own crops, dropout and noise; DDP copies rank 0's
        # initial weights to the others.
        torch.manual_seed(seed + runtime.rank)
        random.seed(seed + runtime.rank)
        np.random.seed(seed + runtime.rank)

        self.train_dataset = TextAudioSpeakerLoader(
            hps.data.training_files, hps, all_in_mem=hps.train.get("all_in_mem", False)
        )
        self.train_loader, self.sampler = make_train_loader(
            self.train_dataset, hps, runtime.rank, runtime.world_size, seed, runtime.device.type
        )
        self.eval_loader = None
        if runtime.is_main:
            eval_dataset = TextAudioSpeakerLoader(
                hps.data.validation_files,
                hps,
                all_in_mem=hps.train.get("all_in_mem", False),
                vol_aug=False,
            )
            self.eval_loader = make_eval_loader(eval_dataset, hps, runtime.device.type)
        self.batches_per_epoch = len(self.train_loader)

        device = runtime.device
        self.net_g = build_generator(hps).to(device)
        self.net_d = build_discriminator(hps).to(device)
        self.optim_g = build_optimizer(self.net_g.parameters(), hps, device)
        self.optim_d = build_optimizer(self.net_d.parameters(), hps, device)
        self.scaler = build_grad_scaler(runtime)
        self.state = TrainState(world_size=runtime.world_size, seed=seed)
        self.resume()
        keep_optimizer_fused(self.optim_g)
        keep_optimizer_fused(self.optim_d)
        self.scheduler_g = self._make_scheduler(self.optim_g, self.state.scheduler_g)
        self.scheduler_d = self._make_scheduler(self.optim_d, self.state.scheduler_d)

        self.uses_f0_predictor = bool(self.net_g.use_automatic_f0_prediction)
        self.compiled = compile_enabled(hps.train.get("compile"), device)
        # The generator's update scores audio on the bare discriminator, outside DDP.
        self._discriminator = self.net_d
        self._score_audio = self.net_d.score
        self._discriminator_loss = discriminator_loss
        self._gan_losses = gan_generator_losses
        if self.compiled:
            # The fixed-shape work only; state-dict keys stay as they are.
            compile_in_place(self.net_g.dec)
            compile_in_place(self.net_d)
            self._score_audio = compile_function(self.net_d.score)
            self._discriminator_loss = compile_function(discriminator_loss)
            self._gan_losses = compile_function(gan_generator_losses)
            logger.info("train.compile: decoder, discriminator and GAN losses compiled")
        if runtime.distributed:
            device_ids = [runtime.local_rank] if device.type == "cuda" else None
            # With more than two ranks, find_unused_parameters keeps DDP's gradient
            # buckets as built here. Otherwise DDP rebuilds them after a run's first
            # step, which moves each gradient within its bucket, hence the order in
            # which three or more ranks' values are summed, and a resumed run would
            # drift by rounding from an uninterrupted one. Two ranks' sum does not
            # depend on order, so they keep DDP's cheaper default (no graph walk).
            fixed_buckets = runtime.world_size > 2
            self.net_g = DistributedDataParallel(
                self.net_g, device_ids=device_ids, find_unused_parameters=fixed_buckets
            )
            self.net_d = DistributedDataParallel(
                self.net_d, device_ids=device_ids, find_unused_parameters=fixed_buckets
            )
        self.writer = self.writer_eval = None
        if runtime.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.model_dir))
            self.writer_eval = SummaryWriter(log_dir=str(self.model_dir / "eval"))
        # Counted on the device: the current run of skipped steps, and skips since last read.
        self._nonfinite_run = torch.zeros((), dtype=torch.int64, device=device)
        self._nonfinite_unread = torch.zeros((), dtype=torch.int64, device=device)
        self.stop_vote = StopVote(runtime)
        self.last_saved_step = self.state.step

    @property
    def consecutive_nonfinite(self) -> int:
        """Steps skipped in a row so far (reads the device: not for every step)."""
        return int(self._nonfinite_run)

    @consecutive_nonfinite.setter
    def consecutive_nonfinite(self, value: int) -> None:
        self._nonfinite_run.fill_(value)

    # ----------------------------------------------------------------- resume

    def _make_scheduler(
        self, optimizer: torch.optim.Optimizer, saved: dict[str, Any]
    ) -> torch.optim.lr_scheduler.ExponentialLR:
        """ExponentialLR by `lr_decay` per epoch: restored exactly, or placed as upstream's.

        A saved schedule is rebuilt without touching the optimizer's restored
        learning rate; otherwise, as upstream, the schedule starts at
        `last_epoch = epoch - 2`.
        """
        decay = self.hps.train.lr_decay
        if saved:
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay)
            scheduler.load_state_dict(saved)
            return scheduler
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", self.hps.train.learning_rate)
        return torch.optim.lr_scheduler.ExponentialLR(
            optimizer, gamma=decay, last_epoch=self.state.epoch - 2
        )

    def resume(self) -> None:
        """Continue from the newest usable G/D pair, fine-tune from a base model, or start.

        No shared disk is assumed: each node looks in its own folder, the
        newest pair found on any node is read there and sent to every rank,
        and every rank applies it the same way (`apply_resume_point`).
        """
        point = self._agree_on_resume_point()
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        if restart > 0:
            logger.info(
                "restart %d of the group by torchrun: resuming from %s",
                restart,
                point.g_path.name if point is not None else "the start (no checkpoint yet)",
            )
        self.apply_resume_point(point)

    def _agree_on_resume_point(self) -> ResumePoint | None:
        """The newest resume point of any node's folder, read once and broadcast.

        One process per node (local rank 0) looks in its folder; the rank with
        the newest step (the lowest such rank on a tie) sends what it read. So
        which node the rendezvous makes global rank 0 does not matter.
        """
        runtime = self.runtime
        local = find_resume_point(self.model_dir) if runtime.local_rank == 0 else None
        if not runtime.distributed:
            return local
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
        return broadcast_object(runtime, local, source)

    def apply_resume_point(self, point: ResumePoint | None) -> None:
        """Load `point` into the models, optimizers, scaler and train state of this rank."""
        if point is None:
            logger.info("no checkpoint in %s: starting a new run", self.model_dir)
            self.state.step = -1
            return
        if point.is_base_model:
            logger.info("fine-tuning from the base models %s and %s", point.g_path, point.d_path)
            load_checkpoint(
                point.g_path, self.net_g, self.optim_g, checkpoint=point.g_checkpoint
            )
            load_checkpoint(
                point.d_path, self.net_d, self.optim_d, checkpoint=point.d_checkpoint
            )
            for optimizer in (self.optim_g, self.optim_d):
                for group in optimizer.param_groups:
                    group["lr"] = self.hps.train.learning_rate
                    group["initial_lr"] = self.hps.train.learning_rate
            self.state.step, self.state.epoch = 0, 1
            return
        _, _, _, epoch = load_checkpoint(
            point.g_path, self.net_g, self.optim_g, strict=True, checkpoint=point.g_checkpoint
        )
        load_checkpoint(
            point.d_path, self.net_d, self.optim_d, strict=True, checkpoint=point.d_checkpoint
        )
        saved_state = point.g_checkpoint.get("train_state")
        if isinstance(saved_state, dict):
            self.state = TrainState.from_dict(saved_state)
            if self.state.world_size == self.runtime.world_size and self.state.rng_per_rank:
                restore_rng_state(self.state.rng_per_rank[self.runtime.rank], self.runtime.device)
            else:
                logger.warning(
                    "resuming with %d processes where the checkpoint had %d: training "
                    "continues, but not bit-for-bit as an uninterrupted run",
                    self.runtime.world_size,
                    self.state.world_size,
                )
                if self.state.world_size != self.runtime.world_size:
                    self._resplit_epoch(self.state.world_size)
            if self.state.scaler and self.runtime.uses_grad_scaler:
                self.scaler.load_state_dict(self.state.scaler)
        else:
            # An upstream checkpoint: its epoch, and upstream's next step.
            self.state = TrainState(
                step=point.step,
                epoch=max(1, epoch),
                batches_done_in_epoch=0,
                world_size=self.runtime.world_size,
                seed=self.state.seed,
            )
        logger.info(
            "resuming from %s at step %d, epoch %d",
            point.g_path.name,
            self.state.step,
            self.state.epoch,
        )

    def _resplit_epoch(self, saved_world_size: int) -> None:
        """Carry the epoch's progress over to a group of another size.

        Every world size walks the same per-epoch permutation, rank r taking
        positions r, r + R, ...: after b batches of B items on each of R_old
        ranks the first b * B * R_old positions are done, so each of R_new
        ranks skips b * R_old // R_new batches (a few items at the border may
        be seen twice, none skipped unseen).
        """
        done = self.state.batches_done_in_epoch
        carried = min(done * saved_world_size // self.runtime.world_size, self.batches_per_epoch)
        logger.info(
            "the group changed from %d to %d processes: the data is now split %d ways; "
            "epoch %d continues after %d of its %d batches per process",
            saved_world_size,
            self.runtime.world_size,
            self.runtime.world_size,
            self.state.epoch,
            carried,
            self.batches_per_epoch,
        )
        self.state.batches_done_in_epoch = carried

    # ----------------------------------------------------------------- mels

    def spec_to_mel(self, spec: torch.Tensor) -> torch.Tensor:
        """Mel of a linear spectrogram, with the config's mel settings."""
        data = self.hps.data
        return spec_to_mel_torch(
            spec,
            data.filter_length,
            data.n_mel_channels,
            data.sampling_rate,
            data.mel_fmin,
            data.mel_fmax,
        )

    def audio_to_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Mel of generated (B, 1, T) audio, in float32 as upstream computes it."""
        data = self.hps.data
        return mel_spectrogram_torch(
            audio.squeeze(1).float(),
            data.filter_length,
            data.n_mel_channels,
            data.sampling_rate,
            data.hop_length,
            data.win_length,
            data.mel_fmin,
            data.mel_fmax,
        )

    # ----------------------------------------------------------------- loop

    def fit(self) -> None:
        """Run epochs until `train.epochs`, `--max_steps`, a stop signal, or a failure."""
        hps, state = self.hps, self.state
        if self.max_steps is not None and state.step >= self.max_steps:
            logger.info(
                "step %d already reaches --max_steps %d: nothing to do", state.step, self.max_steps
            )
            return
        warmup_epochs = hps.train.get("warmup_epochs", 0)
        start_epoch = state.epoch
        for epoch in range(start_epoch, hps.train.epochs + 1):
            state.epoch = epoch
            if epoch <= warmup_epochs:
                warm_lr = hps.train.learning_rate / warmup_epochs * epoch
                for optimizer in (self.optim_g, self.optim_d):
                    for group in optimizer.param_groups:
                        group["lr"] = warm_lr
            skip = state.batches_done_in_epoch if epoch == start_epoch else 0
            finished = self.train_epoch(epoch, skip)
            if not finished:
                return
            self.scheduler_g.step()
            self.scheduler_d.step()
            state.epoch, state.batches_done_in_epoch = epoch + 1, 0
        # Upstream stops without saving the last steps; keep them.
        if self.last_saved_step != state.step:
            self.save()
        if self.runtime.is_main:
            logger.info("finished %d epochs at step %d", hps.train.epochs, state.step)

    def train_epoch(self, epoch: int, skip_batches: int) -> bool:
        """One pass over this rank's share; False when training must stop early."""
        self.sampler.set_epoch(epoch, skip=skip_batches * self.hps.train.batch_size)
        started = time.time()
        progress = None
        if self.runtime.is_main:
            from tqdm import tqdm

            progress = tqdm(
                total=self.batches_per_epoch,
                initial=skip_batches,
                desc=f"epoch {epoch}",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        batch_index = skip_batches
        for batch in self.train_loader:
            self.state.step += 1
            self.state.batches_done_in_epoch = batch_index + 1
            output = self.train_step(batch)
            step = self.state.step
            if self.runtime.is_main and step % self.hps.train.log_interval == 0:
                self.log_training(epoch, batch_index, output)
            stop = self.stop_vote.poll(self.stop_request.requested)
            at_limit = self.max_steps is not None and step >= self.max_steps
            if step % self.hps.train.eval_interval == 0 or stop or at_limit:
                if self.runtime.is_main and step % self.hps.train.eval_interval == 0:
                    self.evaluate()
                self.save()
            if progress is not None:
                progress.update(1)
            batch_index += 1
            if stop or at_limit:
                self.stop_vote.close()
                if progress is not None:
                    progress.close()
                reason = (
                    f"{self.stop_request.signal_name or 'stop'} received"
                    if stop
                    else f"reached --max_steps {self.max_steps}"
                )
                logger.info("%s: saved step %d, exiting", reason, step)
                return False
        if progress is not None:
            progress.close()
        if self.runtime.is_main:
            logger.info("====> Epoch: %d, cost %.2f s", epoch, time.time() - started)
        return True

    def train_step(self, batch: tuple) -> StepOutput:
        """One GAN update on one batch, in upstream's order: D step, then G step."""
        hps, runtime = self.hps, self.runtime
        c, f0, spec, y, speaker, lengths, uv, volume = (runtime.to_device(item) for item in batch)
        mel = self.spec_to_mel(spec)
        with runtime.autocast():
            (
                y_hat,
                ids_slice,
                z_mask,
                (_z, z_p, m_p, logs_p, _m_q, logs_q),
                pred_lf0,
                norm_lf0,
                lf0,
            ) = self.net_g(
                c, f0, uv, spec, g=speaker, c_lengths=lengths, spec_lengths=lengths, vol=volume
            )
            y_mel = commons.slice_segments(
                mel, ids_slice, hps.train.segment_size // hps.data.hop_length
            )
            y_hat_mel = self.audio_to_mel(y_hat)
            y = commons.slice_segments(y, ids_slice * hps.data.hop_length, hps.train.segment_size)
            y_d_hat_r, y_d_hat_g, _, _ = self.net_d(y, y_hat.detach())
            with runtime.autocast(enabled=False):
                loss_disc, _, _ = self._discriminator_loss(y_d_hat_r, y_d_hat_g)
        grad_norm_d = self._optimizer_step(self.optim_d, self.net_d, loss_disc)

        # The same discriminator, outside DDP: this backward reaches no D weight.
        with runtime.autocast(), frozen(self._discriminator):
            with torch.no_grad():  # the real side enters the losses detached
                _, fmap_r = self._score_audio(y)
            y_d_hat_g, fmap_g = self._score_audio(y_hat)
            with runtime.autocast(enabled=False):
                loss_gen, loss_fm, loss_mel = self._gan_losses(
                    y_d_hat_g, fmap_r, fmap_g, y_mel, y_hat_mel, hps.train.c_mel
                )
                loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * hps.train.c_kl
                loss_lf0 = (
                    F.mse_loss(pred_lf0, lf0)
                    if self.uses_f0_predictor
                    else torch.zeros((), device=runtime.device)
                )
                loss_gen_all = loss_gen + loss_fm + loss_mel + loss_kl + loss_lf0
        grad_norm_g = self._optimizer_step(self.optim_g, self.net_g, loss_gen_all)
        self.scaler.update()
        self._count_nonfinite(grad_norm_d, grad_norm_g)
        if self._is_check_step():
            self._check_nonfinite()
        losses = {
            "loss/g/total": loss_gen_all,
            "loss/d/total": loss_disc,
            "loss/g/gen": loss_gen,
            "loss/g/fm": loss_fm,
            "loss/g/mel": loss_mel,
            "loss/g/kl": loss_kl,
            "loss/g/lf0": loss_lf0,
            "grad_norm_d": grad_norm_d,
            "grad_norm_g": grad_norm_g,
        }
        plots = {
            "y_mel": y_mel,
            "y_hat_mel": y_hat_mel,
            "mel": mel,
            "lf0": lf0,
            "pred_lf0": pred_lf0,
            "norm_lf0": norm_lf0,
        }
        return StepOutput(
            losses={name: value.detach() for name, value in losses.items()},
            plots={
                name: value.detach()
                for name, value in plots.items()
                if isinstance(value, torch.Tensor)
            },
        )

    def _optimizer_step(
        self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor
    ) -> torch.Tensor:
        """Backward, unscale, measure the gradient norm, and step unless something is not finite.

        Nothing here reads a value on the host. A non-finite loss poisons the
        gradients; the scaler's device-side inf check then makes the (fused)
        optimizer skip the update. Under DDP the gradients are averaged before
        the check, so every rank skips the same update with no extra
        collective. Returns the norm, non-finite when the update was skipped.
        """
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(poison_if_nonfinite(loss)).backward()
        self.scaler.unscale_(optimizer)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        self.scaler.step(optimizer)
        return grad_norm.detach()

    def _count_nonfinite(self, grad_norm_d: torch.Tensor, grad_norm_g: torch.Tensor) -> None:
        """Count skipped updates on the device (fp16 overflow is the scaler's business)."""
        if self.runtime.uses_grad_scaler:
            return
        skipped = ~(torch.isfinite(grad_norm_d) & torch.isfinite(grad_norm_g))
        self._nonfinite_run = torch.where(skipped, self._nonfinite_run + 1, 0)
        self._nonfinite_unread += skipped

    def _is_check_step(self) -> bool:
        step = self.state.step
        return step % NONFINITE_CHECK_INTERVAL == 0 or step % self.hps.train.log_interval == 0

    def _check_nonfinite(self) -> None:
        """Read the skip counters (one transfer), warn, and stop after too many in a row."""
        if self.runtime.uses_grad_scaler:
            return
        run, unread = torch.stack((self._nonfinite_run, self._nonfinite_unread)).tolist()
        if unread == 0:
            return
        self._nonfinite_unread.zero_()
        if run > 0:
            logger.warning(
                "step %d: non-finite loss or gradient, update skipped (%d in a row)",
                self.state.step,
                run,
            )
        if unread > run:
            logger.warning(
                "step %d: %d updates with non-finite losses or gradients skipped since the "
                "last check",
                self.state.step,
                unread,
            )
        if run >= MAX_CONSECUTIVE_NONFINITE:
            raise NonFiniteTrainingError(
                f"{MAX_CONSECUTIVE_NONFINITE} steps in a row had non-finite losses: training "
                "stopped; the last checkpoint is untouched. Lower the learning rate, check the "
                "data, or use fp32"
            )

    # ----------------------------------------------------------------- logging

    def log_training(self, epoch: int, batch_index: int, output: StepOutput) -> None:
        """One log line and TensorBoard scalars/images under upstream's tags.

        Everything read from the device (every loss and the first item of each
        plotted tensor) comes over in one transfer.
        """
        losses, plots = output.losses, output.plots
        plot_names = ["y_mel", "y_hat_mel", "mel"]
        if self.uses_f0_predictor:
            plot_names += ["lf0", "pred_lf0", "norm_lf0"]
        firsts = [plots[name][0].float() for name in plot_names]
        loss_names = list(losses)
        packed = torch.cat(
            [torch.stack([losses[name].float() for name in loss_names])]
            + [first.flatten() for first in firsts]
        )
        host = packed.cpu().numpy()
        values = dict(zip(loss_names, host[: len(loss_names)].tolist()))
        arrays: dict[str, np.ndarray] = {}
        offset = len(loss_names)
        for name, first in zip(plot_names, firsts):
            arrays[name] = host[offset : offset + first.numel()].reshape(tuple(first.shape))
            offset += first.numel()

        learning_rate = self.optim_g.param_groups[0]["lr"]
        scalars = {tag: value for tag, value in values.items() if tag != "loss/g/gen"}
        scalars["learning_rate"] = learning_rate
        progress = 100.0 * batch_index / max(1, self.batches_per_epoch)
        logger.info(
            "Train Epoch: %d [%.0f%%] step %d lr %.3g | d %.3f g %.3f fm %.3f mel %.3f kl %.3f "
            "lf0 %.4f",
            epoch,
            progress,
            self.state.step,
            learning_rate,
            scalars["loss/d/total"],
            values["loss/g/gen"],
            scalars["loss/g/fm"],
            scalars["loss/g/mel"],
            scalars["loss/g/kl"],
            scalars["loss/g/lf0"],
        )
        images = {
            "slice/mel_org": plot_spectrogram_to_numpy(arrays["y_mel"]),
            "slice/mel_gen": plot_spectrogram_to_numpy(arrays["y_hat_mel"]),
            "all/mel": plot_spectrogram_to_numpy(arrays["mel"]),
        }
        if self.uses_f0_predictor:
            lf0 = arrays["lf0"][0]
            images["all/lf0"] = plot_data_to_numpy(lf0, arrays["pred_lf0"][0])
            images["all/norm_lf0"] = plot_data_to_numpy(lf0, arrays["norm_lf0"][0])
        summarize(self.writer, self.state.step, scalars=scalars, images=images)

    # ----------------------------------------------------------------- eval and save

    def evaluate(self) -> None:
        """Convert the validation clips (rank 0) into `<model_dir>/eval` for TensorBoard.

        `infer` draws from its own seeded generator and the eval loader has its
        own, so evaluation leaves the training random streams where they were.
        """
        hps, device = self.hps, self.runtime.device
        generator = unwrap_model(self.net_g)
        generator.eval()
        audios: dict[str, torch.Tensor] = {}
        images: dict[str, Any] = {}
        with torch.no_grad():
            for index, batch in enumerate(self.eval_loader):
                c, f0, spec, y, speaker, _, uv, volume = batch
                spec, y = spec[:1].to(device), y[:1].to(device)
                volume = volume[:1].to(device) if volume is not None else None
                y_hat, _ = generator.infer(
                    c[:1].to(device),
                    f0[:1].to(device),
                    uv[:1].to(device),
                    g=speaker[:1].to(device),
                    vol=volume,
                )
                mel = self.spec_to_mel(spec)
                y_hat_mel = self.audio_to_mel(y_hat)
                audios[f"gen/audio_{index}"] = y_hat[0].float().cpu()
                audios[f"gt/audio_{index}"] = y[0].float().cpu()
                images = {
                    "gen/mel": plot_spectrogram_to_numpy(y_hat_mel[0].cpu().numpy()),
                    "gt/mel": plot_spectrogram_to_numpy(mel[0].cpu().numpy()),
                }
        summarize(
            self.writer_eval,
            self.state.step,
            images=images,
            audios=audios,
            audio_sampling_rate=hps.data.sampling_rate,
        )
        self.writer_eval.flush()
        generator.train()

    def save(self) -> None:
        """Write `G_<step>.pth` and `D_<step>.pth` (rank 0), then prune old pairs.

        Every rank contributes its random state. Weights with NaN are never
        saved; G is written before D, each atomically, so a kill leaves at worst
        an unpaired G that resume skips.
        """
        rng_states = gather_objects(self.runtime, capture_rng_state(self.runtime.device))
        self.last_saved_step = self.state.step
        if not self.runtime.is_main:
            return
        for name, model in (("G", self.net_g), ("D", self.net_d)):
            if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
                raise NonFiniteTrainingError(
                    f"{name} has non-finite weights at step {self.state.step}: not saved; the "
                    "last checkpoint is untouched. Lower the learning rate or use fp32"
                )
        self.state.world_size = self.runtime.world_size
        self.state.scheduler_g = self.scheduler_g.state_dict()
        self.state.scheduler_d = self.scheduler_d.state_dict()
        self.state.scaler = self.scaler.state_dict() if self.runtime.uses_grad_scaler else {}
        self.state.rng_per_rank = rng_states
        step, epoch, lr = self.state.step, self.state.epoch, self.hps.train.learning_rate
        save_checkpoint(
            self.net_g,
            self.optim_g,
            lr,
            epoch,
            generator_path(self.model_dir, step),
            extra={"train_state": self.state.to_dict()},
            config=self.hps,
        )
        d_path = discriminator_path(self.model_dir, step)
        save_checkpoint(self.net_d, self.optim_d, lr, epoch, d_path)
        removed = clean_checkpoints(self.model_dir, self.hps.train.get("keep_ckpts", 0))
        for path in removed:
            logger.info("removed old checkpoint %s", path)
        if self.writer is not None:
            self.writer.flush()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NonFiniteTrainingError as error:
        sys.exit(_fail(str(error)))
    except KeyboardInterrupt:
        sys.exit(130)
