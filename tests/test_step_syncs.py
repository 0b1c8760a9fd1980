"""A training step that does not log never reads a tensor value on the host.

Every host read of a device value (`item`, `bool`, `float`, `int`, `tolist`,
`numpy`) stalls a GPU's queue; on the CPU the same calls are counted here.
"""

from __future__ import annotations

import torch

import train
from bench.host_reads import counting_host_reads
from core.distributed import StopVote
from core.optimization import optimizer_step
from tests.test_trainer import build_trainer, small_set  # noqa: F401  (fixture)


def test_the_counter_sees_host_reads():
    value = torch.ones(2)
    with counting_host_reads() as counts:
        bool(value[0]), float(value[0]), value.tolist(), value.numpy()
    assert counts == {"__bool__": 1, "__float__": 1, "tolist": 1, "numpy": 1}
    float(value[0])
    assert counts["__float__"] == 1  # counting ends with the block


def test_a_step_that_does_not_log_reads_nothing_on_the_host(small_set):  # noqa: F811
    trainer = build_trainer(small_set, "syncs", train={"log_interval": 100})
    batch = next(iter(trainer.train_loader))
    trainer.state.step = 0
    for _ in range(1):  # warm-up: lazy state (optimizer moments, scaler) is created
        trainer.state.step += 1
        trainer.train_step(batch)
    weights = [p.detach().clone() for p in trainer.net_g.parameters()]
    trainer.state.step += 1
    assert not trainer.nonfinite.is_check_step(trainer.state.step)
    with counting_host_reads() as counts:
        output = trainer.train_step(batch)
        stop = trainer.stop_vote.poll(trainer.stop_request.requested)
    assert sum(counts.values()) == 0, dict(counts)
    assert not stop
    assert torch.isfinite(output.losses["loss/g/total"])
    assert any(not torch.equal(a, b) for a, b in zip(weights, trainer.net_g.parameters()))
    # The fixed scaler skips on device and never changes its scale.
    assert trainer.scaler.get_scale() == 1.0


def test_a_logging_step_reads_its_values_in_one_transfer(small_set):  # noqa: F811
    trainer = build_trainer(small_set, "logreads", train={"log_interval": 100})
    batch = next(iter(trainer.train_loader))
    trainer.state.step = 1
    output = trainer.train_step(batch)
    with counting_host_reads() as counts:
        trainer.log_training(1, 0, output)
    assert sum(counts.values()) <= 2, dict(counts)  # the packed values (+ their list)
    assert counts["numpy"] == 1, dict(counts)


def test_fixed_scaler_skips_non_finite_gradients_and_keeps_scale_one(small_set):  # noqa: F811
    trainer = build_trainer(small_set, "scaler")
    batch = next(iter(trainer.train_loader))
    trainer.state.step = 1
    trainer.train_step(batch)
    before = [p.detach().clone() for p in trainer.net_d.parameters()]
    first = next(trainer.net_d.parameters())
    moments = {k: v.clone() for k, v in trainer.optim_d.state[first].items()}
    loss = sum(p.sum() for p in trainer.net_d.parameters()) * float("inf")
    grad_norm = optimizer_step(trainer.scaler, trainer.optim_d, trainer.net_d, loss)
    trainer.scaler.update()
    assert not torch.isfinite(grad_norm)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.net_d.parameters()))
    state = trainer.optim_d.state[first]
    assert all(torch.equal(moments[k], state[k]) for k in moments)  # step count too
    assert trainer.scaler.get_scale() == 1.0
    # A finite loss after it steps again, still at scale 1.
    loss = sum((p**2).sum() for p in trainer.net_d.parameters())
    assert torch.isfinite(optimizer_step(trainer.scaler, trainer.optim_d, trainer.net_d, loss))
    trainer.scaler.update()
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.net_d.parameters()))
    assert trainer.scaler.get_scale() == 1.0


def test_an_unfused_saved_optimizer_is_loaded_fused(small_set):  # noqa: F811
    trainer = build_trainer(small_set, "fusedload")
    plain = torch.optim.AdamW(trainer.net_d.parameters(), 1e-4)
    for parameter in trainer.net_d.parameters():
        parameter.grad = torch.zeros_like(parameter)
    plain.step()
    trainer.optim_d.load_state_dict(plain.state_dict())
    assert not trainer.optim_d.param_groups[0]["fused"]
    train.keep_optimizer_fused(trainer.optim_d)
    assert trainer.optim_d.param_groups[0]["fused"] is True
    state = trainer.optim_d.state[next(trainer.net_d.parameters())]
    assert state["step"].dtype == torch.float32


def test_one_process_stop_vote_is_its_own_flag(small_set):  # noqa: F811
    trainer = build_trainer(small_set, "vote")
    assert isinstance(trainer.stop_vote, StopVote)
    assert trainer.stop_vote.poll(True) and not trainer.stop_vote.poll(False)
    assert not trainer.stop_vote.close()
