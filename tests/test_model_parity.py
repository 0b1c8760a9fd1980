"""Parity of our networks with upstream so-vits-svc 4.1 (fixtures recorded from upstream)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch

from checkpoint.legacy_keys import from_legacy_state_dict, to_legacy_state_dict
from models import MultiPeriodDiscriminator, SynthesizerTrn
from modules import commons
from modules.f0_utils import (
    VolumeExtractor,
    f0_to_coarse,
    f0_to_lf0,
    normalize_f0,
    repeat_expand_2d,
)
from modules.losses import discriminator_loss, feature_loss, generator_loss, kl_loss
from modules.mel_processing import mel_spectrogram_torch, spec_to_mel_torch, spectrogram_torch

FIXTURES = Path(__file__).parent / "fixtures" / "upstream-4.1"
MANIFEST = json.loads((FIXTURES / "state_dict_manifest.json").read_text())


def _load(name: str) -> dict:
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    diff = float((ours.float() - ref.float()).abs().max()) if ref.numel() else 0.0
    assert torch.allclose(ours.float(), ref.float(), rtol=1e-4, atol=1e-5), f"{what}: {diff}"


def _build_g(config: dict, **overrides: object) -> SynthesizerTrn:
    data = config["data"]
    model = {**config["model"], **overrides}
    return SynthesizerTrn(
        data["filter_length"] // 2 + 1,
        config["train"]["segment_size"] // data["hop_length"],
        **model,
        sampling_rate=data["sampling_rate"],
    )


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("variant", sorted(MANIFEST))
def test_state_dict_matches_manifest(variant: str) -> None:
    entry = MANIFEST[variant]
    template = "config_tiny_template.json" if variant == "tiny" else "config_template.json"
    config = json.loads((FIXTURES / template).read_text())
    model = {**config["model"], **entry["model_overrides"]}
    # Shapes only: build on the meta device (no memory, no init cost).
    with torch.device("meta"):
        data = config["data"]
        gen = SynthesizerTrn(
            data["filter_length"] // 2 + 1,
            config["train"]["segment_size"] // data["hop_length"],
            **model,
        )
        disc = MultiPeriodDiscriminator(model["use_spectral_norm"])
    for module, keys_name, count_name in (
        (gen, "generator", "generator_params"),
        (disc, "discriminator", "discriminator_params"),
    ):
        legacy = to_legacy_state_dict(module.state_dict())
        shapes = {k: list(v.shape) for k, v in legacy.items()}
        assert shapes == entry[keys_name]
        assert list(shapes) == list(entry[keys_name])  # same order as upstream too
        assert sum(p.numel() for p in module.parameters()) == entry[count_name]
        # And back: the legacy names map onto exactly our keys.
        ours = module.state_dict()
        assert set(from_legacy_state_dict(legacy, ours.keys())) == set(ours)


# --------------------------------------------------------------------------- generator


@pytest.fixture(scope="module", params=["mini", "mini2"])
def loaded(request: pytest.FixtureRequest) -> tuple[str, SynthesizerTrn, dict, dict]:
    name = request.param
    config = json.loads((FIXTURES / f"{name}_config.json").read_text())
    gen = _build_g(config)
    checkpoint = _load(f"{name}_G.pth")
    assert set(checkpoint) == {"model", "iteration", "optimizer", "learning_rate"}
    ours = gen.state_dict()
    mapped = from_legacy_state_dict(checkpoint["model"], ours.keys())
    assert set(mapped) == set(ours)
    assert len(mapped) == len(checkpoint["model"])  # 1:1
    for key, value in mapped.items():
        assert value.shape == ours[key].shape, key
    gen.load_state_dict(mapped, strict=True)
    gen.eval()
    return name, gen, _load("mini_inputs.pt"), _load(f"{name}_outputs.pt")


def test_generator_parts_match_upstream(loaded: tuple) -> None:
    _, gen, inp, ref = loaded
    c, f0, uv, vol, sid, spec, lengths = (
        inp[k] for k in ("c", "f0", "uv", "vol", "sid", "spec", "lengths")
    )
    with torch.no_grad():
        g = gen.emb_g(sid.view(-1, 1)).transpose(1, 2)
        x_mask = commons.sequence_mask(lengths, c.size(2)).unsqueeze(1).float()
        x = gen.pre(c) * x_mask + gen.emb_uv(uv.long()).transpose(1, 2)
        if gen.vol_embedding:
            x = x + gen.emb_vol(vol[:, :, None]).transpose(1, 2)
        _assert_close(x, ref["prenet_x"], "prenet_x")
        coarse = f0_to_coarse(f0)
        assert torch.equal(coarse, ref["f0_coarse"].long())
        lf0 = f0_to_lf0(f0.unsqueeze(1))
        _assert_close(lf0, ref["lf0"], "lf0")
        norm_lf0 = normalize_f0(lf0, x_mask, uv, random_scale=False)
        _assert_close(norm_lf0, ref["norm_lf0"], "norm_lf0")
        _assert_close(gen.f0_decoder(x, norm_lf0, x_mask, spk_emb=g), ref["pred_lf0"], "pred")
        _, m_p, logs_p, _ = gen.enc_p(x, x_mask, f0=coarse)
        _assert_close(m_p, ref["enc_p_m"], "enc_p_m")
        _assert_close(logs_p, ref["enc_p_logs"], "enc_p_logs")
        _, m_q, logs_q, spec_mask = gen.enc_q(spec, lengths, g=g)
        _assert_close(m_q, ref["enc_q_m"], "enc_q_m")
        _assert_close(logs_q, ref["enc_q_logs"], "enc_q_logs")
        _assert_close(gen.flow(m_q, spec_mask, g=g), ref["flow_forward"], "flow_forward")
        _assert_close(
            gen.flow(m_p, spec_mask, g=g, reverse=True), ref["flow_reverse"], "flow_reverse"
        )
        _assert_close(kl_loss(m_q, logs_q, m_p, logs_p, spec_mask), ref["loss_kl"], "loss_kl")


def test_infer_matches_upstream(loaded: tuple) -> None:
    _, gen, inp, ref = loaded
    c, f0, uv, vol, sid = (inp[k] for k in ("c", "f0", "uv", "vol", "sid"))
    audio, f0_used = gen.infer(c, f0, uv, g=sid, noice_scale=0.35, seed=52468, vol=vol)
    _assert_close(audio, ref["infer_audio"], "infer_audio")
    assert torch.equal(f0_used, f0)
    audio, f0_pred = gen.infer(c, f0, uv, g=sid, seed=52468, predict_f0=True, vol=vol)
    _assert_close(audio, ref["infer_audio_predict_f0"], "infer_audio_predict_f0")
    _assert_close(f0_pred, ref["infer_f0_predict_f0"], "infer_f0_predict_f0")


def test_infer_with_zero_noise_matches_upstream(
    loaded: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's recording patch: torch.rand/randn/rand_like/randn_like return zeros."""
    _, gen, inp, ref = loaded

    def zeros(*size: object, **kwargs: object) -> torch.Tensor:
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        return torch.zeros(
            tuple(shape),  # type: ignore[arg-type]
            dtype=kwargs.get("dtype"),  # type: ignore[arg-type]
            device=kwargs.get("device"),  # type: ignore[arg-type]
        )

    def zeros_like(tensor: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return torch.zeros_like(tensor)

    monkeypatch.setattr(torch, "rand", zeros)
    monkeypatch.setattr(torch, "randn", zeros)
    monkeypatch.setattr(torch, "rand_like", zeros_like)
    monkeypatch.setattr(torch, "randn_like", zeros_like)
    c, f0, uv, vol, sid = (inp[k] for k in ("c", "f0", "uv", "vol", "sid"))
    audio, _ = gen.infer(c, f0, uv, g=sid, noice_scale=0.35, seed=52468, vol=vol)
    _assert_close(audio, ref["infer_audio_zero_noise"], "infer_audio_zero_noise")
    # With the patch a different seed must not matter (no other noise source).
    other, _ = gen.infer(c, f0, uv, g=sid, noice_scale=0.35, seed=1, vol=vol)
    assert torch.equal(audio, other)


# --------------------------------------------------------------------------- discriminator


def _discriminator_from_key_names() -> MultiPeriodDiscriminator:
    disc = MultiPeriodDiscriminator()
    legacy = {}
    for key, shape in MANIFEST["default"]["discriminator"].items():
        numel = 1
        for dim in shape:
            numel *= dim
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        value = 0.02 * torch.randn(numel, generator=gen)
        if key.endswith("weight_g"):
            value = value + 1.0
        legacy[key] = value.reshape(shape)
    ours = disc.state_dict()
    disc.load_state_dict(from_legacy_state_dict(legacy, ours.keys()), strict=True)
    return disc.eval()


def test_discriminator_and_gan_losses_match_upstream() -> None:
    inp, ref = _load("mini_inputs.pt"), _load("mini_outputs.pt")
    disc = _discriminator_from_key_names()
    with torch.no_grad():
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = disc(inp["y_disc"], inp["y_hat_disc"])
    assert len(y_d_rs) == len(ref["mpd_real"]) == 6
    for i in range(6):
        _assert_close(y_d_rs[i], ref["mpd_real"][i], f"mpd_real[{i}]")
        _assert_close(y_d_gs[i], ref["mpd_fake"][i], f"mpd_fake[{i}]")
        assert len(fmap_rs[i]) == len(ref["mpd_fmap_real"][i])
        for j, (ours_r, ours_g) in enumerate(zip(fmap_rs[i], fmap_gs[i])):
            _assert_close(ours_r, ref["mpd_fmap_real"][i][j], f"fmap_real[{i}][{j}]")
            _assert_close(ours_g, ref["mpd_fmap_fake"][i][j], f"fmap_fake[{i}][{j}]")
    loss_disc, r_losses, g_losses = discriminator_loss(y_d_rs, y_d_gs)
    _assert_close(loss_disc, ref["loss_disc"], "loss_disc")
    assert len(r_losses) == len(g_losses) == 6
    assert sum(r_losses) + sum(g_losses) == pytest.approx(float(loss_disc), rel=1e-5)
    loss_gen, per_disc = generator_loss(y_d_gs)
    _assert_close(loss_gen, ref["loss_gen"], "loss_gen")
    assert len(per_disc) == 6
    _assert_close(feature_loss(fmap_rs, fmap_gs), ref["loss_fm"], "loss_fm")


# --------------------------------------------------------------------------- features


def test_spectrogram_mel_and_volume_match_upstream() -> None:
    inp, ref = _load("mini_inputs.pt"), _load("mini_outputs.pt")
    data = json.loads((FIXTURES / "mini_config.json").read_text())["data"]
    y = inp["y"][:, 0]
    spec = spectrogram_torch(
        y, data["filter_length"], data["sampling_rate"], data["hop_length"], data["win_length"]
    )
    _assert_close(spec, ref["spectrogram"], "spectrogram")
    mel_args = (
        data["filter_length"],
        data["n_mel_channels"],
        data["sampling_rate"],
    )
    mel = spec_to_mel_torch(spec, *mel_args, data["mel_fmin"], data["mel_fmax"])
    _assert_close(mel, ref["spec_to_mel"], "spec_to_mel")
    full = mel_spectrogram_torch(
        y,
        *mel_args,
        data["hop_length"],
        data["win_length"],
        data["mel_fmin"],
        data["mel_fmax"],
    )
    _assert_close(full, ref["mel_spectrogram"], "mel_spectrogram")
    volume = VolumeExtractor(data["hop_length"]).extract(y)
    assert volume.shape == (1, 40)
    _assert_close(volume[0], ref["volume"], "volume")


def test_repeat_expand_matches_upstream() -> None:
    c = _load("mini_inputs.pt")["c"][0]
    ref = _load("mini_outputs.pt")
    for mode in ("nearest", "left"):
        _assert_close(repeat_expand_2d(c[:, :25], 40, mode), ref[f"repeat_expand_{mode}"], mode)
        _assert_close(
            repeat_expand_2d(c[:, :40], 25, mode), ref[f"repeat_expand_{mode}_shrink"], mode
        )
