"""How a training job starts: under `torchrun`, spawned here, or as one process.

Two ways in, one code path after:
- `torchrun` (or any launcher that sets RANK, LOCAL_RANK and WORLD_SIZE): this
  process joins the launcher's group; nothing is spawned.
- plain `python train.py`: one process per visible GPU (capped by `--nprocs`),
  or on a machine without GPUs `--nprocs` CPU processes (default 1), spawned
  with `torch.multiprocessing` and meeting at localhost:`train.port`.

Every trainer describes its job once (`Job`), hands `launch` a worker
`worker(local_rank, job)`, and opens the process group in the worker with
`joined_group`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from typing import Any

import torch
import torch.multiprocessing as mp

from core.distributed import (
    Runtime,
    init_runtime,
    refuse_mismatched_ranks,
    run_fingerprint,
    shutdown,
)
from core.lifecycle import StopRequest, run_spawned
from core.run_log import get_logger, git_revision

logger = logging.getLogger("so-vits-svc")

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class Job:
    """Everything a training process needs to start, the same for every process of a job."""

    config: dict[str, Any]  # the validated config, defaults filled in
    model_dir: str
    fp16_run: bool
    half_type: str
    device_type: str = "cpu"  # `launch` sets it, and the world size
    world_size: int = 1
    max_steps: int | None = None
    rank: int | None = None  # the global rank under torchrun; None: the local rank
    rendezvous_timeout_s: float = 300.0
    code_dir: str = "."  # the checkout whose revision every rank must share


@dataclass(frozen=True)
class Placement:
    """Where a launcher put this process: its ranks and the device type to use."""

    rank: int
    local_rank: int
    world_size: int
    device_type: str


def torchrun_placement() -> Placement | None:
    """This process's place as a launcher (torchrun) set it in the environment; None if not.

    The one place that reads RANK, LOCAL_RANK and WORLD_SIZE.
    """
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return None
    return Placement(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        device_type="cuda" if torch.cuda.is_available() else "cpu",
    )


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options every trainer shares: processes, a step limit, the rendezvous."""
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


def is_launch_main_process() -> bool:
    """True in the process that writes the run's files before training starts.

    Under torchrun that is global rank 0; a plain `python train.py` is itself
    the main process (the workers it spawns come later).
    """
    placement = torchrun_placement()
    return placement is None or placement.rank == 0


def count_processes(requested: int | None) -> tuple[int, str]:
    """How many processes to run on this machine, and on which device type."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > 0:
        return (min(gpus, requested) if requested else gpus), "cuda"
    return (requested or 1), "cpu"


# Seconds a failed worker's peers get to exit, then again after SIGTERM, before SIGKILL.
PEER_EXIT_GRACE_S = 5.0


def spawn_workers(
    worker: Callable[..., None], nprocs: int, port: str | int, args: tuple
) -> int:
    """Run `worker(rank, *args)` in `nprocs` processes on this machine; return the exit code.

    Signals sent to this parent are passed to the workers (which stop after the
    current step). When a worker fails, the others get `PEER_EXIT_GRACE_S` to
    leave on their own (a collective with a dead peer fails), then SIGTERM and,
    as long again later, SIGKILL (a frozen peer takes no other signal). A
    worker's known failure has printed its own line; a real bug's traceback is
    printed here.
    """
    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ["MASTER_PORT"] = str(port)
    context = mp.start_processes(
        run_spawned, args=(worker, *args), nprocs=nprocs, join=False, start_method="spawn"
    )

    def forward(signum: int, frame: Any) -> None:
        for process in context.processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    previous = {
        signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        while not context.join(grace_period=PEER_EXIT_GRACE_S):
            pass
    except mp.ProcessExitedException as error:
        if error.exit_code > 0:
            return error.exit_code  # the process printed its own line
        print(
            f"error: training process {error.error_index} was killed by "
            f"{signal.Signals(-error.exit_code).name}",
            file=sys.stderr,
        )
        return 1
    except mp.ProcessRaisedException as error:
        print(f"error: training process {error.error_index} failed:\n{error}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def launch(
    worker: Callable[[int, Job], None], job: Job, nprocs: int | None, port: str | int
) -> int:
    """Run `worker(local_rank, job)` in every process of the job; return the exit code.

    Under torchrun this process is one of them. Otherwise `nprocs` (default:
    every GPU, or one CPU process) are run here: one in this process, more
    spawned. `job.device_type` and `job.world_size` are filled in here.
    """
    placement = torchrun_placement()
    if placement is not None:
        job = dataclass_replace(
            job,
            device_type=placement.device_type,
            world_size=placement.world_size,
            rank=placement.rank,
        )
        worker(placement.local_rank, job)
        return 0
    count, device_type = count_processes(nprocs)
    job = dataclass_replace(job, device_type=device_type, world_size=count, rank=None)
    if count == 1:
        worker(0, job)
        return 0
    logger.info("starting %d %s processes", count, device_type)
    return spawn_workers(worker, count, port, (job,))


@contextlib.contextmanager
def joined_group(local_rank: int, job: Job) -> Iterator[tuple[Runtime, StopRequest]]:
    """This process's place in the job, its stop-signal handler, and the group left on exit.

    Logs to the model folder on rank 0 only. Raises `UserError` when the group
    cannot meet or its ranks disagree on the config or code revision.
    """
    rank = local_rank if job.rank is None else job.rank
    if rank == 0:
        get_logger(job.model_dir)
    else:
        logging.getLogger("so-vits-svc").setLevel(logging.WARNING)
    runtime = init_runtime(
        rank,
        local_rank,
        job.world_size,
        job.device_type,
        job.fp16_run,
        job.half_type,
        rendezvous_timeout_s=job.rendezvous_timeout_s,
    )
    stop_request = StopRequest()
    stop_request.install()
    try:
        fingerprint = run_fingerprint(job.config, git_revision(job.code_dir))
        refuse_mismatched_ranks(runtime, fingerprint)
        yield runtime, stop_request
    finally:
        shutdown(runtime)
