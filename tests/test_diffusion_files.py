"""Diffusion model files and configs: upstream's layouts both ways, one-line errors otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from core.errors import UserError
from diffusion.config import DiffusionConfig, load_diffusion_config, save_diffusion_config
from diffusion.files import (
    load_diffusion_state,
    load_unit2mel,
    read_diffusion_checkpoint,
    save_diffusion_model,
)
from diffusion.unit2mel import Unit2Mel

FIXTURES = Path(__file__).parent / "fixtures" / "upstream-4.1-diffusion"


@pytest.fixture(scope="module")
def fixture_model() -> Unit2Mel:
    model, _ = load_unit2mel(FIXTURES / "diffusion_model.pt", FIXTURES / "diffusion_config.yaml")
    return model


def _yaml(tmp_path: Path, edit: dict) -> Path:
    """The fixture config with `edit` ({"section.key": value}) applied."""
    raw = yaml.safe_load((FIXTURES / "diffusion_config.yaml").read_text())
    for dotted, value in edit.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.dump(raw))
    return path


def test_saved_model_round_trips_in_upstreams_layout(
    fixture_model: Unit2Mel, tmp_path: Path
) -> None:
    path = tmp_path / "model_120.pt"
    save_diffusion_model(fixture_model, 120, path)
    raw = torch.load(path, weights_only=True)  # data only: upstream's torch.load reads it too
    assert set(raw) == {"global_step", "model"} and raw["global_step"] == 120
    expected = fixture_model.state_dict()
    assert list(raw["model"]) == list(expected)
    assert all(torch.equal(raw["model"][k], v) for k, v in expected.items())
    optimizer = torch.optim.AdamW(fixture_model.parameters(), lr=1e-4)
    save_diffusion_model(fixture_model, 7, tmp_path / "model_7.pt", optimizer)
    assert set(read_diffusion_checkpoint(tmp_path / "model_7.pt")) == {
        "global_step",
        "model",
        "optimizer",
    }
    shutil.copy(FIXTURES / "diffusion_config.yaml", tmp_path / "config.yaml")
    again, config = load_unit2mel(path)  # the config beside the model, as upstream looks for it
    assert not again.training and config.model.n_spk == 2
    assert all(torch.equal(again.state_dict()[k], v) for k, v in expected.items())


def test_encoder_width_mismatch_is_one_line_with_the_fix(tmp_path: Path) -> None:
    config = _yaml(tmp_path, {"data.encoder_out_channels": 768})
    with pytest.raises(UserError) as error:
        load_unit2mel(FIXTURES / "diffusion_model.pt", config)
    message = str(error.value)
    assert "\n" not in message and "diffusion_model.pt" in message
    assert "width 32" in message and "encoder_out_channels 768" in message
    assert "encoder_out_channels: 32" in message


def test_missing_keys_are_one_line(fixture_model: Unit2Mel, tmp_path: Path) -> None:
    state = dict(fixture_model.state_dict())
    del state["spk_embed.weight"]
    torch.save({"global_step": 1, "model": state}, tmp_path / "model_1.pt")
    with pytest.raises(UserError) as error:
        load_unit2mel(tmp_path / "model_1.pt", FIXTURES / "diffusion_config.yaml")
    assert "\n" not in str(error.value)
    assert "model_1.pt" in str(error.value) and "spk_embed.weight" in str(error.value)
    with pytest.raises(UserError, match="n_chans|does not fit"):
        load_unit2mel(FIXTURES / "diffusion_model.pt", _yaml(tmp_path, {"model.n_chans": 16}))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt"):
        read_diffusion_checkpoint(tmp_path / "junk.pt")


def test_fine_tuning_from_a_single_speaker_base_keeps_fresh_speaker_embeddings(
    tmp_path: Path,
) -> None:
    base = Unit2Mel(32, 1, True, 128, 2, 32, 32, timesteps=100)
    save_diffusion_model(base, 0, tmp_path / "model_0.pt")
    four = Unit2Mel(32, 4, True, 128, 2, 32, 32, timesteps=100)
    fresh = four.spk_embed.weight.detach().clone()
    step = load_diffusion_state(tmp_path / "model_0.pt", four, strict=False)
    assert step == 0 and torch.equal(four.spk_embed.weight, fresh)
    assert torch.equal(four.unit_embed.weight, base.unit_embed.weight)
    with pytest.raises(UserError, match="spk_embed"):
        load_diffusion_state(tmp_path / "model_0.pt", four, strict=True)


def test_config_defaults_are_upstreams_template(tmp_path: Path) -> None:
    path = tmp_path / "diffusion.yaml"
    path.write_text("model:\n  n_spk: 3\nspk:\n  a: 0\n  b: 1\n  c: 2\n")
    config = load_diffusion_config(path)
    assert config.model == type(config.model)(n_spk=3)
    assert (config.model.n_layers, config.model.n_chans, config.model.timesteps) == (20, 512, 1000)
    assert config.data.encoder_out_channels == 768 and config.infer.method == "dpm-solver++"
    assert config.env.expdir == "logs/44k/diffusion" and config.train.lr == 1e-4
    save_diffusion_config(config, tmp_path / "again.yaml")
    assert load_diffusion_config(tmp_path / "again.yaml") == config


def test_config_keeps_unknown_keys_and_round_trips(tmp_path: Path) -> None:
    config = load_diffusion_config(_yaml(tmp_path, {"train.my_key": 3}))
    assert config.extra == {"train": {"my_key": 3}}
    save_diffusion_config(config, tmp_path / "out.yaml")
    written = yaml.safe_load((tmp_path / "out.yaml").read_text())
    original = yaml.safe_load((FIXTURES / "diffusion_config.yaml").read_text())
    original["train"]["my_key"] = 3
    assert written == original


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"model.n_chans": "wide"}, "model.n_chans must be an integer"),
        ({"model.use_pitch_aug": 1}, "model.use_pitch_aug must be true or false"),
        ({"infer.method": "euler"}, "infer.method 'euler'"),
        ({"model.timesteps": 0}, "model.timesteps is 0"),
        ({"model.n_spk": 1}, "set model.n_spk"),
        ({"train.amp_dtype": "fp8"}, "train.amp_dtype"),
    ],
)
def test_bad_config_values_are_one_line(tmp_path: Path, edit: dict, expected: str) -> None:
    with pytest.raises(UserError) as error:
        load_diffusion_config(_yaml(tmp_path, edit))
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert "config.yaml" in str(error.value)


def test_missing_or_broken_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_diffusion_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_diffusion_config(tmp_path / "bad.yaml")
    assert DiffusionConfig().k_step_max == 1000
