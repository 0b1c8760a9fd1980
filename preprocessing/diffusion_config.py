"""`configs/diffusion.yaml`, the shallow-diffusion model's config, in upstream's YAML format.

`preprocess_flist_config.py` writes it from `configs_template/diffusion_template.yaml`
as upstream does: the template with the dataset's speakers (`spk`, `model.n_spk`),
the speech encoder and its width (`data.encoder`, `data.encoder_out_channels`)
and the filelists filled in, written as `yaml.dump` writes it (keys sorted).
`preprocess_hubert_f0.py --use_diff` reads its `vocoder` section to find the
vocoder whose mel it writes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from core import components
from core.errors import UserError
from core.safe_io import atomic_write

if TYPE_CHECKING:
    from diffusion.vocoder import MelSettings

DIFFUSION_CONFIG_PATH = "configs/diffusion.yaml"
TEMPLATE_NAME = "diffusion_template.yaml"
SECTIONS = ("data", "model", "vocoder", "infer", "env", "train")
REPO_DIR = Path(__file__).resolve().parent.parent


def template_path(search_dirs: list[Path] | None = None) -> Path:
    """The template in ./configs_template/, else in this repository's copy."""
    for folder in search_dirs or [Path.cwd(), REPO_DIR]:
        candidate = folder / "configs_template" / TEMPLATE_NAME
        if candidate.is_file():
            return candidate
    raise UserError(
        f"configs_template/{TEMPLATE_NAME}: template not found: restore it from the repository"
    )


def read_yaml_config(path: str | Path, fix: str) -> dict[str, Any]:
    """A YAML config with upstream's sections, or a one-line error naming the file and `fix`."""
    source = Path(path)
    if not source.is_file():
        raise UserError(f"{source}: not found: {fix}")
    try:
        config = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).splitlines()[0]
        raise UserError(f"{source}: cannot be read as YAML ({reason}): {fix}") from error
    if not isinstance(config, dict):
        raise UserError(f"{source}: not a diffusion config (a YAML mapping): {fix}")
    for section in SECTIONS:
        if not isinstance(config.get(section), dict):
            raise UserError(f"{source}: section {section!r} missing: {fix}")
    return config


def build_diffusion_config(
    template: dict[str, Any],
    speakers: dict[str, int],
    speech_encoder: str,
    train_list: str,
    val_list: str,
) -> dict[str, Any]:
    """Fill the template with the dataset's speakers, encoder and filelists (a new dict)."""
    encoder = components.speech_encoder(speech_encoder, where="--speech_encoder")
    config = copy.deepcopy(template)
    config["model"]["n_spk"] = len(speakers)
    config["spk"] = dict(speakers)
    config["data"]["encoder"] = speech_encoder
    config["data"]["encoder_out_channels"] = encoder.width
    config["data"]["training_files"] = train_list
    config["data"]["validation_files"] = val_list
    return config


def write_diffusion_config(path: str | Path, config: dict[str, Any]) -> None:
    """YAML as upstream's `yaml.dump` writes it (block style, keys sorted), atomically."""
    text = yaml.safe_dump(config, sort_keys=True, default_flow_style=False, allow_unicode=True)
    with atomic_write(path) as handle:
        handle.write(text.encode("utf-8"))


def make_diffusion_config(
    path: str | Path,
    speakers: dict[str, int],
    speech_encoder: str,
    train_list: str,
    val_list: str,
) -> dict[str, Any]:
    """Read the template, fill it and write `path`; returns what was written."""
    template = read_yaml_config(template_path(), "restore it from the repository")
    config = build_diffusion_config(template, speakers, speech_encoder, train_list, val_list)
    write_diffusion_config(path, config)
    return config


def vocoder_mel_settings(path: str | Path) -> tuple[MelSettings, str | None]:
    """The mel settings of the vocoder `path` names, and a note if the release's stand in."""
    from diffusion.vocoder import mel_settings_for  # imports torch: only when needed

    config = read_yaml_config(path, "rerun preprocess_flist_config.py")
    vocoder = config["vocoder"]
    components.diffusion_vocoder_scale(vocoder.get("type"), where=f"{path}: vocoder.type")
    ckpt = vocoder.get("ckpt")
    if not isinstance(ckpt, str) or not ckpt:
        raise UserError(f"{path}: vocoder.ckpt missing: set it to {components.NSF_HIFIGAN_WEIGHTS}")
    return mel_settings_for(ckpt)
