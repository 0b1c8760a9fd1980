"""The demo: its synthetic singers, its stand-in encoder, and the whole run end to end.

The end-to-end test runs `python demo.py --quick` as a user would, then reads
what a user would look at: TensorBoard logs, checkpoints and the converted
clip; a second run must resume instead of starting over.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from demo.pipeline import CPU_MODEL, pitch_error_cents, shrink_config
from demo.synth import FRAME_PERIOD_MS, SAMPLE_RATE, build_singing_set, make_voice, render_phrase

REPO = Path(__file__).resolve().parent.parent


def _measured_pitch(audio: np.ndarray) -> np.ndarray:
    import pyworld

    samples = audio.astype(np.float64)
    f0, times = pyworld.dio(samples, SAMPLE_RATE, f0_floor=50.0, f0_ceil=1100.0,
                            frame_period=FRAME_PERIOD_MS)
    return pyworld.stonemask(samples, f0, times, SAMPLE_RATE)


def _log_envelope(audio: np.ndarray, f0: np.ndarray) -> np.ndarray:
    """WORLD's CheapTrick envelope in dB per frame, measured from the audio."""
    import pyworld

    samples = audio.astype(np.float64)
    times = np.arange(f0.size) * FRAME_PERIOD_MS / 1000.0
    return 10.0 * np.log10(pyworld.cheaptrick(samples, f0, times, SAMPLE_RATE) + 1e-20)


def test_synthetic_clip_follows_its_pitch_contour() -> None:
    for speaker in range(3):
        clip = render_phrase(make_voice(speaker), 2.5, np.random.default_rng([7, speaker]))
        assert clip.audio.dtype == np.float32
        assert np.abs(clip.audio).max() <= 1.0
        error = pitch_error_cents(clip.f0, _measured_pitch(clip.audio))
        assert error < 20.0, f"speaker {speaker}: {error:.1f} cents"
        measured_voiced = _measured_pitch(clip.audio) > 0
        frames = min(measured_voiced.size, clip.f0.size)
        built_voiced = clip.f0[:frames] > 0
        measured_voiced = measured_voiced[:frames]
        # Dio may miss the quiet swell at a phrase's ends, but never finds pitch in silence.
        assert (measured_voiced & built_voiced).sum() > 0.7 * built_voiced.sum()
        assert (measured_voiced & ~built_voiced).sum() < 0.05 * measured_voiced.sum()


def test_speakers_have_different_spectral_envelopes() -> None:
    # The same seed gives the same phrase (notes, vowels, timing): only the voice differs.
    first = render_phrase(make_voice(0), 2.5, np.random.default_rng(3))
    again = render_phrase(make_voice(0), 2.5, np.random.default_rng(3))
    second = render_phrase(make_voice(1), 2.5, np.random.default_rng(3))
    np.testing.assert_array_equal(first.audio, again.audio)
    voiced = (first.f0 > 0) & (second.f0 > 0)
    below_8k = slice(0, int(8000 / (SAMPLE_RATE / 2) * first.spectral_envelope.shape[1]))
    built_first = 10 * np.log10(first.spectral_envelope[voiced])
    built_second = 10 * np.log10(second.spectral_envelope[voiced])
    built = np.abs(built_first - built_second)[:, below_8k].mean()
    measured_first = _log_envelope(first.audio, first.f0)[voiced]
    measured_second = _log_envelope(second.audio, second.f0)[voiced]
    measured = np.abs(measured_first - measured_second)[:, below_8k].mean()
    # Same voice, same phrase: identical; other voice: several dB apart on average.
    assert built > 2.0, f"built envelopes differ by only {built:.2f} dB"
    assert measured > 2.0, f"measured envelopes differ by only {measured:.2f} dB"
    assert not np.allclose(first.aperiodicity, second.aperiodicity)


def test_singing_set_layout_and_reuse(tmp_path: Path) -> None:
    paths = build_singing_set(tmp_path, speakers=2, clips=2, shortest=1.0, longest=1.2, seed=5)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "ada/ada_00.wav", "ada/ada_01.wav", "ben/ben_00.wav", "ben/ben_01.wav"
    ]
    info = soundfile.info(str(paths[0]))
    assert info.samplerate == SAMPLE_RATE and info.channels == 1
    assert 1.0 <= info.duration <= 1.25
    stamps = [p.stat().st_mtime_ns for p in paths]
    build_singing_set(tmp_path, speakers=2, clips=2, shortest=1.0, longest=1.2, seed=5)
    assert [p.stat().st_mtime_ns for p in paths] == stamps


def test_pitch_error_uses_frames_voiced_in_both() -> None:
    reference = np.array([0.0, 200.0, 200.0, 200.0, 0.0])
    measured = np.array([150.0, 400.0, 200.0, 0.0, 300.0])
    assert pitch_error_cents(reference, measured) == pytest.approx(600.0)
    assert np.isnan(pitch_error_cents(np.zeros(3), measured))


def test_shrunk_config_keeps_the_encoder_width() -> None:
    config = {"model": {"ssl_dim": 768, "hidden_channels": 192}, "train": {"batch_size": 6}}
    shrink_config(config)
    assert config["model"]["ssl_dim"] == 768
    assert config["model"]["hidden_channels"] == CPU_MODEL["hidden_channels"]
    assert config["train"]["num_workers"] == 0


def test_standin_has_contentvec_layout(tmp_path: Path) -> None:
    from demo.standin import ensure_standin
    from modules.speech_encoders import load_speech_encoder

    path, written = ensure_standin(tmp_path)
    assert written
    assert ensure_standin(tmp_path) == (path, False)
    encoder = load_speech_encoder("vec768l12", weights_path=path)
    model = encoder.model
    assert encoder.dim == 768
    assert len(model.encoder.layers) == 12
    assert model.encoder.layers[0].fc1.out_features == 3072
    assert model.encoder.layers[0].self_attn.heads == 12
    assert model.final_proj.out_features == 256
    features = encoder.encode(np.zeros(16000, dtype=np.float32) + 0.01)
    assert tuple(features.shape) == (1, 768, 49)


# --------------------------------------------------------------------------- end to end


def _run_demo(workspace: Path, *extra: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(REPO / "demo.py"), "--quick", "--workspace", str(workspace), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    return output


def _tensorboard_tags(folder: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.IMAGES: 0, event_accumulator.AUDIO: 0}
    )
    accumulator.Reload()
    return accumulator.Tags()


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    output = _run_demo(workspace)
    assert "STAND-IN" in output
    assert "pitch check:" in output

    model_dir = workspace / "logs" / "demo"
    assert (model_dir / "G_12.pth").is_file() and (model_dir / "D_12.pth").is_file()
    train_tags = _tensorboard_tags(model_dir)
    for tag in ("loss/g/mel", "loss/g/total", "loss/d/total", "loss/g/kl", "learning_rate"):
        assert tag in train_tags["scalars"], train_tags["scalars"]
    for tag in ("slice/mel_org", "slice/mel_gen", "all/mel"):
        assert tag in train_tags["images"], train_tags["images"]
    eval_tags = _tensorboard_tags(model_dir / "eval")
    assert "gen/audio_0" in eval_tags["audio"], eval_tags["audio"]
    assert "gen/mel" in eval_tags["images"]

    sources = sorted((workspace / "raw").glob("*.wav"))
    converted = sorted((workspace / "results").glob("*.wav"))
    assert len(sources) == 1 and len(converted) == 1
    source_info = soundfile.info(str(sources[0]))
    converted_info = soundfile.info(str(converted[0]))
    assert converted_info.samplerate == source_info.samplerate == 44100
    # Upstream sizes each slice as ceil(samples / sr * target_sr), which float
    # rounding can push one sample over; anything more would be a real mismatch.
    assert abs(converted_info.frames - source_info.frames) <= 1
    audio, _ = soundfile.read(str(converted[0]))
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0

    features = sorted((workspace / "dataset" / "44k").glob("*/*.soft.pt"))
    assert len(features) == 10
    stamps = {path: path.stat().st_mtime_ns for path in features}
    raw_stamps = {p: p.stat().st_mtime_ns for p in (workspace / "dataset_raw").glob("*/*.wav")}
    config_stamp = (workspace / "configs" / "config.json").stat().st_mtime_ns

    output = _run_demo(workspace, "--steps", "14")
    assert "resuming from G_12.pth at step 12" in output
    assert "10 skipped" in output  # preprocess_hubert_f0.py kept every feature
    assert "already in" in output  # resample step skipped
    assert (model_dir / "G_14.pth").is_file()
    assert {path: path.stat().st_mtime_ns for path in features} == stamps
    assert {p: p.stat().st_mtime_ns for p in raw_stamps} == raw_stamps
    assert (workspace / "configs" / "config.json").stat().st_mtime_ns == config_stamp
    steps = sorted(int(p.stem[2:]) for p in model_dir.glob("G_*.pth"))
    # keep_ckpts 2 prunes old pairs; G_0/D_0 are never pruned, as upstream.
    assert steps == [0, 12, 14]
