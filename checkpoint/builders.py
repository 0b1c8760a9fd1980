"""The networks a config describes, built in one place for training, inference and tools.

Everything that turns a config into a `SynthesizerTrn` (train.py, `Svc`,
compress_model.py, onnx_export.py) calls `build_generator`, so a model built
anywhere has the same keys and shapes as the checkpoints written by training;
the tools find a generator file's config with `generator_hparams`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from checkpoint.files import (
    POSTERIOR_ENCODER_PREFIX,
    check_fit,
    embedded_config,
    load_checkpoint,
    read_checkpoint,
    saved_model_state,
)
from checkpoint.legacy_keys import to_legacy_state_dict
from checkpoint.names import GENERATOR_FILES
from core.config_schema import validate_config
from core.errors import UserError
from core.hparams import HParams, read_config_json
from models import MultiPeriodDiscriminator, SynthesizerTrn

logger = logging.getLogger("so-vits-svc")


def _validated(config: dict[str, Any], source: str) -> HParams:
    """The config with the schema's defaults filled in (every default is stated there)."""
    filled, messages = validate_config(config, source)
    for message in messages:
        if message.startswith("warning"):
            logger.warning("%s", message.removeprefix("warning: "))
    return HParams(**filled)


def generator_hparams(
    checkpoint: dict[str, Any],
    model_path: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    fallback: str | os.PathLike | None = None,
    flag: str = "-c",
) -> HParams:
    """The config of a generator file, checked and completed by the schema.

    An explicit `config_path` wins; else the config the file carries (every G
    file training writes has one); else `fallback`, a tool's default location,
    when it exists. A file without any of them is a one-line error naming `flag`.
    """
    if config_path is not None:
        return _validated(read_config_json(config_path), str(config_path))
    carried = embedded_config(checkpoint)
    if carried is not None:
        return _validated(carried, f"{model_path} (its config)")
    if fallback is not None and Path(fallback).is_file():
        return _validated(read_config_json(fallback), str(fallback))
    raise UserError(
        f"{model_path}: the file carries no config (upstream's files and older ones do not): "
        f"pass the config.json it was trained with ({flag} FILE)"
    )


def build_generator(hps: Any) -> SynthesizerTrn:
    """The generator as upstream builds it, with the sine source at the data's rate."""
    model_options = {**hps.model.to_dict(), "sampling_rate": hps.data.sampling_rate}
    return SynthesizerTrn(
        hps.data.filter_length // 2 + 1,
        hps.train.segment_size // hps.data.hop_length,
        **model_options,
    )


def build_discriminator(hps: Any) -> MultiPeriodDiscriminator:
    """The multi-period discriminator (spectral norm on its first scale when configured)."""
    return MultiPeriodDiscriminator(hps.model.use_spectral_norm)


def read_generator_file(path: str | os.PathLike, flag: str = "-m") -> dict[str, Any]:
    """A generator checkpoint read as data, or a one-line error when it is not there."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: model not found: pass a {GENERATOR_FILES} file with {flag}")
    return read_checkpoint(path)


def generator_disk_shapes(hps: Any) -> dict[str, tuple[int, ...]]:
    """On-disk key -> shape of the generator the config builds, without allocating weights."""
    with torch.device("meta"):
        net_g = build_generator(hps)
    legacy = to_legacy_state_dict(net_g.state_dict())
    return {key: tuple(value.shape) for key, value in legacy.items()}


def load_generator(
    path: str | os.PathLike,
    hps: Any,
    device: torch.device | str = "cpu",
    checkpoint: dict[str, Any] | None = None,
) -> SynthesizerTrn:
    """A generator for inference: built from `hps`, weights from `path`, in eval mode.

    The file may lack the posterior encoder (release files drop it; inference
    does not use it). Any other missing key or another shape means the config
    does not fit the weights: that is an error, not a silently broken model.
    Files named `*half*` run in float16 on a GPU, as upstream. `checkpoint`
    may pass the already-read file.
    """
    if checkpoint is None:
        checkpoint = read_generator_file(path)
    net_g = build_generator(hps)
    own_state = net_g.state_dict()
    saved = saved_model_state(checkpoint, own_state.keys())
    check_fit(saved, own_state, optional_prefixes=(POSTERIOR_ENCODER_PREFIX,)).raise_if_unfit(
        path,
        "the model built from the config",
        "pass the config the model was trained with (-c)",
        include_unexpected=False,
    )
    filled = {
        key: value for key, value in own_state.items() if key.startswith(POSTERIOR_ENCODER_PREFIX)
    }
    load_checkpoint(path, net_g, None, checkpoint={**checkpoint, "model": {**filled, **saved}})
    device = torch.device(device)
    if "half" in os.path.basename(path) and device.type == "cuda":
        net_g = net_g.half()
    return net_g.eval().to(device)
