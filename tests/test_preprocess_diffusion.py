"""`preprocess_hubert_f0.py --use_diff`: the diffusion features of a clip, in upstream's formats."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

import feature_files as ff
from core.errors import UserError
from core.safe_io import UnsafeFileError
from diffusion.vocoder import RELEASED_MEL
from modules.f0_utils import VolumeExtractor
from preprocessing import diffusion_config, features

REPO = Path(__file__).resolve().parent.parent
TINY_VOCODER = REPO / "tests" / "fixtures" / "upstream-4.1-diffusion" / "nsf_hifigan_tiny"
N = 44100 + 300  # not a multiple of the hop


def _settings(**overrides: object) -> features.FeatureSettings:
    values = dict(
        sampling_rate=44100,
        hop_length=512,
        filter_length=2048,
        win_length=2048,
        ssl_dim=48,
        speech_encoder="vec768l12",
        vol_embedding=False,
        f0_predictor="dio",
        encoder_path=None,
        device="cpu",
        force=False,
        diffusion_mel=RELEASED_MEL,
    )
    values.update(overrides)
    return features.FeatureSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    """One speaker's clip with every diffusion feature computed once."""
    folder = tmp_path_factory.mktemp("dataset") / "alto"
    folder.mkdir()
    t = np.arange(N) / 44100
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) * np.exp(-t)).astype(np.float32)
    path = str(folder / "take1.wav")
    soundfile.write(path, wav, 44100, subtype="FLOAT")
    written = features.compute_features(
        path, wav, _settings(), ["vol", "mel", "aug_mel", "aug_vol"], {}
    )
    assert written == [
        ff.volume_path(path),
        ff.mel_path(path),
        ff.aug_mel_path(path),
        ff.aug_volume_path(path),
    ]
    return path, wav


def test_the_three_files_have_upstreams_formats(clip: tuple[str, np.ndarray]) -> None:
    path, wav = clip
    audio = torch.from_numpy(wav)[None]
    frames = N // 512
    mel = np.load(ff.mel_path(path), allow_pickle=False)
    assert mel.dtype == np.float32 and mel.shape == (frames, 128)
    assert np.array_equal(mel, RELEASED_MEL.extract(audio)[0].numpy())
    # Upstream's reader: `aug_mel, keyshift = np.load(path, allow_pickle=True)`.
    aug_mel, keyshift = np.load(ff.aug_mel_path(path), allow_pickle=True)
    assert isinstance(keyshift, float) and -5 <= keyshift <= 5
    assert aug_mel.dtype == np.float32 and aug_mel.shape == (frames, 128)
    log10_gain, drawn_shift = features.augmentation_draw(path, float(np.abs(wav).max()))
    assert drawn_shift == keyshift and -1 <= log10_gain <= 1
    louder = audio * 10**log10_gain
    assert np.array_equal(aug_mel, RELEASED_MEL.extract(louder, keyshift=keyshift)[0].numpy())
    aug_vol = np.load(ff.aug_volume_path(path), allow_pickle=False)
    assert aug_vol.dtype == np.float32 and aug_vol.shape == (frames,)
    assert np.allclose(aug_vol, VolumeExtractor(512).extract(louder)[0].numpy(), rtol=1e-6)
    volume = np.load(ff.volume_path(path), allow_pickle=False)
    assert volume.shape == (frames,) and not np.allclose(volume, aug_vol)
    # Our reader gives the same pair without unpickling code; numpy 1.x (upstream's) reads it.
    ours, shift = ff.read_aug_mel(ff.aug_mel_path(path), 128)
    assert shift == keyshift and np.array_equal(ours, aug_mel)
    payload = Path(ff.aug_mel_path(path)).read_bytes()
    assert b"cnumpy.core.multiarray" in payload and b"numpy._core" not in payload
    assert np.array_equal(ff.read_mel(ff.mel_path(path), 128), mel)
    with pytest.raises(UserError, match=r"b.wav.mel.npy: mel missing; rerun .* --use_diff$"):
        ff.read_mel(str(Path(path).with_name("b.wav.mel.npy")))


def test_the_augmentation_is_drawn_per_clip_in_upstreams_ranges() -> None:
    draws = [features.augmentation_draw(f"d/spk/{i}.wav", 0.5) for i in range(200)]
    gains, shifts = np.array(draws).T
    assert features.augmentation_draw("d/spk/7.wav", 0.5) == draws[7]  # reproducible
    assert gains.min() >= -1 and gains.max() <= np.log10(1 / (0.5 + 1e-5))
    assert gains.max() > 0.2 and gains.min() < -0.8
    assert shifts.min() >= -5 and shifts.max() <= 5 and shifts.min() < -4 and shifts.max() > 4
    # A clip at full scale is never made louder.
    assert all(features.augmentation_draw(f"x/{i}.wav", 1.0)[0] <= 0 for i in range(50))


def test_stale_outputs_ask_for_the_diffusion_files_until_they_fit(
    clip: tuple[str, np.ndarray], tmp_path: Path
) -> None:
    path, _ = clip
    assert set(features.stale_outputs(path, _settings(), N)) == {"soft", "f0", "spec"}
    assert "mel" not in features.stale_outputs(path, _settings(diffusion_mel=None), N)
    assert "vol" not in features.stale_outputs(path, _settings(diffusion_mel=None), N)
    stale = features.stale_outputs(path, _settings(), N + 2048)
    assert {"vol", "mel", "aug_mel", "aug_vol"} <= set(stale) and "frames" in stale["mel"]
    other = str(tmp_path / "other.wav")
    ff.write_aug_mel(ff.aug_mel_path(other), np.zeros((3, 80), np.float32), 1.0)
    assert "(frames, 128)" in features.stale_outputs(other, _settings(), N)["aug_mel"]


def test_pickled_code_in_an_aug_mel_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.wav.aug_mel.npy"
    table = np.empty(2, dtype=object)
    table[0], table[1] = print, 1.0
    with open(bad, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, np.lib.format.header_data_from_array_1_0(table)
        )
        pickle.dump(table, handle, protocol=3)
    with pytest.raises(UnsafeFileError, match="builtins.print"):
        ff.read_aug_mel(str(bad))
    with pytest.raises(UserError, match=r"aug_mel.npy: augmented mel missing; rerun .*--use_diff"):
        ff.read_aug_mel(str(tmp_path / "none.wav.aug_mel.npy"))


def test_only_the_diffusion_files_missing_loads_no_encoder(
    clip: tuple[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(settings: object) -> None:
        raise AssertionError("the encoder was loaded")

    monkeypatch.setattr(features, "_load_models", refuse)
    monkeypatch.setattr(features, "stale_outputs", lambda *args: {"mel": "missing"})
    features.init_worker(_settings())
    result = features.process_wav(clip[0])
    assert result.status == "done" and result.outputs == (ff.mel_path(clip[0]),)


def test_the_vocoder_named_by_diffusion_yaml_sets_the_mel(tmp_path: Path) -> None:
    config_path = tmp_path / "diffusion.yaml"
    with pytest.raises(UserError, match="diffusion.yaml: not found: rerun preprocess_flist_c"):
        diffusion_config.vocoder_mel_settings(config_path)
    template = diffusion_config.read_yaml_config(diffusion_config.template_path(), "restore")
    template["vocoder"]["ckpt"] = str(TINY_VOCODER / "model")
    config_path.write_text(yaml.safe_dump(template))
    assert diffusion_config.vocoder_mel_settings(config_path) == (RELEASED_MEL, None)
    template["vocoder"]["ckpt"] = str(tmp_path / "absent" / "model")
    config_path.write_text(yaml.safe_dump(template))
    settings, note = diffusion_config.vocoder_mel_settings(config_path)
    assert settings == RELEASED_MEL and "config.json not found" in (note or "")
    template["vocoder"]["type"] = "other"
    config_path.write_text(yaml.safe_dump(template))
    with pytest.raises(UserError, match="vocoder.type: unknown diffusion vocoder .other."):
        diffusion_config.vocoder_mel_settings(config_path)


def test_a_config_whose_frames_differ_from_the_vocoders_is_refused(tmp_path: Path) -> None:
    config_path = tmp_path / "config.json"
    config = json.loads((REPO / "configs_template" / "config_template.json").read_text())
    config["data"]["hop_length"] = 256
    config_path.write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"hop_length 256 differ from the diffusion vocoder"):
        features.load_settings(str(config_path), "dio", device="cpu", diffusion_mel=RELEASED_MEL)
