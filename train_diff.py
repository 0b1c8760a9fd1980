"""Train the shallow-diffusion model: `python train_diff.py -c configs/diffusion.yaml`.

Rerunning the same command resumes. The model folder is the YAML's
`env.expdir` (`logs/44k/diffusion`), holding `model_<step>.pt` in upstream's
format and `config.yaml`; `tensorboard --logdir logs/44k/diffusion/logs`
shows the run. Under `torchrun` every process joins the launcher's group;
otherwise one process per GPU (or `--nprocs` CPU processes) is started here.

Reading order, as `train.py`: the arguments and the checks before anything
starts (`prepare_run`), the launch (`main`, `train_worker`), then
`DiffusionTrainer`: data, model and optimizer, resume, the denoising step,
logging, validation and saving. The epoch loop, launching, the optimizer
step and the resume agreement are shared with the synthesizer's trainer.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import soundfile
import torch
import yaml

from checkpoint import TrainState, capture_rng_state, unwrap_model
from checkpoint.agreement import agree_on_resume_point, restore_train_state
from core.dataset_check import raise_if_problems
from core.distributed import Runtime, StopVote, gather_objects, wrap_ddp
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
    keep_optimizer_fused,
    optimizer_step,
    require_finite_weights,
    set_learning_rate,
)
from core.run_log import open_model_dir, record_run
from core.summaries import plot_spectrogram_to_numpy, read_to_host, summarize
from core.training_loop import EpochLoop, LoopSettings
from data_utils import make_eval_loader, make_train_loader
from diffusion.config import DiffusionConfig, load_diffusion_config, parse_diffusion_config
from diffusion.data import DiffusionDataset, check_diffusion_filelists, speaker_of
from diffusion.files import check_state_fits, load_diffusion_state, save_diffusion_model
from diffusion.run_files import (
    DiffusionResumePoint,
    find_diffusion_resume_point,
    model_path,
    remove_stale_model_temp_files,
    rotate_models,
)
from diffusion.unit2mel import Unit2Mel
from diffusion.vocoder import Vocoder, VocoderError, mel_settings_for

logger = logging.getLogger("so-vits-svc")
REPO_DIR = Path(__file__).resolve().parent
SEED = 1234  # the YAML has no seed; every rank adds its rank
SPEC_FLOOR = -14.0  # upstream's colour floor of the validation mel images (log mel)
INPUTS = ("units", "f0", "volume", "spk_id", "aug_shift", "mel")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", default="configs/diffusion.yaml", help="diffusion YAML")
    parser.add_argument("--port", default="8002", help="rendezvous port of spawned processes")
    add_launch_arguments(parser)
    return parser.parse_args(argv)


def mel_bins(config: DiffusionConfig) -> int:
    """The vocoder's mel bins (its config.json, or the released vocoder's 128)."""
    settings, note = mel_settings_for(config.vocoder.ckpt)
    if note:
        logger.info("%s", note)
    return settings.num_mels


def prepare_run(args: argparse.Namespace) -> DiffusionConfig:
    """Check the config, the data and any model in the folder; copy the config into it.

    Everything a user can get wrong is found here, before any process starts.
    """
    config = load_diffusion_config(args.config)
    model_dir = Path(config.env.expdir)
    writes = is_launch_main_process()
    open_model_dir(model_dir, writes, [])
    raise_if_problems(check_diffusion_filelists(config, str(args.config)))
    placement = torchrun_placement()
    if placement is None or placement.local_rank == 0:
        point = find_diffusion_resume_point(model_dir)
        if point is not None:
            model = Unit2Mel.from_config(config, mel_bins(config))
            check_state_fits(point.path, point.checkpoint["model"], model, str(args.config),
                             strict=point.is_ours)  # fmt: skip
    if writes:
        record_run(model_dir, yaml.dump(config.to_dict()), "config.yaml", REPO_DIR)
        for path in remove_stale_model_temp_files(model_dir):
            logger.info("removed %s, left by a save that was interrupted", path)
    return config


def main(argv: list[str] | None = None) -> int:
    """The command line: check, launch, train; return the exit code (see `core.lifecycle`)."""
    return run_main(lambda: _check_and_launch(parse_args(argv)))


def _check_and_launch(args: argparse.Namespace) -> int:
    config = prepare_run(args)
    amp = config.train.amp_dtype
    job = Job(
        config=config.to_dict(),
        model_dir=config.env.expdir,
        fp16_run=amp != "fp32",
        half_type="bf16" if amp == "bf16" else "fp16",
        max_steps=args.max_steps,
        rendezvous_timeout_s=args.rendezvous_timeout,
        code_dir=str(REPO_DIR),
    )
    return launch(train_worker, job, args.nprocs, args.port)


def train_worker(local_rank: int, job: Job) -> None:
    """One training process: join the group, build everything, resume, train to the end."""
    config = parse_diffusion_config(job.config, str(Path(job.model_dir) / "config.yaml"))
    with joined_group(local_rank, job) as (runtime, stop_request):
        DiffusionTrainer(config, runtime, stop_request, job.max_steps).fit()


class DiffusionTrainer(EpochLoop):
    """The diffusion model's run: its data, model, optimizer and state, and the denoising step."""

    def __init__(
        self,
        config: DiffusionConfig,
        runtime: Runtime,
        stop_request: StopRequest,
        max_steps: int | None,
    ) -> None:
        self.config, self.runtime = config, runtime
        self.stop_request, self.max_steps = stop_request, max_steps
        self.model_dir = Path(config.env.expdir)
        train = config.train
        self.loop = LoopSettings(train.epochs, train.interval_log, train.interval_val,
                                 train.batch_size)  # fmt: skip
        for seed_stream in (torch.manual_seed, random.seed, np.random.seed):
            seed_stream(SEED + runtime.rank)
        self._build_data()
        self._build_model()
        self.resume()
        keep_optimizer_fused(self.optimizer)
        self.model = wrap_ddp(self.net, runtime)
        self.writer = self._open_writer()
        self.vocoder = self._open_vocoder() if runtime.is_main else None
        self.nonfinite = NonFiniteGuard(runtime, train.interval_log)
        self.stop_vote = StopVote(runtime)
        self.last_saved_step = self.state.step

    def _build_data(self) -> None:
        """This rank's share of the training clips; the validation clips on the main process."""
        config, runtime = self.config, self.runtime
        train = config.train
        # The loaders read batch size and workers as the synthesizer's config spells them.
        settings = SimpleNamespace(train=SimpleNamespace(
            batch_size=train.batch_size, num_workers=train.num_workers,
            all_in_mem=train.cache_all_data,
        ))  # fmt: skip
        dataset = DiffusionDataset(config, config.data.training_files, training=True, seed=SEED)
        self.train_loader, self.sampler = make_train_loader(
            dataset, settings, runtime.rank, runtime.world_size, SEED, runtime.device.type,
            collate_fn=torch.utils.data.default_collate,
        )  # fmt: skip
        self.eval_loader = None
        if runtime.is_main:
            valid = DiffusionDataset(config, config.data.validation_files, False, SEED)
            self.eval_loader = make_eval_loader(
                valid, settings, runtime.device.type, torch.utils.data.default_collate
            )

    def _build_model(self) -> None:
        """Unit2Mel as the YAML describes it, upstream's AdamW, the grad scaler, a fresh state."""
        config, device = self.config, self.runtime.device
        self.net = Unit2Mel.from_config(config, mel_bins(config)).to(device)
        self.optimizer = build_optimizer(
            self.net.parameters(), config.train.lr, (0.9, 0.999), 1e-8, device
        )
        for group in self.optimizer.param_groups:  # upstream's AdamW defaults, then its decay
            group["weight_decay"] = config.train.weight_decay
        self.scaler = build_grad_scaler(self.runtime)
        self.state = TrainState(world_size=self.runtime.world_size, seed=SEED)
        logger.info(
            "diffusion model: %d parameters, timesteps %d, k_step_max %d",
            sum(p.numel() for p in self.net.parameters()), self.net.timesteps,
            self.net.k_step_max,
        )  # fmt: skip

    def _open_writer(self) -> Any:
        if not self.runtime.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.model_dir / "logs"))  # upstream's folder

    def _open_vocoder(self) -> Vocoder | None:
        """The vocoder for validation audio; without its weights, say so once and log mels only."""
        vocoder_config = self.config.vocoder
        try:
            vocoder = Vocoder(vocoder_config.type, vocoder_config.ckpt, self.runtime.device)
            vocoder.network()
        except VocoderError as error:
            logger.warning("%s; validation logs mels only, no audio", error)
            return None
        return vocoder

    # ----------------------------------------------------------------- resume

    def resume(self) -> None:
        """Continue from the newest model file of any node, fine-tune from a base, or start."""
        point = agree_on_resume_point(self.runtime, self.model_dir, find_diffusion_resume_point)
        if point is None:
            logger.info("no model in %s: starting a new run", self.model_dir)
        elif point.is_base_model:
            logger.info("fine-tuning from the base model %s", point.path)
            self._load(point, strict=False)
        else:
            self.apply_resume_point(point)

    def _load(self, point: DiffusionResumePoint, strict: bool) -> None:
        """The file's weights, and its optimizer when it has one (ours or upstream's save_opt).

        A base model's optimizer (if any) belongs to another run, perhaps with
        other parameters (a speaker table): fine-tuning starts a fresh AdamW.
        The config's weight decay applies either way, as upstream sets it.
        """
        load_diffusion_state(point.path, self.net, "the config", strict, point.checkpoint)
        saved = point.checkpoint.get("optimizer") or point.checkpoint.get("train_optimizer")
        if isinstance(saved, dict) and not point.is_base_model:
            self.optimizer.load_state_dict(saved)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.config.train.weight_decay

    def apply_resume_point(self, point: DiffusionResumePoint) -> None:
        """Load `point` into the model, optimizer, scaler and run state of this rank."""
        self._load(point, strict=point.is_ours)
        if point.is_ours:
            saved = point.checkpoint["train_state"]
            self.state = restore_train_state(saved, self.runtime, self.batches_per_epoch)
            if self.state.scaler and self.runtime.uses_grad_scaler:
                self.scaler.load_state_dict(self.state.scaler)
        else:  # upstream's file: its step, a new epoch count, as upstream
            self.state = TrainState(step=point.step, world_size=self.runtime.world_size, seed=SEED)
        logger.info("resuming from %s at step %d, epoch %d", point.name, self.state.step,
                    self.state.epoch)  # fmt: skip

    # ----------------------------------------------------------------- one step

    def learning_rate(self, step: int) -> float:
        """Upstream's StepLR: `lr` times `gamma` per `decay_step` steps (its resume formula)."""
        train = self.config.train
        return train.lr * train.gamma ** (max(step - 2, 0) // train.decay_step)

    def to_device(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        return [self.runtime.to_device(batch[name]) for name in INPUTS]

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One denoising update: a random step below k_step_max per clip, upstream's loss."""
        set_learning_rate((self.optimizer,), self.learning_rate(self.state.step))
        units, f0, volume, spk_id, aug_shift, mel = self.to_device(batch)
        with self.runtime.autocast():
            loss = self.model(units, f0, volume, spk_id, aug_shift=aug_shift, gt_spec=mel,
                              infer=False)  # fmt: skip
        grad_norm = optimizer_step(self.scaler, self.optimizer, self.model, loss.float())
        self.scaler.update()
        self.nonfinite.count(grad_norm)
        if self.nonfinite.is_check_step(self.state.step):
            self.nonfinite.check(self.state.step)
        return {"train/loss": loss.detach(), "train/grad_norm": grad_norm}

    # ----------------------------------------------------------------- logging, validation, saving

    def log_training(self, epoch: int, batch_index: int, output: dict[str, torch.Tensor]) -> None:
        """Upstream's log line and its `train/loss`, `train/lr` (one read from the device)."""
        values, _ = read_to_host(output, {})
        lr = self.optimizer.param_groups[0]["lr"]
        logger.info(
            "epoch: %d | %3d/%3d | step %d | lr: %.6g | loss: %.3f",
            epoch, batch_index, self.batches_per_epoch, self.state.step, lr, values["train/loss"],
        )  # fmt: skip
        summarize(self.writer, self.state.step, scalars={**values, "train/lr": lr})

    def evaluate(self) -> None:
        """Upstream's validation on rank 0: loss, mels and audio of every validation clip.

        Its random draws come from a fixed seed inside a forked random state, so
        validation is comparable across steps and leaves training's streams alone.
        """
        net = unwrap_model(self.model)
        net.eval()
        devices = [self.runtime.device] if self.runtime.device.type == "cuda" else []
        images, audios, losses = {}, {}, []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(SEED)
            for batch in self.eval_loader:
                name = f"{speaker_of(batch['name_ext'][0])}_{Path(batch['name'][0]).name}"
                mel, loss = self.validate_clip(net, batch)
                losses.append(loss)
                images[f"validation/{name}"] = self.mel_image(batch["mel"][0], mel[0])
                if self.vocoder is not None:
                    f0 = self.runtime.to_device(batch["f0"])
                    audios[f"validation/{name}_pred"] = self.vocoder.infer(mel, f0)[0].cpu()
                    audios[f"validation/{name}_gt"] = read_audio(batch["name_ext"][0])
        net.train()
        loss = float(torch.stack(losses).mean())
        logger.info("validation loss %.3f at step %d", loss, self.state.step)
        summarize(self.writer, self.state.step, scalars={"validation/loss": loss}, images=images,
                  audios=audios, audio_sampling_rate=self.config.data.sampling_rate)  # fmt: skip
        self.writer.flush()

    def validate_clip(self, net: Unit2Mel, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """The mel the model makes of one clip, and the loss averaged over batch_size draws.

        As upstream: shallow from the clip's mel at k_step_max when trained on
        fewer steps than timesteps, from noise otherwise.
        """
        units, f0, volume, spk_id, _, gt_mel = self.to_device(batch)
        infer = self.config.infer
        shallow = net.k_step_max < net.timesteps
        mel = net(units, f0, volume, spk_id, gt_spec=gt_mel if shallow else None, infer=True,
                  infer_speedup=infer.speedup, method=infer.method, k_step=net.k_step_max,
                  use_tqdm=False)  # fmt: skip
        draws = [net(units, f0, volume, spk_id, gt_spec=gt_mel, infer=False, k_step=net.k_step_max)
                 for _ in range(self.config.train.batch_size)]  # fmt: skip
        return mel, torch.stack(draws).mean().cpu()

    @staticmethod
    def mel_image(gt: torch.Tensor, made: torch.Tensor) -> np.ndarray:
        """Upstream's picture: |difference| (from the floor), the clip's mel, the model's mel."""
        gt, made = gt.float().cpu(), made.float().cpu()
        stacked = torch.cat([(made - gt).abs() + SPEC_FLOOR, gt, made], dim=-1)
        return plot_spectrogram_to_numpy(stacked.T.numpy())

    def save(self) -> None:
        """Write `model_<step>.pt` (rank 0) with the optimizer and run state, then rotate.

        Every rank contributes its random state. The optimizer goes under
        upstream's `optimizer` key when `train.save_opt` is on (upstream then
        loads it too), under `train_optimizer` otherwise (upstream ignores it).
        """
        rng_states = gather_objects(self.runtime, capture_rng_state(self.runtime.device))
        self.last_saved_step = step = self.state.step
        if not self.runtime.is_main:
            return
        require_finite_weights("the diffusion model", self.model, step)
        self.state.world_size = self.runtime.world_size
        self.state.scaler = self.scaler.state_dict() if self.runtime.uses_grad_scaler else {}
        self.state.rng_per_rank = rng_states
        extra: dict[str, Any] = {"train_state": self.state.to_dict()}
        save_opt = self.config.train.save_opt
        if not save_opt:
            extra["train_optimizer"] = self.optimizer.state_dict()
        path = model_path(self.model_dir, step)
        save_diffusion_model(self.model, step, path, self.optimizer if save_opt else None, extra)
        logger.info("saved %s", path)
        for removed in rotate_models(self.model_dir, step, self.config.train.interval_force_save):
            logger.info("removed old model %s", removed)
        self.writer.flush()


def read_audio(path: str) -> torch.Tensor:
    """A validation clip's audio as (1, samples) float32, mono."""
    audio, _ = soundfile.read(path, dtype="float32", always_2d=True)
    return torch.from_numpy(audio.mean(axis=1))[None]


if __name__ == "__main__":
    sys.exit(main())
