"""FCPE network, front end, decoding and wrapper against upstream so-vits-svc 4.1 recordings."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from modules.f0_predictors import get_f0_predictor
from modules.f0_predictors.base import frames_to_grid
from modules.f0_predictors.fcpe import (
    FCPE,
    FCPEF0Predictor,
    FCPEPitch,
    decode_salience,
    fcpe_from_state_dict,
    load_fcpe,
)

FIXTURES = Path(__file__).parent / "fixtures" / "fcpe"
SMALL = FIXTURES / "fcpe_small.pt"
THRESHOLDS = ("default", "mid", "all_unvoiced")


class TrainerConfig(dict):
    """Stands in for the dict subclass a trainer may pickle its config as."""


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURES / "fcpe_reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def fcpe() -> FCPEPitch:
    return load_fcpe(SMALL)


def _threshold(reference: dict, name: str) -> float:
    return {"default": 0.05, "mid": float(reference["threshold_mid"]), "all_unvoiced": 1.0}[name]


def _assert_f0_close(actual: torch.Tensor | np.ndarray, expected: torch.Tensor) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), expected.double().numpy()
    np.testing.assert_array_equal(actual == 0, expected == 0)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=0)


def test_mel_front_end(fcpe: FCPEPitch, reference: dict) -> None:
    mel = fcpe.mel(reference["audio16k"][None], 16000)
    assert mel.shape == (1, 101, 128)
    torch.testing.assert_close(mel, reference["mel"], rtol=0, atol=1e-4)


def test_network_and_decoders(fcpe: FCPEPitch, reference: dict) -> None:
    torch.testing.assert_close(fcpe.model.cent_table, reference["cent_table"], rtol=0, atol=0)
    with torch.no_grad():
        salience = fcpe.model(reference["mel"])
    torch.testing.assert_close(salience, reference["salience"], rtol=0, atol=1e-5)
    table = fcpe.model.cent_table
    for name in ("default", "mid"):
        f0 = decode_salience(salience, table, _threshold(reference, name))
        _assert_f0_close(f0, reference[f"f0_threshold_{name}"])
    mid = reference["f0_threshold_mid"]
    assert 0.2 < float((mid == 0).float().mean()) < 0.6  # the mid threshold really splits
    _assert_f0_close(
        decode_salience(salience, table, 0.05, local=False), reference["f0_argmax_decoder"]
    )
    # The stored pitch of the whole chain, from audio.
    _assert_f0_close(fcpe(reference["audio16k"], 16000), reference["f0_threshold_default"])


@pytest.mark.parametrize("name", THRESHOLDS)
def test_predictor_matches_upstream_wrapper(reference: dict, name: str) -> None:
    predictor = get_f0_predictor(
        "fcpe",
        hop_length=160,
        sampling_rate=16000,
        device="cpu",
        threshold=_threshold(reference, name),
        weights_path=str(SMALL),
    )
    f0, uv = predictor.compute_f0_uv(reference["audio16k"].numpy())
    assert f0.shape == uv.shape == (100,)
    assert f0.dtype == uv.dtype == np.float64
    np.testing.assert_allclose(f0, reference[f"pred16k_f0_{name}"].numpy(), rtol=1e-5, atol=0)
    np.testing.assert_array_equal(uv, reference[f"pred16k_uv_{name}"].numpy())


@pytest.mark.parametrize("name", ["default", "mid"])
def test_post_processing_on_the_44k_grid(reference: dict, name: str) -> None:
    f0, uv = frames_to_grid(reference[f"f0_threshold_{name}"][0, :, 0], 86, 512, 44100)
    np.testing.assert_allclose(f0, reference[f"post44k_f0_{name}"].numpy(), rtol=1e-7, atol=0)
    np.testing.assert_array_equal(uv, reference[f"post44k_uv_{name}"].numpy())


def test_44k_input_gets_upstream_frame_count(fcpe: FCPEPitch, reference: dict) -> None:
    tone = torch.sin(2 * torch.pi * 220 * torch.arange(44100) / 44100)
    mel = fcpe.mel(tone[None], 44100)
    # 16000 resampled samples give 100 frames; upstream wants 44100 // 160 + 1 = 276
    # (counted before resampling) and so appends exactly one copy of the last frame.
    assert mel.shape == (1, 101, 128)
    torch.testing.assert_close(mel[:, -1], mel[:, -2], rtol=0, atol=0)
    predictor = get_f0_predictor("fcpe", device="cpu", weights_path=str(SMALL))
    f0, uv = predictor.compute_f0_uv(tone.numpy())
    assert f0.shape == uv.shape == (44100 // 512,)


def test_full_size_layout_matches_the_released_manifest() -> None:
    manifest = json.loads((FIXTURES / "fcpe_state_dict_manifest.json").read_text())["default"]
    state = FCPE().state_dict()
    assert list(state) == list(manifest["state_dict"])
    for key, tensor in state.items():
        assert [list(tensor.shape), str(tensor.dtype).split(".")[1]] == manifest["state_dict"][key]
    assert sum(t.numel() for t in state.values()) == manifest["params"] == 33_306_168
    rebuilt = fcpe_from_state_dict(state)
    assert len(rebuilt.decoder._layers) == 12 and rebuilt.norm.normalized_shape == (512,)


def test_a_pickled_config_class_is_read_without_running_it(
    fcpe: FCPEPitch, reference: dict, tmp_path: Path
) -> None:
    checkpoint = torch.load(SMALL, weights_only=True)
    config = TrainerConfig(checkpoint["config"])
    config["mel"] = TrainerConfig(checkpoint["config"]["mel"])
    path = tmp_path / "fcpe.pt"
    torch.save({"config": config, "model": checkpoint["model"]}, path)
    loaded = load_fcpe(path)
    assert loaded.mel_settings == fcpe.mel_settings
    _assert_f0_close(loaded(reference["audio16k"], 16000), reference["f0_threshold_default"])


def test_missing_weights_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"pretrain/fcpe\.pt") as error:
        get_f0_predictor("fcpe", device="cpu")
    assert "FCPE" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UserError, match="my_fcpe.pt"):
        get_f0_predictor("fcpe", device="cpu", weights_path=str(tmp_path / "my_fcpe.pt"))


def test_wrong_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "fcpe.pt"
    torch.save({"weights": {}}, bad)
    with pytest.raises(UserError, match="has no 'model'"):
        load_fcpe(bad)
    torch.save({"model": {"stack.0.weight": torch.zeros(1)}}, bad)
    with pytest.raises(UserError, match="not an FCPE checkpoint"):
        load_fcpe(bad)


def test_conversion_uses_fcpe(tmp_path: Path) -> None:
    from inference.svc import Svc
    from tests.helpers_model import TINY_ENCODER, UPSTREAM, sung_clip

    svc = Svc(
        UPSTREAM / "mini_G.pth",
        UPSTREAM / "mini_config.json",
        device="cpu",
        encoder_path=TINY_ENCODER,
        f0_weights=SMALL,
    )
    clip = sung_clip(0.5, 44100)
    out = svc.convert_array(clip, 44100, "bass", f0_predictor="fcpe", pad_seconds=0.1)
    assert out.shape == clip.shape and np.isfinite(out).all() and np.abs(out).max() > 0
    assert isinstance(svc.f0_predictor("fcpe"), FCPEF0Predictor)
