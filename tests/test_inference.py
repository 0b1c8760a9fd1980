"""Converting songs: `Svc` and `inference_main.py`.

Fast tests use upstream's recorded mini generator (44.1 kHz, ssl_dim 48) with
the tiny fairseq HuBERT as its speech encoder; the slow test trains a tiny model
with train.py and converts a clip through the command line and through `Svc`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

import inference_main
from core.errors import UserError
from inference.spk_mix import build_mix_weights, read_spk_mix_map
from inference.svc import Svc, pad_array, split_list_by_n
from preprocessing.runner import run_cli
from tests.helpers_model import (
    REPO,
    TINY_ENCODER,
    UPSTREAM,
    run_script,
    shared_trained_model,
    sung_clip,
)

MINI_SR = 44100


@pytest.fixture(scope="module")
def mini_svc() -> Svc:
    return Svc(
        UPSTREAM / "mini_G.pth", UPSTREAM / "mini_config.json", device="cpu",
        encoder_path=TINY_ENCODER,
    )


def _spy_infer(svc: Svc, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record every call of the generator's infer (arguments by name)."""
    calls: list[dict[str, Any]] = []
    original = svc.net_g_ms.infer

    def spy(c: torch.Tensor, **kwargs: Any) -> Any:
        calls.append({"c": c, **kwargs})
        return original(c, **kwargs)

    monkeypatch.setattr(svc.net_g_ms, "infer", spy)
    return calls


# --------------------------------------------------------------------------- features in, audio out


def test_infer_features_matches_direct_infer_and_upstream(mini_svc: Svc) -> None:
    inputs = torch.load(UPSTREAM / "mini_inputs.pt", weights_only=True)
    recorded = torch.load(UPSTREAM / "mini_outputs.pt", weights_only=True)["infer_audio"]
    c, f0, uv, vol, sid = (inputs[k] for k in ("c", "f0", "uv", "vol", "sid"))
    ours = mini_svc.infer_features(c, f0, uv, int(sid[0]), vol=vol, noise_scale=0.35)
    with torch.no_grad():
        direct, _ = mini_svc.net_g_ms.infer(
            c, f0=f0, uv=uv, g=sid.view(1, 1), noice_scale=0.35, seed=52468, vol=vol
        )
    assert ours.shape == (c.shape[-1] * 512,)
    assert torch.equal(ours, direct[0, 0])
    torch.testing.assert_close(ours, recorded[0, 0], rtol=1e-4, atol=1e-5)
    by_name = mini_svc.infer_features(c, f0, uv, "tenor", vol=vol, noise_scale=0.35)
    assert torch.equal(by_name, ours)  # tenor is id 1


def test_unknown_speaker_is_a_user_error(mini_svc: Svc) -> None:
    with pytest.raises(UserError, match="alto, tenor, bass"):
        mini_svc.speaker_id("nobody")
    assert mini_svc.speaker_id("2") == 2


# --------------------------------------------------------------------------- audio in, audio out


def test_transpose_doubles_f0_and_output_keeps_length(
    mini_svc: Svc, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy_infer(mini_svc, monkeypatch)
    clip = sung_clip(0.5, MINI_SR)
    plain, _, frames = mini_svc.infer("alto", 0, clip)
    octave, _, _ = mini_svc.infer("alto", 12, clip)
    assert frames == len(clip) // 512 == calls[0]["f0"].shape[1]
    voiced = calls[0]["uv"] > 0
    assert voiced.any()
    ratio = calls[1]["f0"][voiced] / calls[0]["f0"][voiced]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 2.0))
    assert torch.equal(calls[0]["c"], calls[1]["c"])  # content does not depend on pitch
    assert calls[0]["vol"] is not None  # the mini model embeds volume
    assert not torch.equal(plain, octave)


def test_convert_array_length_and_rates(mini_svc: Svc) -> None:
    clip = sung_clip(0.8, MINI_SR, seed=1)
    out = mini_svc.convert_array(clip, MINI_SR, "bass", pad_seconds=0.1)
    assert out.dtype == np.float32 and out.shape == clip.shape and np.isfinite(out).all()
    assert np.abs(out).max() > 0
    half_rate = sung_clip(0.8, 22050, seed=1)
    out = mini_svc.convert_array(half_rate, 22050, "bass", pad_seconds=0.1)
    assert abs(len(out) - 2 * len(half_rate)) <= 2


def test_forced_clips_with_crossfade_keep_length(mini_svc: Svc) -> None:
    clip = sung_clip(0.9, MINI_SR, seed=2)
    out = mini_svc.convert_array(
        clip, MINI_SR, 0, slice_db=-200, pad_seconds=0.05, clip_seconds=0.4,
        linear_gradient=0.05, linear_gradient_retain=0.75,
    )
    assert out.shape == clip.shape and np.isfinite(out).all()


def test_loudness_envelope_adjustment_changes_output(mini_svc: Svc) -> None:
    clip = sung_clip(0.5, MINI_SR, seed=3)
    own, _, _ = mini_svc.infer("alto", 0, clip)
    mixed, _, _ = mini_svc.infer("alto", 0, clip, loudness_envelope_adjustment=0.0)
    assert own.shape == mixed.shape and not torch.allclose(own, mixed)


def test_speaker_mix_timeline(tmp_path: Path) -> None:
    mix_map = read_spk_mix_map(REPO / "spkmix.py")
    assert set(mix_map) == {0, 1, 2}
    weights = build_mix_weights(mix_map, {"a": 0, "b": 1, "c": 2}, 100)
    assert weights.shape == (3, 100)
    torch.testing.assert_close(weights.sum(dim=0), torch.ones(100))
    bad = tmp_path / "spkmix.py"
    bad.write_text("spk_mix_map = __import__('os').getcwd()\n")
    with pytest.raises(UserError, match="literal"):
        read_spk_mix_map(bad)

    svc = Svc(
        UPSTREAM / "mini_G.pth", UPSTREAM / "mini_config.json", device="cpu",
        encoder_path=TINY_ENCODER, spk_mix_enable=True,
    )
    clip = sung_clip(0.5, MINI_SR, seed=4)
    out = svc.convert_array(clip, MINI_SR, mix_map, use_spk_mix=True, pad_seconds=0.05)
    assert out.shape == clip.shape and np.isfinite(out).all()


def test_helpers_follow_upstream() -> None:
    assert pad_array(np.ones(3), 6).tolist() == [0, 1, 1, 1, 0, 0]
    assert pad_array(np.ones(5), 3).shape == (5,)
    pieces = list(split_list_by_n(np.arange(10), 4, 1))
    assert [p.tolist() for p in pieces] == [[0, 1, 2, 3], [3, 4, 5, 6, 7], [7, 8, 9]]


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("flag", "missing"),
    [("-shd", "logs/44k/diffusion/model_0.pt"), ("-od", "logs/44k/diffusion/model_0.pt"),
     ("-eh", "pretrain/nsf_hifigan/config.json")],
)
def test_diffusion_flags_without_their_models_exit_2(
    flag: str, missing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "raw").mkdir()
    soundfile.write(tmp_path / "raw" / "song.wav", sung_clip(0.2, MINI_SR), MINI_SR)
    monkeypatch.chdir(tmp_path)
    argv = [flag, "-n", "song.wav", "-m", str(UPSTREAM / "mini_G.pth"),
            "-c", str(UPSTREAM / "mini_config.json"), "-s", "alto"]
    assert run_cli(inference_main.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {missing}") and "\n" not in err


def test_missing_diffusion_model_exit_2_as_a_command(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    soundfile.write(tmp_path / "raw" / "song.wav", sung_clip(0.2, MINI_SR), MINI_SR)
    result = run_script("inference_main.py", "-shd", "-n", "song.wav", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: logs/44k/diffusion/model_0.pt")
    assert "Traceback" not in result.stderr


def test_result_name_is_upstreams() -> None:
    args = inference_main.build_parser().parse_args(["-cr", "0.5", "-f0p", "dio"])
    assert inference_main.result_name("song.wav", 3, "alice", args) == (
        "song.wav_3key_alice_0.5_sovits_dio.flac"
    )
    args = inference_main.build_parser().parse_args(["-a", "-wf", "wav"])
    assert inference_main.result_name("a", 0, "b", args) == "a_auto_b_sovits_pm.wav"


# --------------------------------------------------------------------------- trained model


@pytest.mark.slow
def test_trained_model_converts_a_song(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = shared_trained_model(tmp_path_factory)
    sampling_rate = trained["config"]["data"]["sampling_rate"]
    work = tmp_path_factory.mktemp("convert")
    (work / "raw").mkdir()
    clip = sung_clip(1.2, sampling_rate, f0=196.0)
    soundfile.write(work / "raw" / "song.wav", clip, sampling_rate)

    result = run_script(
        "inference_main.py", "-m", trained["model_path"], "-c", trained["config_path"],
        "-n", "song.wav", "-s", "bob", "-t", "12", "-wf", "wav",
        "--encoder_path", TINY_ENCODER, cwd=work,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = work / "results" / "song.wav_12key_bob_sovits_pm.wav"
    converted, rate = soundfile.read(output)
    assert rate == sampling_rate and converted.shape == clip.shape

    svc = Svc(trained["model_path"], trained["config_path"], device="cpu",
              encoder_path=TINY_ENCODER)
    calls = _spy_infer(svc, monkeypatch)
    same = svc.convert_array(clip, sampling_rate, "bob", transpose=12)
    up = svc.convert_array(clip, sampling_rate, "bob", transpose=0)
    assert same.shape == up.shape == clip.shape
    assert len(calls) == 2
    voiced = calls[0]["uv"] > 0
    torch.testing.assert_close(
        calls[0]["f0"][voiced] / calls[1]["f0"][voiced],
        torch.full((int(voiced.sum()),), 2.0),
    )
