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

Training: the loss-backward-update step built from core/optimization.py (fused
AdamW, the grad scaler's device-side skip of non-finite updates, the
non-finite counter; no host reads), against a bare loop over the same model
and batches (loss, backward, plain AdamW step). Prints samples/s of both, the
ratio, and host reads of tensor values per step; on CUDA also host syncs per
step (`torch.cuda.set_sync_debug_mode`). Nothing is saved.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.host_reads import counting_host_reads  # noqa: E402
from core.distributed import Runtime  # noqa: E402
from core.optimization import (  # noqa: E402
    NonFiniteGuard,
    build_grad_scaler,
    build_optimizer,
    optimizer_step,
)
from diffusion.config import INFER_METHODS  # noqa: E402
from diffusion.unit2mel import Unit2Mel  # noqa: E402

SAMPLING_RATE, HOP, MELS, WIDTH = 44100, 512, 128, 768

Batch = tuple[torch.Tensor, ...]


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


def loss_of(model: Unit2Mel, batch: Batch) -> torch.Tensor:
    units, f0, volume, speaker, mel = batch
    return model.loss_terms(units, f0, volume, speaker, mel).loss


def bare_step(model: Unit2Mel, optimizer: torch.optim.Optimizer) -> Callable[[Batch], None]:
    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, batch).backward()
        optimizer.step()

    return step


def project_step(model: Unit2Mel, runtime: Runtime) -> Callable[[Batch], None]:
    """The sync-free step every trainer of this project takes (core/optimization.py)."""
    optimizer = build_optimizer(model.parameters(), 1e-4, (0.9, 0.999), 1e-8, runtime.device)
    scaler = build_grad_scaler(runtime)
    guard = NonFiniteGuard(runtime, log_interval=10**9)

    def step(batch: Batch) -> None:
        with runtime.autocast():
            loss = loss_of(model, batch)
        guard.count(optimizer_step(scaler, optimizer, model, loss))
        scaler.update()

    return step


def timed(
    step: Callable[[Batch], None], batch: Batch, args: argparse.Namespace, device: torch.device
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


def host_syncs(step: Callable[[Batch], None], batch: Batch) -> tuple[int, int | None]:
    """Host reads of tensor values in one step; on CUDA also the synchronisations."""
    with counting_host_reads() as counts:
        step(batch)
    if not torch.cuda.is_available() or batch[0].device.type != "cuda":
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
    frames = int(args.train_seconds * SAMPLING_RATE / HOP)
    batch = synthetic_batch(args.batch_size, frames, device)
    runtime = Runtime(rank=0, local_rank=0, world_size=1, device=device, autocast_dtype=None)
    torch.manual_seed(0)
    model = build_model(args, device).train()
    bare_model = build_model(args, device).train()
    bare_model.load_state_dict(model.state_dict())
    ours = project_step(model, runtime)
    bare = bare_step(bare_model, torch.optim.AdamW(bare_model.parameters(), 1e-4))
    ours_s, bare_s = timed(ours, batch, args, device), timed(bare, batch, args, device)
    reads, syncs = host_syncs(ours, batch)
    print(f"training: batch {args.batch_size} x {frames} frames, fp32")
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
