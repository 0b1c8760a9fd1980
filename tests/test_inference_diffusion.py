"""Conversion with diffusion: `-shd`, `-od`, `-eh` through `Svc`, the command line and the web UI.

A tiny random-weight Unit2Mel (content width 48, the mini generator's three
speakers) is saved with diffusion/files.py beside its YAML, rendered by the
tiny NSF-HiFiGAN fixture; the synthesizer is upstream's recorded mini
generator with the tiny fairseq HuBERT as its speech encoder.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

import inference.diffusion_stage as diffusion_stage
import inference_main
from core.errors import UserError
from diffusion.config import DiffusionConfig, save_diffusion_config
from diffusion.files import save_diffusion_model
from diffusion.unit2mel import Unit2Mel
from inference.svc import Svc
from inference.webui_app import (
    ConvertSettings,
    DiffusionChoice,
    ModelCache,
    ModelChoice,
    convert_file,
)
from preprocessing.runner import run_cli
from tests.helpers_model import FIXTURES, TINY_ENCODER, UPSTREAM, sung_clip

SR = 44100
VOCODER = FIXTURES / "upstream-4.1-diffusion" / "nsf_hifigan_tiny" / "model"
MINI_G, MINI_CONFIG = UPSTREAM / "mini_G.pth", UPSTREAM / "mini_config.json"
SPEAKERS = {"alto": 0, "tenor": 1, "bass": 2}


def _config(k_step_max: int = 0, width: int = 48, vocoder: Path = VOCODER) -> DiffusionConfig:
    base = DiffusionConfig()
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, encoder_out_channels=width, encoder="vec768l12"),
        model=dataclasses.replace(
            base.model,
            n_layers=2,
            n_chans=16,
            n_hidden=16,
            timesteps=100,
            k_step_max=k_step_max,
            n_spk=3,
        ),
        vocoder=dataclasses.replace(base.vocoder, ckpt=str(vocoder)),
        infer=dataclasses.replace(base.infer, speedup=5, method="dpm-solver++"),
        device="cpu",
        spk=dict(SPEAKERS),
    )


def _write_model(folder: Path, config: DiffusionConfig, width: int = 48) -> Path:
    """A random-weight model_0.pt with config.yaml beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Unit2Mel.from_config(
        dataclasses.replace(
            config, data=dataclasses.replace(config.data, encoder_out_channels=width)
        )
    )
    save_diffusion_model(model, 0, folder / "model_0.pt")
    save_diffusion_config(config, folder / "config.yaml")
    return folder / "model_0.pt"


@pytest.fixture(scope="module")
def diffusion_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_model(tmp_path_factory.mktemp("diffusion"), _config())


@pytest.fixture(scope="module")
def shallow_svc(diffusion_model: Path) -> Svc:
    return Svc(
        MINI_G,
        MINI_CONFIG,
        device="cpu",
        encoder_path=TINY_ENCODER,
        shallow_diffusion=True,
        diffusion_model_path=diffusion_model,
        diffusion_config_path=diffusion_model.parent / "config.yaml",
    )


def test_shallow_diffusion_loads_once_and_converts_many(
    diffusion_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Path] = []
    real_load = diffusion_stage.load_unit2mel

    def counting(path: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append(Path(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(diffusion_stage, "load_unit2mel", counting)
    svc = Svc(
        MINI_G,
        MINI_CONFIG,
        device="cpu",
        encoder_path=TINY_ENCODER,
        shallow_diffusion=True,
        diffusion_model_path=diffusion_model,
        diffusion_config_path=None,
    )  # config.yaml beside the model
    renders: list[int] = []
    real_render = svc.diffusion.render
    monkeypatch.setattr(
        svc.diffusion, "render", lambda *a, **k: renders.append(a[5]) or real_render(*a, **k)
    )
    clip = sung_clip(0.6, SR, seed=5)
    first = svc.convert_array(clip, SR, "tenor", pad_seconds=0.05, k_step=40)
    second = svc.convert_array(clip, SR, "bass", pad_seconds=0.05, k_step=20, second_encoding=True)
    assert loads == [diffusion_model]
    assert renders[:1] == [40] and renders[-1] == 20 and len(renders) >= 2
    for out in (first, second):
        assert out.shape == clip.shape and np.isfinite(out).all() and np.abs(out).max() > 0
    assert not np.allclose(first, second)
    with pytest.raises(UserError, match=r"-ks 101: .*model_0.pt was trained on 100"):
        svc.convert_array(clip, SR, "tenor", k_step=101)


def test_shallow_diffusion_changes_the_synthesizers_audio(shallow_svc: Svc) -> None:
    clip = sung_clip(0.4, SR, seed=6)
    plain_svc = Svc(MINI_G, MINI_CONFIG, device="cpu", encoder_path=TINY_ENCODER)
    plain, _, frames = plain_svc.infer("alto", 0, clip)
    refined, _, same_frames = shallow_svc.infer("alto", 0, clip, k_step=30)
    assert frames == same_frames and refined.shape == plain.shape == (frames * 512,)
    assert not torch.allclose(refined, plain)


def test_speaker_mix_reaches_the_diffusion_model(diffusion_model: Path) -> None:
    """Upstream fails here (init_spkmix, per-frame weights); it works and keeps the length."""
    svc = Svc(
        MINI_G,
        MINI_CONFIG,
        device="cpu",
        encoder_path=TINY_ENCODER,
        spk_mix_enable=True,
        shallow_diffusion=True,
        diffusion_model_path=diffusion_model,
        diffusion_config_path=None,
    )
    clip = sung_clip(0.5, SR, seed=7)
    mix = {0: [[0.0, 1.0, 0.0, 1.0]], 1: [[0.0, 1.0, 1.0, 0.0]], 2: [[0.0, 1.0, 0.0, 0.0]]}
    out = svc.convert_array(clip, SR, mix, use_spk_mix=True, pad_seconds=0.05, k_step=10)
    assert out.shape == clip.shape and np.isfinite(out).all()


def test_only_diffusion_needs_no_synthesizer(diffusion_model: Path) -> None:
    svc = Svc(
        "no/such/G.pth",
        None,
        device="cpu",
        encoder_path=TINY_ENCODER,
        only_diffusion=True,
        diffusion_model_path=diffusion_model,
        diffusion_config_path=None,
    )
    assert svc.net_g_ms is None and svc.spk2id == SPEAKERS and svc.target_sample == SR
    clip = sung_clip(0.5, SR, seed=8)
    out = svc.convert_array(clip, SR, "bass", pad_seconds=0.05)
    assert out.shape == clip.shape and np.isfinite(out).all() and np.abs(out).max() > 0


def test_enhancer_keeps_length_and_changes_audio() -> None:
    svc = Svc(
        MINI_G,
        MINI_CONFIG,
        device="cpu",
        encoder_path=TINY_ENCODER,
        nsf_hifigan_enhance=True,
        enhancer_ckpt=VOCODER,
    )
    clip = sung_clip(0.4, SR, seed=9)
    enhanced, _, frames = svc.infer("alto", 0, clip)
    shifted, _, _ = svc.infer("alto", 0, clip, enhancer_adaptive_key=4)
    assert enhanced.shape == shifted.shape == (frames * 512,)
    assert torch.isfinite(enhanced).all() and not torch.allclose(enhanced, shifted)


# --------------------------------------------------------------------------- command line


def _song(work: Path, seconds: float = 0.6) -> np.ndarray:
    (work / "raw").mkdir(parents=True, exist_ok=True)
    clip = sung_clip(seconds, SR, seed=10)
    soundfile.write(work / "raw" / "song.wav", clip, SR)
    return clip


def _cli(work: Path, monkeypatch: pytest.MonkeyPatch, *flags: str | Path) -> int:
    monkeypatch.chdir(work)
    base = [
        "-m",
        str(MINI_G),
        "-c",
        str(MINI_CONFIG),
        "-n",
        "song.wav",
        "-s",
        "tenor",
        "-wf",
        "wav",
        "-p",
        "0.05",
        "--encoder_path",
        str(TINY_ENCODER),
    ]
    return run_cli(inference_main.main, [*base, *map(str, flags)])


def test_cli_shd_and_od_write_audio_of_the_inputs_length(
    diffusion_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = _song(tmp_path)
    dm = ("-dm", diffusion_model, "-dc", diffusion_model.parent / "config.yaml")
    assert _cli(tmp_path, monkeypatch, "-shd", "-ks", "30", "-se", *dm) == 0
    assert _cli(tmp_path, monkeypatch, "-od", *dm) == 0
    for kind in ("sovdiff", "diff"):
        audio, rate = soundfile.read(tmp_path / "results" / f"song.wav_0key_tenor_{kind}_pm.wav")
        assert rate == SR and audio.shape == clip.shape and np.abs(audio).max() > 0


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_diffusion_inputs_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _song(tmp_path)
    missing = tmp_path / "logs" / "nothing" / "model_0.pt"
    assert _cli(tmp_path, monkeypatch, "-shd", "-dm", missing) == 2
    err = _one_line_error(capsys)
    assert str(missing) in err and "diffusion model not found" in err and "-dm" in err

    bare = tmp_path / "vocoder" / "model"
    bare.parent.mkdir()
    shutil.copy(VOCODER, bare)  # the weights without their config.json
    no_vocoder_config = _write_model(tmp_path / "novoc", _config(vocoder=bare))
    assert _cli(tmp_path, monkeypatch, "-shd", "-dm", no_vocoder_config, "-dc", "") == 2
    err = _one_line_error(capsys)
    assert str(bare.parent / "config.json") in err and "nsf_hifigan" in err

    wide = _write_model(tmp_path / "wide", _config(width=48), width=64)
    assert _cli(tmp_path, monkeypatch, "-shd", "-dm", wide, "-dc", "") == 2
    err = _one_line_error(capsys)
    assert str(wide) in err and "64" in err and "encoder_out_channels" in err

    partial = _write_model(tmp_path / "partial", _config(k_step_max=50))
    assert _cli(tmp_path, monkeypatch, "-od", "-dm", partial, "-dc", "") == 2
    err = _one_line_error(capsys)
    assert str(partial) in err and "50 of 100" in err and "-shd" in err


# --------------------------------------------------------------------------- web UI


def test_webui_converts_with_shallow_diffusion(diffusion_model: Path, tmp_path: Path) -> None:
    cache = ModelCache(device="cpu", encoder_path=str(TINY_ENCODER))
    choice = ModelChoice(
        str(MINI_G),
        str(MINI_CONFIG),
        diffusion=DiffusionChoice(shallow=True, model_path=str(diffusion_model), config_path=None),
    )
    svc = cache.get(choice)
    assert svc.shallow_diffusion and cache.get(choice) is svc
    source = tmp_path / "take.wav"
    clip = sung_clip(0.5, SR, seed=11)
    soundfile.write(source, clip, SR)
    settings = ConvertSettings(speaker="alto", pad_seconds=0.05, k_step=25)
    out, rate, length = convert_file(svc, source, settings, tmp_path / "out")
    written, written_rate = soundfile.read(out)
    assert rate == written_rate == SR and length == written.shape[0] == clip.shape[0]
    assert cache.loads == 1


def test_webui_page_handler_passes_the_diffusion_controls(
    diffusion_model: Path, tmp_path: Path
) -> None:
    """The page's Convert handler, called as gradio calls it (positional, in widget order)."""
    from inference.webui_page import _Actions

    cache = ModelCache(device="cpu", encoder_path=str(TINY_ENCODER))
    actions = _Actions(cache, tmp_path / "logs", tmp_path / "results")
    source = tmp_path / "take.wav"
    soundfile.write(source, sung_clip(0.3, SR, seed=12), SR)
    model = [
        None,
        str(MINI_G),
        str(MINI_CONFIG),
        None,
        False,
        True,
        False,
        str(diffusion_model),
        "",
        False,
    ]  # shallow, beside-model config
    conversion = ["alto", 0, False, "pm", 0.4, -40, 0.05, 20, False, 0]
    audio, _, status = actions.convert(
        *model, 0, *conversion, str(source), None, progress=lambda *a, **k: None
    )
    assert audio is not None, status
    assert cache.current.shallow_diffusion and "converted to alto" in status
    _, _, status = actions.convert(
        *model, 0, *conversion[:7], 5000, False, 0, str(source), None, progress=lambda *a, **k: None
    )
    assert status.startswith("error: -ks 5000") and cache.loads == 1
