"""Make a small release file from a training checkpoint (upstream's `compress_model.py`).

    python compress_model.py -i logs/44k/G_30400.pth [-c configs/config.json]
        [-o logs/44k/G_30400_release.pth] [-hf]

The release keeps only what inference needs: the generator's weights without
the posterior encoder (`enc_q`, used only in training), no optimizer state and
no training state, plus the config. `-hf/--half` stores the weights as float16
(about half the size). The layout is upstream's, so this project's and
upstream's inference both load it (`checkpoint.save_release` writes it). The
config is `-c`, else the one the checkpoint carries, else upstream's default
`configs/config.json`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


from checkpoint import (
    GENERATOR_FILES,
    POSTERIOR_ENCODER_PREFIX,
    check_fit,
    disk_model_state,
    generator_disk_shapes,
    generator_hparams,
    read_generator_file,
    release_path,
    save_release,
)
from core.errors import UserError
from preprocessing.runner import run_cli

UPSTREAM_DEFAULT_CONFIG = "configs/config.json"


def remove_optimizer(
    config: str | None, input_model: str, is_half: bool, output_model: str
) -> dict[str, Any]:
    """Write the release file of `input_model` to `output_model`; returns what was written.

    The weights are checked against the model the config builds, so a release
    never pairs with the wrong config unnoticed.
    """
    checkpoint = read_generator_file(input_model, "-i")
    hps = generator_hparams(checkpoint, input_model, config, fallback=UPSTREAM_DEFAULT_CONFIG)
    expected = generator_disk_shapes(hps)
    fit = check_fit(
        disk_model_state(checkpoint), expected, optional_prefixes=(POSTERIOR_ENCODER_PREFIX,)
    )
    fit.raise_if_unfit(
        input_model,
        "the model built from its config",
        "pass the config it was trained with (-c)",
        include_unexpected=False,
    )
    return save_release(checkpoint, output_model, expected, half=is_half, config=hps)


def build_parser() -> argparse.ArgumentParser:
    """Upstream's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-c", "--config", default=None,
        help="config file (default: the checkpoint's own, else configs/config.json)",
    )
    parser.add_argument("-i", "--input", required=True,
                        help=f"training checkpoint {GENERATOR_FILES}")
    parser.add_argument("-o", "--output", default=None,
                        help="release file (default: <input>_release[_half].pth)")
    parser.add_argument("-hf", "--half", action="store_true", help="save as float16")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = args.output or release_path(args.input, args.half)
    if Path(output).resolve() == Path(args.input).resolve():
        raise UserError(f"-o {output}: would overwrite the input; choose another output name")
    remove_optimizer(args.config, args.input, args.half, output)
    before, after = os.path.getsize(args.input), os.path.getsize(output)
    print(f"wrote {output} ({after / 2**20:.1f} MiB, was {before / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
