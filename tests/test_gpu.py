"""What only a GPU exercises: NCCL, the fp16 scaler, bf16, inductor, pinned memory, no syncs.

Every test here is marked `gpu` and skipped where CUDA is not visible.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import Counter
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import train
import train_diff
from bench.host_reads import counting_host_reads
from core.distributed import StopVote, init_runtime
from core.lifecycle import StopRequest
from diffusion.config import load_diffusion_config
from tests.test_train_diff import make_run
from tests.test_trainer import build_trainer, small_set  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def cuda_trainer(root, name: str, **sections) -> train.Trainer:
    return build_trainer(root, name, device_type="cuda", **sections)


def one_batch(trainer: train.Trainer) -> tuple:
    return next(iter(trainer.train_loader))


@contextlib.contextmanager
def forbidding_syncs() -> Iterator[Counter]:
    """Counts host reads of tensor values, and makes any CUDA synchronisation an error."""
    with counting_host_reads() as counts:
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield counts
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_a_non_logging_cuda_step_never_synchronises(small_set):  # noqa: F811
    trainer = cuda_trainer(small_set, "sync", train={"log_interval": 100, "compile": False})
    batch = tuple(trainer.runtime.to_device(t) for t in one_batch(trainer))
    trainer.state.step = 1
    trainer.train_step(batch)
    torch.cuda.synchronize()
    trainer.state.step = 2
    with forbidding_syncs() as counts:
        trainer.train_step(batch)
        trainer.stop_vote.poll(False)
    assert sum(counts.values()) == 0, dict(counts)


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_a_non_logging_diffusion_step_never_synchronises(tmp_path, monkeypatch, amp):
    """train_diff.py's denoising step under each autocast: no host sync, float32 weights."""
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path, interval_log=100, interval_val=100, amp_dtype=amp)
    runtime = init_runtime(0, 0, 1, "cuda", True, amp)
    assert runtime.autocast_dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    trainer = train_diff.DiffusionTrainer(load_diffusion_config(run), runtime, StopRequest(), None)
    batch = next(iter(trainer.train_loader))
    trainer.state.step = 1
    trainer.train_step(batch)
    torch.cuda.synchronize()
    trainer.state.step = 2
    with forbidding_syncs() as counts:
        output = trainer.train_step(batch)
        trainer.stop_vote.poll(False)
    assert sum(counts.values()) == 0, dict(counts)
    assert torch.isfinite(output["train/loss"])
    assert all(p.dtype == torch.float32 for p in trainer.net.parameters())


def test_batches_arrive_in_pinned_memory(small_set):  # noqa: F811
    trainer = cuda_trainer(small_set, "pinned")
    assert torch.backends.cudnn.benchmark  # upstream's setting, on for CUDA runs
    batch = one_batch(trainer)
    assert all(t.is_pinned() for t in batch if isinstance(t, torch.Tensor))


def test_fp16_uses_a_dynamic_scaler_that_backs_off_on_overflow(small_set, monkeypatch):  # noqa: F811
    trainer = cuda_trainer(small_set, "fp16", train={"fp16_run": True, "half_type": "fp16"})
    assert trainer.runtime.uses_grad_scaler and trainer.runtime.autocast_dtype == torch.float16
    batch = one_batch(trainer)
    trainer.state.step = 1
    losses = trainer.train_step(batch).losses
    assert torch.isfinite(losses["loss/g/total"])
    scale = trainer.scaler.get_scale()
    monkeypatch.setattr(train, "kl_loss", lambda *a, **k: torch.tensor(float("inf"), device="cuda"))
    weights = [p.detach().clone() for p in trainer.net_g.parameters()]
    trainer.state.step = 2
    trainer.train_step(batch)
    assert trainer.scaler.get_scale() < scale
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.net_g.parameters()))


def test_bf16_trains_on_cuda_with_a_fixed_scale(small_set):  # noqa: F811
    trainer = cuda_trainer(small_set, "bf16", train={"fp16_run": True, "half_type": "bf16"})
    assert trainer.runtime.autocast_dtype == torch.bfloat16
    before = [p.detach().clone() for p in trainer.net_g.parameters()]
    trainer.state.step = 1
    losses = trainer.train_step(one_batch(trainer)).losses
    assert torch.isfinite(losses["loss/g/total"]) and torch.isfinite(losses["loss/d/total"])
    changed = [not torch.equal(a, b) for a, b in zip(before, trainer.net_g.parameters())]
    assert sum(changed) > 0.9 * len(changed)
    assert trainer.scaler.get_scale() == 1.0


def test_vol_embedding_trains_on_cuda(small_set):  # noqa: F811
    trainer = cuda_trainer(small_set, "vol", model={"vol_embedding": True})
    batch = one_batch(trainer)
    assert batch[-1] is not None  # the volume track reaches the model
    trainer.state.step = 1
    assert torch.isfinite(trainer.train_step(batch).losses["loss/g/total"])


def test_inductor_and_eager_agree_on_cuda(small_set):  # noqa: F811
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        trainer = cuda_trainer(small_set, f"compile{compiled}", train={"compile": compiled})
        assert trainer.compiled is compiled
        batch = one_batch(trainer)
        losses = []
        for step in (1, 2):
            trainer.state.step = step
            losses.append(float(trainer.train_step(batch).losses["loss/g/total"]))
        results[compiled] = (losses, list(trainer.net_g.state_dict()))
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-3)
    assert results[True][1] == results[False][1]  # checkpoint keys unchanged


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_single_process_nccl_step_and_stop_vote(small_set, monkeypatch):  # noqa: F811
    if not dist.is_nccl_available():
        pytest.skip("no NCCL in this build")
    monkeypatch.setitem(os.environ, "MASTER_ADDR", "127.0.0.1")
    monkeypatch.setitem(os.environ, "MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        trainer = cuda_trainer(small_set, "nccl")
        trainer.net_g = DistributedDataParallel(trainer.net_g, device_ids=[0])
        trainer.net_d = DistributedDataParallel(trainer.net_d, device_ids=[0])
        trainer.state.step = 1
        assert torch.isfinite(trainer.train_step(one_batch(trainer)).losses["loss/g/total"])
        vote = StopVote(trainer.runtime)
        vote._distributed = True  # one rank still goes through the side group
        vote._group = dist.new_group(backend="gloo")
        assert vote.poll(True) is False  # the answer comes one step later ...
        assert vote.poll(False) is True  # ... here
        assert vote.close() is False
    finally:
        dist.destroy_process_group()
