"""Hyper-parameters, the checkpoint format, logging and TensorBoard helpers.

The names here (`HParams`, `get_hparams`, `get_hparams_from_file`,
`load_checkpoint`, `save_checkpoint`, `latest_checkpoint_path`,
`clean_checkpoints`) are upstream so-vits-svc's, because its tools import them.

Checkpoint files hold upstream's four keys, `model`, `iteration` (the epoch),
`optimizer` and `learning_rate`, with weight-norm parameters under upstream's
old names (`weight_g`/`weight_v`), so files move both ways between this project
and upstream. A training run adds one key, `train_state`, to its G files:
plain values and tensors that upstream ignores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modules.errors import UserError
from modules.safe_io import atomic_torch_save, load_torch_data
from modules.state_dict_compat import from_legacy_state_dict, to_legacy_state_dict

logger = logging.getLogger("so-vits-svc")

CHECKPOINT_KEYS = ("model", "iteration", "optimizer", "learning_rate")


# --------------------------------------------------------------------------- hyper-parameters


class HParams:
    """A config section with attribute access (`hps.train.batch_size`) and dict access."""

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            self[key] = HParams(**value) if isinstance(value, dict) else value

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def __len__(self) -> int:
        return len(self.__dict__)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dict__)

    def __repr__(self) -> str:
        return f"HParams({self.__dict__!r})"

    def keys(self) -> Iterable[str]:
        return self.__dict__.keys()

    def items(self) -> Iterable[tuple[str, Any]]:
        return self.__dict__.items()

    def values(self) -> Iterable[Any]:
        return self.__dict__.values()

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready copy."""
        return {
            key: value.to_dict() if isinstance(value, HParams) else value
            for key, value in self.__dict__.items()
        }


def read_config_json(config_path: str | os.PathLike) -> dict[str, Any]:
    """Read a config file, turning a missing or malformed file into a one-line error."""
    path = Path(config_path)
    if not path.is_file():
        raise UserError(
            f"{path}: config not found: run preprocess_flist_config.py to write it, "
            "or pass the right file with -c"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error}): fix the file") from error


def get_hparams_from_file(config_path: str | os.PathLike, infer_mode: bool = False) -> HParams:
    """Load a config JSON as `HParams` (upstream's signature; `infer_mode` is accepted)."""
    return HParams(**read_config_json(config_path))


def get_hparams(init: bool = True) -> HParams:
    """Upstream's command-line entry: `-c config -m model_name`, model dir `./logs/<name>`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config", default="./configs/config.json")
    parser.add_argument("-m", "--model", required=True)
    args = parser.parse_args()
    model_dir = os.path.join("./logs", args.model)
    os.makedirs(model_dir, exist_ok=True)
    saved_config = os.path.join(model_dir, "config.json")
    source = args.config if init else saved_config
    config = read_config_json(source)
    if init:
        Path(saved_config).write_text(json.dumps(config, indent=2), encoding="utf-8")
    hparams = HParams(**config)
    hparams.model_dir = model_dir
    return hparams


# --------------------------------------------------------------------------- checkpoints


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module behind DistributedDataParallel (or torch.compile)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def model_state_for_disk(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under upstream's key names, on the CPU."""
    state = unwrap_model(model).state_dict()
    return {key: value.detach().cpu() for key, value in to_legacy_state_dict(state).items()}


def save_checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    learning_rate: float,
    iteration: int,
    checkpoint_path: str | os.PathLike,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write an upstream-format checkpoint atomically.

    `extra` adds keys beside upstream's (train.py adds `train_state`); values
    must be tensors and plain Python data so `torch.load(weights_only=True)`
    reads the file.
    """
    checkpoint: dict[str, Any] = {
        "model": model_state_for_disk(model),
        "iteration": int(iteration),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "learning_rate": float(learning_rate),
    }
    if extra:
        checkpoint.update(extra)
    atomic_torch_save(checkpoint, checkpoint_path)
    logger.info("Saved model and optimizer state at epoch %d to %s", iteration, checkpoint_path)


def read_checkpoint(checkpoint_path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file as data only and check it has upstream's layout."""
    checkpoint = load_torch_data(checkpoint_path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise UserError(
            f"{checkpoint_path}: not a so-vits-svc checkpoint (no 'model' key): "
            "use a G_*.pth or D_*.pth file"
        )
    return checkpoint


def load_checkpoint(
    checkpoint_path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    skip_optimizer: bool = False,
    strict: bool = False,
    checkpoint: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, torch.optim.Optimizer | None, float, int]:
    """Load weights (and optimizer state) into `model`, upstream's way or strictly.

    Lenient (default; for base models and tools): a key missing from the file
    or with another shape (say `emb_g` for another speaker count) keeps the
    model's own value, all such keys are named in one warning, and the
    optimizer state is then not loaded, since it no longer fits the model.
    Strict (for resuming a run): any missing, unexpected or mis-shaped key is
    an error naming it. Returns upstream's `(model, optimizer, learning_rate,
    iteration)`. `checkpoint` may pass an already-read file.
    """
    if checkpoint is None:
        checkpoint = read_checkpoint(checkpoint_path)
    bare_model = unwrap_model(model)
    own_state = bare_model.state_dict()
    saved = {key.removeprefix("module."): value for key, value in checkpoint["model"].items()}
    saved = from_legacy_state_dict(saved, own_state.keys())

    missing = [key for key in own_state if key not in saved]
    unexpected = [key for key in saved if key not in own_state]
    mismatched = [
        f"{key} {tuple(saved[key].shape)} != {tuple(own_state[key].shape)}"
        for key in own_state
        if key in saved and tuple(saved[key].shape) != tuple(own_state[key].shape)
    ]
    if strict and (missing or unexpected or mismatched):
        problems = (
            [f"missing {key}" for key in missing]
            + [f"unexpected {key}" for key in unexpected]
            + [f"shape {entry}" for entry in mismatched]
        )
        raise UserError(
            f"{checkpoint_path}: does not match the model built from the config "
            f"({'; '.join(problems[:6])}{'; ...' if len(problems) > 6 else ''}): "
            "use the config the checkpoint was trained with"
        )

    kept = missing + [entry.split(" ")[0] for entry in mismatched]
    merged = {
        key: (saved[key].to(dtype=value.dtype) if key not in kept and key in saved else value)
        for key, value in own_state.items()
    }
    bare_model.load_state_dict(merged)
    if kept:
        logger.warning(
            "%s: %d parameters were not in the checkpoint or had another shape and keep "
            "their fresh values (expected when fine-tuning a base model): %s",
            checkpoint_path,
            len(kept),
            ", ".join(kept),
        )

    saved_optimizer = checkpoint.get("optimizer")
    if optimizer is not None and not skip_optimizer and saved_optimizer is not None:
        if kept or unexpected:
            logger.warning(
                "%s: optimizer state not loaded because the model's parameters differ",
                checkpoint_path,
            )
        else:
            try:
                optimizer.load_state_dict(saved_optimizer)
            except (ValueError, KeyError, RuntimeError) as error:
                if strict:
                    raise UserError(
                        f"{checkpoint_path}: optimizer state does not fit ({error}): "
                        "use the config the checkpoint was trained with"
                    ) from error
                logger.warning("%s: optimizer state not loaded (%s)", checkpoint_path, error)
    iteration = int(checkpoint.get("iteration", 0) or 0)
    learning_rate = float(checkpoint.get("learning_rate", 0.0) or 0.0)
    logger.info("Loaded checkpoint '%s' (iteration %d)", checkpoint_path, iteration)
    return model, optimizer, learning_rate, iteration


_CHECKPOINT_NAME = re.compile(r"^([GD])_(\d+)\.pth$")


def checkpoint_steps(model_dir: str | os.PathLike) -> list[int]:
    """Steps that have a G or D file in `model_dir`, newest first."""
    steps = set()
    for entry in Path(model_dir).glob("[GD]_*.pth"):
        match = _CHECKPOINT_NAME.match(entry.name)
        if match:
            steps.add(int(match.group(2)))
    return sorted(steps, reverse=True)


def latest_checkpoint_path(dir_path: str | os.PathLike, regex: str = "G_*.pth") -> str | None:
    """The newest checkpoint matching `regex` by step number (upstream's helper)."""
    prefix = regex.split("_")[0]
    for step in checkpoint_steps(dir_path):
        candidate = Path(dir_path) / f"{prefix}_{step}.pth"
        if candidate.is_file():
            return str(candidate)
    return None


def remove_stale_temp_files(model_dir: str | os.PathLike) -> list[str]:
    """Delete temporary files of checkpoints whose save was killed part-way."""
    removed = []
    for path in Path(model_dir).glob(".[GD]_*.pth.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(str(path))
    return removed


def clean_checkpoints(path_to_models: str | os.PathLike, n_ckpts_to_keep: int = 2) -> list[str]:
    """Delete all but the newest `n_ckpts_to_keep` G/D pairs; never G_0/D_0.

    `n_ckpts_to_keep` of 0 or less keeps everything, as upstream. Returns the
    removed paths.
    """
    if n_ckpts_to_keep <= 0:
        return []
    steps = [step for step in checkpoint_steps(path_to_models) if step != 0]
    removed = []
    for step in steps[n_ckpts_to_keep:]:
        for prefix in ("G", "D"):
            path = Path(path_to_models) / f"{prefix}_{step}.pth"
            if path.exists():
                path.unlink()
                removed.append(str(path))
    return removed


@dataclass
class ResumePoint:
    """The G/D pair a run continues from."""

    step: int
    g_path: Path
    d_path: Path
    g_checkpoint: dict[str, Any]
    d_checkpoint: dict[str, Any]

    @property
    def is_base_model(self) -> bool:
        """G_0/D_0 without our training state: a base model to fine-tune from."""
        return self.step == 0 and "train_state" not in self.g_checkpoint


def find_resume_point(model_dir: str | os.PathLike) -> ResumePoint | None:
    """The newest G/D pair in `model_dir` that both load and agree on their step.

    None when there are no checkpoints. Unusable newer files are named in one
    warning with the pair used instead; when checkpoints exist but none pair up
    and load, a `UserError` says so (starting over in silence would throw away
    the user's training).
    """
    directory = Path(model_dir)
    problems: list[str] = []
    for step in checkpoint_steps(directory):
        g_path, d_path = directory / f"G_{step}.pth", directory / f"D_{step}.pth"
        absent = [path.name for path in (g_path, d_path) if not path.is_file()]
        if absent:
            problems.append(f"{directory / absent[0]} is missing (its pair is incomplete)")
            continue
        try:
            g_checkpoint = read_checkpoint(g_path)
            d_checkpoint = read_checkpoint(d_path)
        except UserError as error:
            problems.append(str(error))
            continue
        saved_state = g_checkpoint.get("train_state")
        if isinstance(saved_state, dict) and saved_state.get("step") != step:
            problems.append(f"{g_path}: records step {saved_state.get('step')}, not {step}")
            continue
        if problems:
            logger.warning(
                "skipping unusable checkpoints (%s); resuming from %s and %s",
                "; ".join(problems),
                g_path.name,
                d_path.name,
            )
        return ResumePoint(step, g_path, d_path, g_checkpoint, d_checkpoint)
    if problems:
        raise UserError(
            f"{directory}: checkpoints are present but none can be resumed from "
            f"({'; '.join(problems)}): restore a good copy, or move them away to start over"
        )
    return None


# --------------------------------------------------------------------------- logging


def get_logger(model_dir: str | os.PathLike, filename: str = "train.log") -> logging.Logger:
    """Log to `<model_dir>/train.log` and the console, once per process."""
    os.makedirs(model_dir, exist_ok=True)
    log = logging.getLogger("so-vits-svc")
    log.setLevel(logging.INFO)
    log.propagate = False
    target = os.path.abspath(os.path.join(model_dir, filename))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    has_file = any(
        isinstance(handler, logging.FileHandler) and handler.baseFilename == target
        for handler in log.handlers
    )
    if not has_file:
        file_handler = logging.FileHandler(target, encoding="utf-8")
        file_handler.setFormatter(formatter)
        log.addHandler(file_handler)
    if not any(type(handler) is logging.StreamHandler for handler in log.handlers):
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(formatter)
        log.addHandler(console)
    return log


def git_revision(directory: str | os.PathLike) -> str | None:
    """The git commit of the code, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    revision = result.stdout.strip()
    return revision if result.returncode == 0 and revision else None


def record_git_revision(code_dir: str | os.PathLike, model_dir: str | os.PathLike) -> None:
    """Write the code's git revision to `<model_dir>/githash`; warn when it changed."""
    revision = git_revision(code_dir)
    if revision is None:
        logger.info("%s is not a git checkout: code revision not recorded", code_dir)
        return
    record = Path(model_dir) / "githash"
    if record.exists():
        previous = record.read_text().strip()
        if previous != revision:
            logger.warning(
                "code revision changed since the last run of this model: %s -> %s",
                previous[:8],
                revision[:8],
            )
    record.write_text(revision)


# --------------------------------------------------------------------------- figures


def _figure_to_array(figure: Any) -> np.ndarray:
    """Render a matplotlib figure to an (H, W, 3) uint8 array (Agg, current API)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.array(rgba[..., :3])


def plot_spectrogram_to_numpy(spectrogram: np.ndarray) -> np.ndarray:
    """A mel spectrogram as an image for TensorBoard (HWC, uint8)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 2))
    axes = figure.add_subplot()
    image = axes.imshow(spectrogram, aspect="auto", origin="lower", interpolation="none")
    figure.colorbar(image, ax=axes)
    axes.set_xlabel("Frames")
    axes.set_ylabel("Channels")
    figure.tight_layout()
    return _figure_to_array(figure)


def plot_data_to_numpy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two curves (e.g. predicted and real log-f0) as an image for TensorBoard."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(14, 10))
    axes = figure.add_subplot()
    axes.plot(x)
    axes.plot(y)
    figure.tight_layout()
    return _figure_to_array(figure)


def summarize(
    writer: Any,
    global_step: int,
    scalars: Mapping[str, float] | None = None,
    histograms: Mapping[str, Any] | None = None,
    images: Mapping[str, np.ndarray] | None = None,
    audios: Mapping[str, Any] | None = None,
    audio_sampling_rate: int = 22050,
) -> None:
    """Write one step's scalars, images (HWC) and audio to a TensorBoard writer."""
    for tag, value in (scalars or {}).items():
        writer.add_scalar(tag, value, global_step)
    for tag, value in (histograms or {}).items():
        writer.add_histogram(tag, value, global_step)
    for tag, value in (images or {}).items():
        writer.add_image(tag, value, global_step, dataformats="HWC")
    for tag, value in (audios or {}).items():
        writer.add_audio(tag, value, global_step, audio_sampling_rate)
