"""The diffusion model's speed: conversion real-time factor per sampler, and the training step.

    python bench/bench_diff.py                        # small random-weight model, CPU
    python bench/bench_diff.py --n_layers 20 --n_chans 512 --seconds 10 --device cuda

Inference: a random-weight Unit2Mel (no files needed) turns a synthetic
`--seconds` condition (content, a sung pitch line, loudness) into a mel with
every sampler upstream offers, from noise (as `-od`) and from a mel at
`--k_step` (as `-shd`), at the `--speedup` of the diffusion config's
`infer` section; the real-time factor is wall time over audio time (below 1:
faster than real time). The vocoder is not included (it costs the same for
every sampler).

Training: train_diff.py's own `DiffusionTrainer.train_step` (fused AdamW, the
grad scaler's device-side skip of non-finite updates, the non-finite counter;
no host reads) on a synthetic set with the `--use_diff` files, against a bare
loop over a copy of the same model and batch (loss, backward, plain AdamW
step). Prints samples/s of both, the ratio, and host reads of tensor values per
step; on CUDA also host syncs per step (`torch.cuda.set_sync_debug_mode`).
Nothing is kept: the set and the run folder are temporary.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.host_reads import counting_host_reads  # noqa: E402
from bench.synthetic_set import make_dataset, write_diffusion_features  # noqa: E402
from core.distributed import init_runtime  # noqa: E402
from core.lifecycle import StopRequest  # noqa: E402
from diffusion.config import INFER_METHODS, parse_diffusion_config  # noqa: E402
from diffusion.unit2mel import Unit2Mel  # noqa: E402

SAMPLING_RATE, HOP, MELS, WIDTH = 44100, 512, 128, 768

Batch = tuple[torch.Tensor, ...]  # the inference condition
TrainBatch = dict[str, Any]  # a batch of train_diff.py's data loader


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--device", default="cpu")
    add("--n_layers", type=int, default=4)
    add("--n_chans", type=int, default=64)
    add("--n_hidden", type=int, default=64)
    add("--seconds", type=float, default=2.0, help="inference input length")
    add("--speedup", type=int, default=10)
    add("--k_step", type=int, default=100, help="shallow diffusion's first step")
    add("--batch_size", type=int, default=8)
    add("--train_seconds", type=float, default=1.0, help="training clip length")
    add("--steps", type=int, default=6, help="timed training steps")
    add("--warmup", type=int, default=2)
    add("--amp_dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="training autocast")
    return parser.parse_args()


def synthetic_batch(batch: int, frames: int, device: torch.device) -> Batch:
    """Content (B, T, 768), a sung pitch line and loudness (B, T, 1), a mel (B, T, 128)."""
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(frames) * HOP / SAMPLING_RATE
    f0 = 220 * (1 + 0.02 * torch.sin(2 * torch.pi * 5 * t))
    units = torch.randn(batch, frames, WIDTH, generator=generator)
    volume = 0.1 + 0.05 * torch.rand(batch, frames, 1, generator=generator)
    mel = -5 + 2 * torch.randn(batch, frames, MELS, generator=generator)
    speaker = torch.zeros(batch, 1, dtype=torch.long)
    tensors = (units, f0.expand(batch, frames)[:, :, None].clone(), volume, speaker, mel)
    return tuple(x.to(device) for x in tensors)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference_rtf(model: Unit2Mel, args: argparse.Namespace, device: torch.device) -> None:
    frames = int(args.seconds * SAMPLING_RATE / HOP)
    units, f0, volume, speaker, mel = synthetic_batch(1, frames, device)
    audio_seconds = frames * HOP / SAMPLING_RATE
    print(f"inference: {audio_seconds:.2f} s of audio, speedup {args.speedup}, real-time factor")
    print(f"  {'sampler':<13} {'-od (noise)':>12} {f'-shd k={args.k_step}':>12}")
    with torch.no_grad():  # one untimed call: first-use costs are not a sampler's
        model(
            units,
            f0,
            volume,
            speaker,
            gt_spec=mel,
            infer=True,
            infer_speedup=args.speedup,
            method="ddim",
            k_step=args.k_step,
            use_tqdm=False,
        )
    for method in INFER_METHODS:
        figures = []
        for gt_spec in (None, mel):
            torch.manual_seed(0)
            synchronize(device)
            started = time.perf_counter()
            with torch.no_grad():
                model(
                    units,
                    f0,
                    volume,
                    speaker,
                    gt_spec=gt_spec,
                    infer=True,
                    infer_speedup=args.speedup,
                    method=method,
                    k_step=args.k_step,
                    use_tqdm=False,
                )
            synchronize(device)
            figures.append((time.perf_counter() - started) / audio_seconds)
        print(f"  {method:<13} {figures[0]:>12.3f} {figures[1]:>12.3f}")


def diffusion_trainer(args: argparse.Namespace, workdir: Path, device: torch.device) -> Any:
    """train_diff.py's trainer on a synthetic set with the `--use_diff` files, built as it
    builds itself (the YAML, the data, the model, the optimizer); one process, no logging."""
    import train_diff

    logging.getLogger("so-vits-svc").setLevel(logging.ERROR)  # "no vocoder": known here
    data = make_dataset(
        workdir, items_per_speaker=args.batch_size // 2 + 1, val_per_speaker=1,
        seconds=args.train_seconds + 0.2, sampling_rate=SAMPLING_RATE, hop_length=HOP,
        ssl_dim=WIDTH,
    )  # fmt: skip
    write_diffusion_features(data["train_wavs"] + data["val_wavs"])
    config = parse_diffusion_config({
        "data": {"duration": args.train_seconds, "encoder_out_channels": WIDTH,
                 "training_files": str(data["train_list"]),
                 "validation_files": str(data["val_list"])},
        "model": {"n_layers": args.n_layers, "n_chans": args.n_chans,
                  "n_hidden": args.n_hidden, "n_spk": 2},
        "vocoder": {"ckpt": str(workdir / "no_vocoder" / "model")},
        "env": {"expdir": str(workdir / "logs")},
        "train": {"num_workers": 0, "batch_size": args.batch_size, "interval_log": 10**9,
                  "interval_val": 10**9, "amp_dtype": args.amp_dtype},
        "spk": {"alice": 0, "bob": 1},
    })  # fmt: skip
    runtime = init_runtime(0, 0, 1, device.type, args.amp_dtype != "fp32", args.amp_dtype)
    return train_diff.DiffusionTrainer(config, runtime, StopRequest(), None)


def trainer_step(trainer: Any) -> Callable[[TrainBatch], None]:
    def step(batch: TrainBatch) -> None:
        trainer.state.step += 1
        trainer.train_step(batch)

    return step


def bare_step(trainer: Any) -> Callable[[TrainBatch], None]:
    """Loss, backward and a plain AdamW step on a copy of the trainer's model and batches."""
    model = Unit2Mel.from_config(trainer.config, MELS).to(trainer.runtime.device).train()
    model.load_state_dict(trainer.net.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), trainer.config.train.lr)

    def step(batch: TrainBatch) -> None:
        units, f0, volume, spk_id, aug_shift, mel = trainer.to_device(batch)
        optimizer.zero_grad(set_to_none=True)
        model(units, f0, volume, spk_id, aug_shift=aug_shift, gt_spec=mel, infer=False).backward()
        optimizer.step()

    return step


def timed(
    step: Callable[[TrainBatch], None],
    batch: TrainBatch,
    args: argparse.Namespace,
    device: torch.device,
) -> float:
    """Seconds per step after the warmup steps (device work included)."""
    for _ in range(args.warmup):
        step(batch)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step(batch)
    synchronize(device)
    return (time.perf_counter() - started) / args.steps


def host_syncs(step: Callable[[TrainBatch], None], batch: TrainBatch) -> tuple[int, int | None]:
    """Host reads of tensor values in one step; on CUDA also the synchronisations."""
    with counting_host_reads() as counts:
        step(batch)
    if not torch.cuda.is_available() or batch["units"].device.type != "cuda":
        return sum(counts.values()), None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(counts.values()), len(caught)


def training(args: argparse.Namespace, device: torch.device) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        torch.manual_seed(0)
        trainer = diffusion_trainer(args, Path(workdir), device)
        batch = next(iter(trainer.train_loader))
        batch = {name: trainer.runtime.to_device(value) if torch.is_tensor(value) else value
                 for name, value in batch.items()}  # fmt: skip
        ours, bare = trainer_step(trainer), bare_step(trainer)
        ours_s, bare_s = timed(ours, batch, args, device), timed(bare, batch, args, device)
        reads, syncs = host_syncs(ours, batch)
        frames = batch["mel"].shape[1]
        trainer.writer.close()
    print(f"training: train_diff.py's step, batch {args.batch_size} x {frames} frames, "
          f"{args.amp_dtype}")  # fmt: skip
    print(f"  project step {args.batch_size / ours_s:8.2f} samples/s")
    print(f"  bare loop    {args.batch_size / bare_s:8.2f} samples/s")
    print(f"  ratio (project / bare) {bare_s / ours_s:.3f}")
    print(f"  host reads per step {reads}" + ("" if syncs is None else f", syncs {syncs}"))


def build_model(args: argparse.Namespace, device: torch.device) -> Unit2Mel:
    return Unit2Mel(
        WIDTH,
        1,
        False,
        MELS,
        args.n_layers,
        args.n_chans,
        args.n_hidden,
        timesteps=1000,
        k_step_max=0,
    ).to(device)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args, device).eval()
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"device {device}, threads {torch.get_num_threads()}, Unit2Mel n_layers "
        f"{args.n_layers} n_chans {args.n_chans} n_hidden {args.n_hidden} "
        f"({parameters / 1e6:.2f} M parameters, random weights)"
    )
    inference_rtf(model, args, device)
    training(args, device)


if __name__ == "__main__":
    main()
