"""Gradient all-reduce per training step: how many bytes, and how long on gloo.

    python bench/bench_allreduce.py                    # default 44k model, 1, 2, 4 processes
    python bench/bench_allreduce.py --processes 1 2 --mb 64 --repeats 5

Counts the parameters of G and D built from configs_template/config_template.json
(one step all-reduces D's gradients once, in the D update, and G's once, in the
G update, whose pass through the frozen D computes no D gradient; float32), then times
`all_reduce` of that many bytes with N gloo processes on this machine and
extrapolates a ring all-reduce to NVLink and Ethernet. Nothing is trained.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

LINKS_GB_PER_S = {"NVLink (450 GB/s)": 450.0, "100 Gb/s Ethernet": 12.5, "25 Gb/s Ethernet": 3.125}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--mb", type=float, help="MB to all-reduce (default: one step's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed all-reduces")
    return parser.parse_args()


def gradient_bytes_per_step() -> tuple[int, int, int]:
    """(G parameters, D parameters, float32 bytes all-reduced in one training step)."""
    from checkpoint import build_discriminator, build_generator
    from core.hparams import HParams

    config = json.loads((REPO / "configs_template" / "config_template.json").read_text())
    hps = HParams(**config)
    g_params = sum(p.numel() for p in build_generator(hps).parameters())
    d_params = sum(p.numel() for p in build_discriminator(hps).parameters())
    return g_params, d_params, 4 * (g_params + d_params)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, numel: int, repeats: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(minutes=10)
    )
    tensor = torch.ones(numel)
    dist.all_reduce(tensor)  # warm-up: connections and buffers
    dist.barrier()
    started = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(tensor)
    elapsed = (time.perf_counter() - started) / repeats
    if rank == 0:
        queue.put(elapsed)
    dist.destroy_process_group()


def time_all_reduce(world_size: int, numel: int, repeats: int) -> float:
    """Seconds per all_reduce of `numel` float32 values across `world_size` gloo processes."""
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(
        _worker,
        args=(world_size, _free_port(), numel, repeats, queue),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )
    return queue.get()


def ring_seconds(nbytes: int, world_size: int, gb_per_s: float) -> float:
    """A ring all-reduce sends and receives 2 (N - 1) / N of the buffer on every link."""
    return 2 * (world_size - 1) / world_size * nbytes / (gb_per_s * 1e9)


def main() -> None:
    args = parse_args()
    g_params, d_params, step_bytes = gradient_bytes_per_step()
    print(f"default 44k model: G {g_params / 1e6:.2f} M parameters, D {d_params / 1e6:.2f} M")
    print(f"gradients all-reduced per step: 4 B x (G + 2 D) = {step_bytes / 1e6:.0f} MB")
    nbytes = int(args.mb * 1e6) if args.mb else step_bytes
    numel = nbytes // 4
    cores = os.cpu_count()
    print(f"\nmeasured gloo all_reduce of {nbytes / 1e6:.0f} MB on this CPU ({cores} cores)")
    print("| processes | seconds per all-reduce | effective GB/s (ring) |")
    print("|---|---|---|")
    for world_size in args.processes:
        seconds = time_all_reduce(world_size, numel, args.repeats)
        moved = 2 * (world_size - 1) / world_size * nbytes
        rate = f"{moved / seconds / 1e9:.2f}" if world_size > 1 else "-"
        print(f"| {world_size} | {seconds:.3f} | {rate} |")
    print(f"\nextrapolated ring all-reduce of one step's {step_bytes / 1e6:.0f} MB "
          "(bandwidth only, before overlap with the backward pass)")
    sizes = (2, 8, 16)
    print("| link | " + " | ".join(f"{n} GPUs" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for link, rate in LINKS_GB_PER_S.items():
        cells = " | ".join(f"{ring_seconds(step_bytes, n, rate) * 1e3:.0f} ms" for n in sizes)
        print(f"| {link} | {cells} |")


if __name__ == "__main__":
    main()
