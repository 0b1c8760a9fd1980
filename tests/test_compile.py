"""train.compile: compiled and eager steps agree, checkpoints keep their keys, failures fall back.

Inductor on this CPU needs minutes to build the tiny model's kernels, too slow
for the suite; these tests compile through the same `nn.Module.compile` and
`torch.compile` calls with the `aot_eager` backend (Dynamo graph capture and
AOT autograd, the front half inductor also runs), and check separately that
inductor itself compiles and runs here. The `gpu` test compiles with inductor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from checkpoint import save_checkpoint
from core import compilation
from tests.test_trainer import build_trainer, small_set  # noqa: F401  (fixture)


def two_steps(trainer) -> tuple[list[dict[str, float]], list[torch.Tensor]]:
    batch = next(iter(trainer.train_loader))
    losses = []
    for step in (1, 2):
        trainer.state.step = step
        output = trainer.train_step(batch)
        losses.append({name: float(value) for name, value in output.losses.items()})
    weights = [p.detach().clone() for p in trainer.net_g.parameters()]
    weights += [p.detach().clone() for p in trainer.net_d.parameters()]
    return losses, weights


@pytest.mark.slow  # compiling the tiny model takes about a minute on two cores
def test_compiled_and_eager_steps_agree_and_keep_checkpoint_keys(
    small_set,  # noqa: F811
    monkeypatch,
):
    torch.manual_seed(0)
    eager = build_trainer(small_set, "eager", train={"compile": False})
    keys_g, keys_d = list(eager.net_g.state_dict()), list(eager.net_d.state_dict())
    eager_losses, eager_weights = two_steps(eager)

    monkeypatch.setattr(compilation, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    compiled = build_trainer(small_set, "compiled", train={"compile": True})
    assert compiled.compiled
    compiled_losses, compiled_weights = two_steps(compiled)
    # One graph each: the probe, the decoder, the discriminator's D pass, its two
    # G-pass variants (real without gradients, fake through frozen weights), and
    # the two loss functions. A graph per sub-discriminator would be more.
    assert counters["stats"]["unique_graphs"] <= 8, dict(counters["stats"])

    for ours, theirs in zip(compiled_losses, eager_losses):
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert ours[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-5), name
    for ours, theirs in zip(compiled_weights, eager_weights):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)

    assert list(compiled.net_g.state_dict()) == keys_g
    assert list(compiled.net_d.state_dict()) == keys_d
    for trainer in (eager, compiled):
        for name, model, optimizer in (
            ("G", trainer.net_g, trainer.optim_g),
            ("D", trainer.net_d, trainer.optim_d),
        ):
            save_checkpoint(model, optimizer, 1e-4, 1, Path(trainer.model_dir) / f"{name}_2.pth")
    for name in ("G", "D"):
        saved_eager = torch.load(Path(eager.model_dir) / f"{name}_2.pth", weights_only=True)
        saved = torch.load(Path(compiled.model_dir) / f"{name}_2.pth", weights_only=True)
        assert list(saved["model"]) == list(saved_eager["model"])
        assert not any("_orig_mod" in key for key in saved["model"])


def test_a_missing_toolchain_falls_back_to_eager_with_one_warning(
    small_set,  # noqa: F811
    monkeypatch,
    caplog,
):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("Compiler: cc is not found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    with caplog.at_level(logging.WARNING, logger="so-vits-svc"):
        trainer = build_trainer(small_set, "fallback", train={"compile": True})
    assert not trainer.compiled
    warnings = [r.message for r in caplog.records if "train.compile" in r.message]
    assert len(warnings) == 1 and "cc is not found" in warnings[0]
    assert "training runs eagerly" in warnings[0]
    trainer.state.step = 1
    assert torch.isfinite(
        trainer.train_step(next(iter(trainer.train_loader))).losses["loss/g/total"]
    )


def test_compile_defaults_to_cuda_only():
    assert compilation.wants_compile(None, "cuda")
    assert not compilation.wants_compile(None, "cpu")
    assert compilation.wants_compile(True, "cpu") and not compilation.wants_compile(False, "cuda")


@pytest.mark.slow
def test_inductor_compiles_and_runs_on_this_cpu():
    if not any(Path(d, "g++").exists() or Path(d, "cc").exists() for d in ("/usr/bin", "/bin")):
        pytest.skip("no C/C++ compiler: inductor cannot run on this CPU")
    assert compilation.compiler_problem(torch.device("cpu")) is None
