"""The config JSON schema: every key, its type, default and meaning, in one place.

The training config keeps upstream so-vits-svc 4.1's layout (`train`, `data`,
`model`, `spk`), so configs written for upstream load unchanged. Upstream reads
keys by attribute access and crashes with an AttributeError deep inside training
when one is missing or mistyped; `validate_config` checks everything up front
and reports all problems at once, each naming `section.key` and the fix.

Key kinds:

* ``used``     - read by training or inference.
* ``ignored``  - upstream's templates carry it but nothing reads it
  (`init_lr_ratio`, `use_sr`, `max_speclen`, `n_layers_q`, `speaker_embedding`).
* ``added``    - this project's addition (`train.num_workers`).

A key without a default is required. A key with a default may be left out: the
default is what upstream uses when the key is absent (a code default in upstream's
model signature or inference fallback, or, for keys that old 4.0 configs lack and
upstream's trainer reads unconditionally, the value in upstream's 4.1 template).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core import components
from core.errors import UserError
from feature_files import VOLUME_SUFFIX

REQUIRED = object()
"""Marker for "no default: the key must be present"."""

HALF_TYPES = ("fp16", "bf16")
# "left" is upstream's own repeat-expansion; the rest are torch interpolate modes
# that work on (1, C, T) content.
UNIT_INTERPOLATE_MODES = ("left", "nearest", "linear", "area", "nearest-exact")
RESBLOCK_KINDS = ("1", "2")

SECTIONS = ("train", "data", "model", "spk")


@dataclass(frozen=True)
class KeySpec:
    """One config key: where it lives, what it holds and what it means."""

    section: str
    name: str
    kind: str  # "int", "float", "bool", "str", "port", "int_list", "int_list_list",
    # "float_pair", "float_or_null", "int_or_null", "bool_or_null"
    description: str
    default: Any = REQUIRED
    status: str = "used"  # "used" | "ignored" | "added"

    @property
    def required(self) -> bool:
        """True when the key has no default and must be in the file."""
        return self.default is REQUIRED

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


def _spec(section: str, rows: list[tuple]) -> list[KeySpec]:
    return [KeySpec(section, *row) for row in rows]


SCHEMA: tuple[KeySpec, ...] = tuple(
    _spec(
        "train",
        [
            ("log_interval", "int", "Steps between loss logs and TensorBoard images."),
            ("eval_interval", "int", "Steps between evaluation and checkpoint saves."),
            ("seed", "int", "Seed of the model initialisation and data order."),
            ("epochs", "int", "Last epoch to train."),
            ("learning_rate", "float", "AdamW learning rate of both generator and discriminator."),
            ("betas", "float_pair", "AdamW betas [beta1, beta2]."),
            ("eps", "float", "AdamW epsilon."),
            ("batch_size", "int", "Clips per batch on each process (GPU)."),
            ("fp16_run", "bool", "Train with mixed precision (half_type) autocast."),
            ("half_type", "str", "Mixed-precision type: fp16 or bf16.", "fp16"),
            ("lr_decay", "float", "Per-epoch exponential learning-rate decay factor."),
            ("segment_size", "int", "Audio samples decoded per clip per step (multiple of hop)."),
            ("init_lr_ratio", "float", "Unused (kept for upstream compatibility).", 1, "ignored"),
            ("warmup_epochs", "int", "Epochs of linear learning-rate warm-up.", 0),
            ("c_mel", "float", "Weight of the mel reconstruction loss."),
            ("c_kl", "float", "Weight of the KL loss."),
            ("use_sr", "bool", "Unused (kept for upstream compatibility).", True, "ignored"),
            ("max_speclen", "int", "Unused (kept for upstream compatibility).", 512, "ignored"),
            ("port", "port", "TCP port of the multi-GPU process group.", "8001"),
            ("keep_ckpts", "int", "Checkpoints kept (G and D each; 0 keeps all).", 0),
            ("all_in_mem", "bool", "Load the whole training set into RAM once.", False),
            ("vol_aug", "bool", "Random loudness augmentation (needs vol_embedding).", False),
            (
                "num_workers",
                "int_or_null",
                "DataLoader worker processes; null = upstream's choice "
                "(5, or fewer CPUs; 0 with all_in_mem).",
                None,
                "added",
            ),
            (
                "compile",
                "bool_or_null",
                "torch.compile the fixed-shape work (decoder, discriminator, losses); "
                "null = on for CUDA, off on the CPU.",
                None,
                "added",
            ),
            (
                "patience",
                "int_or_null",
                "Stop after this many evaluations without a new best validation mel "
                "distance; null = never.",
                None,
                "added",
            ),
        ],
    )
    + _spec(
        "data",
        [
            ("training_files", "str", "Filelist of training wavs, one path per line."),
            ("validation_files", "str", "Filelist of validation wavs, one path per line."),
            ("max_wav_value", "float", "Divisor that scales 16-bit PCM samples to [-1, 1]."),
            ("sampling_rate", "int", "Sample rate of the dataset and the model output (Hz)."),
            ("filter_length", "int", "STFT size of the linear and mel spectrograms."),
            ("hop_length", "int", "Samples per frame; the product of model.upsample_rates."),
            ("win_length", "int", "STFT window length (at most filter_length)."),
            ("n_mel_channels", "int", "Mel bands of the reconstruction loss."),
            ("mel_fmin", "float", "Lowest mel frequency (Hz)."),
            ("mel_fmax", "float_or_null", "Highest mel frequency (Hz); null = Nyquist."),
            (
                "unit_interpolate_mode",
                "str",
                "How content frames are stretched to the pitch frame rate.",
                "left",
            ),
        ],
    )
    + _spec(
        "model",
        [
            ("inter_channels", "int", "Channels of the latent z."),
            ("hidden_channels", "int", "Channels of the text/posterior encoders."),
            ("filter_channels", "int", "Feed-forward channels of the transformer encoder."),
            ("n_heads", "int", "Attention heads (must divide hidden_channels)."),
            ("n_layers", "int", "Transformer encoder layers."),
            ("kernel_size", "int", "Convolution kernel of the encoder feed-forward blocks."),
            ("p_dropout", "float", "Dropout probability in [0, 1)."),
            ("resblock", "str", "HiFi-GAN residual block type: \"1\" or \"2\"."),
            ("resblock_kernel_sizes", "int_list", "Kernel size of each parallel resblock."),
            ("resblock_dilation_sizes", "int_list_list", "Dilations of each parallel resblock."),
            ("upsample_rates", "int_list", "Decoder upsampling factors (product = hop_length)."),
            ("upsample_initial_channel", "int", "Channels before the first upsampling."),
            ("upsample_kernel_sizes", "int_list", "Kernel of each upsampling layer."),
            ("n_layers_q", "int", "Unused (kept for upstream compatibility).", 3, "ignored"),
            ("n_layers_trans_flow", "int", "Transformer flow: layers in each coupling.", 3),
            ("n_flow_layer", "int", "WaveNet depth per coupling (transformer flow: couplings).", 4),
            ("use_spectral_norm", "bool", "Spectral (not weight) norm in the discriminator."),
            ("gin_channels", "int", "Speaker embedding channels."),
            ("ssl_dim", "int", "Width of the content features (speech encoder output)."),
            ("n_speakers", "int", "Rows of the speaker embedding table (> every spk id)."),
            ("vocoder_name", "str", "Decoder: nsf-hifigan or nsf-snake-hifigan.", "nsf-hifigan"),
            ("speech_encoder", "str", "Content encoder used by preprocessing.", "vec768l12"),
            ("speaker_embedding", "bool", "Unused (kept for upstream compat.).", False, "ignored"),
            (
                "vol_embedding",
                "bool",
                f"Condition the model on loudness ({VOLUME_SUFFIX} files).",
                False,
            ),
            ("use_depthwise_conv", "bool", "Depthwise-separable WaveNet convs.", False),
            ("flow_share_parameter", "bool", "Share one WaveNet across flow layers.", False),
            ("use_automatic_f0_prediction", "bool", "Train the f0 predictor.", True),
            ("use_transformer_flow", "bool", "Transformer coupling layers in the flow.", False),
        ],
    )
)

_SPEC_BY_KEY: dict[tuple[str, str], KeySpec] = {(k.section, k.name): k for k in SCHEMA}


def key_specs(section: str | None = None) -> list[KeySpec]:
    """All key specs, or those of one section, in schema order."""
    return [k for k in SCHEMA if section is None or k.section == section]


def default_value(section: str, name: str) -> Any:
    """The schema's default of an optional key, for readers of a raw (unchecked) config."""
    return copy.deepcopy(_SPEC_BY_KEY[(section, name)].default)


# --------------------------------------------------------------------------- type checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_type(kind: str, value: Any) -> str | None:
    """Return what was expected when `value` does not fit `kind`, else None."""
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "int": (_is_int, "an integer"),
        "float": (_is_number, "a number"),
        "bool": (lambda v: isinstance(v, bool), "true or false"),
        "str": (lambda v: isinstance(v, str), "a string"),
        "port": (
            lambda v: (isinstance(v, str) and v.isdigit()) or _is_int(v),
            "a port number such as \"8001\"",
        ),
        "int_list": (
            lambda v: isinstance(v, list) and len(v) > 0 and all(_is_int(x) for x in v),
            "a non-empty list of integers",
        ),
        "int_list_list": (
            lambda v: isinstance(v, list)
            and len(v) > 0
            and all(isinstance(x, list) and x and all(_is_int(y) for y in x) for x in v),
            "a non-empty list of non-empty integer lists",
        ),
        "float_pair": (
            lambda v: isinstance(v, list) and len(v) == 2 and all(_is_number(x) for x in v),
            "a list of two numbers",
        ),
        "float_or_null": (lambda v: v is None or _is_number(v), "a number or null"),
        "int_or_null": (lambda v: v is None or _is_int(v), "an integer or null"),
        "bool_or_null": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    }
    check, expected = checks[kind]
    return None if check(value) else expected


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- value checks


def _positive(section: Mapping[str, Any], prefix: str, names: tuple[str, ...]) -> list[str]:
    problems = []
    for name in names:
        value = section.get(name)
        if _is_number(value) and value <= 0:
            problems.append(f"{prefix}.{name} is {value}; it must be greater than 0")
    return problems


def _train_values(train: Mapping[str, Any], data: Mapping[str, Any]) -> list[str]:
    problems = _positive(
        train,
        "train",
        ("log_interval", "eval_interval", "epochs", "learning_rate", "eps", "batch_size",
         "segment_size"),
    )
    for name in ("warmup_epochs", "keep_ckpts", "num_workers", "c_mel", "c_kl"):
        value = train.get(name)
        if _is_number(value) and value < 0:
            problems.append(f"train.{name} is {value}; it must be 0 or more")
    patience = train.get("patience")
    if _is_int(patience) and patience < 1:
        problems.append(f"train.patience is {patience}; use 1 or more, or null to never stop")
    betas = train.get("betas")
    if _check_type("float_pair", betas) is None and not all(0 <= b < 1 for b in betas):
        problems.append(f"train.betas is {betas}; both must be in [0, 1), e.g. [0.8, 0.99]")
    decay = train.get("lr_decay")
    if _is_number(decay) and not 0 < decay <= 1:
        problems.append(f"train.lr_decay is {decay}; it must be in (0, 1], e.g. 0.999875")
    half = train.get("half_type")
    if isinstance(half, str) and half not in HALF_TYPES:
        problems.append(f"train.half_type is {half!r}; use one of {', '.join(HALF_TYPES)}")
    port = train.get("port")
    if _check_type("port", port) is None and not 0 < int(port) < 65536:
        problems.append(f"train.port is {port!r}; use a free TCP port in 1..65535")
    segment, hop = train.get("segment_size"), data.get("hop_length")
    if _is_int(segment) and _is_int(hop) and hop > 0 and segment > 0 and segment % hop:
        problems.append(
            f"train.segment_size {segment} is not a multiple of data.hop_length {hop}; "
            f"use e.g. {max(1, round(segment / hop)) * hop}"
        )
    return problems


def _data_values(data: Mapping[str, Any]) -> list[str]:
    problems = _positive(
        data,
        "data",
        ("max_wav_value", "sampling_rate", "filter_length", "hop_length", "win_length",
         "n_mel_channels"),
    )
    filter_length, win_length = data.get("filter_length"), data.get("win_length")
    if _is_int(filter_length) and _is_int(win_length) and win_length > filter_length:
        problems.append(
            f"data.win_length {win_length} is larger than data.filter_length {filter_length}; "
            "make win_length at most filter_length"
        )
    fmin, fmax, rate = data.get("mel_fmin"), data.get("mel_fmax"), data.get("sampling_rate")
    if _is_number(fmin) and fmin < 0:
        problems.append(f"data.mel_fmin is {fmin}; it must be 0 or more")
    if _is_number(fmax) and _is_int(rate) and rate > 0 and fmax > rate / 2:
        problems.append(
            f"data.mel_fmax {fmax} is above the Nyquist frequency {rate / 2:g} of "
            f"data.sampling_rate; use at most {rate // 2} or null"
        )
    if _is_number(fmin) and _is_number(fmax) and fmin >= fmax:
        problems.append(f"data.mel_fmin {fmin} must be below data.mel_fmax {fmax}")
    mode = data.get("unit_interpolate_mode")
    if isinstance(mode, str) and mode not in UNIT_INTERPOLATE_MODES:
        problems.append(
            f"data.unit_interpolate_mode is {mode!r}; use one of "
            f"{', '.join(UNIT_INTERPOLATE_MODES)}"
        )
    return problems


def _upsampling_values(model: Mapping[str, Any], data: Mapping[str, Any]) -> list[str]:
    """The vocoder's upsampling: one kernel per rate, each at least its rate, product = hop."""
    problems = []
    rates, up_kernels = model.get("upsample_rates"), model.get("upsample_kernel_sizes")
    rates_ok = _check_type("int_list", rates) is None
    if rates_ok and _check_type("int_list", up_kernels) is None:
        if len(rates) != len(up_kernels):
            problems.append(
                f"model.upsample_rates has {len(rates)} entries but model.upsample_kernel_sizes "
                f"has {len(up_kernels)}; give one kernel per rate"
            )
        else:
            for rate, kernel in zip(rates, up_kernels):
                if kernel < rate:
                    problems.append(
                        f"model.upsample_kernel_sizes entry {kernel} is smaller than its "
                        f"upsample rate {rate}; use a kernel of at least the rate (usually 2x)"
                    )
    hop = data.get("hop_length")
    if rates_ok and _is_int(hop) and math.prod(rates) != hop:
        problems.append(
            f"data.hop_length {hop} is not the product of model.upsample_rates {rates} "
            f"(= {math.prod(rates)}); make them agree"
        )
    return problems


def _model_values(model: Mapping[str, Any], data: Mapping[str, Any]) -> list[str]:
    problems = _positive(
        model,
        "model",
        ("inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers",
         "kernel_size", "upsample_initial_channel", "n_layers_trans_flow", "n_flow_layer",
         "gin_channels", "ssl_dim", "n_speakers", "sampling_rate"),
    )
    dropout = model.get("p_dropout")
    if _is_number(dropout) and not 0 <= dropout < 1:
        problems.append(f"model.p_dropout is {dropout}; it must be in [0, 1)")
    hidden, heads = model.get("hidden_channels"), model.get("n_heads")
    if _is_int(hidden) and _is_int(heads) and hidden > 0 and heads > 0 and hidden % heads:
        problems.append(
            f"model.n_heads {heads} does not divide model.hidden_channels {hidden}; "
            "pick hidden_channels a multiple of n_heads"
        )
    resblock = model.get("resblock")
    if isinstance(resblock, str) and resblock not in RESBLOCK_KINDS:
        problems.append(f"model.resblock is {resblock!r}; use \"1\" or \"2\"")
    for list_key in ("resblock_kernel_sizes", "upsample_rates", "upsample_kernel_sizes"):
        values = model.get(list_key)
        if _check_type("int_list", values) is None and any(v <= 0 for v in values):
            problems.append(f"model.{list_key} is {values}; every entry must be positive")
    kernels, dilations = model.get("resblock_kernel_sizes"), model.get("resblock_dilation_sizes")
    if (
        _check_type("int_list", kernels) is None
        and _check_type("int_list_list", dilations) is None
        and len(kernels) != len(dilations)
    ):
        problems.append(
            f"model.resblock_kernel_sizes has {len(kernels)} entries but "
            f"model.resblock_dilation_sizes has {len(dilations)}; give one dilation list per kernel"
        )
    problems += _upsampling_values(model, data)
    vocoder = model.get("vocoder_name")
    if isinstance(vocoder, str) and components.vocoder_problem(vocoder):
        problems.append(components.vocoder_problem(vocoder))
    encoder = model.get("speech_encoder")
    if isinstance(encoder, str) and components.speech_encoder_problem(encoder):
        problems.append(components.speech_encoder_problem(encoder))
    return problems


def _model_warnings(model: Mapping[str, Any]) -> list[str]:
    """Suspicious but trainable model settings."""
    encoder, ssl_dim = model.get("speech_encoder"), model.get("ssl_dim")
    if encoder in components.SPEECH_ENCODERS and _is_int(ssl_dim):
        width = components.SPEECH_ENCODERS[encoder].width
        if width != ssl_dim:
            return [
                f"model.ssl_dim {ssl_dim} differs from the width {width} of "
                f"model.speech_encoder {encoder!r}; features from that encoder will not fit "
                f"(set ssl_dim to {width} unless your features come from elsewhere)"
            ]
    return []


def _spk_values(spk: Any, model: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Problems and warnings of the speaker map."""
    if not isinstance(spk, dict):
        return [f"spk must be an object mapping speaker names to ids, got {_describe(spk)}"], []
    problems: list[str] = []
    warnings: list[str] = []
    if not spk:
        problems.append("spk is empty; map each speaker folder name to an id, e.g. {\"alice\": 0}")
    n_speakers = model.get("n_speakers")
    seen: dict[int, str] = {}
    for name, speaker_id in spk.items():
        if not _is_int(speaker_id):
            problems.append(f"spk.{name} is {_describe(speaker_id)}; it must be an integer id")
            continue
        if speaker_id < 0 or (_is_int(n_speakers) and speaker_id >= n_speakers):
            problems.append(
                f"spk.{name} is {speaker_id}, outside range(model.n_speakers={n_speakers}); "
                "use ids 0..n_speakers-1 or raise model.n_speakers"
            )
        if speaker_id in seen:
            warnings.append(
                f"spk.{name} and spk.{seen[speaker_id]} share id {speaker_id}; "
                "they will train one voice"
            )
        seen.setdefault(speaker_id, name)
    return problems, warnings


# --------------------------------------------------------------------------- public API


def _fill_section(
    section: str,
    values: dict[str, Any],
    source: str,
    problems: list[str],
    messages: list[str],
) -> None:
    """Fill one section's missing optional keys with their defaults (in place).

    A missing required key or a value of the wrong type becomes a problem; a
    defaulted upstream key a note, an unknown key a warning.
    """
    for spec in key_specs(section):
        if spec.name not in values:
            if spec.status == "ignored":
                continue
            if spec.required:
                problems.append(
                    f"{spec.dotted} is missing; add it ({spec.description} "
                    "See configs_template/config_template.json.)"
                )
                continue
            default = spec.default
            values[spec.name] = copy.deepcopy(default)
            if spec.status != "added":  # our optional keys are not news to anyone
                messages.append(
                    f"note: {source}: {spec.dotted} is missing; using the default {default!r}"
                )
            continue
        expected = _check_type(spec.kind, values[spec.name])
        if expected is not None:
            problems.append(
                f"{spec.dotted} is {_describe(values[spec.name])}; it must be {expected}"
            )
    for name in values:
        if (section, name) not in _SPEC_BY_KEY:
            messages.append(
                f"warning: {source}: unknown key {section}.{name} is ignored (check its spelling)"
            )


def _well_typed(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per section, the known keys whose type is right.

    Value checks only look at these, so a key is reported once.
    """
    typed: dict[str, dict[str, Any]] = {}
    for name in ("train", "data", "model"):
        section = config.get(name) if isinstance(config.get(name), dict) else {}
        typed[name] = {
            key: value
            for key, value in section.items()
            if (name, key) in _SPEC_BY_KEY
            and _check_type(_SPEC_BY_KEY[(name, key)].kind, value) is None
        }
    return typed


def validate_config(config: dict, source: str) -> tuple[dict, list[str]]:
    """Check a loaded config and fill in defaults.

    Returns a new config (the input is not modified) with every missing optional
    key set to its default, and messages: one "note" per defaulted key and one
    "warning" per unknown key or suspicious value. Raises `UserError` listing
    every problem, one per line, when anything is missing, mistyped or impossible.
    """
    if not isinstance(config, dict):
        raise UserError(f"{source}: the config must be a JSON object with train/data/model/spk")
    filled = copy.deepcopy(config)
    problems: list[str] = []
    messages: list[str] = []

    for section in SECTIONS:
        if section not in filled:
            problems.append(f"section {section!r} is missing; copy it from configs_template")
        elif not isinstance(filled[section], dict):
            problems.append(f"section {section!r} must be a JSON object")
    for extra in sorted(set(filled) - set(SECTIONS)):
        messages.append(f"warning: {source}: unknown top-level key {extra!r} is ignored")

    for section in ("train", "data", "model"):
        values = filled.get(section)
        if isinstance(values, dict):
            _fill_section(section, values, source, problems, messages)
    typed = _well_typed(filled)
    problems += _train_values(typed["train"], typed["data"])
    problems += _data_values(typed["data"])
    problems += _model_values(typed["model"], typed["data"])
    messages += [f"warning: {source}: {text}" for text in _model_warnings(typed["model"])]
    if "spk" in filled:
        spk_problems, spk_warnings = _spk_values(filled["spk"], typed["model"])
        problems += spk_problems
        messages += [f"warning: {source}: {text}" for text in spk_warnings]
    if typed["train"].get("vol_aug") and typed["model"].get("vol_embedding") is False:
        messages.append(
            f"warning: {source}: train.vol_aug has no effect without model.vol_embedding"
        )

    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        raise UserError(
            f"{source}: {count} in the config:\n" + "\n".join(f"  {p}" for p in problems)
        )
    return filled, messages


def render_config_table() -> str:
    """A Markdown table of every config key, for the README."""
    lines = [
        "| Section | Key | Default | Meaning |",
        "|---|---|---|---|",
    ]
    for spec in SCHEMA:
        default = "required" if spec.required else f"`{_json_literal(spec.default)}`"
        meaning = spec.description
        if spec.status == "added":
            meaning += " (this project)"
        lines.append(f"| {spec.section} | `{spec.name}` | {default} | {meaning} |")
    lines.append(
        "| spk | *speaker name* | required | Speaker folder name -> id in "
        "range(model.n_speakers). |"
    )
    return "\n".join(lines) + "\n"


def _json_literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
