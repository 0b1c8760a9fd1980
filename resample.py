"""Convert raw recordings into mono 16-bit training wavs (upstream's `resample.py`).

    python resample.py [--in_dir ./dataset_raw] [--out_dir2 ./dataset/44k] [--sr2 44100]
                       [--skip_loudnorm] [--num_processes N] [--slice]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from preprocessing.resample import count_outputs, resample_dataset
from preprocessing.runner import run_cli


def build_parser() -> argparse.ArgumentParser:
    """Upstream's flags plus `--num_processes` and `--slice`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sr2", type=int, default=44100, help="target sampling rate")
    parser.add_argument("--in_dir", default="./dataset_raw", help="folder of <speaker>/ folders")
    parser.add_argument("--out_dir2", default="./dataset/44k", help="where the wavs go")
    parser.add_argument(
        "--skip_loudnorm", action="store_true", help="do not scale each file to full scale"
    )
    parser.add_argument(
        "--num_processes",
        type=int,
        default=0,
        help="worker processes (0: one per CPU core, at most 8)",
    )
    parser.add_argument(
        "--slice", action="store_true", help="cut long recordings at pauses into short clips"
    )
    parser.add_argument(
        "--force", action="store_true", help="convert again files an earlier run converted"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    processes = args.num_processes if args.num_processes > 0 else min(os.cpu_count() or 1, 8)
    summary = resample_dataset(
        in_dir=args.in_dir,
        out_dir=args.out_dir2,
        target_sr=args.sr2,
        loudnorm=not args.skip_loudnorm,
        num_processes=processes,
        slice_at_pauses=args.slice,
        force=args.force,
    )
    print(summary.format())
    print(f"wrote {count_outputs(summary.results)} wav file(s) to {args.out_dir2}")
    return 0 if summary.done or not summary.failed else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
