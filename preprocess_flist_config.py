"""Write the train/val filelists, configs/config.json and configs/diffusion.yaml (upstream's).

    python preprocess_flist_config.py [--train_list ./filelists/train.txt]
        [--val_list ./filelists/val.txt] [--source_dir ./dataset/44k]
        [--speech_encoder vec768l12] [--vol_aug] [--tiny] [--seed 1234]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core.components import SPEECH_ENCODERS
from preprocessing.diffusion_config import DIFFUSION_CONFIG_PATH
from preprocessing.flist_config import make_filelists_and_config
from preprocessing.runner import run_cli

CONFIG_PATH = "configs/config.json"


def build_parser() -> argparse.ArgumentParser:
    """Upstream's flags plus `--seed`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_list", default="./filelists/train.txt")
    parser.add_argument("--val_list", default="./filelists/val.txt")
    parser.add_argument("--source_dir", default="./dataset/44k")
    parser.add_argument(
        "--speech_encoder", default="vec768l12", help="one of: " + ", ".join(SPEECH_ENCODERS)
    )
    parser.add_argument(
        "--vol_aug", action="store_true", help="volume embedding and volume augmentation"
    )
    parser.add_argument("--tiny", action="store_true", help="use the small (tiny) model template")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the train/val shuffle")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    split = make_filelists_and_config(
        source_dir=args.source_dir,
        train_list=args.train_list,
        val_list=args.val_list,
        speech_encoder=args.speech_encoder,
        vol_aug=args.vol_aug,
        tiny=args.tiny,
        seed=args.seed,
        config_path=CONFIG_PATH,
        diffusion_config_path=DIFFUSION_CONFIG_PATH,
    )
    for note in split.notes:
        print(f"note: {note}")
    print(f"speakers: {split.speakers}")
    print(f"wrote {args.train_list} ({len(split.train)} files), "
          f"{args.val_list} ({len(split.val)} files), {CONFIG_PATH} and {DIFFUSION_CONFIG_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
