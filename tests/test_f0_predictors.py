"""DIO, Harvest and Praat pitch match upstream so-vits-svc 4.1's post-processed output."""

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from modules.f0_predictors import get_f0_predictor, interpolate_f0, resize_f0

FIXTURE = Path(__file__).parent / "fixtures" / "upstream-4.1-pipeline" / "f0_reference.pt"
HOP = 512
SR = 44100


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("name", ["dio", "harvest", "pm"])
def test_matches_upstream(reference: dict, name: str) -> None:
    wav = reference["wav44k"].numpy()
    predictor = get_f0_predictor(name, hop_length=HOP, sampling_rate=SR, f0_min=50, f0_max=1100)
    f0, uv = predictor.compute_f0_uv(wav)
    expected_f0 = reference[f"{name}_f0"].numpy()
    expected_uv = reference[f"{name}_uv"].numpy()
    assert f0.shape == uv.shape == (len(wav) // HOP,) == (292,)
    assert f0.dtype == uv.dtype == np.float64
    np.testing.assert_allclose(f0, expected_f0, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(uv, expected_uv)
    # The fixture is a real test of voicing: both phrases voiced, silences not.
    assert 150 < uv.sum() < 260
    np.testing.assert_array_equal(predictor.compute_f0(wav), f0)


@pytest.mark.parametrize("name", ["dio", "harvest", "pm"])
def test_explicit_length(reference: dict, name: str) -> None:
    wav = reference["wav44k"].numpy()[: 100 * HOP]
    f0, uv = get_f0_predictor(name).compute_f0_uv(wav, p_len=102)
    assert f0.shape == uv.shape == (102,)
    assert np.all(f0 > 0)


def test_interpolate_fills_in_time() -> None:
    f0 = np.array([0.0, 100.0, 0.0, 0.0, 200.0, 0.0])
    filled, voiced = interpolate_f0(f0, hop_length=HOP, sampling_rate=SR)
    np.testing.assert_allclose(filled, [100, 100, 100 + 100 / 3, 100 + 200 / 3, 200, 200])
    np.testing.assert_array_equal(voiced, [0, 1, 0, 0, 1, 0])
    silent, silent_uv = interpolate_f0(np.zeros(4), HOP, SR)
    np.testing.assert_array_equal(silent, np.zeros(4))
    np.testing.assert_array_equal(silent_uv, np.zeros(4))
    single, _ = interpolate_f0(np.array([0.0, 0.0, 150.0, 0.0]), HOP, SR)
    np.testing.assert_array_equal(single, np.full(4, 150.0))


def test_resize_keeps_unvoiced_as_zero() -> None:
    resized = resize_f0(np.array([100.0, 200.0, 0.0, 300.0]), 8)
    np.testing.assert_allclose(resized, [100, 150, 200, 0, 0, 0, 300, 300])


@pytest.mark.parametrize("name", ["yin", "Crepe", "swipe"])
def test_unsupported_names_list_the_choices(name: str) -> None:
    with pytest.raises(UserError, match=name) as error:
        get_f0_predictor(name)
    for available in ("dio", "harvest", "pm", "rmvpe", "crepe", "fcpe"):
        assert available in str(error.value)
