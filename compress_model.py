"""Make a small release file from a training checkpoint (upstream's `compress_model.py`).

    python compress_model.py -c configs/config.json -i logs/44k/G_30400.pth
        [-o logs/44k/G_30400_release.pth] [-hf]

The release keeps only what inference needs: the generator's weights without
the posterior encoder (`enc_q`, used only in training), no optimizer state and
no training state. `-hf/--half` stores the weights as float16 (about half the
size). The layout is upstream's (`model`, `iteration`, `optimizer`,
`learning_rate`), so this project's and upstream's inference both load it;
the file holds only tensors and plain values.
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
    POSTERIOR_ENCODER_PREFIX,
    check_fit,
    generator_disk_shapes,
    read_checkpoint,
)
from core.errors import UserError
from core.hparams import get_hparams_from_file
from core.safe_io import atomic_torch_save
from preprocessing.runner import run_cli


def default_output(input_path: str, half: bool) -> str:
    """Upstream's default name: `G_x.pth` -> `G_x_release.pth` (`G_x_release_half.pth`)."""
    stem, extension = os.path.splitext(input_path)
    return f"{stem}_release{'_half' if half else ''}{extension}"


def remove_optimizer(
    config: str, input_model: str, is_half: bool, output_model: str
) -> dict[str, Any]:
    """Write the release file of `input_model` to `output_model`; returns what was written.

    The weights are checked against the model `config` builds, so a release
    never pairs with the wrong config unnoticed.
    """
    checkpoint = read_checkpoint(input_model)
    state = {key.removeprefix("module."): value for key, value in checkpoint["model"].items()}
    expected = generator_disk_shapes(get_hparams_from_file(config))
    check_fit(state, expected, optional_prefixes=(POSTERIOR_ENCODER_PREFIX,)).raise_if_unfit(
        input_model,
        f"the model built from {config}",
        "pass the config it was trained with (-c)",
        include_unexpected=False,
    )
    kept = {
        key: (value.half() if is_half and value.is_floating_point() else value).contiguous()
        for key, value in state.items()
        if not key.startswith(POSTERIOR_ENCODER_PREFIX) and key in expected
    }
    release = {
        "model": kept,
        "iteration": 0,
        "optimizer": None,
        "learning_rate": float(checkpoint.get("learning_rate") or 1e-4),
    }
    atomic_torch_save(release, output_model)
    return release


def build_parser() -> argparse.ArgumentParser:
    """Upstream's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="configs/config.json", help="config file")
    parser.add_argument("-i", "--input", required=True, help="training checkpoint G_*.pth")
    parser.add_argument("-o", "--output", default=None,
                        help="release file (default: <input>_release[_half].pth)")
    parser.add_argument("-hf", "--half", action="store_true", help="save as float16")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = args.output or default_output(args.input, args.half)
    if Path(output).resolve() == Path(args.input).resolve():
        raise UserError(f"-o {output}: would overwrite the input; choose another output name")
    remove_optimizer(args.config, args.input, args.half, output)
    before, after = os.path.getsize(args.input), os.path.getsize(output)
    print(f"wrote {output} ({after / 2**20:.1f} MiB, was {before / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
