"""Cluster models and feature-retrieval indexes: training, both file formats, and use in Svc."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

import cluster
import train_index
from cluster import get_cluster_model, nearest_centers
from cluster import train_cluster as train_cluster_cli
from cluster.feature_index import FeatureRetriever, ivf_list_count, load_feature_index
from core.errors import UserError
from inference.svc import Svc
from preprocessing.runner import run_cli
from tests.helpers_data import make_dataset
from tests.helpers_model import TINY_ENCODER, TINY_WIDTH, UPSTREAM, run_script, sung_clip

SPEAKERS = ("alto", "tenor")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A feature dataset of two of the mini model's speakers, with a cluster model and index."""
    root = tmp_path_factory.mktemp("cluster")
    dataset = make_dataset(root, speakers=SPEAKERS, items_per_speaker=2, ssl_dim=TINY_WIDTH)
    config = json.loads((UPSTREAM / "mini_config.json").read_text())
    config["spk"] = {"alto": 0, "tenor": 1}
    config_path = root / "config.json"
    config_path.write_text(json.dumps(config))
    logs = root / "logs"
    assert train_cluster_cli.main(
        ["--dataset", str(dataset["dataset_dir"]), "--output", str(logs), "--n_clusters", "20"]
    ) == 0
    assert train_index.main(
        ["--root_dir", str(dataset["dataset_dir"]), "-c", str(config_path),
         "--output_dir", str(logs), "--upstream_pickle"]
    ) == 0
    return {"root": root, "logs": logs, "dataset": dataset, "config_path": config_path}


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return sung_clip(0.4, 44100, seed=7)


def _svc(**kwargs: Any) -> Svc:
    return Svc(UPSTREAM / "mini_G.pth", UPSTREAM / "mini_config.json", device="cpu",
               encoder_path=TINY_ENCODER, **kwargs)


@pytest.fixture(scope="module")
def plain_audio(clip: np.ndarray) -> torch.Tensor:
    return _svc().infer("tenor", 0, clip)[0]


# --------------------------------------------------------------------------- cluster models


def test_cluster_file_is_data_only(trained: dict[str, Any]) -> None:
    path = trained["logs"] / "kmeans_20.pt"
    raw = torch.load(path, weights_only=True)
    assert set(raw) == set(SPEAKERS)
    for record in raw.values():
        assert set(record) == {"n_features_in_", "_n_threads", "cluster_centers_"}
        assert record["n_features_in_"] == TINY_WIDTH
        assert record["cluster_centers_"].shape == (20, TINY_WIDTH)


def test_nearest_centre_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    centers, frames = rng.normal(size=(30, 8)), rng.normal(size=(500, 8))
    expected = ((frames[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
    labels = nearest_centers(torch.from_numpy(frames).float(), torch.from_numpy(centers).float())
    assert labels.tolist() == expected.tolist()
    model = {"s": cluster.KMeansCenters(torch.from_numpy(centers).float(), 8)}
    snapped = cluster.get_cluster_center_result(model, frames.astype(np.float32), "s")
    np.testing.assert_allclose(snapped, centers[expected].astype(np.float32))


def test_cluster_count_is_capped_by_frames(trained: dict[str, Any], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    dataset_dir = trained["dataset"]["dataset_dir"]
    assert train_cluster_cli.main(
        ["--dataset", str(dataset_dir), "--output", str(tmp_path), "--gpu"]
    ) == 0
    out = capsys.readouterr().out
    assert "instead of 10000" in out
    assert "no CUDA" in out or torch.cuda.is_available()
    model = get_cluster_model(tmp_path / "kmeans_10000.pt")
    assert model["alto"].cluster_centers_.shape[0] < 10000


def test_cluster_ratio_changes_output_only_above_zero(
    trained: dict[str, Any], clip: np.ndarray, plain_audio: torch.Tensor
) -> None:
    svc = _svc(cluster_model_path=trained["logs"] / "kmeans_20.pt")
    assert torch.equal(svc.infer("tenor", 0, clip, cluster_infer_ratio=0)[0], plain_audio)
    blended = svc.infer("tenor", 0, clip, cluster_infer_ratio=0.7)[0]
    assert blended.shape == plain_audio.shape and not torch.allclose(blended, plain_audio)


def test_upstream_pickled_cluster_model_needs_trust(trained: dict[str, Any],
                                                    tmp_path: Path) -> None:
    ours = get_cluster_model(trained["logs"] / "kmeans_20.pt")
    upstream_style = {
        speaker: {"n_features_in_": TINY_WIDTH, "_n_threads": 2,
                  "cluster_centers_": centers.cluster_centers_.numpy().astype(np.float32)}
        for speaker, centers in ours.items()
    }
    path = tmp_path / "kmeans_10000.pt"
    torch.save(upstream_style, path)
    with pytest.raises(UserError, match="--trust_pickle"):
        get_cluster_model(path)
    trusted = get_cluster_model(path, trust_pickle=True)
    for speaker in SPEAKERS:
        assert torch.equal(trusted[speaker].cluster_centers_, ours[speaker].cluster_centers_)


# --------------------------------------------------------------------------- retrieval indexes


def test_index_folder_and_manifest(trained: dict[str, Any], tmp_path: Path) -> None:
    folder = trained["logs"] / "feature_and_index"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {entry["name"] for entry in manifest["speakers"].values()} == set(SPEAKERS)
    indexes = load_feature_index(folder)
    assert indexes[0].ntotal == 100 and indexes[0].d == TINY_WIDTH  # 2 items x 50 frames
    # Upstream's default name finds the folder beside it when the pickle is absent.
    shutil.copytree(folder, tmp_path / "feature_and_index")
    assert set(load_feature_index(tmp_path / "feature_and_index.pkl")) == {0, 1}
    assert ivf_list_count(100) == 2 and ivf_list_count(10) == 1
    assert ivf_list_count(1_000_000) == 16000


def test_retrieval_exact_frame_returns_itself(trained: dict[str, Any]) -> None:
    indexes = load_feature_index(trained["logs"] / "feature_and_index")
    stored = indexes[1].reconstruct_n(0, 5)
    retriever = FeatureRetriever(indexes)
    np.testing.assert_allclose(retriever.retrieve(stored, 1, 1.0), stored, atol=1e-5)
    np.testing.assert_array_equal(retriever.retrieve(stored, 1, 0.0), stored)


def test_index_ratio_changes_output_only_above_zero(
    trained: dict[str, Any], clip: np.ndarray, plain_audio: torch.Tensor
) -> None:
    svc = _svc(cluster_model_path=trained["logs"] / "feature_and_index", feature_retrieval=True)
    assert torch.equal(svc.infer("tenor", 0, clip, cluster_infer_ratio=0)[0], plain_audio)
    blended = svc.infer("tenor", 0, clip, cluster_infer_ratio=0.7)[0]
    assert not torch.allclose(blended, plain_audio)

    pickled = trained["logs"] / "feature_and_index.pkl"
    with pytest.raises(UserError, match="--trust_pickle"):
        load_feature_index(pickled)
    upstream = _svc(cluster_model_path=pickled, feature_retrieval=True, trust_pickle=True)
    assert torch.equal(upstream.infer("tenor", 0, clip, cluster_infer_ratio=0.7)[0], blended)


def test_index_pickle_converts_to_folder(trained: dict[str, Any], tmp_path: Path) -> None:
    pickled = trained["logs"] / "feature_and_index.pkl"
    with open(pickled, "rb") as handle:
        assert set(pickle.load(handle)) == {0, 1}  # upstream's {speaker_id: index}
    argv = ["--convert", str(pickled), "-c", str(trained["config_path"]),
            "--output_dir", str(tmp_path)]
    assert run_cli(train_index.main, argv) == 2
    assert train_index.main([*argv, "--trust_pickle"]) == 0
    converted = load_feature_index(tmp_path / "feature_and_index")
    original = load_feature_index(trained["logs"] / "feature_and_index")
    assert converted[0].ntotal == original[0].ntotal


def test_command_refuses_pickled_index_without_flag(trained: dict[str, Any],
                                                    clip: np.ndarray) -> None:
    work = trained["root"] / "cli"
    (work / "raw").mkdir(parents=True)
    soundfile.write(work / "raw" / "x.wav", clip, 44100)
    shutil.copy(trained["logs"] / "feature_and_index.pkl", work / "index.pkl")
    result = run_script(
        "inference_main.py", "-m", UPSTREAM / "mini_G.pth", "-c", UPSTREAM / "mini_config.json",
        "-n", "x.wav", "-s", "tenor", "-cr", "0.5", "-fr", "-cm", "index.pkl",
        "--encoder_path", TINY_ENCODER, cwd=work, timeout=120,
    )
    assert result.returncode == 2
    assert "--trust_pickle" in result.stderr and "Traceback" not in result.stderr
