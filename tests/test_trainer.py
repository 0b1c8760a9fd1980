"""The trainer in one process: learning, evaluation, precision, non-finite losses."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import train
import utils
from core import optimization
from core.config_schema import validate_config
from core.distributed import init_runtime
from core.lifecycle import StopRequest
from tests.helpers_data import make_config, make_dataset


def build_trainer(
    root: Path, name: str = "run", device_type: str = "cpu", **sections
) -> train.Trainer:
    config = make_config(root, **sections)
    config, _ = validate_config(config, "test")
    hps = utils.HParams(**config)
    hps.model_dir = str(root / "logs" / name)
    runtime = init_runtime(0, 0, 1, device_type, hps.train.fp16_run, hps.train.half_type)
    return train.Trainer(hps, runtime, StopRequest(), max_steps=None)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("set")
    make_dataset(root, items_per_speaker=2, val_per_speaker=1, seconds=0.5)
    return root


def test_training_lowers_mel_loss_on_a_fixed_set(small_set):
    torch.manual_seed(0)
    trainer = build_trainer(small_set, "learn", train={"learning_rate": 2e-3})
    batch = next(iter(trainer.train_loader))
    mel = [float(trainer.train_step(batch).losses["loss/g/mel"]) for _ in range(16)]
    first, last = np.mean(mel[:4]), np.mean(mel[-4:])
    assert last < 0.85 * first, mel  # measured: 0.67


def test_evaluation_leaves_training_random_streams(small_set):
    trainer = build_trainer(small_set, "eval")
    trainer.state.step = 5
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    numpy_state = np.random.get_state()
    trainer.evaluate()
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert list((Path(trainer.model_dir) / "eval").glob("events.out.tfevents.*"))


def test_bf16_autocast_trains_on_cpu(small_set):
    trainer = build_trainer(small_set, "bf16", train={"fp16_run": True, "half_type": "bf16"})
    assert trainer.runtime.autocast_dtype == torch.bfloat16
    before = [p.detach().clone() for p in trainer.net_g.parameters()]
    batch = next(iter(trainer.train_loader))
    losses = trainer.train_step(batch).losses
    assert all(torch.isfinite(losses[k]) for k in ("loss/g/total", "loss/d/total"))
    changed = [not torch.equal(a, b) for a, b in zip(before, trainer.net_g.parameters())]
    assert sum(changed) > 0.9 * len(changed)


def test_fp16_request_on_cpu_falls_back_to_bf16(small_set, caplog):
    with caplog.at_level(logging.WARNING, logger="so-vits-svc"):
        trainer = build_trainer(small_set, "fp16", train={"fp16_run": True, "half_type": "fp16"})
    assert trainer.runtime.autocast_dtype == torch.bfloat16
    assert not trainer.runtime.uses_grad_scaler
    assert "bf16 instead" in caplog.text


def test_non_finite_loss_skips_the_update_then_stops(small_set, monkeypatch, caplog):
    trainer = build_trainer(small_set, "nan")
    batch = next(iter(trainer.train_loader))
    trainer.state.step = 0
    trainer.save()  # the last good checkpoint
    good = (Path(trainer.model_dir) / "G_0.pth").read_bytes()

    def nan_kl(*args, **kwargs):
        return torch.tensor(float("nan"))

    monkeypatch.setattr(train, "kl_loss", nan_kl)
    weights = [p.detach().clone() for p in trainer.net_g.parameters()]
    with caplog.at_level(logging.WARNING, logger="so-vits-svc"):
        trainer.train_step(batch)
    assert "update skipped (1 in a row)" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.net_g.parameters()))
    assert all(torch.isfinite(p).all() for p in trainer.net_g.parameters())

    assert optimization.MAX_CONSECUTIVE_NONFINITE == 20  # what runs stop after
    monkeypatch.setattr(optimization, "MAX_CONSECUTIVE_NONFINITE", 4)  # same rule, fewer steps
    with pytest.raises(optimization.NonFiniteTrainingError, match="4 steps in a row"):
        for _ in range(4):
            trainer.train_step(batch)
    assert (Path(trainer.model_dir) / "G_0.pth").read_bytes() == good

    # A finite step resets the count.
    monkeypatch.undo()
    trainer.nonfinite.run.fill_(5)
    trainer.train_step(batch)
    assert int(trainer.nonfinite.run) == 0


def test_weights_with_nan_are_never_saved(small_set):
    trainer = build_trainer(small_set, "nanweights")
    with torch.no_grad():
        next(trainer.net_d.parameters())[0].fill_(float("nan"))
    trainer.state.step = 3
    with pytest.raises(optimization.NonFiniteTrainingError, match="not saved"):
        trainer.save()
    assert not list(Path(trainer.model_dir).glob("*.pth"))


def test_short_clips_train_without_crashing(tmp_path):
    make_dataset(tmp_path, items_per_speaker=3, val_per_speaker=1, seconds=0.05)
    trainer = build_trainer(tmp_path, "short", train={"segment_size": 4096})
    losses = trainer.train_step(next(iter(trainer.train_loader))).losses
    assert torch.isfinite(losses["loss/g/total"])
