"""K-means cluster models over content features, and their use at inference.

A cluster model maps each speaker name to the centres k-means found in that
speaker's content features (`cluster/train_cluster.py` writes it as
`logs/44k/kmeans_10000.pt`). At inference every content frame can be pulled
towards its nearest centre, which makes the timbre closer to the target
speaker at some cost in articulation (`-cr` sets the mix).

Files written here hold only tensors and plain numbers:
`{speaker: {"n_features_in_": int, "_n_threads": int, "cluster_centers_": Tensor}}`,
read with `torch.load(weights_only=True)`. Upstream's files have the same keys
but pickle numpy arrays, which a weights-only load refuses; they are read only
when the caller trusts the file (`--trust_pickle`).

Nearest centres are found with `torch.cdist`, so no sklearn object is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from core.errors import UserError
from core.safe_io import UnsafeFileError, atomic_torch_save, load_torch_data

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

# Rows of features compared against all centres at once (bounds cdist's memory).
_CHUNK_FRAMES = 4096


@dataclass
class KMeansCenters:
    """One speaker's k-means result: the centres and sklearn's two bookkeeping fields."""

    cluster_centers_: torch.Tensor  # (n_clusters, n_features) float32
    n_features_in_: int
    _n_threads: int = 1

    def predict(self, x: ArrayT) -> ArrayT:
        """Index of the nearest centre of every row of `x` (T, n_features)."""
        frames = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x)
        labels = nearest_centers(frames, self.cluster_centers_)
        return labels.numpy() if isinstance(x, np.ndarray) else labels.to(x.device)

    def to_dict(self) -> dict[str, Any]:
        """The on-disk record (upstream's keys, a tensor for the centres)."""
        return {
            "n_features_in_": int(self.n_features_in_),
            "_n_threads": int(self._n_threads),
            "cluster_centers_": self.cluster_centers_.detach().cpu().float().contiguous(),
        }


ClusterModel = dict[str, KMeansCenters]


def nearest_centers(frames: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index (T,) of the nearest centre (Euclidean) of every row of frames (T, D)."""
    if frames.dim() != 2 or frames.shape[1] != centers.shape[1]:
        raise UserError(
            f"cluster model: features of shape {tuple(frames.shape)} do not fit centres of "
            f"width {centers.shape[1]}: train the cluster model on this model's features"
        )
    centers = centers.to(device=frames.device, dtype=torch.float32)
    frames = frames.to(torch.float32)
    labels = [
        torch.cdist(frames[start : start + _CHUNK_FRAMES], centers).argmin(dim=1)
        for start in range(0, frames.shape[0], _CHUNK_FRAMES)
    ]
    if not labels:
        return torch.zeros(0, dtype=torch.long, device=frames.device)
    return torch.cat(labels)


def _record_to_centers(speaker: str, record: Any, path: str | os.PathLike) -> KMeansCenters:
    if not isinstance(record, Mapping) or "cluster_centers_" not in record:
        raise UserError(
            f"{path}: speaker {speaker!r} has no cluster_centers_: "
            "not a cluster model; rerun cluster/train_cluster.py"
        )
    centers = torch.as_tensor(np.asarray(record["cluster_centers_"]), dtype=torch.float32)
    if centers.dim() != 2:
        raise UserError(f"{path}: centres of speaker {speaker!r} are not a 2-D table")
    return KMeansCenters(
        cluster_centers_=centers,
        n_features_in_=int(record.get("n_features_in_", centers.shape[1])),
        _n_threads=int(record.get("_n_threads", 1)),
    )


def get_cluster_model(ckpt_path: str | os.PathLike, trust_pickle: bool = False) -> ClusterModel:
    """Read a cluster model (ours, or upstream's pickled one when `trust_pickle`)."""
    try:
        checkpoint = load_torch_data(ckpt_path)
    except UnsafeFileError as error:
        if not trust_pickle:
            raise UserError(
                f"{ckpt_path}: this cluster model pickles Python objects (upstream's format) "
                "and could run code when read; pass --trust_pickle if you trust its source, "
                "or retrain it with cluster/train_cluster.py"
            ) from error
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise UserError(f"{ckpt_path}: not a cluster model (expected one entry per speaker)")
    return {
        str(speaker): _record_to_centers(str(speaker), record, ckpt_path)
        for speaker, record in checkpoint.items()
    }


def save_cluster_model(model: Mapping[str, KMeansCenters], path: str | os.PathLike) -> None:
    """Write a cluster model atomically, as data only."""
    atomic_torch_save({speaker: centers.to_dict() for speaker, centers in model.items()}, path)


def _speaker_centers(model: Mapping[str, KMeansCenters], speaker: str) -> KMeansCenters:
    if speaker not in model:
        raise UserError(
            f"cluster model has no speaker {speaker!r} (it has: {', '.join(model)}): "
            "use a speaker it was trained on, or -cr 0"
        )
    return model[speaker]


def get_cluster_result(model: Mapping[str, KMeansCenters], x: ArrayT, speaker: str) -> ArrayT:
    """Nearest-centre index of every frame of x (T, D)."""
    return _speaker_centers(model, speaker).predict(x)


def get_cluster_center_result(
    model: Mapping[str, KMeansCenters], x: ArrayT, speaker: str
) -> ArrayT:
    """Every frame of x (T, D) replaced by its nearest centre (numpy in, numpy out)."""
    centers = _speaker_centers(model, speaker)
    labels = centers.predict(x)
    return get_center(model, labels, speaker)


def get_center(model: Mapping[str, KMeansCenters], x: ArrayT, speaker: str) -> ArrayT:
    """The centres with the given indices x (T,)."""
    table = _speaker_centers(model, speaker).cluster_centers_
    if isinstance(x, np.ndarray):
        return table.numpy()[x]
    return table.to(x.device)[x.long()]
