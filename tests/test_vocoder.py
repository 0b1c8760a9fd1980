"""The diffusion vocoder (NSF-HiFiGAN, openvpi's release layout), its mel and the loudness.

Parity with upstream 4.1 recorded in tests/fixtures/upstream-4.1-diffusion
(see its README): audio, source, mels with and without key shift, volume.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch

from checkpoint.legacy_keys import to_legacy_state_dict
from core.errors import UserError
from diffusion.vocoder import (
    GET_VOCODER,
    RELEASED_MEL,
    Vocoder,
    VocoderError,
    build_generator,
    mel_settings_for,
)
from modules.f0_utils import VolumeExtractor

FIXTURES = Path(__file__).parent / "fixtures" / "upstream-4.1-diffusion"
TINY = FIXTURES / "nsf_hifigan_tiny"
MANIFEST = json.loads((FIXTURES / "nsf_hifigan_manifest.json").read_text())


def _load(name: str) -> dict:
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, atol: float, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: {tuple(ours.shape)} != {tuple(ref.shape)}"
    diff = float((ours.detach() - ref).abs().max())
    assert diff <= atol, f"{what}: max difference {diff:.3g} > {atol}"


@pytest.fixture(scope="module")
def vocoder() -> Vocoder:
    return Vocoder("nsf-hifigan", TINY / "model", device="cpu")


def _zeros_like_draw(*shape: object, **kwargs: object) -> torch.Tensor:
    size = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
    return torch.zeros(tuple(size), dtype=kwargs.get("dtype"), device=kwargs.get("device"))


# --------------------------------------------------------------------------- the network


@pytest.mark.parametrize("variant", sorted(MANIFEST))
def test_state_dict_names_and_shapes_match_the_released_layout(variant: str) -> None:
    entry = MANIFEST[variant]
    config = json.loads((TINY / "config.json").read_text())
    config.update(entry.get("config_overrides_vs_tiny", {}))
    with torch.device("meta"):
        generator = build_generator(config, TINY / "config.json")
    legacy = to_legacy_state_dict(generator.state_dict())
    shapes = {
        key: [list(value.shape), str(value.dtype).removeprefix("torch.")]
        for key, value in legacy.items()
    }
    assert shapes == entry["state_dict"]
    assert list(shapes) == list(entry["state_dict"])  # upstream's order too
    assert sum(p.numel() for p in generator.parameters()) == entry["params"]


def test_vocoder_audio_and_source_match_upstream(vocoder: Vocoder) -> None:
    ref = _load("vocoder_reference.pt")
    mel, f0 = ref["mel"].transpose(1, 2), ref["f0"][..., None]
    vocoder.network()  # loaded before seeding: loading must not shift the draws anyway
    torch.manual_seed(ref["seed"])
    audio = vocoder.infer(mel, f0)
    _assert_close(audio, ref["audio"], 1e-5, "audio")
    torch.manual_seed(ref["seed"])
    source, _ = vocoder.network().m_source(f0, None, upp=vocoder.vocoder_hop_size)
    _assert_close(source, ref["source"], 1e-5, "source")
    with mock.patch("torch.rand", _zeros_like_draw), mock.patch("torch.randn", _zeros_like_draw):
        _assert_close(vocoder.infer(mel, f0), ref["audio_zero_noise"], 1e-5, "audio, no noise")


def test_loading_the_weights_leaves_the_global_random_stream_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    Vocoder("nsf-hifigan", TINY / "model", device="cpu").network()
    assert torch.equal(torch.rand(3), expected)


def test_log10_vocoder_type_scales_the_mel(vocoder: Vocoder) -> None:
    log10 = Vocoder("nsf-hifigan-log10", TINY / "model", device="cpu")
    ref = _load("vocoder_reference.pt")
    mel, f0 = ref["mel"].transpose(1, 2), ref["f0"][..., None]
    with mock.patch("torch.rand", _zeros_like_draw), mock.patch("torch.randn", _zeros_like_draw):
        scaled = vocoder.infer(mel * 0.434294, f0)
        assert torch.allclose(log10.infer(mel, f0), scaled, atol=1e-6)


# --------------------------------------------------------------------------- mel and volume


@pytest.mark.parametrize(
    ("key", "keyshift"), [("mel", 0.0), ("mel_keyshift_2", 2.0), ("mel_keyshift_m3_5", -3.5)]
)
def test_mel_extraction_matches_upstream(vocoder: Vocoder, key: str, keyshift: float) -> None:
    ref = _load("mel_volume_reference.pt")
    mel = vocoder.extract(ref["audio44k"], 44100, keyshift=keyshift)
    _assert_close(mel, ref[key], 1e-4, key)
    # The release's settings without any vocoder file give the same numbers.
    assert vocoder.mel == RELEASED_MEL
    assert torch.equal(RELEASED_MEL.extract(ref["audio44k"], keyshift=keyshift), mel)


def test_volume_extraction_matches_upstream() -> None:
    ref = _load("mel_volume_reference.pt")
    volume = VolumeExtractor(512).extract(ref["audio44k"])[0]
    assert volume.shape == ref["volume"].shape
    assert torch.allclose(volume, ref["volume"], rtol=1e-5, atol=0)


# --------------------------------------------------------------------------- bad input


def test_folder_without_config_json_names_it_and_the_release(tmp_path: Path) -> None:
    folder = tmp_path / "pretrain" / "nsf_hifigan"
    folder.mkdir(parents=True)
    shutil.copy(TINY / "model", folder / "model")
    with pytest.raises(VocoderError) as error:
        Vocoder("nsf-hifigan", folder / "model", device="cpu")
    message = str(error.value)
    assert "\n" not in message
    assert str(folder / "config.json") in message and "pretrain/nsf_hifigan/" in message
    assert "nsf_hifigan_20221211" in message and GET_VOCODER in message
    # Mel extraction alone falls back to the release's settings, and says so.
    settings, note = mel_settings_for(folder / "model")
    assert settings == RELEASED_MEL and note and "config.json not found" in note


def test_missing_or_foreign_weights_are_one_line_errors(tmp_path: Path) -> None:
    folder = tmp_path / "nsf_hifigan"
    folder.mkdir()
    shutil.copy(TINY / "config.json", folder / "config.json")
    vocoder = Vocoder("nsf-hifigan", folder / "model", device="cpu")
    assert vocoder.extract(torch.zeros(1, 4096), 44100).shape == (1, 8, 128)  # no weights needed
    with pytest.raises(VocoderError, match=r"model: vocoder weights missing; download "):
        vocoder.network()
    torch.save({"model": {}}, folder / "model")
    with pytest.raises(VocoderError, match="no 'generator' weights"):
        Vocoder("nsf-hifigan", folder / "model", device="cpu").network()
    config = json.loads((TINY / "config.json").read_text())
    config["upsample_initial_channel"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(TINY / "model", folder / "model")
    with pytest.raises(VocoderError, match="do not fit .*config.json"):
        Vocoder("nsf-hifigan", folder / "model", device="cpu").network()


def test_bad_type_rate_and_config_are_user_errors(vocoder: Vocoder, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown diffusion vocoder .hifigan."):
        Vocoder("hifigan", TINY / "model")
    with pytest.raises(UserError, match="works at 44100 Hz, the audio is 32000 Hz"):
        vocoder.extract(torch.zeros(1, 4096), 32000)
    with pytest.raises(UserError, match="a folder; name the weights file in it"):
        Vocoder("nsf-hifigan", TINY)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read the vocoder config"):
        mel_settings_for(tmp_path / "model")
    config = json.loads((TINY / "config.json").read_text())
    config["upsample_rates"] = [8, 8, 2, 2]
    with pytest.raises(UserError, match="must multiply to hop_size 512"):
        build_generator(config, tmp_path / "config.json")
