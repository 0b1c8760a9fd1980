"""Feature-retrieval indexes: one faiss index per speaker over its content features.

At inference (`-fr`), every content frame is replaced in part by a weighted mean
of its 8 nearest training frames of the target speaker (weights 1/distance^2,
as upstream took from RVC), pulling the timbre towards the speaker.

On disk this project writes a folder (default `logs/44k/feature_and_index/`):
one `faiss.write_index` file per speaker plus `manifest.json` naming them, so
nothing is pickled. Upstream writes `feature_and_index.pkl`, a pickled
`{speaker_id: faiss index}`; it is read only when the caller trusts it
(`--trust_pickle`).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.safe_io import atomic_write

MANIFEST_NAME = "manifest.json"
INDEX_FOLDER_NAME = "feature_and_index"
UPSTREAM_PICKLE_NAME = "feature_and_index.pkl"
FORMAT_NAME = "so-vits-svc-feature-index"
NEIGHBOURS = 8
# Above this many frames upstream first reduces the data to 10000 k-means centres.
_MAX_FRAMES_BEFORE_KMEANS = 200_000


def _faiss() -> Any:
    import faiss

    return faiss


def ivf_list_count(n_frames: int) -> int:
    """Upstream's IVF list count, min(16 sqrt(n), n // 39), at least 1 for tiny data sets."""
    return max(1, min(int(16 * np.sqrt(n_frames)), n_frames // 39))


def build_index(features: np.ndarray, seed: int = 0) -> Any:
    """An `IVF<n>,Flat` faiss index (nprobe 1) over features (N, D), as upstream builds it.

    Rows are shuffled first; above 200k rows they are replaced by 10000
    MiniBatchKMeans centres (upstream's guard against huge indexes).
    """
    faiss = _faiss()
    data = np.ascontiguousarray(features, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] == 0:
        raise UserError("feature index: no feature frames to index: run preprocessing first")
    data = data[np.random.default_rng(seed).permutation(data.shape[0])]
    if data.shape[0] > _MAX_FRAMES_BEFORE_KMEANS:
        from sklearn.cluster import MiniBatchKMeans

        print(f"reducing {data.shape[0]} frames to 10000 k-means centres first")
        data = (
            MiniBatchKMeans(
                n_clusters=10000,
                batch_size=256 * (os.cpu_count() or 1),
                compute_labels=False,
                init="random",
                random_state=seed,
                n_init="auto",
            )
            .fit(data)
            .cluster_centers_.astype(np.float32)
        )
    index = faiss.index_factory(data.shape[1], f"IVF{ivf_list_count(data.shape[0])},Flat")
    faiss.extract_index_ivf(index).nprobe = 1
    index.train(data)
    batch = 8192
    for start in range(0, data.shape[0], batch):
        index.add(data[start : start + batch])
    return index


def save_index_folder(indexes: Mapping[int, Any], names: Mapping[int, str],
                      folder: str | os.PathLike) -> Path:
    """Write each speaker's index and then the manifest, every file atomically."""
    faiss = _faiss()
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    speakers: dict[str, dict[str, Any]] = {}
    for speaker_id, index in sorted(indexes.items()):
        file_name = f"speaker_{int(speaker_id)}.index"
        with atomic_write(target / file_name) as handle:
            handle.write(faiss.serialize_index(index).tobytes())
        speakers[str(int(speaker_id))] = {
            "name": names.get(speaker_id, str(speaker_id)),
            "file": file_name,
            "ntotal": int(index.ntotal),
            "dim": int(index.d),
        }
    manifest = {"format": FORMAT_NAME, "version": 1, "speakers": speakers}
    with atomic_write(target / MANIFEST_NAME) as handle:
        handle.write(json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))
    return target


def _read_folder(folder: Path) -> dict[int, Any]:
    faiss = _faiss()
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise UserError(f"{folder}: no {MANIFEST_NAME}: not a feature index; rerun train_index.py")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entries = manifest["speakers"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(
            f"{manifest_path}: malformed manifest ({error}): rerun train_index.py"
        ) from error
    indexes = {}
    for speaker_id, entry in entries.items():
        path = folder / str(entry["file"])
        if not path.is_file():
            raise UserError(f"{path}: index file missing: rerun train_index.py")
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        try:
            indexes[int(speaker_id)] = faiss.deserialize_index(raw)
        except RuntimeError as error:
            raise UserError(f"{path}: cannot be read as a faiss index: rerun train_index.py") \
                from error
    return indexes


def _read_pickle(path: Path, trust_pickle: bool) -> dict[int, Any]:
    if not trust_pickle:
        raise UserError(
            f"{path}: upstream's pickled feature index could run code when read; pass "
            "--trust_pickle if you trust its source, or rebuild it with train_index.py"
        )
    with open(path, "rb") as handle:
        loaded = pickle.load(handle)
    if not isinstance(loaded, Mapping):
        raise UserError(f"{path}: not a feature index (expected {{speaker_id: index}})")
    return {int(speaker_id): index for speaker_id, index in loaded.items()}


def load_feature_index(path: str | os.PathLike, trust_pickle: bool = False) -> dict[int, Any]:
    """Read `{speaker_id: faiss index}` from our folder or upstream's pickle.

    Given upstream's default `.../feature_and_index.pkl` that does not exist,
    the folder `.../feature_and_index/` beside it is read instead.
    """
    source = Path(path)
    if source.is_dir():
        return _read_folder(source)
    if source.is_file():
        if source.name == MANIFEST_NAME:
            return _read_folder(source.parent)
        return _read_pickle(source, trust_pickle)
    sibling = source.with_suffix("")
    if source.suffix == ".pkl" and sibling.is_dir():
        return _read_folder(sibling)
    raise UserError(f"{source}: feature index not found: run train_index.py or pass it with -cm")


class FeatureRetriever:
    """Blends content frames with their nearest indexed frames of one speaker."""

    def __init__(self, indexes: Mapping[int, Any]) -> None:
        self.indexes = dict(indexes)
        self._stored: dict[int, np.ndarray] = {}

    def retrieve(self, features: np.ndarray, speaker_id: int, ratio: float) -> np.ndarray:
        """features (T, D) -> ratio * neighbour mean + (1 - ratio) * features."""
        if speaker_id not in self.indexes:
            raise UserError(
                f"feature index has no speaker id {speaker_id} (it has: "
                f"{', '.join(str(key) for key in sorted(self.indexes))}): rerun train_index.py"
            )
        index = self.indexes[speaker_id]
        query = np.ascontiguousarray(features, dtype=np.float32)
        if query.shape[1] != index.d:
            raise UserError(
                f"feature index has width {index.d} but the model's features have "
                f"{query.shape[1]}: rebuild the index for this model"
            )
        if speaker_id not in self._stored:
            self._stored[speaker_id] = index.reconstruct_n(0, index.ntotal)
        stored = self._stored[speaker_id]
        distances, neighbours = index.search(query, k=NEIGHBOURS)
        # Fewer than k stored frames: faiss pads with -1; give those no weight.
        found = neighbours >= 0
        with np.errstate(divide="ignore"):
            weights = np.where(found, np.square(1.0 / distances), 0.0)
        # An exact match (distance 0) takes all the weight.
        exact = np.isinf(weights)
        weights = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), weights)
        weights /= weights.sum(axis=1, keepdims=True)
        neighbour_mean = np.einsum("tk,tkd->td", weights, stored[np.maximum(neighbours, 0)])
        return (ratio * neighbour_mean + (1 - ratio) * query).astype(np.float32)
