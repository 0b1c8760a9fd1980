"""The diffusion model's YAML config (`configs/diffusion.yaml`), typed and checked up front.

The keys and layout are upstream so-vits-svc 4.1's
(`configs_template/diffusion_template.yaml`), so its configs load unchanged
and ours load in upstream. Upstream reads keys by attribute and fails deep
inside training when one is missing or mistyped; here every key is checked
when the file is read, a missing key takes the value of upstream's template,
and a bad one is a one-line `UserError` naming the file, the key and the fix.
Keys this project does not know are kept (and written back) untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from core.errors import UserError

logger = logging.getLogger(__name__)

INFER_METHODS = ("ddim", "pndm", "dpm-solver", "dpm-solver++", "unipc")
AMP_DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class DataSection:
    """`data`: audio and content-encoder settings the features were made with."""

    sampling_rate: int = 44100
    block_size: int = 512  # = hop length
    duration: float = 2  # seconds per training clip
    encoder: str = "vec768l12"
    cnhubertsoft_gate: int = 10
    encoder_sample_rate: int = 16000
    encoder_hop_size: int = 320
    encoder_out_channels: int = 768
    training_files: str = "filelists/train.txt"
    validation_files: str = "filelists/val.txt"
    extensions: list[str] = field(default_factory=lambda: ["wav"])
    unit_interpolate_mode: str = "nearest"


@dataclass(frozen=True)
class ModelSection:
    """`model`: the Unit2Mel sizes; k_step_max 0 (or >= timesteps) trains every step."""

    type: str = "Diffusion"
    n_layers: int = 20
    n_chans: int = 512
    n_hidden: int = 256
    use_pitch_aug: bool = True
    timesteps: int = 1000
    k_step_max: int = 0
    n_spk: int = 1


@dataclass(frozen=True)
class VocoderSection:
    """`vocoder`: the mel-to-audio model the diffusion's mels are made for."""

    type: str = "nsf-hifigan"
    ckpt: str = "pretrain/nsf_hifigan/model"


@dataclass(frozen=True)
class InferSection:
    """`infer`: the default sampler for conversion."""

    speedup: int = 10
    method: str = "dpm-solver++"


@dataclass(frozen=True)
class EnvSection:
    """`env`: where the model files go."""

    expdir: str = "logs/44k/diffusion"
    gpu_id: int = 0


@dataclass(frozen=True)
class TrainSection:
    """`train`: optimisation and logging settings of train_diff.py."""

    num_workers: int = 4
    amp_dtype: str = "fp32"
    batch_size: int = 48
    cache_all_data: bool = True
    cache_device: str = "cpu"
    cache_fp16: bool = True
    epochs: int = 100000
    interval_log: int = 10
    interval_val: int = 2000
    interval_force_save: int = 5000
    lr: float = 0.0001
    decay_step: int = 100000
    gamma: float = 0.5
    weight_decay: float = 0
    save_opt: bool = False


SECTIONS: dict[str, type] = {
    "data": DataSection,
    "model": ModelSection,
    "vocoder": VocoderSection,
    "infer": InferSection,
    "env": EnvSection,
    "train": TrainSection,
}


@dataclass(frozen=True)
class DiffusionConfig:
    """The whole file: one typed object per section, `spk` name -> 0-based id."""

    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    vocoder: VocoderSection = field(default_factory=VocoderSection)
    infer: InferSection = field(default_factory=InferSection)
    env: EnvSection = field(default_factory=EnvSection)
    train: TrainSection = field(default_factory=TrainSection)
    device: str = "cuda"
    spk: dict[str, int] = field(default_factory=lambda: {"nyaru": 0})
    extra: dict[str, Any] = field(default_factory=dict)  # keys this project does not read

    @property
    def k_step_max(self) -> int:
        """The number of steps the model is trained on: k_step_max, or all when 0 or too large."""
        k, timesteps = self.model.k_step_max, self.model.timesteps
        return k if 0 < k < timesteps else timesteps

    def to_dict(self) -> dict[str, Any]:
        """The YAML layout (upstream's), unknown keys included."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            out[name] = dataclasses.asdict(getattr(self, name))
            out[name].update(self.extra.get(name, {}))
        out.update(device=self.device, spk=dict(self.spk))
        out.update({k: v for k, v in self.extra.items() if k not in SECTIONS})
        return out


def _type_name(annotation: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        annotation, "a list of strings"
    )


def _checked(source: str, key: str, value: Any, annotation: Any) -> Any:
    """`value` as `annotation` (int, float, bool, str, list[str]) or a one-line UserError."""
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(annotation)
    if ok is None:  # list[str]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        raise UserError(f"{source}: {key} must be {_type_name(annotation)}, not {value!r}: fix it")
    return float(value) if annotation is float else value


def _read_section(source: str, name: str, raw: Any) -> tuple[Any, dict[str, Any]]:
    """One section as its dataclass (template defaults for missing keys) and its unknown keys."""
    cls = SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: {name} must be a mapping of keys, not {raw!r}: fix it")
    hints = get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        if item.name in raw:
            annotation = hints[item.name]
            if isinstance(annotation, types.GenericAlias):
                annotation = list
            key = f"{name}.{item.name}"
            values[item.name] = _checked(source, key, raw[item.name], annotation)
        else:
            logger.debug("%s: %s.%s missing: upstream template value", source, name, item.name)
    unknown = {k: v for k, v in raw.items() if k not in hints}
    return cls(**values), unknown


def _read_speakers(source: str, raw: Any) -> dict[str, int]:
    if raw is None:
        return {"nyaru": 0}
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{source}: spk must map speaker names to ids, e.g. {{alto: 0}}: fix it")
    for name, sid in raw.items():
        if not isinstance(sid, int) or isinstance(sid, bool) or sid < 0:
            raise UserError(f"{source}: spk.{name} must be an id 0, 1, …, not {sid!r}: fix it")
    return {str(name): sid for name, sid in raw.items()}


def _check_values(source: str, config: DiffusionConfig) -> None:
    """Impossible values, each a one-line error naming the key and the fix."""
    model, infer = config.model, config.infer
    positive = {
        "model.n_layers": model.n_layers,
        "model.n_chans": model.n_chans,
        "model.n_hidden": model.n_hidden,
        "model.timesteps": model.timesteps,
        "model.n_spk": model.n_spk,
        "data.encoder_out_channels": config.data.encoder_out_channels,
        "infer.speedup": infer.speedup,
        "train.batch_size": config.train.batch_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{source}: {key} is {value}; it must be 1 or more")
    if model.k_step_max < 0:
        raise UserError(
            f"{source}: model.k_step_max is {model.k_step_max}; use 0 (all steps) or more"
        )
    if infer.method not in INFER_METHODS:
        raise UserError(
            f"{source}: infer.method {infer.method!r}: choose one of {', '.join(INFER_METHODS)}"
        )
    if config.train.amp_dtype not in AMP_DTYPES:
        raise UserError(
            f"{source}: train.amp_dtype {config.train.amp_dtype!r}: choose fp32, fp16 or bf16"
        )
    top = max(config.spk.values())
    if top >= max(model.n_spk, 1) and len(config.spk) > 1:
        raise UserError(
            f"{source}: spk uses id {top} but model.n_spk is {model.n_spk}: "
            "set model.n_spk to the number of speakers"
        )


def parse_diffusion_config(raw: Any, source: str = "diffusion config") -> DiffusionConfig:
    """A config from the mapping `yaml.safe_load` gives; `source` names it in errors."""
    if not isinstance(raw, dict):
        raise UserError(
            f"{source}: not a YAML mapping of sections: use configs/diffusion.yaml's layout"
        )
    sections, extra = {}, {}
    for name in SECTIONS:
        sections[name], unknown = _read_section(source, name, raw.get(name))
        if unknown:
            extra[name] = unknown
    extra.update({k: v for k, v in raw.items() if k not in SECTIONS and k not in ("device", "spk")})
    device = _checked(source, "device", raw.get("device", "cuda"), str)
    config = DiffusionConfig(
        **sections, device=device, spk=_read_speakers(source, raw.get("spk")), extra=extra
    )
    _check_values(source, config)
    return config


def load_diffusion_config(path: str | os.PathLike) -> DiffusionConfig:
    """Read and check a diffusion YAML file."""
    source = Path(path)
    if not source.is_file():
        raise UserError(
            f"{source}: diffusion config not found: run preprocess_flist_config.py or pass -dc"
        )
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise UserError(f"{source}: not valid YAML{line}: fix the file") from error
    return parse_diffusion_config(raw, str(source))


def save_diffusion_config(config: DiffusionConfig, path: str | os.PathLike) -> None:
    """Write the config as upstream's saver does (`yaml.dump`), atomically."""
    from core.safe_io import atomic_write

    with atomic_write(path) as handle:
        handle.write(yaml.dump(config.to_dict()).encode("utf-8"))
