"""Diffusion model files: upstream's `model_<step>.pt` layout, read as data only.

A file is `{"global_step": int, "model": state_dict}` plus `"optimizer"` when
upstream's `train.save_opt` is on, exactly what upstream's saver writes, so
files move both ways. The config is the YAML beside the model
(`config.yaml`, as upstream's loader looks for it) unless one is named.
A model that does not fit its config is one line naming the file and the
fix, never a wall of `load_state_dict` shape errors.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from checkpoint.files import StateDictFit, check_fit, unwrap_model
from core.errors import UserError
from core.safe_io import atomic_torch_save, load_torch_data
from diffusion.config import DiffusionConfig, load_diffusion_config
from diffusion.unit2mel import Unit2Mel

logger = logging.getLogger(__name__)

UNIT_EMBED_KEY = "unit_embed.weight"
CONFIG_BESIDE_MODEL = "config.yaml"


def save_diffusion_model(
    model: torch.nn.Module,
    global_step: int,
    path: str | os.PathLike,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `model_<step>.pt` as upstream does (optimizer only when given), atomically.

    `extra` adds keys upstream's loader ignores (training's run state).
    """
    state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    checkpoint: dict[str, Any] = {"global_step": int(global_step), "model": state}
    if optimizer is not None:
        checkpoint["optimizer"] = optimizer.state_dict()
    checkpoint.update(extra or {})
    atomic_torch_save(checkpoint, path)


def read_diffusion_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint as data (no code runs); a one-line error if it is not a diffusion model."""
    checkpoint = load_torch_data(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise UserError(
            f"{path}: not a diffusion model file (no 'model' state dict): "
            "use a model_<step>.pt from logs/44k/diffusion"
        )
    checkpoint["model"] = {k.removeprefix("module."): v for k, v in checkpoint["model"].items()}
    return checkpoint


def _encoder_width_problem(
    path: str | os.PathLike, state: dict[str, Any], model: Unit2Mel, config_name: str
) -> str | None:
    """The one-line message for a model made for another speech encoder than the config's."""
    saved = state.get(UNIT_EMBED_KEY)
    if saved is None or saved.shape[-1] == model.input_channel:
        return None
    return (
        f"{path}: the diffusion model takes content of width {saved.shape[-1]} but "
        f"{config_name} says data.encoder_out_channels {model.input_channel}: use the config the "
        f"model was trained with (encoder_out_channels: {saved.shape[-1]} and its encoder)"
    )


def check_state_fits(
    path: str | os.PathLike,
    state: dict[str, Any],
    model: Unit2Mel,
    config_name: str,
    strict: bool = True,
) -> StateDictFit:
    """Compare a saved state with `model`; raise one `UserError` for what cannot load.

    Strict (inference, resuming): any missing, unexpected or mis-shaped key.
    Lenient (fine-tuning from a base model, as upstream's `strict=False`):
    missing keys are allowed and returned, shapes must still agree.
    """
    problem = _encoder_width_problem(path, state, model, config_name)
    if problem:
        raise UserError(problem)
    fit = check_fit(state, model.state_dict())
    if strict and fit.missing:
        shown = ", ".join(fit.missing[:4]) + (", ..." if len(fit.missing) > 4 else "")
        raise UserError(
            f"{path}: the diffusion model lacks {len(fit.missing)} keys of the model "
            f"{config_name} describes ({shown}): use the complete model_<step>.pt "
            "with the config it was trained with"
        )
    fix = "use the config the model was trained with"
    blocking = fit if strict else StateDictFit(mismatched=fit.mismatched)
    blocking.raise_if_unfit(path, f"the model {config_name} describes", fix)
    return fit


def load_diffusion_state(
    path: str | os.PathLike,
    model: Unit2Mel,
    config_name: str = "the config",
    strict: bool = True,
    checkpoint: dict[str, Any] | None = None,
) -> int:
    """Load a `model_*.pt` (or its `checkpoint`, already read) into `model`; returns its step.

    Lenient loading keeps the model's own values for keys the file lacks
    (say `spk_embed` when fine-tuning the single-speaker base model) and names
    them in one warning.
    """
    if checkpoint is None:
        checkpoint = read_diffusion_checkpoint(path)
    state = checkpoint["model"]
    fit = check_state_fits(path, state, model, config_name, strict)
    own = model.state_dict()
    merged = {k: state[k].to(own[k].dtype) if k in state else v for k, v in own.items()}
    model.load_state_dict(merged)
    if fit.missing:
        logger.warning(
            "%s: %d keys not in the file keep their fresh values: %s",
            path,
            len(fit.missing),
            ", ".join(fit.missing),
        )
    return int(checkpoint.get("global_step", 0))


def load_unit2mel(
    model_path: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    out_dims: int = 128,
) -> tuple[Unit2Mel, DiffusionConfig]:
    """A diffusion model ready for conversion (eval mode) and its config.

    Without `config_path` the config is `config.yaml` beside the model, as
    upstream's `load_model_vocoder` looks for it. `out_dims` is the
    vocoder's mel bins (128 for the released NSF-HiFiGAN).
    """
    config_file = Path(config_path or Path(model_path).parent / CONFIG_BESIDE_MODEL)
    config = load_diffusion_config(config_file)
    model = Unit2Mel.from_config(config, out_dims)
    load_diffusion_state(model_path, model, str(config_file), strict=True)
    model.to(device).eval()
    logger.info(
        "loaded diffusion model %s, sampler %s, speedup %d",
        model_path,
        config.infer.method,
        config.infer.speedup,
    )
    return model, config
