"""The demo's steps: each runs the command a user would type, in the demo's workspace.

Every step is resumable: the synthetic set keeps clips already written, the
resample step is skipped once every raw clip has its converted wav, the config
is written (and shrunk to a CPU-sized model) only once, feature extraction and
training skip or resume by themselves, and conversion reuses the newest
checkpoint. So rerunning the demo continues where an interrupted run stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from checkpoint.names import GENERATOR_FILES, generator_steps, newest_generator
from core.safe_io import atomic_write
from demo.standin import ensure_standin, find_real_contentvec
from demo.synth import build_singing_set

REPO_DIR = Path(__file__).resolve().parent.parent
MODEL_NAME = "demo"
CONFIG_PATH = "configs/config.json"
RMVPE_FILE = "rmvpe.pt"


class DemoError(RuntimeError):
    """A demo step failed; the message names the command and where its output is."""


@dataclass(frozen=True)
class DemoOptions:
    """What the user asked for on the command line, resolved to numbers."""

    workspace: Path
    speakers: int = 3
    clips: int = 8
    steps: int = 300
    shortest_s: float = 2.0
    longest_s: float = 4.0
    quick: bool = False
    seed: int = 1234
    num_processes: int = 2


# Model and training settings that make a so-vits-svc 4.1 model train visibly on
# two CPU cores in minutes. ssl_dim stays the content encoder's width (768).
CPU_MODEL: dict[str, Any] = {
    "inter_channels": 64,
    "hidden_channels": 64,
    "filter_channels": 128,
    "n_heads": 2,
    "n_layers": 2,
    "upsample_initial_channel": 64,
    "n_flow_layer": 2,
    "gin_channels": 64,
}
CPU_TRAIN: dict[str, Any] = {
    "batch_size": 4,
    "segment_size": 2560,
    "learning_rate": 2e-4,
    "log_interval": 10,
    "eval_interval": 150,
    "keep_ckpts": 2,
    "epochs": 100000,
    "num_workers": 0,
}
QUICK_TRAIN: dict[str, Any] = {
    **CPU_TRAIN,
    "batch_size": 2,
    "log_interval": 3,
    "eval_interval": 6,
}


def quick_options(workspace: Path) -> DemoOptions:
    """The smallest run that still exercises every step (used by the tests)."""
    return DemoOptions(
        workspace=workspace, speakers=2, clips=5, steps=12, shortest_s=1.2, longest_s=1.8,
        quick=True,
    )


@dataclass
class DemoResult:
    """Where everything ended up, and the pitch check of the converted clip."""

    checkpoint: Path
    source_clip: Path
    converted_clip: Path | None
    pitch_error_cents: float | None
    encoder_path: Path
    standin_encoder: bool
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- running commands


def run_command(script: str, arguments: Sequence[str], workspace: Path) -> None:
    """Run one of the repository's scripts as a user would, with the workspace as cwd."""
    shown = " ".join(["python", script, *arguments])
    print(f"\n$ {shown}", flush=True)
    command = [sys.executable, str(REPO_DIR / script), *arguments]
    environment = dict(os.environ, PYTHONWARNINGS="ignore::UserWarning")
    completed = subprocess.run(command, cwd=workspace, env=environment, check=False)
    if completed.returncode != 0:
        raise DemoError(f"`{shown}` failed with exit code {completed.returncode} (cwd {workspace})")


def _announce(title: str) -> None:
    print(f"\n=== {title}", flush=True)


# --------------------------------------------------------------------------- steps 1-5


def make_dataset(options: DemoOptions) -> list[Path]:
    """Step 1: the synthetic singers in `dataset_raw/<speaker>/`."""
    _announce(f"1. synthetic singing set: {options.speakers} singers x {options.clips} clips")
    paths = build_singing_set(
        options.workspace / "dataset_raw",
        speakers=options.speakers,
        clips=options.clips,
        shortest=options.shortest_s,
        longest=options.longest_s,
        seed=options.seed,
    )
    print(f"{len(paths)} clips in {options.workspace / 'dataset_raw'}")
    return paths


def resample(options: DemoOptions, raw_clips: Sequence[Path]) -> None:
    """Step 2: resample.py, unless every raw clip already has its converted wav.

    resample.py itself reconverts every file on each run, so the demo checks.
    """
    _announce("2. resample to 44.1 kHz mono")
    raw_root = options.workspace / "dataset_raw"
    out_root = options.workspace / "dataset" / "44k"
    missing = [p for p in raw_clips if not (out_root / p.relative_to(raw_root)).is_file()]
    if not missing:
        print(f"all {len(raw_clips)} clips already in {out_root}: skipped")
        return
    run_command(
        "resample.py",
        ["--in_dir", "dataset_raw", "--out_dir2", "dataset/44k",
         "--num_processes", str(options.num_processes)],
        options.workspace,
    )


def write_config(options: DemoOptions) -> Path:
    """Step 3: filelists and config, then the model shrunk to CPU size; kept if it exists."""
    _announce("3. filelists and config")
    config_path = options.workspace / CONFIG_PATH
    if config_path.is_file():
        print(f"{config_path} exists: kept (delete it to regenerate)")
        return config_path
    run_command("preprocess_flist_config.py", ["--speech_encoder", "vec768l12"], options.workspace)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    shrink_config(config, quick=options.quick)
    with atomic_write(config_path) as handle:
        handle.write(json.dumps(config, indent=2).encode("utf-8"))
    print(f"shrunk the model in {config_path} to CPU size: "
          + ", ".join(f"{key} {value}" for key, value in CPU_MODEL.items()))
    return config_path


def shrink_config(config: dict[str, Any], quick: bool = False) -> None:
    """Resize the template's model and schedule for a CPU (ssl_dim stays the encoder's)."""
    config["model"].update(CPU_MODEL)
    config["train"].update(QUICK_TRAIN if quick else CPU_TRAIN)


def content_encoder(options: DemoOptions) -> tuple[Path, bool]:
    """Step 4: the real ContentVec checkpoint if present, else the seeded stand-in."""
    _announce("4. content encoder (vec768l12)")
    real = find_real_contentvec([options.workspace, REPO_DIR])
    if real is not None:
        print(f"using ContentVec's real checkpoint {real}")
        return real.resolve(), False
    started = time.time()
    path, written = ensure_standin(options.workspace / "pretrain")
    action = f"wrote it in {time.time() - started:.0f} s" if written else "reusing it"
    print(
        "NOTE: pretrain/checkpoint_best_legacy_500.pt (ContentVec) is not here, so the demo uses "
        f"a STAND-IN with ContentVec's architecture and RANDOM weights: {path} ({action}).\n"
        "      It shows that every step works; it does not show voice quality. For real "
        "results put ContentVec's checkpoint in pretrain/."
    )
    return path.resolve(), True


def pitch_predictor(options: DemoOptions) -> str:
    """rmvpe when its weights are available (linked into the workspace), else dio."""
    target = options.workspace / "pretrain" / RMVPE_FILE
    if target.is_file():
        return "rmvpe"
    source = REPO_DIR / "pretrain" / RMVPE_FILE
    if source.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source.resolve())
        return "rmvpe"
    return "dio"


def extract_features(options: DemoOptions, encoder_path: Path, f0_predictor: str) -> None:
    """Step 5: preprocess_hubert_f0.py, which keeps features that are already there."""
    _announce(f"5. content features and pitch ({f0_predictor})")
    run_command(
        "preprocess_hubert_f0.py",
        ["--in_dir", "dataset/44k", "--f0_predictor", f0_predictor,
         "--num_processes", str(options.num_processes), "--encoder_path", str(encoder_path)],
        options.workspace,
    )


# --------------------------------------------------------------------------- steps 6-7


def train(options: DemoOptions) -> Path:
    """Step 6: train.py up to `options.steps` (resuming from the newest checkpoint)."""
    model_dir = options.workspace / "logs" / MODEL_NAME
    done = generator_steps(model_dir)
    start = f"resuming from step {done[0]}" if done else "starting"
    _announce(f"6. train to step {options.steps} ({start})")
    run_command(
        "train.py",
        ["-c", CONFIG_PATH, "-m", MODEL_NAME, "--max_steps", str(options.steps)],
        options.workspace,
    )
    newest = newest_generator(model_dir)
    if newest is None:
        raise DemoError(f"training wrote no {GENERATOR_FILES} into {model_dir}")
    return newest


def pick_source_clip(options: DemoOptions) -> tuple[Path, str, str]:
    """A validation clip of the first singer and the name of the second singer.

    A validation clip was never trained on, so the conversion is a real test.
    """
    config = json.loads((options.workspace / CONFIG_PATH).read_text(encoding="utf-8"))
    speakers = sorted(config["spk"], key=lambda name: config["spk"][name])
    if len(speakers) < 2:
        raise DemoError("the demo needs at least two singers (--speakers 2 or more)")
    source_speaker, target_speaker = speakers[0], speakers[1]
    val_list = options.workspace / config["data"]["validation_files"]
    entries = [line.strip() for line in val_list.read_text(encoding="utf-8").splitlines()]
    own = sorted(e for e in entries if e and Path(e).parent.name == source_speaker)
    if not own:
        raise DemoError(f"{val_list} holds no clip of {source_speaker}")
    return options.workspace / own[0], source_speaker, target_speaker


def convert(
    options: DemoOptions,
    checkpoint: Path,
    source_clip: Path,
    target_speaker: str,
    encoder_path: Path,
    f0_predictor: str,
    transpose: int = 0,
) -> Path:
    """Step 7: inference_main.py on the clip copied to `raw/`; returns the wav it wrote."""
    _announce(f"7. convert {source_clip.name} to {target_speaker}'s voice")
    raw_dir = options.workspace / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_clip, raw_dir / source_clip.name)
    results = options.workspace / "results"
    before = {p: p.stat().st_mtime_ns for p in results.glob("*.wav")} if results.is_dir() else {}
    run_command(
        "inference_main.py",
        ["-m", str(checkpoint.relative_to(options.workspace)), "-c", CONFIG_PATH,
         "-n", source_clip.name, "-t", str(transpose), "-s", target_speaker,
         "-f0p", f0_predictor, "--encoder_path", str(encoder_path), "-wf", "wav"],
        options.workspace,
    )
    fresh = [
        p for p in results.glob("*.wav")
        if before.get(p) != p.stat().st_mtime_ns and p.name.startswith(source_clip.stem)
    ]
    if not fresh:
        raise DemoError(f"inference_main.py wrote no {source_clip.stem}*.wav into {results}")
    return max(fresh, key=lambda p: p.stat().st_mtime_ns)


# --------------------------------------------------------------------------- step 8


def measure_pitch(audio: np.ndarray, sample_rate: int, frame_period_ms: float = 5.0) -> np.ndarray:
    """f0 per frame (0 = unvoiced) with WORLD's dio refined by stonemask."""
    import pyworld

    samples = np.ascontiguousarray(audio, dtype=np.float64)
    f0, times = pyworld.dio(
        samples, sample_rate, f0_floor=50.0, f0_ceil=1100.0, frame_period=frame_period_ms
    )
    return pyworld.stonemask(samples, f0, times, sample_rate)


def pitch_error_cents(reference_f0: np.ndarray, measured_f0: np.ndarray) -> float:
    """Median |cents| between two f0 tracks over frames voiced in both (nan if none)."""
    frames = min(reference_f0.size, measured_f0.size)
    reference, measured = reference_f0[:frames], measured_f0[:frames]
    voiced = (reference > 0) & (measured > 0)
    if not voiced.any():
        return float("nan")
    return float(np.median(np.abs(1200.0 * np.log2(measured[voiced] / reference[voiced]))))


def converted_pitch_error(source_clip: Path, converted_clip: Path, transpose: int = 0) -> float:
    """Step 8: how far the converted clip's pitch lies from the source's f0 x 2**(t/12)."""
    import soundfile

    source, source_sr = soundfile.read(str(source_clip), dtype="float64")
    converted, converted_sr = soundfile.read(str(converted_clip), dtype="float64")
    if converted.ndim > 1:
        converted = converted.mean(axis=1)
    asked = measure_pitch(source, source_sr) * 2.0 ** (transpose / 12.0)
    return pitch_error_cents(asked, measure_pitch(converted, converted_sr))


# --------------------------------------------------------------------------- whole run


def run_demo(options: DemoOptions) -> DemoResult:
    """Steps 1-8 in order, timing each; step 7-8 are skipped if inference_main.py is missing."""
    options.workspace.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, started: float) -> None:
        timings[name] = time.time() - started

    started = time.time()
    raw_clips = make_dataset(options)
    timed("dataset", started)
    started = time.time()
    resample(options, raw_clips)
    timed("resample", started)
    started = time.time()
    write_config(options)
    timed("config", started)
    started = time.time()
    encoder_path, standin = content_encoder(options)
    timed("encoder", started)
    f0_predictor = pitch_predictor(options)
    started = time.time()
    extract_features(options, encoder_path, f0_predictor)
    timed("features", started)
    started = time.time()
    checkpoint = train(options)
    timed("train", started)

    source_clip, _, target_speaker = pick_source_clip(options)
    converted: Path | None = None
    error: float | None = None
    if (REPO_DIR / "inference_main.py").is_file():
        started = time.time()
        converted = convert(
            options, checkpoint, source_clip, target_speaker, encoder_path, f0_predictor
        )
        timed("convert", started)
        error = converted_pitch_error(source_clip, converted)
    else:
        print("\ninference_main.py is not in this repository yet: conversion skipped")
    return DemoResult(checkpoint, source_clip, converted, error, encoder_path, standin, timings)


def print_summary(options: DemoOptions, result: DemoResult) -> None:
    """Step 8's figure and step 9: where to look."""
    workspace = options.workspace
    _announce("done")
    if result.pitch_error_cents is not None:
        print(
            f"pitch check: the converted clip lies {result.pitch_error_cents:.1f} cents "
            "(median absolute, frames voiced in both) from the pitch asked for"
        )
    print(f"TensorBoard:  tensorboard --logdir {workspace / 'logs'}")
    print(f"checkpoints:  {workspace / 'logs' / MODEL_NAME}  (newest {result.checkpoint.name})")
    print(f"source clip:  {result.source_clip}")
    if result.converted_clip is not None:
        print(f"converted:    {result.converted_clip}")
    if result.standin_encoder:
        print(
            "reminder: features came from a random-weight STAND-IN content encoder "
            f"({result.encoder_path.name}); expect pipeline-correct, not natural-sounding, audio"
        )
    print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items()))
