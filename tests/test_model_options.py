"""Behaviour of the networks beyond upstream parity: RNG hygiene, errors, training, helpers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.nn.utils import parametrize

from checkpoint.legacy_keys import from_legacy_state_dict, to_legacy_state_dict
from core.errors import UserError
from models import MultiPeriodDiscriminator, SynthesizerTrn
from modules import commons
from modules.f0_utils import interpolate_f0
from modules.losses import discriminator_loss, feature_loss, generator_loss, kl_loss
from modules.mel_processing import (
    mel_spectrogram_torch,
    slaney_mel_filterbank,
    spec_to_mel_torch,
    spectrogram_torch,
)

FIXTURES = Path(__file__).parent / "fixtures" / "upstream-4.1"
MINI = json.loads((FIXTURES / "mini_config.json").read_text())
MINI2 = json.loads((FIXTURES / "mini2_config.json").read_text())

REPO = Path(__file__).resolve().parent.parent


def _small_g(config: dict = MINI, **overrides: object) -> SynthesizerTrn:
    data = config["data"]
    torch.manual_seed(0)
    return SynthesizerTrn(
        data["filter_length"] // 2 + 1,
        config["train"]["segment_size"] // data["hop_length"],
        **{"sampling_rate": data["sampling_rate"], **config["model"], **overrides},
    )


def _inputs(frames: int = 12, batch: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    f0 = 180 + 60 * torch.rand(batch, frames, generator=gen)
    f0[:, 3:5] = 0.0
    return {
        "c": torch.randn(batch, MINI["model"]["ssl_dim"], frames, generator=gen),
        "f0": f0,
        "uv": (f0 > 0).float(),
        "vol": 0.1 * torch.rand(batch, frames, generator=gen),
        "sid": torch.tensor([1] * batch),
    }


def test_infer_leaves_global_rng_untouched_and_is_seeded() -> None:
    gen = _small_g().eval()
    inp = _inputs()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, _ = gen.infer(inp["c"], inp["f0"], inp["uv"], g=inp["sid"], seed=7, vol=inp["vol"])
    assert torch.equal(torch.get_rng_state(), before)
    again, _ = gen.infer(inp["c"], inp["f0"], inp["uv"], g=inp["sid"], seed=7, vol=inp["vol"])
    other, _ = gen.infer(inp["c"], inp["f0"], inp["uv"], g=inp["sid"], seed=8, vol=inp["vol"])
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == (1, 1, 12 * 512)


def test_unknown_vocoder_is_a_user_error() -> None:
    with pytest.raises(UserError, match="vocoder_name"):
        _small_g(vocoder_name="hifigan-v9")


def test_sine_source_runs_at_the_data_rate() -> None:
    gen = _small_g(sampling_rate=32000)
    assert gen.dec.m_source.l_sin_gen.sampling_rate == 32000


def test_ignored_keys_are_accepted() -> None:
    gen = _small_g(n_layers_q=7, speaker_embedding=True, speech_encoder="x", made_up=1)
    assert len(gen.enc_q.enc.in_layers) == 16


def test_remove_weight_norm_keeps_outputs() -> None:
    gen = _small_g(MINI2).eval()
    inp = _inputs()
    before, _ = gen.infer(inp["c"], inp["f0"], inp["uv"], g=inp["sid"], seed=1)
    gen.remove_weight_norm()
    assert not any(parametrize.is_parametrized(m) for m in gen.modules())
    after, _ = gen.infer(inp["c"], inp["f0"], inp["uv"], g=inp["sid"], seed=1)
    assert torch.allclose(before, after, atol=1e-5)


def test_legacy_round_trip_and_spectral_norm_names() -> None:
    disc = MultiPeriodDiscriminator(use_spectral_norm=True)
    ours = disc.state_dict()
    legacy = to_legacy_state_dict(ours)
    assert "discriminators.0.convs.0.weight_orig" in legacy
    assert legacy["discriminators.0.convs.0.weight_v"].shape == (15,)
    back = from_legacy_state_dict(legacy, ours.keys())
    assert list(back) == list(ours)
    assert all(back[k] is ours[k] for k in ours)


def test_character_mix_with_one_hot_weights_equals_single_speaker() -> None:
    gen = _small_g().eval()
    inp = _inputs()
    single, _ = gen.infer(inp["c"], inp["f0"], inp["uv"], g=inp["sid"], seed=5, vol=inp["vol"])
    gen.EnableCharacterMix(MINI["model"]["n_speakers"], "cpu")
    assert "_speaker_table" not in gen.state_dict()
    weights = torch.zeros(12, MINI["model"]["n_speakers"])
    weights[:, 1] = 1.0
    mixed, _ = gen.infer(inp["c"], inp["f0"], inp["uv"], g=weights, seed=5, vol=inp["vol"])
    assert torch.allclose(single, mixed, atol=1e-5)
    weights[:, 1] = 0.5
    weights[:, 2] = 0.5
    blend, _ = gen.infer(inp["c"], inp["f0"], inp["uv"], g=weights, seed=5, vol=inp["vol"])
    assert not torch.allclose(single, blend, atol=1e-4)


def test_forward_without_f0_predictor_returns_zeros() -> None:
    gen = _small_g(use_automatic_f0_prediction=False)
    gen.segment_size = 4
    inp = _inputs(frames=16)
    spec = torch.rand(1, 1025, 16)
    lengths = torch.tensor([16])
    out = gen(
        inp["c"], inp["f0"], inp["uv"], spec, g=inp["sid"], c_lengths=lengths, spec_lengths=lengths
    )
    assert out[4:] == (0, 0, 0)
    assert out[0].shape == (1, 1, gen.segment_size * 512)


def test_slicing_matches_a_per_item_loop() -> None:
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).view(2, 3, 10)
    ids = torch.tensor([0, 6])
    sliced = commons.slice_segments(x, ids, 4)
    for b in range(2):
        assert torch.equal(sliced[b], x[b, :, ids[b] : ids[b] + 4])
    torch.manual_seed(0)
    seg, pitch, starts = commons.rand_slice_segments_with_pitch(
        x, x[:, 0], torch.tensor([10, 5]), 4
    )
    assert int(starts[1]) <= 1 and int(starts[0]) <= 6
    assert torch.equal(pitch, seg[:, 0])


def test_interpolate_f0_follows_upstream_rules() -> None:
    f0 = np.array([0, 0, 100, 0, 0, 130, 0, 150, 0, 0], dtype=np.float64)
    filled, vuv = interpolate_f0(f0)
    assert f0[0] == 0  # input untouched
    # Upstream's step is (next - prev) / gap_length, so a gap reaches the next value one
    # frame early: [3, 4] between 100 and 130 becomes 115, 130.
    np.testing.assert_allclose(filled, [100, 100, 100, 115, 130, 130, 150, 150, 150, 150])
    np.testing.assert_array_equal(vuv, [0, 0, 1, 0, 0, 1, 0, 1, 0, 0])
    # Upstream quirk: a gap closed by the very last frame counts as trailing.
    filled, _ = interpolate_f0(np.array([100.0, 0.0, 0.0, 200.0]))
    np.testing.assert_allclose(filled, [100, 100, 100, 100])
    filled, _ = interpolate_f0(np.zeros(3))
    np.testing.assert_array_equal(filled, [0, 0, 0])


@pytest.mark.parametrize("config", [MINI, MINI2], ids=["mini", "mini2"])
def test_bf16_autocast_training_step(config: dict) -> None:
    """One generator + discriminator step as train.py does it: finite losses, all grads."""
    data, train = config["data"], config["train"]
    segment_frames = 4
    gen = _small_g(config)
    gen.segment_size = segment_frames
    disc = MultiPeriodDiscriminator()
    frames, hop = 10, data["hop_length"]
    inp = _inputs(frames=frames, batch=2)
    wav_gen = torch.Generator().manual_seed(11)
    y = 0.3 * torch.randn(2, 1, frames * hop, generator=wav_gen).clamp(-3, 3) / 3
    spec = spectrogram_torch(
        y[:, 0], data["filter_length"], data["sampling_rate"], hop, data["win_length"]
    )
    lengths = torch.tensor([frames, frames - 2])
    mel_args = (data["filter_length"], data["n_mel_channels"], data["sampling_rate"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_hat, ids, z_mask, (_, z_p, m_p, logs_p, _, logs_q), pred_lf0, _, lf0 = gen(
            inp["c"],
            inp["f0"],
            inp["uv"],
            spec,
            g=inp["sid"],
            c_lengths=lengths,
            spec_lengths=lengths,
            vol=inp["vol"],
        )
        mel = spec_to_mel_torch(spec, *mel_args, data["mel_fmin"], data["mel_fmax"])
        y_mel = commons.slice_segments(mel, ids, segment_frames)
        y_hat_mel = mel_spectrogram_torch(
            y_hat.squeeze(1).float(),
            *mel_args,
            hop,
            data["win_length"],
            data["mel_fmin"],
            data["mel_fmax"],
        )
        y_real = commons.slice_segments(y, ids * hop, segment_frames * hop)
        d_real, d_fake, _, _ = disc(y_real, y_hat.detach())
        loss_disc, _, _ = discriminator_loss(d_real, d_fake)
    loss_disc.backward()
    assert torch.isfinite(loss_disc)
    for name, param in disc.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    disc.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, d_fake, fmap_r, fmap_g = disc(y_real, y_hat)
        loss_mel = F.l1_loss(y_mel, y_hat_mel) * train["c_mel"]
        loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * train["c_kl"]
        loss_fm = feature_loss(fmap_r, fmap_g)
        loss_gen, _ = generator_loss(d_fake)
        loss_lf0 = F.mse_loss(pred_lf0.float(), lf0.float())
        total = loss_gen + loss_fm + loss_mel + loss_kl + loss_lf0
    total.backward()
    for loss in (loss_mel, loss_kl, loss_fm, loss_gen, loss_lf0):
        assert torch.isfinite(loss)
    missing = [n for n, p in gen.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in gen.parameters())


@pytest.mark.parametrize(
    ("sampling_rate", "n_fft", "num_mels", "fmin", "fmax"),
    [(44100, 2048, 80, 0.0, 22050), (32000, 2048, 80, 0.0, None), (16000, 512, 40, 50.0, 7600.0)],
)
def test_mel_filterbank_is_librosas_to_the_bit(sampling_rate, n_fft, num_mels, fmin, fmax):
    """Training builds the Slaney mel basis itself (no librosa import): the same numbers."""
    import librosa

    ours = slaney_mel_filterbank(sampling_rate, n_fft, num_mels, fmin, fmax)
    theirs = librosa.filters.mel(
        sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax
    )
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_training_imports_neither_librosa_nor_scipy_signal():
    code = "import sys, train; print([m for m in ('librosa', 'scipy.signal') if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
