"""Run so-vits-svc end to end on synthetic singers: `python demo.py` (or `make demo`).

Builds a small singing set with the WORLD vocoder, then runs resample.py,
preprocess_flist_config.py, preprocess_hubert_f0.py, train.py and
inference_main.py exactly as a user would, inside --workspace. Rerun to resume.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo.pipeline import DemoError, DemoOptions, print_summary, quick_options, run_demo


def build_parser() -> argparse.ArgumentParser:
    """The demo's flags; every size has a default that fits a 2-core CPU in minutes."""
    defaults = DemoOptions(workspace=Path("demo_workspace"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="demo_workspace", help="working folder")
    parser.add_argument(
        "--steps", type=int, default=None,
        help=f"train until this global step (default {defaults.steps}; quick: 12)",
    )
    parser.add_argument("--speakers", type=int, default=None, help="synthetic singers (>= 2)")
    parser.add_argument("--clips", type=int, default=None, help="clips per singer (>= 3)")
    parser.add_argument(
        "--quick", action="store_true", help="a much smaller run (what the tests use)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workspace = Path(args.workspace).resolve()
    options = quick_options(workspace) if args.quick else DemoOptions(workspace=workspace)
    overrides = {
        name: value
        for name, value in (("steps", args.steps), ("speakers", args.speakers),
                            ("clips", args.clips))
        if value is not None
    }
    options = replace(options, **overrides)
    if options.speakers < 2 or options.clips < 3 or options.steps < 1:
        print("error: need --speakers >= 2, --clips >= 3 and --steps >= 1", file=sys.stderr)
        return 2
    try:
        result = run_demo(options)
    except DemoError as error:
        print(f"\ndemo stopped: {error}", file=sys.stderr)
        return 1
    print_summary(options, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
