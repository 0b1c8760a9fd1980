"""compress_model.py: release files without optimizer or training state, optionally float16."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import checkpoint as ckpt
import compress_model
import utils
from inference.svc import Svc
from models import SynthesizerTrn
from preprocessing.runner import run_cli
from tests.helpers_model import (
    TINY_ENCODER,
    UPSTREAM,
    run_script,
    shared_trained_model,
    sung_clip,
)

MINI_CONFIG = UPSTREAM / "mini_config.json"


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini model saved as this project's trainer saves it: optimizer and train_state."""
    hps = utils.get_hparams_from_file(MINI_CONFIG)
    net_g = SynthesizerTrn(
        hps.data.filter_length // 2 + 1, hps.train.segment_size // hps.data.hop_length,
        **hps.model.to_dict(),
    )
    ckpt.load_checkpoint(UPSTREAM / "mini_G.pth", net_g)
    optimizer = torch.optim.AdamW(net_g.parameters(), 1e-4)
    for parameter in net_g.parameters():  # one step gives the optimizer its state
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    ckpt.load_checkpoint(UPSTREAM / "mini_G.pth", net_g)  # restore the recorded weights
    path = tmp_path_factory.mktemp("compress") / "G_800.pth"
    ckpt.save_checkpoint(net_g, optimizer, 1e-4, 7, path,
                          extra={"train_state": {"step": 800, "epoch": 7}})
    return path


def _audio(model_path: Path) -> torch.Tensor:
    svc = Svc(model_path, MINI_CONFIG, device="cpu")
    inputs = torch.load(UPSTREAM / "mini_inputs.pt", weights_only=True)
    return svc.infer_features(inputs["c"], inputs["f0"], inputs["uv"], 1, vol=inputs["vol"])


def test_release_has_no_optimizer_or_train_state(training_checkpoint: Path) -> None:
    source = torch.load(training_checkpoint, weights_only=True)
    assert source["optimizer"]["state"] and "train_state" in source
    output = training_checkpoint.with_name("G_800_release.pth")
    assert compress_model.main(["-c", str(MINI_CONFIG), "-i", str(training_checkpoint)]) == 0
    release = torch.load(output, weights_only=True)
    assert set(release) == {"model", "iteration", "optimizer", "learning_rate", "config"}
    assert release["config"]["model"]["ssl_dim"] == utils.get_hparams_from_file(
        MINI_CONFIG).model.ssl_dim  # the release describes its model
    assert release["optimizer"] is None and release["iteration"] == 0
    assert not any(key.startswith("enc_q.") for key in release["model"])
    assert all(value.dtype == torch.float32 for value in release["model"].values())
    assert os.path.getsize(output) < os.path.getsize(training_checkpoint) / 2
    assert torch.equal(_audio(output), _audio(UPSTREAM / "mini_G.pth"))


def test_half_release_is_half_the_size_and_converts(training_checkpoint: Path) -> None:
    full = training_checkpoint.with_name("full.pth")
    compress_model.main(["-c", str(MINI_CONFIG), "-i", str(training_checkpoint), "-o", str(full)])
    assert compress_model.main(["-c", str(MINI_CONFIG), "-i", str(training_checkpoint),
                                "-hf"]) == 0
    half = training_checkpoint.with_name("G_800_release_half.pth")
    weights = torch.load(half, weights_only=True)["model"]
    assert all(value.dtype == torch.float16 for value in weights.values())
    ratio = os.path.getsize(half) / os.path.getsize(full)
    assert 0.4 < ratio < 0.6
    audio, reference = _audio(half), _audio(full)
    assert torch.isfinite(audio).all() and audio.shape == reference.shape
    assert torch.corrcoef(torch.stack([audio, reference]))[0, 1] > 0.9


def test_wrong_config_exits_2(training_checkpoint: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    other = UPSTREAM / "mini2_config.json"
    argv = ["-c", str(other), "-i", str(training_checkpoint), "-o",
            str(training_checkpoint.with_name("x.pth"))]
    assert run_cli(compress_model.main, argv) == 2
    assert "does not fit" in capsys.readouterr().err
    assert not training_checkpoint.with_name("x.pth").exists()


@pytest.mark.slow
def test_trained_checkpoint_release_converts(tmp_path_factory: pytest.TempPathFactory) -> None:
    trained = shared_trained_model(tmp_path_factory)
    output = tmp_path_factory.mktemp("release") / "G_release.pth"
    result = run_script("compress_model.py", "-c", trained["config_path"], "-i",
                        trained["model_path"], "-o", output, cwd=trained["root"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train_state" not in torch.load(output, weights_only=True)
    sampling_rate = trained["config"]["data"]["sampling_rate"]
    clip = sung_clip(0.6, sampling_rate)
    svc = Svc(output, trained["config_path"], device="cpu", encoder_path=TINY_ENCODER)
    assert svc.convert_array(clip, sampling_rate, "alice").shape == clip.shape
