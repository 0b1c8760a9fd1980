"""Training throughput, and how much of it the trainer leaves on the table.

    python bench/bench_train.py                      # synthetic set, CPU-sized model
    python bench/bench_train.py -c configs/config.json --batch_size 16 --bf16 --steps 20

Runs the real `Trainer.train_step` (discriminator then generator update) in one
process, after `--warmup` untimed steps, then the same models in a bare
D-then-G loop (no scaler, no skip logic, no counters) over the same batches,
and prints, where they apply:

- samples/s and steps/s of the trainer, and its ratio to the bare loop;
- data wait per step (time blocked on the DataLoader);
- host reads of tensor values per non-logging step (the counting wrapper);
- kernel-running operators and dtype casts per step (CPU profiler leaves:
  each is a kernel launch on a GPU, outside compiled code);
- on CUDA: GPU busy fraction (profiler: CUDA kernel time / wall), kernels per
  step, host synchronisations per step (`torch.cuda.set_sync_debug_mode`),
  and peak GPU memory.

Nothing is saved.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import train  # noqa: E402
from bench.host_reads import counting_host_reads  # noqa: E402
from bench.synthetic_set import make_config, make_dataset  # noqa: E402
from core.config_schema import validate_config  # noqa: E402
from core.distributed import init_runtime  # noqa: E402
from core.hparams import HParams  # noqa: E402
from core.lifecycle import StopRequest  # noqa: E402
from core.optimization import NONFINITE_CHECK_INTERVAL  # noqa: E402
from modules.losses import discriminator_loss, gan_generator_losses, kl_loss  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", help="a config with real filelists (default: synthetic)")
    parser.add_argument("--batch_size", type=int, help="clips per step (default: the config's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--num_workers", type=int, help="data-loader workers")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--fp16", action="store_true", help="fp16 autocast with a grad scaler")
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="train.compile (auto: on for CUDA, off on the CPU)",
    )
    return parser.parse_args()


def synthetic_config(workdir: Path) -> dict:
    make_dataset(workdir, items_per_speaker=9, val_per_speaker=1, seconds=2.0)
    return make_config(workdir)


def build(args: argparse.Namespace, workdir: Path) -> train.Trainer:
    if args.config:
        config = json.loads(Path(args.config).read_text(encoding="utf-8"))
    else:
        config = synthetic_config(workdir)
    train_section = config["train"]
    if args.batch_size:
        train_section["batch_size"] = args.batch_size
    if args.num_workers is not None:
        train_section["num_workers"] = args.num_workers
    if args.bf16:
        train_section.update({"fp16_run": True, "half_type": "bf16"})
    if args.fp16:
        train_section.update({"fp16_run": True, "half_type": "fp16"})
    train_section["compile"] = {"auto": None, "on": True, "off": False}[args.compile]
    # Logging would sync; the benchmark measures the steps that do not log.
    train_section["log_interval"] = 10**9
    config, _ = validate_config(config, args.config or "synthetic")
    hps = HParams(**config)
    hps.model_dir = str(workdir / "logs")
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    runtime = init_runtime(0, 0, 1, device_type, hps.train.fp16_run, hps.train.half_type)
    return train.Trainer(hps, runtime, StopRequest(), max_steps=None)


def load_batches(trainer: train.Trainer, count: int) -> tuple[list[tuple], list[float]]:
    """`count` batches from the real loader, and how long each one was waited for."""
    batches, waits = [], []
    epoch = 1
    while len(batches) < count:
        trainer.sampler.set_epoch(epoch)
        iterator = iter(trainer.train_loader)
        while len(batches) < count:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            waits.append(time.perf_counter() - started)
            batches.append(batch)
        epoch += 1
    return batches, waits


def bare_step(trainer: train.Trainer, batch: tuple) -> None:
    """The same forward and losses in the plainest D-then-G loop: the ceiling to compare to.

    The generator's forward is the trainer's own (`generator_forward`); the two
    updates are written out plainly: eager, unscaled, no non-finite guard, and
    the discriminator scoring real and generated audio again for the G step.
    """
    hps, runtime = trainer.hps, trainer.runtime
    out = trainer.generator_forward(batch)
    with runtime.autocast():
        real, fake, _, _ = trainer.net_d(out.y, out.y_hat.detach())
        loss_d = discriminator_loss(real, fake)[0]
    trainer.optim_d.zero_grad(set_to_none=True)
    loss_d.backward()
    trainer.optim_d.step()
    with runtime.autocast():
        _, fake, fmap_r, fmap_g = trainer.net_d(out.y, out.y_hat)
        loss_gen, loss_fm, loss_mel = gan_generator_losses(
            fake, fmap_r, fmap_g, out.y_mel, out.y_hat_mel, hps.train.c_mel
        )
        loss_g = loss_gen + loss_fm + loss_mel
        loss_kl = kl_loss(out.z_p, out.logs_q, out.m_p, out.logs_p, out.z_mask)
        loss_g = loss_g + loss_kl * hps.train.c_kl
        if trainer.uses_f0_predictor:
            loss_g = loss_g + F.mse_loss(out.pred_lf0, out.lf0)
    trainer.optim_g.zero_grad(set_to_none=True)
    loss_g.backward()
    trainer.optim_g.step()


def timed(step, batches: list[tuple], warmup: int, cuda: bool) -> float:
    """Seconds per step over `batches[warmup:]` (device work included)."""
    for batch in batches[:warmup]:
        step(batch)
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / max(1, len(batches) - warmup)


def trainer_step(trainer: train.Trainer):
    def step(batch: tuple) -> None:
        trainer.state.step += 1
        if trainer.state.step % NONFINITE_CHECK_INTERVAL == 0:
            trainer.state.step += 1  # measure the steps that do not check or log
        trainer.train_step(batch)

    return step


def host_reads_per_step(trainer: train.Trainer, batch: tuple) -> int:
    step = trainer_step(trainer)
    with counting_host_reads() as counts:
        step(batch)
    return sum(counts.values())


# Operators that only make a new view or an uninitialised tensor: no kernel runs for them.
METADATA_OPERATORS = frozenset(
    "aten::" + name
    for name in [
        "alias",
        "as_strided",
        "detach",
        "empty",
        "empty_like",
        "empty_strided",
        "expand",
        "lift_fresh",
        "narrow",
        "permute",
        "reshape",
        "resolve_conj",
        "resolve_neg",
        "select",
        "slice",
        "split",
        "squeeze",
        "t",
        "transpose",
        "unbind",
        "unflatten",
        "unsqueeze",
        "view",
        "view_as",
        "_reshape_alias",
        "_unsafe_view",
    ]
)


def operator_figures(trainer: train.Trainer, batch: tuple) -> dict[str, int]:
    """Operators that run a kernel, and dtype casts, in one step: the CPU profiler's leaves.

    Each such leaf is a kernel launch on a GPU, so on the CPU this counts the
    launches a step would make there (the compiled parts excepted).
    """
    from torch.profiler import ProfilerActivity, profile

    step = trainer_step(trainer)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step(batch)
    events = prof.events()
    leaves = [
        event
        for event in events
        if event.name.startswith("aten::")
        and not event.cpu_children
        and event.name not in METADATA_OPERATORS
    ]
    return {
        "operators": len(leaves),
        # 0-dim casts are Python numbers wrapped as tensors (an optimizer's step
        # counts), not data movement.
        "casts": sum(
            event.name == "aten::_to_copy" and bool(event.input_shapes and event.input_shapes[0])
            for event in events
        ),
    }


def cuda_figures(trainer: train.Trainer, batches: list[tuple]) -> dict[str, float]:
    """GPU busy fraction, kernels and host syncs per step, from the profiler and sync mode."""
    from torch.profiler import ProfilerActivity, profile

    step = trainer_step(trainer)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        for batch in batches:
            step(batch)
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    kernels = [event for event in prof.events() if event.device_type.name == "CUDA"]
    busy_us = sum(event.device_time for event in kernels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for batch in batches:
                step(batch)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(warning.message) for warning in caught)
    return {
        "busy": busy_us / 1e6 / wall,
        "kernels": len(kernels) / len(batches),
        "syncs": syncs / len(batches),
    }


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="svc-bench-"))
    trainer = build(args, workdir)
    cuda = trainer.runtime.device.type == "cuda"
    batches, waits = load_batches(trainer, args.warmup + args.steps)
    batches = [tuple(trainer.runtime.to_device(t) for t in batch) for batch in batches]
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    per_step = timed(trainer_step(trainer), batches, args.warmup, cuda)
    reads = host_reads_per_step(trainer, batches[-1])
    operators = operator_figures(trainer, batches[-1])
    extra = cuda_figures(trainer, batches[args.warmup :]) if cuda else {}
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    bare = timed(lambda batch: bare_step(trainer, batch), batches, args.warmup, cuda)

    batch_size = trainer.hps.train.batch_size
    wait = sum(waits[args.warmup :]) / max(1, len(waits) - args.warmup)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
        trainer.runtime.autocast_dtype
    ]
    device = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device                 {device}")
    print(f"precision / compile    {precision} / {'on' if trainer.compiled else 'off'}")
    print(f"batch size             {batch_size}")
    print(f"segment                {trainer.hps.train.segment_size} samples")
    print(f"timed steps            {args.steps} (after {args.warmup} warm-up)")
    print(f"seconds per step       {per_step:.4f}")
    print(f"samples per second     {batch_size / per_step:.2f}")
    print(f"bare D-then-G loop     {bare:.4f} s/step; trainer / bare = {per_step / bare:.2f}")
    print(f"data wait per batch    {wait:.4f} s ({wait / (wait + per_step):.1%} of a step)")
    print(f"host reads per step    {reads} (non-logging step, counting wrapper)")
    print(
        f"operators per step     {operators['operators']} kernel-running aten operators "
        f"and {operators['casts']} dtype casts (CPU profiler)"
    )
    if cuda:
        print(f"GPU busy               {extra['busy']:.1%} (CUDA kernel time / wall)")
        print(f"kernels per step       {extra['kernels']:.0f}")
        print(f"host syncs per step    {extra['syncs']:.1f} (sync debug mode)")
        print(f"peak GPU memory        {peak:.2f} GiB")


if __name__ == "__main__":
    main()
