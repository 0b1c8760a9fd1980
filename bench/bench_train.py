"""Training throughput: steps/s, samples/s, and how much of a step waits for data.

    python bench/bench_train.py                      # synthetic set, CPU-sized model
    python bench/bench_train.py -c configs/config.json --batch_size 4 --steps 20

Runs the real `Trainer.train_step` (discriminator then generator update) in one
process, after `--warmup` untimed steps, and prints the figures and ratios.
Nothing is saved.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import train  # noqa: E402
from core.config_schema import validate_config  # noqa: E402
from core.distributed import StopRequest, init_runtime  # noqa: E402
from core.hparams import HParams  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", help="a config with real filelists (default: synthetic)")
    parser.add_argument("--batch_size", type=int, help="clips per step (default: the config's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--num_workers", type=int, help="data-loader workers")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    return parser.parse_args()


def synthetic_config(workdir: Path) -> dict:
    from tests.helpers_data import make_config, make_dataset

    make_dataset(workdir, items_per_speaker=9, val_per_speaker=1, seconds=2.0)
    return make_config(workdir)


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="svc-bench-"))
    if args.config:
        config = json.loads(Path(args.config).read_text(encoding="utf-8"))
    else:
        config = synthetic_config(workdir)
    if args.batch_size:
        config["train"]["batch_size"] = args.batch_size
    if args.num_workers is not None:
        config["train"]["num_workers"] = args.num_workers
    if args.bf16:
        config["train"].update({"fp16_run": True, "half_type": "bf16"})
    config, _ = validate_config(config, args.config or "synthetic")
    hps = HParams(**config)
    hps.model_dir = str(workdir / "logs")
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    runtime = init_runtime(0, 0, 1, device_type, hps.train.fp16_run, hps.train.half_type)
    trainer = train.Trainer(hps, runtime, StopRequest(), max_steps=None)

    wait_times, step_times = [], []
    total = args.warmup + args.steps
    epoch = 1
    while len(step_times) < total:
        trainer.sampler.set_epoch(epoch)
        iterator = iter(trainer.train_loader)
        while len(step_times) < total:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            loaded = time.perf_counter()
            trainer.train_step(batch)
            if device_type == "cuda":
                torch.cuda.synchronize()
            finished = time.perf_counter()
            wait_times.append(loaded - started)
            step_times.append(finished - loaded)
        epoch += 1

    waits, steps = wait_times[args.warmup :], step_times[args.warmup :]
    per_step = (sum(waits) + sum(steps)) / len(steps)
    batch_size = hps.train.batch_size
    print(f"device               {device_type} ({torch.get_num_threads()} threads)")
    print(f"batch size           {batch_size}")
    print(f"segment              {hps.train.segment_size} samples at {hps.data.sampling_rate} Hz")
    print(f"timed steps          {len(steps)} (after {args.warmup} warm-up)")
    print(f"seconds per step     {per_step:.3f}")
    print(f"steps per second     {1.0 / per_step:.3f}")
    print(f"samples per second   {batch_size / per_step:.2f}")
    print(f"data wait per step   {sum(waits) / len(steps):.4f} s")
    print(f"data wait / step     {sum(waits) / (sum(waits) + sum(steps)):.1%}")


if __name__ == "__main__":
    main()
