"""RMVPE network, front end and decoding against upstream so-vits-svc 4.1 recordings."""

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from modules.f0_predictors import get_f0_predictor
from modules.f0_predictors.resample import SincResampler
from modules.f0_predictors.rmvpe import (
    CENTS_OFFSET,
    E2E0,
    RMVPE,
    RMVPEMelSpectrogram,
    salience_to_f0,
)

FIXTURES = Path(__file__).parent / "fixtures" / "rmvpe"


def rebuild_weights(manifest: dict) -> dict[str, torch.Tensor]:
    """Deterministic stand-in weights, as the fixture README prescribes."""
    weights = {}
    for key, (shape, dtype) in manifest.items():
        if dtype != "torch.float32":
            weights[key] = torch.zeros(shape, dtype=getattr(torch, dtype.split(".")[1]))
            continue
        generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        value = 0.05 * torch.randn(math.prod(shape), generator=generator)
        if key.endswith("running_var"):
            value = value.abs() + 1.0
        weights[key] = value.reshape(shape)
    return weights


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((FIXTURES / "rmvpe_state_dict_manifest.json").read_text())


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURES / "rmvpe_reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def model(manifest: dict) -> E2E0:
    network = E2E0(4, 1, (2, 2))
    network.load_state_dict(rebuild_weights(manifest))
    return network.eval()


def test_state_dict_matches_manifest(model: E2E0, manifest: dict) -> None:
    state = model.state_dict()
    assert list(state) == list(manifest)
    for key, tensor in state.items():
        assert list(tensor.shape) == manifest[key][0], key
        assert str(tensor.dtype) == manifest[key][1], key
    assert sum(t.numel() for t in state.values()) == 92_048_223


def test_mel_front_end(reference: dict) -> None:
    mel = RMVPEMelSpectrogram()(reference["audio16k"], center=True)
    assert mel.shape == (1, 128, 101)
    torch.testing.assert_close(mel, reference["mel"], rtol=0, atol=1e-4)


def test_network_and_decoding(model: E2E0, reference: dict) -> None:
    rmvpe = RMVPE(model)
    # The recording padded the frames with zeros.
    hidden = rmvpe.mel2hidden(reference["mel"], pad_mode="constant")
    assert hidden.shape == (1, 101, 360)
    torch.testing.assert_close(hidden, reference["hidden"], rtol=0, atol=1e-5)
    f0 = salience_to_f0(hidden[0], threshold=0.03)
    torch.testing.assert_close(f0, reference["f0"], rtol=0, atol=1e-3)
    torch.testing.assert_close(
        salience_to_f0(reference["hidden"][0], 0.03), reference["f0"], rtol=0, atol=1e-3
    )
    # so-vits-svc itself pads by reflection: only the last frames may move.
    reflected = rmvpe.mel2hidden(reference["mel"])
    torch.testing.assert_close(reflected[:, :80], reference["hidden"][:, :80], rtol=0, atol=1e-5)
    torch.testing.assert_close(reflected, reference["hidden"], rtol=0, atol=2e-3)


def test_decoding_edges_and_threshold() -> None:
    salience = torch.zeros(3, 360)
    salience[0, 0], salience[0, 1] = 0.9, 0.3  # window cut at the low edge
    salience[1, 359], salience[1, 355] = 0.8, 0.2  # window cut at the high edge
    salience[2, 100] = 0.04  # below the threshold: unvoiced
    f0 = salience_to_f0(salience, threshold=0.05)
    cents = torch.tensor(
        [
            (0.9 * CENTS_OFFSET + 0.3 * (CENTS_OFFSET + 20)) / 1.2,
            (0.8 * (CENTS_OFFSET + 20 * 359) + 0.2 * (CENTS_OFFSET + 20 * 355)) / 1.0,
        ]
    )
    torch.testing.assert_close(f0[:2], 10 * 2 ** (cents / 1200), rtol=1e-6, atol=1e-3)
    assert f0[2] == 0


def test_resampler_keeps_a_tone() -> None:
    rate_in, rate_out = 44100, 16000
    tone = torch.sin(2 * math.pi * 440 * torch.arange(rate_in) / rate_in)
    resampled = SincResampler(rate_in, rate_out, lowpass_filter_width=128)(tone[None])[0]
    assert resampled.shape == (math.ceil(rate_out * rate_in / rate_in),)
    expected = torch.sin(2 * math.pi * 440 * torch.arange(rate_out) / rate_out)
    middle = slice(2000, 14000)
    torch.testing.assert_close(resampled[middle], expected[middle], rtol=0, atol=1e-3)


def test_predictor_end_to_end(model: E2E0, reference: dict, tmp_path: Path) -> None:
    weights = tmp_path / "rmvpe.pt"
    torch.save({"model": model.state_dict()}, weights)
    predictor = get_f0_predictor(
        "rmvpe", hop_length=512, sampling_rate=44100, device="cpu", weights_path=str(weights)
    )
    weights.unlink()
    tone = np.sin(2 * np.pi * 220 * np.arange(44100) / 44100).astype(np.float32)
    f0, uv = predictor.compute_f0_uv(tone)
    assert f0.shape == uv.shape == (44100 // 512,)
    assert f0.dtype == uv.dtype == np.float64
    # Random weights vote "voiced" everywhere.
    np.testing.assert_array_equal(uv, np.ones_like(uv))
    assert np.all((f0 > 30) & (f0 < 2100))
    f0_again = predictor.compute_f0(tone, p_len=88)
    assert f0_again.shape == (88,)


def test_missing_weights_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"pretrain/rmvpe\.pt") as error:
        get_f0_predictor("rmvpe", device="cpu")
    assert "RMVPE" in str(error.value)
    elsewhere = tmp_path / "weights" / "my_rmvpe.pt"
    with pytest.raises(UserError, match="my_rmvpe.pt"):
        get_f0_predictor("rmvpe", device="cpu", weights_path=str(elsewhere))


def test_wrong_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "rmvpe.pt"
    torch.save({"weights": {}}, bad)
    with pytest.raises(UserError, match="rmvpe.pt"):
        get_f0_predictor("rmvpe", device="cpu", weights_path=str(bad))
    torch.save({"model": {"cnn.weight": torch.zeros(1)}}, bad)
    with pytest.raises(UserError, match="not an RMVPE"):
        get_f0_predictor("rmvpe", device="cpu", weights_path=str(bad))
