"""Export a trained model to ONNX for tools outside Python.

Upstream's `onnx_export.py`:

    python onnx_export.py -n NAME
        reads  checkpoints/NAME/model.pth and the config it carries (a G file
               training wrote), else checkpoints/NAME/config.json
        writes checkpoints/NAME/NAME_SoVits.onnx and checkpoints/NAME.json

`--model`, `--config`, `--out` and `--json` point elsewhere (e.g. straight at
logs/44k/G_8000.pth). Inputs, outputs and the json are described in
inference/onnx_export.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkpoint.names import GENERATOR_FILES
from preprocessing.runner import run_cli

DESCRIPTION = (
    f"Export a so-vits-svc 4.1 generator ({GENERATOR_FILES}) to ONNX in upstream's layout, for "
    "MoeVoiceStudio, realtime voice changers (e.g. w-okada's voice-changer) and other "
    "tools that load upstream's NAME_SoVits.onnx with onnxruntime. Writes the model and "
    "the NAME.json description MoeVoiceStudio reads."
)


def build_parser() -> argparse.ArgumentParser:
    """Upstream's `-n NAME` layout plus explicit paths."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add = parser.add_argument
    add("-n", "--name", default="TransformerFlow",
        help="model name: the folder checkpoints/NAME and the names of the files written")
    add("--model", default=None, help="generator checkpoint (default: checkpoints/NAME/model.pth)")
    add("--config", default=None,
        help="its config (default: the one the model file carries, else "
        "checkpoints/NAME/config.json)")
    add("--out", default=None,
        help="ONNX file to write (default: checkpoints/NAME/NAME_SoVits.onnx)")
    add("--json", default=None,
        help="MoeVoiceStudio description to write (default: checkpoints/NAME.json, or "
        "NAME.json beside --out)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path("checkpoints") / args.name
    model = Path(args.model) if args.model else folder / "model.pth"
    out = Path(args.out) if args.out else folder / f"{args.name}_SoVits.onnx"
    if args.json:
        json_path = Path(args.json)
    elif args.out:
        json_path = out.parent / f"{args.name}.json"
    else:
        json_path = Path("checkpoints") / f"{args.name}.json"

    from inference.onnx_export import export_model

    result = export_model(
        model, args.config, out, json_path, args.name, fallback_config=folder / "config.json"
    )
    print(f"wrote {result.onnx_path} (inputs: {', '.join(result.input_names)})")
    print(f"wrote {result.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
