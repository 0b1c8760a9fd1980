"""Train a so-vits-svc 4.1 voice: `python train.py -c configs/config.json -m 44k`.

Rerunning the same command resumes; `tensorboard --logdir logs` shows the run.
Top to bottom: the checks before anything starts, the launch (torchrun, or one
process per GPU / `--nprocs` CPU processes), then `Trainer`: building, resuming,
one GAN step in three parts (generator forward, D update, G update), logging,
evaluation, saving. The epoch loop, launching, the optimizer step and the resume
agreement are shared with train_diff.py (core/training_loop.py, core/launching.py,
core/optimization.py, checkpoint/agreement.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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
    save_checkpoint,
    unwrap_model,
)
from checkpoint.agreement import agree_on_resume_point, restore_train_state
from core.compilation import compile_enabled, compile_function, compile_in_place
from core.config_schema import validate_config
from core.dataset_check import check_filelists, raise_if_problems
from core.distributed import Runtime, StopVote, broadcast_object, gather_objects, wrap_ddp
from core.hparams import HParams, read_config_json
from core.launching import (
    Job,
    add_launch_arguments,
    is_launch_main_process,
    joined_group,
    launch,
    torchrun_placement,
)
from core.lifecycle import StopRequest, run_main
from core.optimization import (
    NonFiniteGuard,
    build_grad_scaler,
    build_optimizer,
    exponential_schedule,
    frozen,
    keep_optimizer_fused,
    optimizer_step,
    require_finite_weights,
    set_learning_rate,
)
from core.run_log import open_model_dir, record_run
from core.summaries import (
    open_writers,
    plot_data_to_numpy,
    plot_spectrogram_to_numpy,
    read_to_host,
    summarize,
)
from core.training_loop import EpochLoop, LoopSettings
from data_utils import TextAudioSpeakerLoader, make_eval_loader, make_train_loader
from evaluation import BestCheckpoint, evaluate_generator
from modules import commons
from modules.losses import discriminator_loss, gan_generator_losses, kl_loss
from modules.mel_processing import audio_to_config_mel, spec_to_config_mel

logger = logging.getLogger("so-vits-svc")
REPO_DIR = Path(__file__).resolve().parent
# The log line's losses: (short name, tag, decimals), in upstream's order.
LOG_LINE = (
    ("d", "loss/d/total", 3), ("g", "loss/g/gen", 3), ("fm", "loss/g/fm", 3),
    ("mel", "loss/g/mel", 3), ("kl", "loss/g/kl", 3), ("lf0", "loss/g/lf0", 4),
)  # fmt: skip
PLOTTED = ("y_mel", "y_hat_mel", "mel", "lf0", "pred_lf0", "norm_lf0")


@dataclass
class StepOutput:
    """What one training step hands to logging: loss scalars, and tensors to plot."""

    losses: dict[str, torch.Tensor]
    plots: dict[str, torch.Tensor]


@dataclass
class GeneratorOutput:
    """The generator's forward on a batch, with the real and generated slices it is judged on."""

    y: torch.Tensor  # the real audio slice
    y_hat: torch.Tensor  # the generated audio slice
    y_mel: torch.Tensor  # the real slice's mel
    y_hat_mel: torch.Tensor  # the generated slice's mel
    mel: torch.Tensor  # the whole clips' mels (for plots)
    z_mask: torch.Tensor
    z_p: torch.Tensor
    m_p: torch.Tensor
    logs_p: torch.Tensor
    logs_q: torch.Tensor
    pred_lf0: torch.Tensor | None
    norm_lf0: torch.Tensor | None
    lf0: torch.Tensor | None


# --------------------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", default="./configs/config.json", help="config JSON")
    parser.add_argument("-m", "--model", required=True, help="model name: logs/<name>")
    add_launch_arguments(parser)
    return parser.parse_args(argv)


def prepare_run(args: argparse.Namespace) -> tuple[HParams, dict[str, Any]]:
    """Check the config and data, make the model folder, copy the config into it.

    Everything a user can get wrong is found here, before any process starts,
    and reported in one error listing every problem.
    """
    raw_config = read_config_json(args.config)
    config, messages = validate_config(raw_config, str(args.config))
    model_dir = Path("logs") / args.model
    writes = is_launch_main_process()  # global rank 0 under torchrun, on whichever node
    open_model_dir(model_dir, writes, messages)
    hps = HParams(**config)
    hps.model_dir = str(model_dir)
    raise_if_problems(check_filelists(hps))
    if writes:
        record_run(model_dir, json.dumps(raw_config, indent=2), "config.json", REPO_DIR)
        for path in remove_stale_temp_files(model_dir):
            logger.info("removed %s, left by a save that was interrupted", path)
    return hps, config


def main(argv: list[str] | None = None) -> int:
    """The command line: check, launch, train; return the exit code.

    Errors a user can fix become one line (exit 2) in whichever process meets
    them; a data worker that died is one line too (exit 1); see `core.lifecycle`.
    """
    return run_main(lambda: _check_and_launch(parse_args(argv)))


def _check_and_launch(args: argparse.Namespace) -> int:
    hps, config = prepare_run(args)
    # Fail here, once per folder, if its checkpoints cannot be resumed from.
    # Under torchrun each node may have its own folder (no shared disk): a
    # node whose folder is empty finds nothing, and rank 0 decides later.
    placement = torchrun_placement()
    if placement is None or placement.local_rank == 0:
        find_resume_point(hps.model_dir)
    job = Job(
        config, hps.model_dir, bool(hps.train.fp16_run), hps.train.half_type,
        max_steps=args.max_steps, rendezvous_timeout_s=args.rendezvous_timeout,
        code_dir=str(REPO_DIR),
    )  # fmt: skip
    return launch(train_worker, job, args.nprocs, hps.train.port)


def train_worker(local_rank: int, job: Job) -> None:
    """One training process: join the group, build everything, resume, train to the end."""
    hps = HParams(**job.config)
    hps.model_dir = job.model_dir
    with joined_group(local_rank, job) as (runtime, stop_request):
        Trainer(hps, runtime, stop_request, job.max_steps).fit()


# --------------------------------------------------------------------------- the trainer


class Trainer(EpochLoop):
    """The synthesizer's run: its data, networks, optimizers and state, and the GAN step."""

    def __init__(
        self, hps: HParams, runtime: Runtime, stop_request: StopRequest, max_steps: int | None
    ) -> None:
        self.hps, self.runtime = hps, runtime
        self.stop_request, self.max_steps = stop_request, max_steps
        self.model_dir = Path(hps.model_dir)
        train = hps.train
        self.loop = LoopSettings(
            train.epochs, train.log_interval, train.eval_interval, train.batch_size
        )
        # Every rank draws its own crops, dropout and noise; DDP copies rank 0's
        # initial weights to the others.
        seed = int(train.seed)
        for seed_stream in (torch.manual_seed, random.seed, np.random.seed):
            seed_stream(seed + runtime.rank)
        self._build_data(seed)
        self._build_models(seed)
        self.resume()
        # Rank 0 evaluates, keeps the best pair from rotation and decides on patience.
        self.best = (
            BestCheckpoint.load(self.model_dir, self.state.step, train.patience)
            if runtime.is_main else None
        )  # fmt: skip
        self._prepare_step()
        self.writer, self.writer_eval = open_writers(self.model_dir, runtime.is_main)
        self.nonfinite = NonFiniteGuard(runtime, train.log_interval)
        self.stop_vote = StopVote(runtime)
        self.last_saved_step = self.state.step

    def _build_data(self, seed: int) -> None:
        """This rank's share of the training set, and the validation set on the main process."""
        hps, runtime = self.hps, self.runtime
        all_in_mem = hps.train.all_in_mem
        self.train_dataset = TextAudioSpeakerLoader(
            hps.data.training_files, hps, all_in_mem=all_in_mem
        )
        self.train_loader, self.sampler = make_train_loader(
            self.train_dataset, hps, runtime.rank, runtime.world_size, seed, runtime.device.type
        )
        self.eval_loader = None
        if runtime.is_main:
            eval_dataset = TextAudioSpeakerLoader(
                hps.data.validation_files, hps, all_in_mem=all_in_mem, vol_aug=False
            )
            self.eval_loader = make_eval_loader(eval_dataset, hps, runtime.device.type)

    def _build_models(self, seed: int) -> None:
        """The generator, the discriminator, an AdamW for each, the grad scaler, a fresh state."""
        hps, device = self.hps, self.runtime.device
        self.net_g = build_generator(hps).to(device)
        self.net_d = build_discriminator(hps).to(device)
        lr, betas, eps = hps.train.learning_rate, hps.train.betas, hps.train.eps
        self.optim_g = build_optimizer(self.net_g.parameters(), lr, betas, eps, device)
        self.optim_d = build_optimizer(self.net_d.parameters(), lr, betas, eps, device)
        self.scaler = build_grad_scaler(self.runtime)
        self.state = TrainState(world_size=self.runtime.world_size, seed=seed)
        self.uses_f0_predictor = bool(self.net_g.use_automatic_f0_prediction)

    def _prepare_step(self) -> None:
        """Schedules, then compilation (`train.compile`) and DDP: the one place they are chosen.

        The generator's update scores audio on the bare discriminator, outside
        DDP (see `generator_update`), so it keeps a reference to it.
        """
        hps, runtime = self.hps, self.runtime
        for optimizer in (self.optim_g, self.optim_d):
            keep_optimizer_fused(optimizer)
        state, decay, lr = self.state, hps.train.lr_decay, hps.train.learning_rate
        epoch = state.epoch
        self.scheduler_g = exponential_schedule(self.optim_g, decay, state.scheduler_g, epoch, lr)
        self.scheduler_d = exponential_schedule(self.optim_d, decay, state.scheduler_d, epoch, lr)
        self.compiled = compile_enabled(hps.train.compile, runtime.device)
        self.discriminator = self.net_d
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
        self.net_g = wrap_ddp(self.net_g, runtime)
        self.net_d = wrap_ddp(self.net_d, runtime)

    # ----------------------------------------------------------------- resume

    def resume(self) -> None:
        """Continue from the newest usable G/D pair of any node, fine-tune from a base, or start."""
        point = agree_on_resume_point(self.runtime, self.model_dir)
        if point is None:
            logger.info("no checkpoint in %s: starting a new run", self.model_dir)
            self.state.step = -1
        elif point.is_base_model:
            self._fine_tune_from(point)
        else:
            self.apply_resume_point(point)

    def _fine_tune_from(self, point: ResumePoint) -> None:
        """Upstream's base models (`G_0.pth`, `D_0.pth`): their weights, a new run's schedule."""
        logger.info("fine-tuning from the base models %s and %s", point.g_path, point.d_path)
        load_checkpoint(point.g_path, self.net_g, self.optim_g, checkpoint=point.g_checkpoint)
        load_checkpoint(point.d_path, self.net_d, self.optim_d, checkpoint=point.d_checkpoint)
        set_learning_rate((self.optim_g, self.optim_d), self.hps.train.learning_rate, initial=True)
        self.state.step, self.state.epoch = 0, 1

    def apply_resume_point(self, point: ResumePoint) -> None:
        """Load `point` into the models, optimizers, scaler and run state of this rank."""
        load = functools.partial(load_checkpoint, strict=True)
        epoch = load(point.g_path, self.net_g, self.optim_g, checkpoint=point.g_checkpoint)[3]
        load(point.d_path, self.net_d, self.optim_d, checkpoint=point.d_checkpoint)
        saved_state = point.g_checkpoint.get("train_state")
        if isinstance(saved_state, dict):
            self.state = restore_train_state(saved_state, self.runtime, self.batches_per_epoch)
            if self.state.scaler and self.runtime.uses_grad_scaler:
                self.scaler.load_state_dict(self.state.scaler)
        else:
            # An upstream checkpoint: its epoch, and upstream's next step.
            self.state = TrainState(
                step=point.step, epoch=max(1, epoch), world_size=self.runtime.world_size,
                seed=self.state.seed,
            )  # fmt: skip
        step, epoch = self.state.step, self.state.epoch
        logger.info("resuming from %s at step %d, epoch %d", point.g_path.name, step, epoch)

    # ----------------------------------------------------------------- epochs

    def start_epoch(self, epoch: int) -> None:
        """Upstream's warmup: the learning rate rises linearly over `warmup_epochs`."""
        warmup_epochs = self.hps.train.warmup_epochs
        if epoch <= warmup_epochs:
            learning_rate = self.hps.train.learning_rate / warmup_epochs * epoch
            set_learning_rate((self.optim_g, self.optim_d), learning_rate)

    def end_epoch(self, epoch: int) -> None:
        """The learning rate decays by `lr_decay` per epoch, as upstream."""
        self.scheduler_g.step()
        self.scheduler_d.step()

    # ----------------------------------------------------------------- one GAN step

    def train_step(self, batch: tuple) -> StepOutput:
        """One GAN update on one batch, in upstream's order: D step, then G step."""
        forward = self.generator_forward(batch)
        loss_disc, grad_norm_d = self.discriminator_update(forward)
        losses, grad_norm_g = self.generator_update(forward)
        self.scaler.update()
        self.nonfinite.count(grad_norm_d, grad_norm_g)
        if self.nonfinite.is_check_step(self.state.step):
            self.nonfinite.check(self.state.step)
        losses = {
            "loss/g/total": losses.pop("total"),
            "loss/d/total": loss_disc,
            **{f"loss/g/{name}": value for name, value in losses.items()},
            "grad_norm_d": grad_norm_d,
            "grad_norm_g": grad_norm_g,
        }
        plots = {name: getattr(forward, name) for name in PLOTTED}
        return StepOutput(
            losses={name: value.detach() for name, value in losses.items()},
            plots={name: value.detach() for name, value in plots.items() if value is not None},
        )

    def generator_forward(self, batch: tuple) -> GeneratorOutput:
        """The generator on a batch, its random slice of real audio, and both slices' mels."""
        hps, runtime = self.hps, self.runtime
        c, f0, spec, y, speaker, lengths, uv, volume = (runtime.to_device(item) for item in batch)
        mel = spec_to_config_mel(spec, hps.data)
        with runtime.autocast():
            # f0_outputs: the predicted, normalised and given log-f0 (None without the predictor)
            y_hat, ids_slice, z_mask, (_, z_p, m_p, logs_p, _, logs_q), *f0_outputs = self.net_g(
                c, f0, uv, spec, g=speaker, c_lengths=lengths, spec_lengths=lengths, vol=volume
            )
            frames = hps.train.segment_size // hps.data.hop_length
            y_mel = commons.slice_segments(mel, ids_slice, frames)
            y_hat_mel = audio_to_config_mel(y_hat, hps.data)
            y = commons.slice_segments(y, ids_slice * hps.data.hop_length, hps.train.segment_size)
        slices = (y, y_hat, y_mel, y_hat_mel, mel)
        return GeneratorOutput(*slices, z_mask, z_p, m_p, logs_p, logs_q, *f0_outputs)

    def discriminator_update(self, forward: GeneratorOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """One discriminator step on real and (detached) generated audio, scored as one batch."""
        with self.runtime.autocast():
            y_d_hat_r, y_d_hat_g, _, _ = self.net_d(forward.y, forward.y_hat.detach())
            with self.runtime.autocast(enabled=False):
                loss_disc, _, _ = self._discriminator_loss(y_d_hat_r, y_d_hat_g)
        grad_norm = optimizer_step(self.scaler, self.optim_d, self.net_d, loss_disc)
        return loss_disc, grad_norm

    def generator_update(
        self, forward: GeneratorOutput
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One generator step: adversarial, feature-matching, mel, KL and (optional) f0 losses.

        The discriminator scores through frozen weights outside DDP, so this
        backward computes and all-reduces no discriminator gradient.
        """
        hps, runtime = self.hps, self.runtime
        with runtime.autocast(), frozen(self.discriminator):
            with torch.no_grad():  # the real side enters the losses detached
                _, fmap_r = self._score_audio(forward.y)
            y_d_hat_g, fmap_g = self._score_audio(forward.y_hat)
            with runtime.autocast(enabled=False):
                loss_gen, loss_fm, loss_mel = self._gan_losses(
                    y_d_hat_g, fmap_r, fmap_g, forward.y_mel, forward.y_hat_mel, hps.train.c_mel
                )
                f = forward
                loss_kl = kl_loss(f.z_p, f.logs_q, f.m_p, f.logs_p, f.z_mask) * hps.train.c_kl
                loss_lf0 = (
                    F.mse_loss(f.pred_lf0, f.lf0)
                    if self.uses_f0_predictor
                    else torch.zeros((), device=runtime.device)
                )
                total = loss_gen + loss_fm + loss_mel + loss_kl + loss_lf0
        grad_norm = optimizer_step(self.scaler, self.optim_g, self.net_g, total)
        losses = {"total": total, "gen": loss_gen, "fm": loss_fm, "mel": loss_mel}
        return {**losses, "kl": loss_kl, "lf0": loss_lf0}, grad_norm

    # ----------------------------------------------------------------- logging, evaluation, saving

    def log_training(self, epoch: int, batch_index: int, output: StepOutput) -> None:
        """One log line and TensorBoard scalars/images under upstream's tags.

        Everything read from the device (every loss and the first item of each
        plotted tensor) comes over in one transfer.
        """
        plot_names = PLOTTED if self.uses_f0_predictor else PLOTTED[:3]
        firsts = {name: output.plots[name][0] for name in plot_names}
        values, arrays = read_to_host(output.losses, firsts)
        learning_rate = self.optim_g.param_groups[0]["lr"]
        scalars = {tag: value for tag, value in values.items() if tag != "loss/g/gen"}
        scalars["learning_rate"] = learning_rate
        progress = 100.0 * batch_index / max(1, self.batches_per_epoch)
        losses = " ".join(f"{short} {values[tag]:.{digits}f}" for short, tag, digits in LOG_LINE)
        logger.info(
            "Train Epoch: %d [%.0f%%] step %d lr %.3g | %s",
            epoch, progress, self.state.step, learning_rate, losses,
        )  # fmt: skip
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

    def evaluate(self) -> None:
        """Measure every validation clip (rank 0): figures, audio and mels into
        `<model_dir>/eval` for TensorBoard, the best checkpoint into `best.json`.

        Every draw comes from seeded local generators and the eval loader has
        its own, so evaluation leaves the training random streams where they were.
        """
        generator = unwrap_model(self.net_g)
        report = evaluate_generator(generator, self.eval_loader, self.hps, self.runtime.device)
        summarize(
            self.writer_eval, self.state.step, scalars=report.scalars(), images=report.images(),
            audios=report.audios, audio_sampling_rate=self.hps.data.sampling_rate,
        )  # fmt: skip
        self.writer_eval.flush()
        self.best.record(self.state.step, report)

    def stop_reason_after_evaluation(self) -> str | None:
        """`train.patience` evaluations without a new best: rank 0's verdict, on every rank."""
        if self.hps.train.patience is None:
            return None  # no collective at all by default
        verdict = self.best.stop_reason() if self.best and self.best.patience_exhausted else None
        return broadcast_object(self.runtime, verdict, 0)

    def save(self) -> None:
        """Write `G_<step>.pth` and `D_<step>.pth` (rank 0), then prune old pairs.

        Every rank contributes its random state. Weights with NaN are never
        saved; G is written before D, each atomically, so a kill leaves at worst
        an unpaired G that resume skips.
        """
        rng_states = gather_objects(self.runtime, capture_rng_state(self.runtime.device))
        self.last_saved_step = step = self.state.step
        if not self.runtime.is_main:
            return
        require_finite_weights("G", self.net_g, step)
        require_finite_weights("D", self.net_d, step)
        self.state.world_size = self.runtime.world_size
        self.state.scheduler_g = self.scheduler_g.state_dict()
        self.state.scheduler_d = self.scheduler_d.state_dict()
        self.state.scaler = self.scaler.state_dict() if self.runtime.uses_grad_scaler else {}
        self.state.rng_per_rank = rng_states
        epoch, lr = self.state.epoch, self.hps.train.learning_rate
        extra = {"train_state": self.state.to_dict()}
        g_path = generator_path(self.model_dir, step)
        save_checkpoint(self.net_g, self.optim_g, lr, epoch, g_path, extra=extra, config=self.hps)
        d_path = discriminator_path(self.model_dir, step)
        save_checkpoint(self.net_d, self.optim_d, lr, epoch, d_path)
        protected = self.best.protected_steps()
        for path in clean_checkpoints(self.model_dir, self.hps.train.keep_ckpts, protected):
            logger.info("removed old checkpoint %s", path)
        if self.writer is not None:
            self.writer.flush()


if __name__ == "__main__":
    sys.exit(main())
