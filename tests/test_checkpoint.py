"""The checkpoint format: upstream's layout, lenient and strict loading, resume selection."""

import json
import logging
import os
from pathlib import Path

import pytest
import torch

import checkpoint as ckpt
from core import run_log
from core.errors import UserError
from models import MultiPeriodDiscriminator, SynthesizerTrn

FIXTURES = Path(__file__).parent / "fixtures" / "upstream-4.1"


def mini_generator(**overrides) -> SynthesizerTrn:
    config = json.loads((FIXTURES / "mini_config.json").read_text())
    model = {**config["model"], **overrides}
    data = config["data"]
    return SynthesizerTrn(
        data["filter_length"] // 2 + 1,
        config["train"]["segment_size"] // data["hop_length"],
        **model,
    )


def test_round_trip_keeps_upstream_layout(tmp_path):
    torch.manual_seed(0)
    model = mini_generator()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    path = tmp_path / "G_7.pth"
    ckpt.save_checkpoint(model, optimizer, 1e-4, 3, path)

    raw = torch.load(path, weights_only=True)  # what upstream on current torch does
    assert set(raw) == {"model", "iteration", "optimizer", "learning_rate"}
    assert raw["iteration"] == 3 and raw["learning_rate"] == 1e-4
    assert any(key.endswith("weight_g") for key in raw["model"])
    assert not any("parametrizations" in key for key in raw["model"])
    # Same keys, in the same order, as an upstream checkpoint of this architecture.
    reference = torch.load(FIXTURES / "mini_G.pth", weights_only=True)["model"]
    assert list(raw["model"]) == list(reference)

    torch.manual_seed(1)
    fresh = mini_generator()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), 1e-4)
    _, _, learning_rate, iteration = ckpt.load_checkpoint(
        path, fresh, fresh_optimizer, strict=True
    )
    assert (learning_rate, iteration) == (1e-4, 3)
    for (name, ours), theirs in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(ours, theirs), name


def test_upstream_checkpoint_loads_strictly_with_its_optimizer(tmp_path):
    model = mini_generator()
    ckpt.load_checkpoint(FIXTURES / "mini_G.pth", model, strict=True)
    reference = torch.load(FIXTURES / "mini_G.pth", weights_only=True)["model"]
    assert torch.equal(ckpt.model_state_for_disk(model)["emb_g.weight"], reference["emb_g.weight"])


def test_other_speaker_count_loads_leniently_with_one_warning(tmp_path, caplog):
    base = mini_generator(n_speakers=200)
    optimizer = torch.optim.AdamW(base.parameters(), 1e-4)
    optimizer.zero_grad()
    sum(p.sum() for p in base.parameters()).backward()
    optimizer.step()
    path = tmp_path / "G_0.pth"
    ckpt.save_checkpoint(base, optimizer, 1e-4, 1, path)

    target = mini_generator(n_speakers=2)
    own_emb = target.emb_g.weight.detach().clone()
    target_optimizer = torch.optim.AdamW(target.parameters(), 1e-4)
    with caplog.at_level(logging.WARNING, logger="so-vits-svc"):
        ckpt.load_checkpoint(path, target, target_optimizer)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    kept = [message for message in warnings if "keep their fresh values" in message]
    assert len(kept) == 1 and "emb_g.weight" in kept[0]
    assert any("optimizer state not loaded" in message for message in warnings)
    assert torch.equal(target.emb_g.weight, own_emb)
    assert torch.equal(target.pre.weight, base.pre.weight)
    assert not target_optimizer.state  # nothing loaded into the optimizer

    with pytest.raises(UserError, match=r"G_0\.pth.*emb_g\.weight"):
        ckpt.load_checkpoint(path, mini_generator(n_speakers=2), strict=True)


def test_pickled_callable_checkpoint_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    path = tmp_path / "G_9.pth"
    torch.save(
        {"model": {}, "iteration": 1, "optimizer": None, "learning_rate": 1.0, "x": Payload()}, path
    )
    with pytest.raises(UserError, match="refused"):
        ckpt.load_checkpoint(path, mini_generator())
    assert not marker.exists()


def _write_pair(directory: Path, step: int, with_state: bool = True) -> None:
    generator = torch.nn.Linear(2, 2)
    extra = {"train_state": {"step": step}} if with_state else None
    ckpt.save_checkpoint(generator, None, 1e-4, 1, directory / f"G_{step}.pth", extra=extra)
    ckpt.save_checkpoint(generator, None, 1e-4, 1, directory / f"D_{step}.pth")


def test_resume_point_skips_broken_newest_files(tmp_path, caplog):
    for step in (0, 10, 20, 30):
        _write_pair(tmp_path, step)
    data = (tmp_path / "G_30.pth").read_bytes()
    (tmp_path / "G_30.pth").write_bytes(data[: len(data) // 2])  # truncated
    (tmp_path / "D_20.pth").write_bytes(b"corrupt" * 50)  # corrupt
    (tmp_path / "G_40.pth").write_bytes((tmp_path / "G_10.pth").read_bytes())  # unpaired
    with caplog.at_level(logging.WARNING, logger="so-vits-svc"):
        point = ckpt.find_resume_point(tmp_path)
    assert point is not None and point.step == 10 and not point.is_base_model
    warning = " ".join(r.getMessage() for r in caplog.records)
    for name in ("G_30.pth", "D_20.pth", "D_40.pth", "G_10.pth"):
        assert name in warning


def test_resume_point_rejects_step_disagreement_and_knows_base_models(tmp_path):
    _write_pair(tmp_path, 0, with_state=False)
    assert ckpt.find_resume_point(tmp_path).is_base_model
    _write_pair(tmp_path, 5)
    generator = torch.nn.Linear(2, 2)
    ckpt.save_checkpoint(
        generator, None, 1e-4, 1, tmp_path / "G_5.pth", extra={"train_state": {"step": 4}}
    )
    assert ckpt.find_resume_point(tmp_path).step == 0


def test_no_loadable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    assert ckpt.find_resume_point(tmp_path) is None
    (tmp_path / "G_100.pth").write_bytes(b"x" * 10)
    (tmp_path / "D_100.pth").write_bytes(b"y" * 10)
    with pytest.raises(UserError, match="none can be resumed"):
        ckpt.find_resume_point(tmp_path)


def test_clean_checkpoints_keeps_newest_pairs_and_base(tmp_path):
    for step in (0, 100, 200, 300, 400):
        _write_pair(tmp_path, step)
    ckpt.clean_checkpoints(tmp_path, 2)
    names = sorted(path.name for path in tmp_path.glob("*.pth"))
    assert names == ["D_0.pth", "D_300.pth", "D_400.pth", "G_0.pth", "G_300.pth", "G_400.pth"]
    assert ckpt.latest_checkpoint_path(tmp_path, "G_*.pth").endswith("G_400.pth")


def test_discriminator_round_trip_with_spectral_norm(tmp_path):
    source = MultiPeriodDiscriminator(use_spectral_norm=True)
    ckpt.save_checkpoint(source, None, 1e-4, 1, tmp_path / "D_1.pth")
    keys = torch.load(tmp_path / "D_1.pth", weights_only=True)["model"]
    assert any(key.endswith("weight_orig") for key in keys)
    target = MultiPeriodDiscriminator(use_spectral_norm=True)
    ckpt.load_checkpoint(tmp_path / "D_1.pth", target, strict=True)
    for ours, theirs in zip(source.state_dict().values(), target.state_dict().values()):
        assert torch.equal(ours, theirs)


def test_failed_save_raises_and_keeps_previous_checkpoints(tmp_path, monkeypatch):
    model = torch.nn.Linear(4, 4)
    ckpt.save_checkpoint(model, None, 1e-4, 1, tmp_path / "G_100.pth")
    before = (tmp_path / "G_100.pth").read_bytes()

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"partial data")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(model, None, 1e-4, 2, tmp_path / "G_200.pth")
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(model, None, 1e-4, 2, tmp_path / "G_100.pth")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["G_100.pth"]
    assert (tmp_path / "G_100.pth").read_bytes() == before


def test_git_revision_is_recorded_and_changes_warned(tmp_path, caplog, monkeypatch):
    import subprocess

    repo = tmp_path / "code"
    repo.mkdir()
    run = {"cwd": repo, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "one"], **run)
    model_dir = tmp_path / "logs" / "m"
    model_dir.mkdir(parents=True)
    run_log.record_git_revision(repo, model_dir)
    first = (model_dir / "githash").read_text()
    assert len(first) == 40
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "two"], **run)
    with caplog.at_level(logging.WARNING, logger="so-vits-svc"):
        run_log.record_git_revision(repo, model_dir)
    assert "code revision changed" in caplog.text
    assert (model_dir / "githash").read_text() != first
    run_log.record_git_revision(tmp_path / "logs", model_dir)  # not a checkout: no error


def test_first_save_cut_between_g_and_d_starts_over_with_a_warning(tmp_path, caplog):
    """Killed after G_0 and before D_0: nothing trained is lost, so the rerun starts anew."""
    generator = torch.nn.Linear(2, 2)
    ckpt.save_checkpoint(
        generator, None, 1e-4, 1, tmp_path / "G_0.pth", extra={"train_state": {"step": 0}}
    )
    with caplog.at_level(logging.WARNING, logger="so-vits-svc"):
        assert ckpt.find_resume_point(tmp_path) is None
    assert "G_0.pth" in caplog.text and "interrupted" in caplog.text
    # A lone D, or a lone G that is not ours (a base model), is still an error.
    (tmp_path / "G_0.pth").rename(tmp_path / "D_0.pth")
    with pytest.raises(UserError, match="none can be resumed"):
        ckpt.find_resume_point(tmp_path)
    (tmp_path / "D_0.pth").unlink()
    ckpt.save_checkpoint(generator, None, 1e-4, 1, tmp_path / "G_0.pth")
    with pytest.raises(UserError, match="none can be resumed"):
        ckpt.find_resume_point(tmp_path)
