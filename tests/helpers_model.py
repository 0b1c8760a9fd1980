"""A tiny trained model and test audio for the inference, cluster and release tests.

`trained_model` trains the CPU-sized config of `helpers_data` for two steps with
`train.py` (as a user runs it) once per test session, with ssl_dim 48 and the
vec768l12 encoder so the tiny fairseq HuBERT fixture can stand in for ContentVec.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from checkpoint.names import newest_generator
from tests.helpers_data import make_config, make_dataset, write_config

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
UPSTREAM = FIXTURES / "upstream-4.1"
TINY_ENCODER = FIXTURES / "fairseq-hubert-tiny" / "tiny_hubert_fairseq.pt"
TINY_WIDTH = 48
MODEL_NAME = "tiny"


def sung_clip(seconds: float, sampling_rate: int, f0: float = 220.0, seed: int = 0) -> np.ndarray:
    """A sung-like tone (harmonics, vibrato, breath noise) with a pause in the middle."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    pitch = f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sampling_rate
    tone = sum(np.sin(k * phase) / k for k in (1, 2, 3)) * 0.3
    pause = (t > 0.45 * seconds) & (t < 0.55 * seconds)
    audio = np.where(pause, 0.0, tone) + rng.normal(0, 1e-3, t.size)
    return audio.astype(np.float32)


def run_script(script: str, *args: str | os.PathLike, cwd: Path,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run one of the project's entry scripts as a user would, capturing its output."""
    environment = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_tiny_model(root: Path) -> dict[str, Any]:
    """Make a dataset and config under `root` and train two steps; returns the paths."""
    dataset = make_dataset(root, items_per_speaker=3, ssl_dim=TINY_WIDTH)
    config = make_config(
        root, model={"ssl_dim": TINY_WIDTH, "speech_encoder": "vec768l12"}
    )
    config_path = write_config(root, config)
    result = run_script(
        "train.py", "-c", config_path, "-m", MODEL_NAME, "--max_steps", "2", cwd=root
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model_dir = root / "logs" / MODEL_NAME
    newest = newest_generator(model_dir)
    assert newest is not None, f"no generator in {model_dir}: {result.stdout[-2000:]}"
    return {
        "root": root,
        "config_path": config_path,
        "model_path": newest,
        "dataset": dataset,
        "config": config,
    }


def shared_trained_model(factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`train_tiny_model` once per session (every test module reuses the same run)."""
    root = factory.getbasetemp() / "shared_tiny_model"
    marker = root / "trained.ok"
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        info = train_tiny_model(root)
        marker.write_text(str(info["model_path"]))
        return info
    config_path = root / "configs" / "config.json"
    import json

    return {
        "root": root,
        "config_path": config_path,
        "model_path": Path(marker.read_text()),
        "dataset": {"dataset_dir": root / "dataset" / "22k"},
        "config": json.loads(config_path.read_text()),
    }
