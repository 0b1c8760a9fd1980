"""Generator files carry the config they were trained with (as BigVGAN's and DAC's do).

The tools load such a file without `-c`; an explicit config still wins; a file
without one (upstream's) and no `-c` is a one-line error naming the fix; and
upstream's loader, which reads only its four keys, still loads it strictly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import soundfile
import torch

import checkpoint as ckpt
import inference_main
import onnx_export
from inference.svc import Svc
from preprocessing.runner import run_cli
from tests.helpers_model import TINY_ENCODER, UPSTREAM, shared_trained_model, sung_clip
from utils import get_hparams_from_file

MINI_CONFIG = UPSTREAM / "mini_config.json"


def upstream_load_checkpoint(path: Path, hps: Any) -> int:
    """Stand-in for upstream 4.1's `utils.load_checkpoint` into upstream's generator.

    Upstream reads `iteration`, `learning_rate`, `optimizer` and `model` and no
    other key; its generator's state dict has our keys under the old
    weight-norm names (`to_legacy_state_dict`, proven by the parity tests), and
    it loads every one of them, strictly, with the saved shape.
    """
    saved = torch.load(path, map_location="cpu")  # upstream's call (weights only by default)
    iteration, _ = int(saved["iteration"]), float(saved["learning_rate"])
    assert saved["optimizer"] is None or isinstance(saved["optimizer"], dict)
    upstream_state = ckpt.to_legacy_state_dict(ckpt.build_generator(hps).state_dict())
    model = saved["model"]
    assert set(model) == set(upstream_state)
    for key, value in upstream_state.items():
        assert model[key].shape == value.shape, key
    return iteration


@pytest.fixture(scope="module")
def renamed_mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The upstream mini model saved by `save_checkpoint` with a config naming other singers."""
    config = json.loads(MINI_CONFIG.read_text())
    config["spk"] = {"soprano": 0, "mezzo": 1, "baritone": 2}
    hps = get_hparams_from_file(MINI_CONFIG)
    net_g = ckpt.build_generator(hps)
    ckpt.load_checkpoint(UPSTREAM / "mini_G.pth", net_g)
    path = tmp_path_factory.mktemp("described") / "G_5.pth"
    ckpt.save_checkpoint(net_g, None, 1e-4, 1, path, config=config)
    return path


def test_the_file_carries_its_config_and_an_explicit_one_wins(renamed_mini: Path) -> None:
    carried = torch.load(renamed_mini, weights_only=True)["config"]
    assert carried["spk"] == {"soprano": 0, "mezzo": 1, "baritone": 2}
    assert list(Svc(renamed_mini, device="cpu").spk2id) == ["soprano", "mezzo", "baritone"]
    assert list(Svc(renamed_mini, MINI_CONFIG, device="cpu").spk2id) == ["alto", "tenor", "bass"]
    assert upstream_load_checkpoint(renamed_mini, get_hparams_from_file(MINI_CONFIG)) == 1


def test_a_file_without_a_config_needs_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()
    soundfile.write(tmp_path / "raw" / "song.wav", sung_clip(0.3, 44100), 44100)
    argv = ["-m", str(UPSTREAM / "mini_G.pth"), "-n", "song.wav", "-s", "tenor"]
    assert run_cli(inference_main.main, argv) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "mini_G.pth: the file carries no config" in message
    assert message.endswith("(-c FILE)")
    assert run_cli(onnx_export.main, ["-n", "absent", "--model", str(UPSTREAM / "mini_G.pth")]) == 2
    assert "(--config FILE)" in capsys.readouterr().err


@pytest.mark.slow
def test_trained_g_file_converts_without_c_and_loads_in_upstream(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = shared_trained_model(tmp_path_factory)
    model_path = trained["model_path"]
    carried = torch.load(model_path, weights_only=True)["config"]
    assert carried["spk"] == trained["config"]["spk"] and "model_dir" not in carried
    hps = get_hparams_from_file(trained["config_path"])
    assert upstream_load_checkpoint(model_path, hps) >= 1

    sampling_rate = trained["config"]["data"]["sampling_rate"]
    work = tmp_path_factory.mktemp("convert_without_c")
    (work / "raw").mkdir()
    clip = sung_clip(0.8, sampling_rate)
    soundfile.write(work / "raw" / "song.wav", clip, sampling_rate)
    monkeypatch.chdir(work)
    argv = ["-m", str(model_path), "-n", "song.wav", "-s", "bob", "-wf", "wav",
            "--encoder_path", str(TINY_ENCODER)]
    assert run_cli(inference_main.main, argv) == 0
    converted, rate = soundfile.read(work / "results" / "song.wav_0key_bob_sovits_pm.wav")
    assert rate == sampling_rate and converted.shape == clip.shape
