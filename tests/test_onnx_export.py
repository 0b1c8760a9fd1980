"""onnx_export.py: upstream's ONNX layout, run in onnxruntime, checked against PyTorch.

Fast tests export upstream's recorded mini generator (tests/fixtures/upstream-4.1);
the slow one exports the tiny model trained by train.py through the command line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch

import onnx_export
from checkpoint import load_generator
from core.hparams import get_hparams_from_file
from inference.onnx_export import OnnxSynthesizer, speakers_of
from preprocessing.runner import run_cli
from tests.helpers_model import UPSTREAM, run_script, shared_trained_model

UPSTREAM_MIX_VOL_INPUTS = ["c", "f0", "mel2ph", "uv", "noise", "sid", "vol"]
UPSTREAM_INPUTS = ["c", "f0", "mel2ph", "uv", "noise", "sid"]
LENGTHS = (37, 90)  # frames: neither is the traced example length (64)


def _session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _wrapper(model: Path, config: Path) -> OnnxSynthesizer:
    hps = get_hparams_from_file(config)
    return OnnxSynthesizer(load_generator(model, hps), speakers_of(hps)).eval()


def _inputs(wrapper: OnnxSynthesizer, frames: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Inputs as a tool sends them: content at half the frame rate, voiced and unvoiced
    frames, and for mixing models per-frame speaker weights that change over time."""
    generator = torch.Generator().manual_seed(seed)
    content_frames = frames // 2 + 1
    c = torch.randn(1, content_frames, wrapper.net.ssl_dim, generator=generator)
    mel2ph = (torch.arange(frames) // 2 + 1).unsqueeze(0)
    f0 = 150 + 150 * torch.rand(1, frames, generator=generator)
    uv = (torch.rand(1, frames, generator=generator) > 0.2).float()
    f0 = f0 * uv
    noise = 0.4 * torch.randn(1, wrapper.net.inter_channels, frames, generator=generator)
    if wrapper.speaker_mix:
        sid = torch.softmax(3 * torch.randn(frames, len(wrapper.speaker_names),
                                            generator=generator), dim=1)
    else:
        sid = torch.zeros(1, dtype=torch.long)
    inputs = (c, f0, mel2ph, uv, noise, sid)
    if wrapper.vol_embedding:
        inputs = (*inputs, 0.2 * torch.rand(1, frames, generator=generator))
    return inputs


def _assert_onnx_matches_torch(onnx_path: Path, wrapper: OnnxSynthesizer,
                               names: list[str],
                               lengths: tuple[int, ...] = LENGTHS) -> list[float]:
    """Run both at every length on the same inputs; returns diff / peak per length."""
    session = _session(onnx_path)
    assert [i.name for i in session.get_inputs()] == names
    assert [o.name for o in session.get_outputs()] == ["audio"]
    ratios = []
    for seed, frames in enumerate(lengths):
        inputs = _inputs(wrapper, frames, seed)
        with torch.no_grad():
            expected = wrapper(*inputs).numpy()
        (audio,) = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
        hop = wrapper.net.dec.upp
        assert audio.shape == expected.shape == (1, 1, frames * hop)
        peak = float(np.abs(expected).max())
        assert peak > 1e-3  # a silent output would compare equal to anything
        ratio = float(np.abs(audio - expected).max()) / peak
        assert ratio <= 1e-3, (frames, ratio)
        ratios.append(ratio)
    return ratios


@pytest.fixture(scope="module")
def mini_export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Upstream's layout: checkpoints/mini/{model.pth,config.json}, exported with -n mini."""
    root = tmp_path_factory.mktemp("onnx_mini")
    folder = root / "checkpoints" / "mini"
    folder.mkdir(parents=True)
    shutil.copy(UPSTREAM / "mini_G.pth", folder / "model.pth")
    shutil.copy(UPSTREAM / "mini_config.json", folder / "config.json")
    return {"root": root, "folder": folder}


def test_upstream_layout_export_matches_pytorch(
    mini_export: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(mini_export["root"])
    assert run_cli(onnx_export.main, ["-n", "mini"]) == 0
    onnx_path = mini_export["folder"] / "mini_SoVits.onnx"
    assert "mini_SoVits.onnx" in capsys.readouterr().out

    # Dynamic time axes: no input length is fixed by the traced example.
    session = _session(onnx_path)
    shapes = {i.name: i.shape for i in session.get_inputs()}
    types = {i.name: i.type for i in session.get_inputs()}
    for name in ("f0", "mel2ph", "uv", "vol"):
        assert shapes[name][0] == 1 and isinstance(shapes[name][1], str)
    assert isinstance(shapes["c"][1], str) and shapes["c"][2] == 48
    assert shapes["noise"][:2] == [1, 16] and isinstance(shapes["noise"][2], str)
    assert isinstance(shapes["sid"][0], str) and shapes["sid"][1] == 3
    assert types["mel2ph"] == "tensor(int64)" and types["sid"] == "tensor(float)"

    wrapper = _wrapper(mini_export["folder"] / "model.pth", mini_export["folder"] / "config.json")
    # 1000 frames is a 12 s song in one piece. A float32 sine phase drifts apart there
    # (1.8e-4 of the peak, 2.7e-3 at 3000 frames); the export's float64 phase stays ~1e-6.
    ratios = _assert_onnx_matches_torch(onnx_path, wrapper, UPSTREAM_MIX_VOL_INPUTS,
                                        (*LENGTHS, 1000))
    assert max(ratios) < 1e-4, ratios

    description = json.loads((mini_export["root"] / "checkpoints" / "mini.json").read_text())
    assert description == {
        "Folder": "mini", "Name": "mini", "Type": "SoVits", "Rate": 44100, "Hop": 512,
        "Hubert": "vec-48-layer-9", "SoVits4": True, "SoVits3": False, "CharaMix": True,
        "Volume": True, "HiddenSize": 48, "Characters": ["alto", "tenor", "bass"],
    }


def test_export_wrapper_is_the_upstream_generator() -> None:
    """With all noise zero the export's forward equals upstream's recorded inference."""
    inputs = torch.load(UPSTREAM / "mini_inputs.pt", weights_only=True)
    recorded = torch.load(UPSTREAM / "mini_outputs.pt", weights_only=True)
    wrapper = _wrapper(UPSTREAM / "mini_G.pth", UPSTREAM / "mini_config.json")
    source = wrapper.net.dec.m_source.l_sin_gen
    source.phase_table.zero_()
    source.noise_table.zero_()
    c, f0, uv, vol = (inputs[k] for k in ("c", "f0", "uv", "vol"))
    frames = c.shape[-1]
    mel2ph = torch.arange(1, frames + 1).unsqueeze(0)
    column = wrapper.speaker_names.index("tenor")  # sid [1] of the recording is tenor
    sid = torch.nn.functional.one_hot(torch.full((frames,), column), 3).float()
    noise = torch.zeros(1, wrapper.net.inter_channels, frames)
    with torch.no_grad():
        audio = wrapper(c.transpose(1, 2), f0, mel2ph, uv, noise, sid, vol)
    torch.testing.assert_close(audio, recorded["infer_audio_zero_noise"], rtol=1e-4, atol=1e-4)


def test_single_speaker_model_takes_an_id(tmp_path: Path) -> None:
    config = json.loads((UPSTREAM / "mini_config.json").read_text())
    config["spk"] = {"tenor": 1}
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    out = tmp_path / "out" / "solo_SoVits.onnx"
    argv = ["-n", "solo", "--model", str(UPSTREAM / "mini_G.pth"), "--config", str(config_path),
            "--out", str(out)]
    assert run_cli(onnx_export.main, argv) == 0
    session = _session(out)
    sid = next(i for i in session.get_inputs() if i.name == "sid")
    assert sid.type == "tensor(int64)" and sid.shape == [1]
    wrapper = _wrapper(UPSTREAM / "mini_G.pth", config_path)
    assert not wrapper.speaker_mix
    _assert_onnx_matches_torch(out, wrapper, UPSTREAM_MIX_VOL_INPUTS)
    description = json.loads((out.parent / "solo.json").read_text())
    assert description["CharaMix"] is False and description["Characters"] == ["tenor"]


def test_mismatched_config_and_missing_model_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", str(UPSTREAM / "mini_G.pth"),
            "--config", str(UPSTREAM / "mini2_config.json"), "--out", str(tmp_path / "x.onnx")]
    assert run_cli(onnx_export.main, argv) == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and "mini_G.pth" in message
    assert "Traceback" not in message
    assert run_cli(onnx_export.main, ["-n", "absent", "--out", str(tmp_path / "y.onnx")]) == 2
    assert "model.pth" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_help_names_the_tools() -> None:
    text = onnx_export.build_parser().format_help()
    assert "MoeVoiceStudio" in text and "onnxruntime" in text


@pytest.mark.slow
def test_trained_model_exports_from_the_command_line(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    trained = shared_trained_model(tmp_path_factory)
    work = tmp_path_factory.mktemp("onnx_trained")
    out = work / "tiny_SoVits.onnx"
    result = run_script(
        "onnx_export.py", "-n", "tiny", "--model", trained["model_path"],
        "--config", trained["config_path"], "--out", out, cwd=work,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    wrapper = _wrapper(trained["model_path"], trained["config_path"])
    names = UPSTREAM_MIX_VOL_INPUTS if wrapper.vol_embedding else UPSTREAM_INPUTS
    _assert_onnx_matches_torch(out, wrapper, names)
    description = json.loads((work / "tiny.json").read_text())
    data = trained["config"]["data"]
    assert (description["Rate"], description["Hop"]) == (data["sampling_rate"],
                                                         data["hop_length"])
    assert description["Characters"] == list(trained["config"]["spk"])
