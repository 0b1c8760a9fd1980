"""The config schema: templates validate, faults are all reported, defaults noted."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from core.config_schema import SCHEMA, key_specs, render_config_table, validate_config
from core.errors import UserError
from tests.helpers_data import REPO_ROOT, make_config

TEMPLATES = sorted((REPO_ROOT / "configs_template").glob("*.json"))


def _template() -> dict:
    return json.loads((REPO_ROOT / "configs_template" / "config_template.json").read_text())


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_upstream_templates_validate(template: Path) -> None:
    config = json.loads(template.read_text(encoding="utf-8"))
    filled, messages = validate_config(config, str(template))
    assert not [m for m in messages if m.startswith("warning")], messages
    assert filled["train"]["num_workers"] is None
    assert "sampling_rate" not in filled["model"]
    assert config["train"].get("num_workers", "absent") == "absent"  # input untouched


def test_test_config_validates(tmp_path: Path) -> None:
    filled, messages = validate_config(make_config(tmp_path), "tiny")
    assert filled["data"]["hop_length"] == 256
    # ssl_dim 32 is not a real encoder's width: a warning, not an error.
    assert any("model.ssl_dim 32" in m for m in messages if m.startswith("warning"))


def test_many_faults_reported_together() -> None:
    config = _template()
    del config["train"]["learning_rate"]  # missing required
    del config["data"]["sampling_rate"]  # missing required
    config["train"]["batch_size"] = "6"  # wrong type
    config["train"]["fp16_run"] = 1  # int is not a bool
    config["train"]["epochs"] = True  # bool is not an int
    config["train"]["segment_size"] = 10000  # not a multiple of hop 512
    config["train"]["half_type"] = "fp8"
    config["data"]["win_length"] = 4096  # > filter_length
    config["data"]["hop_length"] = 256  # != prod(upsample_rates) = 512
    config["data"]["unit_interpolate_mode"] = "cubic"
    config["model"]["hidden_channels"] = 0  # non-positive
    config["model"]["resblock"] = "3"
    config["model"]["resblock_dilation_sizes"] = [[1, 3, 5], [1, 3, 5]]  # 3 kernels
    config["model"]["upsample_kernel_sizes"] = [16, 16, 4, 4]  # 5 rates
    config["model"]["vocoder_name"] = "wavenet"
    config["spk"]["nyaru"] = 200  # n_speakers is 200
    config["spk"]["ghost"] = "1"
    with pytest.raises(UserError) as caught:
        validate_config(config, "configs/config.json")
    message = str(caught.value)
    lines = message.splitlines()
    assert lines[0].startswith("configs/config.json: ")
    expected = [
        "train.learning_rate is missing",
        "data.sampling_rate is missing",
        "train.batch_size is '6'; it must be an integer",
        "train.fp16_run is 1; it must be true or false",
        "train.epochs is True; it must be an integer",
        "train.segment_size 10000 is not a multiple of data.hop_length 256",
        "train.half_type is 'fp8'",
        "data.win_length 4096 is larger than data.filter_length 2048",
        "data.hop_length 256 is not the product of model.upsample_rates",
        "data.unit_interpolate_mode is 'cubic'",
        "model.hidden_channels is 0; it must be greater than 0",
        "model.resblock is '3'",
        "model.resblock_kernel_sizes has 3 entries but model.resblock_dilation_sizes has 2",
        "model.upsample_rates has 5 entries but model.upsample_kernel_sizes has 4",
        "model.vocoder_name: unknown vocoder 'wavenet'",
        "spk.nyaru is 200, outside range(model.n_speakers=200)",
        "spk.ghost is '1'; it must be an integer id",
    ]
    for fragment in expected:
        assert sum(fragment in line for line in lines[1:]) == 1, (fragment, message)
    assert len(lines) == 1 + len(expected), message


def test_ints_accepted_for_floats_and_mel_fmax_null() -> None:
    config = _template()
    config["train"]["learning_rate"] = 1
    config["train"]["c_kl"] = 1
    config["data"]["mel_fmax"] = None
    filled, _ = validate_config(config, "c.json")
    assert filled["train"]["learning_rate"] == 1


def test_defaults_filled_with_notes_and_unknown_keys_warned() -> None:
    config = _template()
    for section, key in [
        ("train", "half_type"), ("train", "warmup_epochs"), ("train", "all_in_mem"),
        ("train", "vol_aug"), ("data", "unit_interpolate_mode"), ("model", "vocoder_name"),
        ("model", "speech_encoder"), ("model", "vol_embedding"),
        ("model", "use_automatic_f0_prediction"), ("train", "use_sr"),
    ]:
        del config[section][key]
    config["train"]["learning_rat"] = 0.001
    config["model"]["n_flow_layers"] = 4
    config["extra"] = {}
    original = copy.deepcopy(config)
    filled, messages = validate_config(config, "old.json")
    assert config == original
    assert filled["train"]["half_type"] == "fp16"
    assert filled["train"]["warmup_epochs"] == 0
    assert filled["train"]["all_in_mem"] is False and filled["train"]["vol_aug"] is False
    assert filled["data"]["unit_interpolate_mode"] == "left"
    assert filled["model"]["vocoder_name"] == "nsf-hifigan"
    assert filled["model"]["speech_encoder"] == "vec768l12"
    assert filled["model"]["vol_embedding"] is False
    assert filled["model"]["use_automatic_f0_prediction"] is True
    assert "use_sr" not in filled["train"]  # ignored keys are not filled in
    notes = [m for m in messages if m.startswith("note")]
    # one note per defaulted upstream key: the nine above (not our own num_workers)
    assert len(notes) == 9, notes
    assert any("train.half_type is missing; using the default 'fp16'" in n for n in notes)
    warnings = [m for m in messages if m.startswith("warning")]
    assert len(warnings) == 3, warnings
    assert any("train.learning_rat" in w for w in warnings)
    assert any("model.n_flow_layers" in w for w in warnings)
    assert any("'extra'" in w for w in warnings)


def test_missing_sections_and_non_dict_config() -> None:
    with pytest.raises(UserError, match="section 'model' is missing"):
        validate_config({"train": {}, "data": {}, "spk": {"a": 0}}, "x.json")
    with pytest.raises(UserError, match="JSON object"):
        validate_config([], "x.json")  # type: ignore[arg-type]


def test_schema_and_table_cover_every_key() -> None:
    template = _template()
    for section in ("train", "data", "model"):
        names = {spec.name for spec in key_specs(section)}
        assert set(template[section]) <= names, set(template[section]) - names
    table = render_config_table()
    assert table.count("\n") == len(SCHEMA) + 3  # header, rule, keys, spk row
    assert "| train | `num_workers` | `null` |" in table
    assert "| train | `batch_size` | required |" in table
    statuses = {spec.status for spec in SCHEMA}
    assert statuses == {"used", "ignored", "added"}
    ignored = {spec.name for spec in SCHEMA if spec.status == "ignored"}
    assert ignored == {"init_lr_ratio", "use_sr", "max_speclen", "n_layers_q",
                       "speaker_embedding"}
