"""Speech encoders against features recorded from fairseq and upstream so-vits-svc."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import zlib
from pathlib import Path

import pytest
import torch

from core.errors import UserError
from core.safe_io import ForeignObject, load_torch_foreign
from modules.speech_encoders import (
    CONTENTVEC_PATH,
    HUBERT_SOFT_PATH,
    SUPPORTED_ENCODERS,
    load_fairseq_hubert,
    load_speech_encoder,
)
from modules.speech_encoders.hubert import parse_conv_layers

FIXTURES = Path(__file__).parent / "fixtures"
TINY_CKPT = FIXTURES / "fairseq-hubert-tiny" / "tiny_hubert_fairseq.pt"
TINY_FEATURES = FIXTURES / "fairseq-hubert-tiny" / "tiny_hubert_features.pt"
SOFT_DIR = FIXTURES / "upstream-4.1-pipeline"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny_reference() -> dict[str, torch.Tensor]:
    return torch.load(TINY_FEATURES, weights_only=True)


@pytest.fixture(scope="module")
def tiny_model():
    return load_fairseq_hubert(TINY_CKPT)


def _max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


@pytest.mark.parametrize("output_layer", [1, 2, 3, 12])
def test_fairseq_features_match_every_layer(tiny_model, tiny_reference, output_layer) -> None:
    reference_layer = min(output_layer, 3)  # the tiny model has 3 layers
    with torch.no_grad():
        hidden = tiny_model.extract_features(tiny_reference["wav16k"], output_layer=output_layer)
        projected = tiny_model.final_proj(hidden)
    assert hidden.shape == (1, 49, 48)
    assert _max_error(hidden.transpose(1, 2), tiny_reference[f"layer{reference_layer}"]) \
        < TOLERANCE
    assert _max_error(projected.transpose(1, 2),
                      tiny_reference[f"layer{reference_layer}_final_proj"]) < TOLERANCE


def test_tiny_config_read_from_checkpoint(tiny_model) -> None:
    config = tiny_model.config
    assert (config.encoder_layers, config.encoder_embed_dim, config.encoder_ffn_embed_dim) \
        == (3, 48, 96)
    assert (config.encoder_attention_heads, config.conv_pos, config.conv_pos_groups) == (4, 16, 4)
    assert config.final_dim == 16 and not config.layer_norm_first
    assert tiny_model.final_proj.out_features == 16
    assert tiny_model.min_samples == 400


@pytest.mark.parametrize(
    ("name", "reference_key", "dim"),
    [
        ("vec768l12", "layer3", 48),
        ("vec768l9", "layer3", 48),
        ("vec256l9", "layer3_final_proj", 16),
        ("vec256l12", "layer3_final_proj", 16),
    ],
)
def test_named_contentvec_encoders(tiny_reference, name, reference_key, dim) -> None:
    encoder = load_speech_encoder(name, weights_path=str(TINY_CKPT))
    assert encoder.name == name and encoder.dim == dim
    wav = tiny_reference["wav16k"][0]
    features = encoder.encode(wav)
    assert features.shape == (1, dim, 49)
    assert not features.requires_grad
    assert _max_error(features, tiny_reference[reference_key]) < TOLERANCE
    # (samples, channels) input is averaged over channels, as upstream does.
    stereo = torch.stack([wav * 0.5, wav * 1.5], dim=1)
    assert _max_error(encoder.encode(stereo), tiny_reference[reference_key]) < TOLERANCE


def test_reading_fairseq_checkpoint_runs_no_pickled_code() -> None:
    assert "fairseq" not in sys.modules
    checkpoint = load_torch_foreign(TINY_CKPT)
    dictionaries = checkpoint["task_state"]["dictionaries"]
    assert dictionaries and all(isinstance(item, ForeignObject) for item in dictionaries)
    assert isinstance(checkpoint["args"], ForeignObject)
    assert vars(checkpoint["args"])["encoder_layers"] == 3
    load_speech_encoder("vec256l9", weights_path=TINY_CKPT)
    assert "fairseq" not in sys.modules


class _MakeDirectory:
    """Pickles as a call to os.mkdir: a loader that runs pickled code creates the folder."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_hostile_pickle_is_not_run(tmp_path) -> None:
    tiny = load_torch_foreign(TINY_CKPT)
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pt"
    torch.save({"args": _MakeDirectory(str(marker)), "cfg": tiny["cfg"], "model": tiny["model"]},
               hostile)
    encoder = load_speech_encoder("vec768l12", weights_path=hostile)
    assert encoder.dim == 48
    assert not marker.exists()


def test_config_falls_back_to_args_namespace(tmp_path, tiny_reference) -> None:
    """Older fairseq checkpoints keep the settings only in `args` (an argparse.Namespace)."""
    tiny = load_torch_foreign(TINY_CKPT)
    legacy = tmp_path / "legacy.pt"
    torch.save({"args": argparse.Namespace(**tiny["cfg"]["model"]), "cfg": None,
                "model": tiny["model"]}, legacy)
    encoder = load_speech_encoder("vec768l12", weights_path=legacy)
    assert _max_error(encoder.encode(tiny_reference["wav16k"][0]), tiny_reference["layer3"]) \
        < TOLERANCE


def _rebuild_hubert_soft_state(manifest_path: Path) -> dict[str, torch.Tensor]:
    """The README's rule: seeded normal weights per key, plus one for norm gains."""
    manifest = json.loads(manifest_path.read_text())
    state = {}
    for key, shape in manifest.items():
        generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        value = 0.02 * torch.randn(math.prod(shape), generator=generator).reshape(shape)
        if key.endswith(("norm.weight", "weight_g")):
            value = value + 1.0
        state[f"module.{key}"] = value
    return state


def test_hubert_soft_matches_upstream_units(tmp_path) -> None:
    weights = tmp_path / "hubert-soft-0d54a1f4.pt"
    torch.save(_rebuild_hubert_soft_state(SOFT_DIR / "hubert_soft_state_dict_manifest.json"),
               weights)
    try:
        encoder = load_speech_encoder("hubertsoft", weights_path=weights)
    finally:
        weights.unlink()  # 380 MB: do not leave it behind
    reference = torch.load(SOFT_DIR / "hubert_soft_reference.pt", weights_only=True)
    assert encoder.name == "hubertsoft" and encoder.dim == 256
    units = encoder.encode(reference["wav16k"])
    assert units.shape == (1, 256, 50)
    assert _max_error(units, reference["units"]) < 1e-6
    assert reference["units"].abs().max().item() > 1e-2  # the comparison is not vacuous


@pytest.mark.parametrize(
    ("name", "default", "where"),
    [
        ("vec768l12", CONTENTVEC_PATH, "auspicious3000/contentvec"),
        ("vec256l9", CONTENTVEC_PATH, "auspicious3000/contentvec"),
        ("hubertsoft", HUBERT_SOFT_PATH, "bshall/hubert/releases"),
    ],
)
def test_missing_default_weights_name_the_file(tmp_path, monkeypatch, name, default,
                                               where) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as caught:
        load_speech_encoder(name)
    message = str(caught.value)
    assert default in message
    assert where in message


def test_missing_explicit_weights_name_the_file(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "my_contentvec.pt"
    with pytest.raises(UserError, match="my_contentvec.pt"):
        load_speech_encoder("vec768l12", weights_path=missing)


@pytest.mark.parametrize("name", ["whisper-ppg", "cnhubertlarge", "dphubert", "wavlmbase+",
                                  "whisper-ppg-large", "vec768l12-onnx", "nonsense"])
def test_unsupported_encoders_list_supported_names(name) -> None:
    with pytest.raises(UserError) as caught:
        load_speech_encoder(name)
    message = str(caught.value)
    assert name in message
    assert all(supported in message for supported in SUPPORTED_ENCODERS)


def test_conv_layer_spec_is_parsed_not_evaluated() -> None:
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    )
    with pytest.raises(UserError):
        parse_conv_layers("__import__('os').getcwd()")


def test_too_short_audio_is_a_user_error() -> None:
    encoder = load_speech_encoder("vec768l12", weights_path=TINY_CKPT)
    with pytest.raises(UserError, match="shorter"):
        encoder.encode(torch.zeros(399))
    assert encoder.encode(torch.zeros(400)).shape == (1, 48, 1)
