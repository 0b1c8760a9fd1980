"""The checkpoint file: upstream's layout on disk, our modules in memory.

A `G_*.pth`/`D_*.pth` file is a dict with upstream's four keys, `model`,
`iteration` (the epoch), `optimizer` and `learning_rate`, with weight-norm
parameters under upstream's old names (`weight_g`/`weight_v`, see
`legacy_keys`), so files move both ways between this project and upstream. A
training run adds two keys to its G files, plain values and tensors that
upstream's loader never reads: `train_state` (to resume exactly) and `config`
(the config it was trained with, so the file alone describes its model, as
BigVGAN's and DAC's do). A release file (`save_release`) keeps only the
generator's inference weights and the config. Files are read as data only and
written atomically (`core.safe_io`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from checkpoint.legacy_keys import from_legacy_state_dict, to_legacy_state_dict
from core.errors import UserError
from core.safe_io import atomic_torch_save, load_torch_data

logger = logging.getLogger("so-vits-svc")

CHECKPOINT_KEYS = ("model", "iteration", "optimizer", "learning_rate")  # upstream's layout
CONFIG_KEY = "config"  # the training config, in G files and release files
# Training-only part of the generator: release files drop it, inference never uses it.
POSTERIOR_ENCODER_PREFIX = "enc_q."


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
    config: Any = None,
) -> None:
    """Write an upstream-format checkpoint atomically.

    `extra` adds keys beside upstream's (train.py adds `train_state`); values
    must be tensors and plain Python data so `torch.load(weights_only=True)`
    reads the file. `config` (a dict or `HParams`) is stored under `CONFIG_KEY`.
    """
    values = (
        model_state_for_disk(model),
        int(iteration),
        optimizer.state_dict() if optimizer is not None else None,
        float(learning_rate),
    )
    checkpoint: dict[str, Any] = dict(zip(CHECKPOINT_KEYS, values, strict=True))
    if extra:
        checkpoint.update(extra)
    if config is not None:
        checkpoint[CONFIG_KEY] = plain_config(config)
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


def plain_config(config: Any) -> dict[str, Any]:
    """A config as plain JSON-ready data, without the run's own model folder."""
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {key: value for key, value in values.items() if key != "model_dir"}


def embedded_config(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The config a checkpoint carries, or None (upstream's files and older ones carry none)."""
    config = checkpoint.get(CONFIG_KEY)
    return config if isinstance(config, dict) else None


def disk_model_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A checkpoint's weights under their on-disk names, without DDP's `module.` prefix."""
    return {key.removeprefix("module."): value for key, value in checkpoint["model"].items()}


def saved_model_state(
    checkpoint: Mapping[str, Any], model_keys: Iterable[str]
) -> dict[str, torch.Tensor]:
    """A checkpoint's weights under our key names (no DDP prefix, modern weight norm)."""
    return from_legacy_state_dict(disk_model_state(checkpoint), model_keys)


def save_release(
    checkpoint: Mapping[str, Any],
    path: str | os.PathLike,
    keep: Collection[str],
    half: bool = False,
    config: Any = None,
) -> dict[str, Any]:
    """Write the release file of a training checkpoint; returns what was written.

    Only what inference needs: the weights named in `keep` (on-disk names)
    without the posterior encoder, float16 with `half`, no optimizer or
    training state, in upstream's layout so upstream's inference loads it too,
    plus the config (`config`, else the one the checkpoint carries).
    """
    weights = {
        key: (value.half() if half and value.is_floating_point() else value).contiguous()
        for key, value in disk_model_state(checkpoint).items()
        if key in keep and not key.startswith(POSTERIOR_ENCODER_PREFIX)
    }
    learning_rate = float(checkpoint.get("learning_rate") or 1e-4)
    release = dict(zip(CHECKPOINT_KEYS, (weights, 0, None, learning_rate), strict=True))
    config = config if config is not None else embedded_config(checkpoint)
    if config is not None:
        release[CONFIG_KEY] = plain_config(config)
    atomic_torch_save(release, path)
    return release


@dataclass
class StateDictFit:
    """How a saved state dict differs from the one a model (or config) expects."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key (saved) != (expected)"

    @property
    def mismatched_keys(self) -> list[str]:
        return [entry.split(" ")[0] for entry in self.mismatched]

    def problems(self, include_unexpected: bool = True) -> list[str]:
        return (
            [f"missing {key}" for key in self.missing]
            + ([f"unexpected {key}" for key in self.unexpected] if include_unexpected else [])
            + [f"shape {entry}" for entry in self.mismatched]
        )

    def raise_if_unfit(
        self, path: str | os.PathLike, against: str, fix: str, include_unexpected: bool = True
    ) -> None:
        """One `UserError` naming the file, the first few differences and the fix."""
        problems = self.problems(include_unexpected)
        if problems:
            shown = "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
            raise UserError(f"{path}: does not fit {against} ({shown}): {fix}")


def check_fit(
    saved: Mapping[str, Any],
    expected: Mapping[str, Any],
    optional_prefixes: tuple[str, ...] = (),
) -> StateDictFit:
    """Compare keys and shapes of `saved` with `expected` (tensors or shapes).

    Keys under `optional_prefixes` may be absent without counting as missing
    (release files have no posterior encoder).
    """

    def shape(value: Any) -> tuple[int, ...]:
        return tuple(value.shape) if hasattr(value, "shape") else tuple(value)

    return StateDictFit(
        missing=[
            key
            for key in expected
            if key not in saved and not key.startswith(optional_prefixes)
        ],
        unexpected=[key for key in saved if key not in expected],
        mismatched=[
            f"{key} {shape(saved[key])} != {shape(value)}"
            for key, value in expected.items()
            if key in saved and shape(saved[key]) != shape(value)
        ],
    )


def _load_optimizer_state(
    checkpoint_path: str | os.PathLike,
    optimizer: torch.optim.Optimizer,
    saved: dict[str, Any],
    strict: bool,
) -> None:
    """Load a saved optimizer state: a misfit is an error when strict, else a warning."""
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, RuntimeError) as error:
        if strict:
            raise UserError(
                f"{checkpoint_path}: optimizer state does not fit ({error}): "
                "use the config the checkpoint was trained with"
            ) from error
        logger.warning("%s: optimizer state not loaded (%s)", checkpoint_path, error)


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
    saved = saved_model_state(checkpoint, own_state.keys())
    fit = check_fit(saved, own_state)
    if strict:
        fit.raise_if_unfit(
            checkpoint_path,
            "the model built from the config",
            "use the config the checkpoint was trained with",
        )
    kept = fit.missing + fit.mismatched_keys
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
        if kept or fit.unexpected:
            logger.warning(
                "%s: optimizer state not loaded because the model's parameters differ",
                checkpoint_path,
            )
        else:
            _load_optimizer_state(checkpoint_path, optimizer, saved_optimizer, strict)
    iteration = int(checkpoint.get("iteration", 0) or 0)
    learning_rate = float(checkpoint.get("learning_rate", 0.0) or 0.0)
    logger.info("Loaded checkpoint '%s' (iteration %d)", checkpoint_path, iteration)
    return model, optimizer, learning_rate, iteration
