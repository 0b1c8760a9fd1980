"""`evaluate.py`: the validation figures of any `G_*.pth` on any filelist.

The figures are those training logs under `eval/` at each evaluation, computed
the same way (`evaluate_generator`), so a user can compare checkpoints after
the fact, or one checkpoint on another list of clips.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from checkpoint import (
    POSTERIOR_ENCODER_PREFIX,
    build_generator,
    load_checkpoint,
    read_checkpoint,
    saved_model_state,
)
from core.config_schema import validate_config
from core.errors import UserError
from core.hparams import HParams, read_config_json
from core.safe_io import atomic_write
from data_utils import TextAudioSpeakerLoader, make_eval_loader
from evaluation.figures import ValidationReport, evaluate_generator

_STEP_IN_NAME = re.compile(r"G_(\d+)\.pth$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Validation figures of a generator checkpoint (as training logs them)"
    )
    add = parser.add_argument
    add("-c", "--config_path", default="logs/44k/config.json", help="config file")
    add("-m", "--model_path", required=True, help="generator checkpoint, e.g. logs/44k/G_800.pth")
    add(
        "-f",
        "--filelist",
        default=None,
        help="clips to evaluate, one wav per line (default: the config's validation_files)",
    )
    add("--json", default=None, help="also write the figures to this JSON file")
    add("-d", "--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    return parser


def load_generator_for_evaluation(
    path: str, hps: HParams, device: torch.device
) -> tuple[Any, int | None]:
    """The generator of a training checkpoint (posterior encoder included) and its step."""
    if not Path(path).is_file():
        raise UserError(f"{path}: model not found: pass a G_*.pth file with -m")
    checkpoint = read_checkpoint(path)
    generator = build_generator(hps)
    keys = saved_model_state(checkpoint, generator.state_dict().keys())
    if not any(key.startswith(POSTERIOR_ENCODER_PREFIX) for key in keys):
        raise UserError(
            f"{path}: has no posterior encoder (a release file from compress_model.py?), "
            "which the training-path figure needs: evaluate a training G_*.pth"
        )
    load_checkpoint(path, generator, strict=True, checkpoint=checkpoint)
    state = checkpoint.get("train_state")
    step = state.get("step") if isinstance(state, dict) else None
    if step is None and (match := _STEP_IN_NAME.search(Path(path).name)):
        step = int(match.group(1))
    return generator.to(device).eval(), step


def evaluate_checkpoint(
    config_path: str, model_path: str, filelist: str | None, device: torch.device
) -> tuple[ValidationReport, dict[str, Any]]:
    """Figures of `model_path` on `filelist`, and what was evaluated (for the JSON)."""
    config, _ = validate_config(read_config_json(config_path), str(config_path))
    hps = HParams(**config)
    filelist = filelist or hps.data.validation_files
    dataset = TextAudioSpeakerLoader(filelist, hps, vol_aug=False)
    if len(dataset) == 0:
        raise UserError(f"{filelist}: no clips in the filelist; pass another with -f")
    generator, step = load_generator_for_evaluation(model_path, hps, device)
    report = evaluate_generator(generator, make_eval_loader(dataset, hps, device.type), hps, device)
    about = {"checkpoint": str(model_path), "step": step, "filelist": str(filelist)}
    return report, about


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report, about = evaluate_checkpoint(args.config_path, args.model_path, args.filelist, device)
    step = "" if about["step"] is None else f" (step {about['step']})"
    print(f"{about['checkpoint']}{step} on {about['filelist']}:")
    print(report.table())
    if args.json:
        with atomic_write(args.json) as handle:
            handle.write(json.dumps({**about, **report.to_dict()}, indent=2).encode("utf-8"))
        print(f"wrote {args.json}")
    return 0
