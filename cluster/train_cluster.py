"""Train one k-means cluster model per speaker over the preprocessed content features.

Upstream's `cluster/train_cluster.py`:

    python cluster/train_cluster.py [--dataset ./dataset/44k] [--output logs/44k] [--gpu]
        [--n_clusters 10000] [--seed 0] [--minibatch]

Reads `<dataset>/<speaker>/*.soft.pt` and writes `<output>/kmeans_<n_clusters>.pt`
(upstream's name, `kmeans_10000.pt` by default, even when a speaker has fewer
frames than clusters and gets fewer centres). The file holds only tensors.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

import feature_files as ff
from cluster import KMeansCenters, save_cluster_model
from core.errors import UserError
from preprocessing.runner import run_cli

logger = logging.getLogger("so-vits-svc.cluster")


def load_speaker_features(speaker_dir: Path) -> np.ndarray:
    """All content frames (N, D) float32 of one speaker's `*.soft.pt` files, in name order."""
    paths = sorted(speaker_dir.glob(f"*{ff.CONTENT_SUFFIX}"))
    if not paths:
        raise UserError(
            f"{speaker_dir}: no *{ff.CONTENT_SUFFIX} features: run preprocess_hubert_f0.py first"
        )
    frames = [ff.read_content(str(path)).T.numpy() for path in paths]
    widths = {block.shape[1] for block in frames}
    if len(widths) != 1:
        raise UserError(
            f"{speaker_dir}: features have different widths {sorted(widths)}: "
            "rerun preprocess_hubert_f0.py --force"
        )
    return np.concatenate(frames, axis=0).astype(np.float32)


def train_cluster(
    features: np.ndarray,
    n_clusters: int,
    use_minibatch: bool = False,
    use_gpu: bool = False,
    seed: int = 0,
    verbose: bool = False,
) -> KMeansCenters:
    """Fit k-means to features (N, D); n_clusters must not exceed N.

    sklearn's KMeans by default (upstream's choice), MiniBatchKMeans (batch 4096,
    80 iterations, as upstream) on request, or the torch k-means on a GPU.
    """
    started = time.time()
    if use_gpu:
        from cluster.kmeans import kmeans_torch

        centers = kmeans_torch(torch.from_numpy(features), n_clusters, seed=seed, device="cuda")
        result = KMeansCenters(centers.cpu(), n_features_in_=features.shape[1], _n_threads=4)
    else:
        from sklearn.cluster import KMeans, MiniBatchKMeans

        if use_minibatch:
            estimator = MiniBatchKMeans(
                n_clusters=n_clusters, verbose=verbose, batch_size=4096, max_iter=80,
                random_state=seed, n_init="auto",
            )
        else:
            estimator = KMeans(
                n_clusters=n_clusters, verbose=verbose, random_state=seed, n_init="auto"
            )
        estimator.fit(features)
        result = KMeansCenters(
            torch.from_numpy(np.asarray(estimator.cluster_centers_, dtype=np.float32)),
            n_features_in_=int(estimator.n_features_in_),
            _n_threads=int(getattr(estimator, "_n_threads", 1)),
        )
    logger.info("k-means with %d clusters took %.1f s", n_clusters, time.time() - started)
    return result


def build_parser() -> argparse.ArgumentParser:
    """Upstream's flags plus `--n_clusters`, `--seed` and `--minibatch`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=Path("./dataset/44k"),
                        help=f"folder of <speaker>/*{ff.CONTENT_SUFFIX} features")
    parser.add_argument("--output", type=Path, default=Path("logs/44k"),
                        help="folder the cluster model is written to")
    parser.add_argument("--gpu", action="store_true", help="run k-means on the GPU (torch)")
    parser.add_argument("--n_clusters", type=int, default=10000,
                        help="centres per speaker (capped by the speaker's frame count)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the k-means start")
    parser.add_argument("--minibatch", action="store_true",
                        help="use MiniBatchKMeans (faster on large data sets)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    if args.n_clusters < 1:
        raise UserError(f"--n_clusters {args.n_clusters}: must be 1 or more")
    if not args.dataset.is_dir():
        raise UserError(f"{args.dataset}: dataset folder not found: pass it with --dataset")
    use_gpu = args.gpu
    if use_gpu and not torch.cuda.is_available():
        print("note: --gpu given but no CUDA device is available; using the CPU (sklearn)")
        use_gpu = False
    speakers = sorted(
        entry.name
        for entry in args.dataset.iterdir()
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not speakers:
        raise UserError(f"{args.dataset}: no speaker folders: run preprocessing first")
    model: dict[str, KMeansCenters] = {}
    for speaker in speakers:
        features = load_speaker_features(args.dataset / speaker)
        n_clusters = min(args.n_clusters, features.shape[0])
        if n_clusters < args.n_clusters:
            print(
                f"note: {speaker}: only {features.shape[0]} feature frames, "
                f"so {n_clusters} clusters instead of {args.n_clusters}"
            )
        print(f"training k-means for {speaker}: {features.shape[0]} frames x "
              f"{features.shape[1]} dims -> {n_clusters} clusters")
        try:
            model[speaker] = train_cluster(
                features, n_clusters, use_minibatch=args.minibatch, use_gpu=use_gpu,
                seed=args.seed,
            )
        except (MemoryError, torch.cuda.OutOfMemoryError):
            raise UserError(
                f"{args.dataset / speaker}: out of {'GPU ' if use_gpu else ''}memory for "
                f"k-means over {features.shape[0]} frames into {n_clusters} clusters: "
                "use --minibatch, lower --n_clusters, or close other programs"
            ) from None
    output = args.output / f"kmeans_{args.n_clusters}.pt"
    save_cluster_model(model, output)
    print(f"wrote {output} ({len(model)} speakers)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
