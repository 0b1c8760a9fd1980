"""Validation figures, the best checkpoint and `evaluate.py`, without train.py.

A tiny random generator on a tiny synthetic set: the figures are finite where
they must be and the same on every call; the best-checkpoint file, patience
and resume replay follow their rules; rotation keeps the protected pair; the
command prints and writes what the library computes.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import feature_files as ff
from checkpoint import build_generator, clean_checkpoints, save_checkpoint
from core.config_schema import validate_config
from core.errors import UserError
from core.hparams import HParams
from data_utils import TextAudioSpeakerLoader, make_eval_loader
from evaluation import BEST_FILE, BestCheckpoint, ValidationReport, evaluate_generator
from evaluation.command import main as evaluate_main
from evaluation.figures import ClipResult, Figures
from evaluation.pitch_accuracy import (
    PitchAccuracy,
    build_pitch_meter,
    compare_pitch,
    measure_pitch_accuracy,
)
from tests.helpers_data import make_config, make_dataset, write_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two speakers with two validation clips each, a config, and a random generator."""
    root = tmp_path_factory.mktemp("validation")
    data = make_dataset(root, items_per_speaker=3, val_per_speaker=2, seconds=0.5)
    config, _ = validate_config(make_config(root), "test")
    hps = HParams(**config)
    torch.manual_seed(0)
    generator = build_generator(hps)
    return root, data, hps, generator


def _report(hps: HParams, generator: torch.nn.Module, filelist: str | None = None):
    dataset = TextAudioSpeakerLoader(filelist or hps.data.validation_files, hps, vol_aug=False)
    return evaluate_generator(generator, make_eval_loader(dataset, hps, "cpu"), hps, "cpu")


# --------------------------------------------------------------------------- pitch


def test_compare_pitch_counts_cents_on_frames_voiced_in_both():
    given_f0 = np.array([100.0, 200.0, 200.0, 150.0, 150.0])
    given_uv = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
    measured_f0 = np.array([200.0, 200.0, 150.0, 150.0, 150.0])
    measured_uv = np.array([1.0, 1.0, 0.0, 1.0, 0.0])
    result = compare_pitch(given_f0, given_uv, measured_f0, measured_uv)
    np.testing.assert_allclose(result.cents, [1200.0, 0.0])  # an octave, then exact
    assert result.voicing_errors == 2 and result.frames == 5


def test_pitch_meter_reads_the_synthetic_tones_pitch(tiny):
    _, data, hps, _ = tiny
    meter = build_pitch_meter(hps.data.hop_length, hps.data.sampling_rate)
    for wav in data["val_wavs"]:
        audio, _ = soundfile.read(wav, dtype="float32")
        f0, uv = ff.read_pitch(ff.pitch_path(wav))
        accuracy = measure_pitch_accuracy(audio, f0, uv, meter)
        assert np.median(accuracy.cents) < 15.0, wav  # a tone whose f0 is exactly the file's
        assert accuracy.voicing_errors / accuracy.frames < 0.15, wav


# --------------------------------------------------------------------------- figures


def test_figures_are_finite_repeatable_and_leave_random_streams(tiny):
    _, _, hps, generator = tiny
    generator.train()
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    first = _report(hps, generator)
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert generator.training  # its mode is given back
    second = _report(hps, generator)
    assert first.to_dict() == second.to_dict()  # equal weights, equal figures, bit for bit
    overall = first.overall
    assert overall.clips == 4
    assert np.isfinite([overall.mel_distance, overall.recon_mel_distance]).all()
    assert 0.0 <= overall.voicing_error_rate <= 1.0
    assert set(first.speakers) == {"alice", "bob"}
    assert {"eval/mel_distance", "eval/alice/pitch_error_cents"} <= set(first.scalars())
    assert {"gen/audio_3", "gt/audio_3"} <= set(first.audios)
    assert set(first.images()) == {"gen/mel", "gt/mel"}


def test_figures_change_with_the_weights(tiny):
    _, _, hps, generator = tiny
    before = _report(hps, generator).overall
    changed = build_generator(hps)
    changed.load_state_dict(generator.state_dict())
    with torch.no_grad():
        changed.dec.conv_post.bias.add_(0.05)
    after = _report(hps, changed).overall
    assert after.mel_distance != before.mel_distance
    assert after.recon_mel_distance != before.recon_mel_distance


def _clip(speaker: str, mel: float) -> ClipResult:
    pitch = PitchAccuracy(cents=np.array([10.0, 30.0]), voicing_errors=1, frames=4)
    return ClipResult(speaker, mel, 2 * mel, pitch)


def test_per_speaker_figures_only_for_several_speakers_with_several_clips():
    report = ValidationReport.of([_clip("a", 1.0), _clip("a", 3.0), _clip("b", 5.0)])
    assert set(report.speakers) == {"a"}  # b has one clip
    assert report.speakers["a"] == Figures(2, 2.0, 4.0, 20.0, 0.25)
    assert report.overall.mel_distance == pytest.approx(3.0)
    assert ValidationReport.of([_clip("a", 1.0), _clip("a", 2.0)]).speakers == {}
    table = report.table().splitlines()
    assert table[0].split()[:3] == ["clips", "mel", "distance"]
    assert table[1].split()[:3] == ["all", "3", "3"] and table[2].split()[0] == "a"


# --------------------------------------------------------------------------- best checkpoint


def _figures(mel: float) -> ValidationReport:
    return ValidationReport(Figures(2, mel, mel, 10.0, 0.1))


def test_best_checkpoint_file_patience_and_tolerance(tmp_path, caplog):
    tracker = BestCheckpoint(tmp_path, patience=2)
    with caplog.at_level(logging.INFO, logger="so-vits-svc"):
        assert tracker.record(0, _figures(2.0))
        assert tracker.record(4, _figures(1.5))
        assert not tracker.record(8, _figures(1.5 * (1 - 1e-6)))  # rounding, not progress
    assert "new best checkpoint G_4.pth/D_4.pth" in caplog.text
    assert tracker.protected_steps() == (4,) and not tracker.patience_exhausted
    assert not tracker.record(12, _figures(1.7))
    assert tracker.patience_exhausted
    assert "train.patience 2: 2 evaluations without a new best" in tracker.stop_reason()
    saved = json.loads((tmp_path / BEST_FILE).read_text())
    assert saved["step"] == 4 and saved["generator"] == "G_4.pth"
    assert saved["figures"]["overall"]["mel_distance"] == 1.5
    assert saved["evaluations_since_best"] == 2
    assert [step for step, _ in saved["history"]] == [0, 4, 8, 12]


def test_resume_replays_the_history_up_to_the_resumed_step(tmp_path):
    tracker = BestCheckpoint(tmp_path)
    for step, mel in ((2, 3.0), (4, 2.0), (6, 2.5), (8, 1.0)):
        tracker.record(step, _figures(mel))
    same = BestCheckpoint.load(tmp_path, resumed_step=8, patience=3)
    assert (same.best_step, same.evaluations_since_best, same.patience) == (8, 0, 3)
    earlier = BestCheckpoint.load(tmp_path, resumed_step=7)  # G_8 was never saved
    assert (earlier.best_step, earlier.evaluations_since_best) == (4, 1)
    assert earlier.figures == {"overall": {"mel_distance": 2.0}}
    assert BestCheckpoint.load(tmp_path, resumed_step=-1).best_step is None  # a new run
    (tmp_path / BEST_FILE).write_text("{not json")
    assert BestCheckpoint.load(tmp_path, resumed_step=8).history == []


def test_rotation_never_removes_the_protected_pair(tmp_path):
    for step in (0, 2, 4, 6, 8):
        for prefix in "GD":
            (tmp_path / f"{prefix}_{step}.pth").write_bytes(b"x")
    removed = clean_checkpoints(tmp_path, 2, protect=(2,))
    assert sorted(Path(path).name for path in removed) == ["D_4.pth", "G_4.pth"]
    left = sorted(path.name for path in tmp_path.glob("G_*.pth"))
    assert left == ["G_0.pth", "G_2.pth", "G_6.pth", "G_8.pth"]


def test_patience_is_null_by_default_and_at_least_one(tmp_path):
    config, _ = validate_config(make_config(tmp_path), "c.json")
    assert config["train"]["patience"] is None
    config, _ = validate_config(make_config(tmp_path, train={"patience": 3}), "c.json")
    assert config["train"]["patience"] == 3
    with pytest.raises(UserError, match="train.patience is 0; use 1 or more"):
        validate_config(make_config(tmp_path, train={"patience": 0}), "c.json")


# --------------------------------------------------------------------------- command


def test_evaluate_command_prints_and_writes_the_library_figures(tiny, capsys):
    root, data, hps, generator = tiny
    config_path = write_config(root, make_config(root))
    model_path = root / "G_7.pth"
    save_checkpoint(generator, None, 1e-4, 1, model_path)
    out = root / "figures.json"
    train_list = str(data["train_list"])
    assert (
        evaluate_main(
            [
                "-c",
                str(config_path),
                "-m",
                str(model_path),
                "-f",
                train_list,
                "--json",
                str(out),
                "-d",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"G_7.pth (step 7) on {train_list}:" in printed and "recon mel distance" in printed
    written = json.loads(out.read_text())
    expected = _report(hps, generator, train_list).to_dict()
    assert written["overall"] == pytest.approx(expected["overall"], nan_ok=True)
    assert written["step"] == 7 and written["filelist"] == train_list
    with pytest.raises(UserError, match="model not found"):
        evaluate_main(["-c", str(config_path), "-m", str(root / "G_404.pth")])
    release = torch.load(model_path, weights_only=True)
    release["model"] = {k: v for k, v in release["model"].items() if not k.startswith("enc_q.")}
    torch.save(release, root / "release.pth")
    with pytest.raises(UserError, match="has no posterior encoder"):
        evaluate_main(["-c", str(config_path), "-m", str(root / "release.pth")])
