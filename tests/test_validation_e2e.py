"""Validation figures, the best checkpoint and `train.patience` through `python train.py`.

A tiny model trains on four clips until its loss falls: every evaluation logs
finite figures under `eval/`, `best.json` names a pair that rotation kept, and
`evaluate.py` on that pair prints the figures the training log holds. A run
that cannot improve (learning rate 1e-12) stops by `train.patience`, with a
checkpoint and exit 0, and a rerun remembers how long it has waited.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers_data import make_config, make_dataset, write_config
from tests.test_train_e2e import check, free_port, logged_steps, read_events, run_train

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
FIGURES = ("mel_distance", "recon_mel_distance", "pitch_error_cents", "voicing_error_rate")


def setup(root: Path, **train) -> Path:
    """Two speakers, each with two training and two validation clips."""
    make_dataset(root, items_per_speaker=4, val_per_speaker=2, seconds=0.6)
    config = make_config(root, train={"port": str(free_port()), "epochs": 100, **train})
    return write_config(root, config)


def eval_scalars(model_dir: Path) -> dict[str, dict[int, float]]:
    events = read_events(model_dir / "eval")
    return {
        tag: {event.step: event.value for event in events.Scalars(tag)}
        for tag in events.Tags()["scalars"]
    }


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    config = setup(root, learning_rate=2e-3, eval_interval=4, keep_ckpts=1)
    output = check(run_train(root, config, "learn", "--max_steps", "16"))
    return root, config, output


def test_every_evaluation_logs_finite_figures_and_the_loss_falls(learning_run):
    root, _, output = learning_run
    model_dir = root / "logs" / "learn"
    scalars = eval_scalars(model_dir)
    for figure in FIGURES:
        for prefix in ("eval", "eval/alice", "eval/bob"):
            values = scalars[f"{prefix}/{figure}"]
            assert sorted(values) == [0, 4, 8, 12, 16], (prefix, figure)
            assert all(math.isfinite(value) for value in values.values()), (prefix, values)
    train_events = read_events(model_dir)
    mel = [event.value for event in train_events.Scalars("loss/g/mel")]
    assert np.mean(mel[-4:]) < 0.85 * np.mean(mel[:4]), mel
    assert "new best checkpoint G_0.pth/D_0.pth" in output


def test_best_file_names_a_pair_that_rotation_kept(learning_run):
    root, _, _ = learning_run
    model_dir = root / "logs" / "learn"
    best = json.loads((model_dir / "best.json").read_text())
    distances = eval_scalars(model_dir)["eval/mel_distance"]
    assert [step for step, _ in best["history"]] == [0, 4, 8, 12, 16]
    assert distances[best["step"]] == pytest.approx(min(distances.values()), rel=1e-4)
    assert (model_dir / best["generator"]).is_file()
    assert (model_dir / best["discriminator"]).is_file()
    kept = sorted(int(path.stem[2:]) for path in model_dir.glob("G_*.pth"))
    assert kept == sorted({0, best["step"], 16})  # keep_ckpts 1, plus G_0 and the best


def test_evaluate_command_gives_the_training_logs_figures(learning_run, tmp_path):
    root, config, _ = learning_run
    model_dir = root / "logs" / "learn"
    best = json.loads((model_dir / "best.json").read_text())
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "evaluate.py"),
            "-c",
            str(config),
            "-m",
            str(model_dir / best["generator"]),
            "--json",
            str(out),
            "-d",
            "cpu",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"(step {best['step']})" in result.stdout and "alice" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["overall"] == pytest.approx(best["figures"]["overall"], rel=1e-6)
    scalars = eval_scalars(model_dir)
    for speaker in ("alice", "bob"):
        for figure in FIGURES:
            logged = scalars[f"eval/{speaker}/{figure}"][best["step"]]  # float32 in the log
            assert figures["speakers"][speaker][figure] == pytest.approx(logged, rel=1e-5)


def test_patience_stops_a_run_that_cannot_improve_and_a_rerun_remembers(tmp_path):
    config = setup(tmp_path, learning_rate=1e-12, eval_interval=2, patience=2)
    output = check(run_train(tmp_path, config, "flat"))
    model_dir = tmp_path / "logs" / "flat"
    assert max(logged_steps(output)) == 4  # evaluations at 0 (the best), 2 and 4
    assert "train.patience 2: 2 evaluations without a new best validation" in output
    assert "saved step 4, exiting" in output
    assert (model_dir / "G_4.pth").is_file() and (model_dir / "D_4.pth").is_file()
    distances = list(eval_scalars(model_dir)["eval/mel_distance"].values())
    assert distances == pytest.approx([distances[0]] * 3, rel=1e-6)  # equal weights, figures
    assert json.loads((model_dir / "best.json").read_text())["step"] == 0

    again = check(run_train(tmp_path, config, "flat"))  # resumes at 4 and waits no longer
    assert logged_steps(again) == [5, 6]
    assert "train.patience 2: 3 evaluations without a new best" in again
