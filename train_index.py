"""Build the feature-retrieval index of every speaker in the config (inference's `-fr`).

Upstream's `train_index.py`:

    python train_index.py [--root_dir dataset/44k/] [-c configs/config.json]
        [--output_dir logs/44k] [--seed 0] [--upstream_pickle]
    python train_index.py --convert logs/44k/feature_and_index.pkl --trust_pickle

Writes `<output_dir>/feature_and_index/` (one faiss index file per speaker and
a JSON manifest; no pickle). `--upstream_pickle` also writes upstream's
`feature_and_index.pkl` for upstream's own tools. `--convert` turns an upstream
pickle (read only with `--trust_pickle`) into the folder format.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster.feature_index import (
    INDEX_FOLDER_NAME,
    UPSTREAM_PICKLE_NAME,
    build_index,
    load_feature_index,
    save_index_folder,
)
from cluster.train_cluster import load_speaker_features
from core.errors import UserError
from core.hparams import get_hparams_from_file
from core.safe_io import atomic_write
from feature_files import CONTENT_SUFFIX
from preprocessing.runner import run_cli


def build_parser() -> argparse.ArgumentParser:
    """Upstream's flags plus `--seed`, `--upstream_pickle`, `--convert`, `--trust_pickle`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root_dir", default="dataset/44k",
                        help=f"folder of <speaker>/*{CONTENT_SUFFIX}")
    parser.add_argument("-c", "--config", default="./configs/config.json",
                        help="config whose spk map names the speakers")
    parser.add_argument("--output_dir", default="logs/44k", help="where the index is written")
    parser.add_argument("--seed", type=int, default=0, help="seed of the frame shuffle")
    parser.add_argument("--upstream_pickle", action="store_true",
                        help=f"also write upstream's pickled {UPSTREAM_PICKLE_NAME}")
    parser.add_argument("--convert", default=None, metavar="PKL",
                        help="convert an upstream feature_and_index.pkl to the folder format")
    parser.add_argument("--trust_pickle", action="store_true",
                        help="allow reading upstream's pickled index (it could run code)")
    return parser


def _speaker_names(config_path: str) -> dict[int, str]:
    hps = get_hparams_from_file(config_path)
    speakers = hps.get("spk")
    if not speakers:
        raise UserError(f"{config_path}: no 'spk' map: run preprocess_flist_config.py")
    return {int(speaker_id): str(name) for name, speaker_id in speakers.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output_dir = Path(args.output_dir)
    if args.convert:
        indexes = load_feature_index(args.convert, trust_pickle=args.trust_pickle)
        names = _speaker_names(args.config) if Path(args.config).is_file() else {}
        folder = save_index_folder(indexes, names, output_dir / INDEX_FOLDER_NAME)
        print(f"wrote {folder} ({len(indexes)} speakers)")
        return 0

    root = Path(args.root_dir)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found: pass it with --root_dir")
    names = _speaker_names(args.config)
    indexes = {}
    for speaker_id, name in sorted(names.items()):
        features = load_speaker_features(root / name)
        print(f"indexing {name} (id {speaker_id}): {features.shape[0]} frames")
        try:
            indexes[speaker_id] = build_index(features, seed=args.seed + speaker_id)
        except MemoryError:
            raise UserError(
                f"{root / name}: out of memory indexing {features.shape[0]} frames: "
                "close other programs and run train_index.py again"
            ) from None
    folder = save_index_folder(indexes, names, output_dir / INDEX_FOLDER_NAME)
    print(f"wrote {folder} ({len(indexes)} speakers)")
    if args.upstream_pickle:
        target = output_dir / UPSTREAM_PICKLE_NAME
        with atomic_write(target) as handle:
            pickle.dump(indexes, handle)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
