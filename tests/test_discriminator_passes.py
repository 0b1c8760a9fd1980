"""The discriminator's two passes per step cost less and compute the same numbers.

The D update scores real and fake audio as one batch; the G update reaches
through a frozen discriminator to its input only. Both must give upstream's
numbers: the same scores and feature maps as two separate calls, and the same
gradient for the generated audio as an unfrozen pass.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

import train
from models import MultiPeriodDiscriminator
from modules.losses import discriminator_loss
from tests.test_train_e2e import free_port
from tests.test_trainer import build_trainer, small_set  # noqa: F401  (fixture)


def _audio(seed: int, batch: int = 2, samples: int = 2048) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, samples, generator=generator) * 0.3


@pytest.fixture(scope="module")
def disc() -> MultiPeriodDiscriminator:
    torch.manual_seed(0)
    return MultiPeriodDiscriminator().train()


def test_one_batch_pass_equals_two_calls_and_their_gradients(disc):
    y, y_hat = _audio(1), _audio(2)
    batched = disc(y, y_hat)
    real_scores, real_maps = disc.score(y)
    fake_scores, fake_maps = disc.score(y_hat)
    separate = (real_scores, fake_scores, real_maps, fake_maps)
    for ours, theirs in zip(batched[:2], separate[:2]):
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for ours, theirs in zip(batched[2:], separate[2:]):
        for maps_a, maps_b in zip(ours, theirs, strict=True):
            for a, b in zip(maps_a, maps_b, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

    def weight_grads(outputs) -> list[torch.Tensor]:
        disc.zero_grad(set_to_none=True)
        discriminator_loss(outputs[0], outputs[1])[0].backward()
        return [p.grad.clone() for p in disc.parameters()]

    for a, b in zip(weight_grads(disc(y, y_hat)), weight_grads(separate), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_spectral_norm_keeps_a_power_iteration_per_call():
    torch.manual_seed(0)
    ours = MultiPeriodDiscriminator(use_spectral_norm=True).train()
    reference = copy.deepcopy(ours)
    y, y_hat = _audio(3), _audio(4)
    scores = ours(y, y_hat)[1]
    reference.score(y)
    expected = reference.score(y_hat)[0]
    for a, b in zip(scores, expected, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(ours.buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(a, b)  # the power iterations' vectors


def test_frozen_generator_pass_gives_the_same_input_gradient_and_no_weight_gradient(disc):
    y = _audio(5)
    y_hat_ref = _audio(6).requires_grad_(True)
    y_hat = y_hat_ref.detach().clone().requires_grad_(True)
    mel = torch.zeros(2, 8, 4)

    def losses(fake_scores, real_maps, fake_maps) -> torch.Tensor:
        gen, fm, _ = train.gan_generator_losses(fake_scores, real_maps, fake_maps, mel, mel, 45.0)
        return gen + fm

    disc.zero_grad(set_to_none=True)
    _, fake_scores, real_maps, fake_maps = disc(y, y_hat_ref)  # upstream: D weights take grads
    losses(fake_scores, real_maps, fake_maps).backward()
    assert all(p.grad is not None for p in disc.parameters())

    disc.zero_grad(set_to_none=True)
    with train.frozen(disc):
        with torch.no_grad():
            _, real_maps = disc.score(y)
        fake_scores, fake_maps = disc.score(y_hat)
        losses(fake_scores, real_maps, fake_maps).backward()
    torch.testing.assert_close(y_hat.grad, y_hat_ref.grad, rtol=1e-5, atol=1e-8)
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())


def test_frozen_gives_gradients_back_after_an_error(disc):
    with pytest.raises(RuntimeError, match="boom"), train.frozen(disc):
        assert not any(p.requires_grad for p in disc.parameters())
        raise RuntimeError("boom")
    assert all(p.requires_grad for p in disc.parameters())


def test_a_step_all_reduces_discriminator_gradients_once(small_set, monkeypatch):  # noqa: F811
    """Under DDP the D update exchanges D's gradients; the G update exchanges none of them."""
    monkeypatch.setitem(os.environ, "MASTER_ADDR", "127.0.0.1")
    monkeypatch.setitem(os.environ, "MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        trainer = build_trainer(small_set, "ddp")
        trainer.net_g = DistributedDataParallel(trainer.net_g)
        trainer.net_d = DistributedDataParallel(trainer.net_d)
        buckets = {"G": 0, "D": 0}

        def counting(name: str):
            def hook(state, bucket):
                buckets[name] += 1
                return default_hooks.allreduce_hook(state, bucket)

            return hook

        trainer.net_g.register_comm_hook(None, counting("G"))
        trainer.net_d.register_comm_hook(None, counting("D"))
        batch = next(iter(trainer.train_loader))
        for step in (1, 2):  # DDP rebuilds its buckets after the first step
            trainer.state.step = step
            buckets.update(G=0, D=0)
            trainer.train_step(batch)
        per_step = dict(buckets)

        # One backward pass through D alone: the buckets of one exchange of D's gradients.
        buckets["D"] = 0
        y = torch.randn(2, 1, trainer.hps.train.segment_size)
        real, fake, _, _ = trainer.net_d(y, y.flip(-1))
        sum(score.sum() for score in real + fake).backward()
        one_exchange = buckets["D"]
    finally:
        dist.destroy_process_group()
    assert one_exchange > 0 and per_step["G"] > 0
    assert per_step["D"] == one_exchange, (per_step, one_exchange)
