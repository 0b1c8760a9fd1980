"""Where a training process runs: its rank, device, backend and precision, decided once.

The rest of the code asks a `Runtime` for its rank, device, autocast context
and whether it is the main process, and never branches on the device itself.
Also here: the collectives the trainers use (object gather and broadcast, the
non-blocking stop vote), DDP wrapping, and the stop-signal handler. How the
processes are started is `core.launching`.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from core.errors import UserError

logger = logging.getLogger("so-vits-svc")

@dataclass(frozen=True)
class Runtime:
    """One training process's place in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: full float32

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def uses_grad_scaler(self) -> bool:
        """fp16 needs loss scaling; bf16 and float32 do not."""
        return self.autocast_dtype == torch.float16

    def autocast(self, enabled: bool = True) -> contextlib.AbstractContextManager:
        """Mixed precision for this device, or a no-op in float32."""
        if self.autocast_dtype is None or not enabled:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def to_device(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """Move a batch tensor to this process's device (None stays None)."""
        if tensor is None:
            return None
        return tensor.to(self.device, non_blocking=self.device.type == "cuda")


def backend_for(device_type: str) -> str:
    """NCCL for GPUs on Linux; gloo on Windows and on the CPU."""
    if device_type == "cuda" and sys.platform != "win32" and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def choose_autocast_dtype(fp16_run: bool, half_type: str, device_type: str) -> torch.dtype | None:
    """The config's precision (`fp16_run`, `half_type`) for this device.

    fp16 autocast exists for GPUs; on the CPU it is slow and fragile, so there
    fp16 falls back to bf16 with a warning.
    """
    if not fp16_run:
        return None
    if half_type == "bf16":
        return torch.bfloat16
    if device_type == "cpu":
        logger.warning("fp16 is not supported for CPU training: using bf16 instead")
        return torch.bfloat16
    return torch.float16


def device_for(device_type: str, local_rank: int) -> torch.device:
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def rendezvous_endpoint() -> str:
    """HOST:PORT of the rendezvous this process joins (MASTER_ADDR/MASTER_PORT)."""
    return f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"


def join_group_store(
    rank: int, world_size: int, timeout_s: float, collective_timeout: datetime.timedelta
) -> dist.Store:
    """Connect to the job's key-value store and wait, at most `timeout_s`, for every rank.

    `init_process_group` alone would wait for a missing host for the full
    collective timeout (or forever in the first all-reduce); bounding the wait
    here turns an unreachable or half-started job into a one-line `UserError`
    naming the endpoint. Under torchrun the agent's store is used
    (TORCHELASTIC_USE_AGENT_STORE), as `env://` does.
    """
    endpoint = rendezvous_endpoint()
    advice = (
        "check that MASTER_ADDR / --rdzv_endpoint is node 0's address as seen from this node, "
        "that its port is open in the firewall, and that every node of the job was started"
    )
    timeout = datetime.timedelta(seconds=timeout_s)
    started = time.monotonic()
    try:
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
    except (RuntimeError, TimeoutError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"cannot reach the rendezvous at {endpoint} within {timeout_s:g} s ({reason}): "
            f"{advice}"
        ) from None
    # torchrun's agent store outlives a group: keys of each restart get their own
    # prefix, or the new group would read the dead group's addresses.
    store = dist.PrefixStore(f"svc/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    key = "joined"
    joined = store.add(key, 1)
    while joined < world_size:
        if time.monotonic() - started > timeout_s:
            raise UserError(
                f"cannot reach the rendezvous at {endpoint} within {timeout_s:g} s: only "
                f"{joined} of {world_size} processes joined; {advice}"
            )
        time.sleep(0.05)
        joined = store.add(key, 0)
    store.set_timeout(collective_timeout)
    return store


def init_runtime(
    rank: int,
    local_rank: int,
    world_size: int,
    device_type: str,
    fp16_run: bool,
    half_type: str,
    timeout_minutes: float = 30.0,
    rendezvous_timeout_s: float = 300.0,
) -> Runtime:
    """Join the process group (when there is more than one process) and describe this rank.

    The rendezvous address comes from MASTER_ADDR/MASTER_PORT, which the
    launcher or `spawn_workers` sets. Joining waits at most
    `rendezvous_timeout_s` for every rank; collectives wait `timeout_minutes`.
    """
    device = device_for(device_type, local_rank)
    if device.type == "cuda":
        # Upstream's setting: cuDNN times its convolution algorithms once per
        # shape. The decoder and discriminator keep one shape for the whole run.
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu" and world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        # Processes sharing a CPU must share its cores, or they slow each other down.
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))
    if world_size > 1 and not dist.is_initialized():
        collective_timeout = datetime.timedelta(minutes=timeout_minutes)
        store = join_group_store(rank, world_size, rendezvous_timeout_s, collective_timeout)
        dist.init_process_group(
            backend=backend_for(device_type),
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=collective_timeout,
        )
    return Runtime(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        device=device,
        autocast_dtype=choose_autocast_dtype(fp16_run, half_type, device.type),
    )


def wrap_ddp(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """`model` under DistributedDataParallel when there are several processes, else itself.

    With more than two ranks, find_unused_parameters keeps DDP's gradient
    buckets as built here. Otherwise DDP rebuilds them after a run's first
    step, which moves each gradient within its bucket, hence the order in
    which three or more ranks' values are summed, and a resumed run would
    drift by rounding from an uninterrupted one. Two ranks' sum does not
    depend on order, so they keep DDP's cheaper default (no graph walk).
    """
    if not runtime.distributed:
        return model
    device_ids = [runtime.local_rank] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=runtime.world_size > 2
    )


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


class StopVote:
    """Agree across ranks whether to stop, without making any step wait for the others.

    Each call casts this step's vote in an asynchronous all-reduce and returns
    the agreement on the previous call's vote, which has had a whole step to
    arrive: every rank stops at the same step, one step after the first rank
    asked. The votes travel over gloo on host memory, so a GPU stream never
    waits for them. One process needs no collective: its own flag is the answer.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._distributed = runtime.distributed and dist.is_initialized()
        self._group = None
        if self._distributed and dist.get_backend() != "gloo":
            self._group = dist.new_group(backend="gloo")
        self._pending: tuple[Any, torch.Tensor] | None = None

    def poll(self, flag: bool) -> bool:
        """Cast `flag` for this step; True when some rank asked to stop one call ago."""
        if not self._distributed:
            return flag
        agreed = self.close()
        vote = torch.tensor([1 if flag else 0], dtype=torch.int32)
        work = dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, vote)
        return agreed

    def close(self) -> bool:
        """Wait for the vote in flight (if any) and return it; call before leaving the loop."""
        if self._pending is None:
            return False
        work, vote = self._pending
        self._pending = None
        work.wait()
        return bool(vote[0] > 0)


def gather_objects(runtime: Runtime, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not runtime.distributed:
        return [obj]
    gathered: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(runtime: Runtime, obj: Any, src: int) -> Any:
    """Rank `src`'s `obj` on every rank (pickled; tensors inside travel on the CPU side)."""
    if not runtime.distributed:
        return obj
    box = [obj if runtime.rank == src else None]
    device = runtime.device if runtime.device.type == "cuda" else None
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def run_fingerprint(config: dict[str, Any], revision: str | None) -> dict[str, str]:
    """What every rank of one job must share: a hash of its config and the code revision."""
    text = json.dumps(config, sort_keys=True, default=str).encode("utf-8")
    return {"config": hashlib.sha256(text).hexdigest()[:12], "revision": revision or "unknown"}


def refuse_mismatched_ranks(runtime: Runtime, fingerprint: dict[str, str]) -> None:
    """Raise `UserError` on every rank when any rank's config or code differs from rank 0's.

    A collective: all ranks learn of the mismatch together and can exit
    cleanly, instead of training different models in one group.
    """
    fingerprints = gather_objects(runtime, fingerprint)
    reference = fingerprints[0]
    for rank, other in enumerate(fingerprints):
        if other == reference:
            continue
        raise UserError(
            f"rank {rank} runs config {other['config']} at code revision "
            f"{other['revision'][:12]}, but rank 0 runs config {reference['config']} at code "
            f"revision {reference['revision'][:12]}: start every node with the same config "
            "JSON and the same code checkout"
        )
