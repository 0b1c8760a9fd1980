"""train_diff.py as users run it: torchrun, exact resume, TensorBoard, rotation, bad input.

A tiny diffusion model (2 layers, 16 channels, 100 steps) on a synthetic set
with the `--use_diff` files made in code. The torchrun runs are marked slow.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import feature_files as ff
import train_diff
from bench.host_reads import counting_host_reads
from core.distributed import init_runtime
from core.errors import UserError
from core.lifecycle import StopRequest
from diffusion.config import load_diffusion_config
from diffusion.files import save_diffusion_model
from diffusion.run_files import find_diffusion_resume_point, model_steps, rotate_models
from diffusion.unit2mel import Unit2Mel
from tests.helpers_data import make_dataset, write_diffusion_features

REPO = Path(__file__).resolve().parent.parent
TINY_VOCODER = REPO / "tests" / "fixtures" / "upstream-4.1-diffusion" / "nsf_hifigan_tiny"
EXPDIR = Path("logs") / "44k" / "diffusion"

# A launcher that records which training clips each rank loads.
TRACED = """
import os, sys
sys.path.insert(0, {repo!r})
import torch.distributed as dist
import diffusion.data, train_diff

_getitem = diffusion.data.DiffusionDataset.__getitem__

def traced(self, index):
    if self.training:
        rank = dist.get_rank() if dist.is_initialized() else 0
        with open(os.path.join(os.environ["TRACE_DIR"], f"rank{{rank}}.txt"), "a") as handle:
            handle.write(self.paths[index] + "\\n")
    return _getitem(self, index)

diffusion.data.DiffusionDataset.__getitem__ = traced
sys.exit(train_diff.main())
"""


def make_run(root: Path, vocoder_weights: bool = True, **train: object) -> Path:
    """A synthetic set (8 training clips of 2 speakers, 2 validation clips) and its YAML."""
    data = make_dataset(
        root, items_per_speaker=5, val_per_speaker=1, seconds=1.0, sampling_rate=44100,
        hop_length=512, ssl_dim=32,
    )  # fmt: skip
    write_diffusion_features(data["train_wavs"] + data["val_wavs"])
    vocoder = root / "pretrain" / "nsf_hifigan"
    shutil.copytree(TINY_VOCODER, vocoder)
    if not vocoder_weights:
        (vocoder / "model").unlink()  # config.json stays: the mel bins are known
    config = {
        "data": {
            "sampling_rate": 44100, "block_size": 512, "duration": 0.5,
            "encoder_out_channels": 32, "training_files": str(data["train_list"]),
            "validation_files": str(data["val_list"]),
        },
        "model": {"n_layers": 2, "n_chans": 16, "n_hidden": 16, "timesteps": 100, "n_spk": 2},
        "vocoder": {"ckpt": str(vocoder / "model")},
        "infer": {"speedup": 10, "method": "dpm-solver++"},
        "env": {"expdir": str(EXPDIR)},
        "train": {
            "num_workers": 0, "batch_size": 2, "cache_all_data": False, "epochs": 3,
            "interval_log": 1, "interval_val": 4, "interval_force_save": 4, **train,
        },
        "spk": {"alice": 0, "bob": 1},
    }  # fmt: skip
    path = root / "configs" / "diffusion.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def torchrun(root: Path, config: Path, *extra: str, trace: Path | None = None) -> str:
    script = root / "traced_train_diff.py"
    script.write_text(TRACED.format(repo=str(REPO)))
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone",
               "--nproc_per_node", "2", str(script), "-c", str(config), *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRACE_DIR": str(trace or root)}
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def weights(root: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(root / EXPDIR / f"model_{step}.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run stopped at step 3 and resumed to the end (step 6), and one never stopped.

    The resumed run has no vocoder weights: validation logs mels only, and
    (drawing from its own random state) changes nothing in training.
    """
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    trace = straight / "trace"
    trace.mkdir()
    torchrun(straight, make_run(straight), trace=trace)
    config = make_run(resumed, vocoder_weights=False)
    first = torchrun(resumed, config, "--max_steps", "3")
    assert "reached --max_steps 3" in first
    second = torchrun(resumed, config)
    assert "resuming from model_3.pt at step 3, epoch 2" in second
    assert second.count("vocoder weights missing") == 1
    assert "validation logs mels only" in second
    return {"straight": straight, "resumed": resumed, "trace": trace}


@pytest.mark.slow
def test_each_epoch_splits_the_clips_across_the_two_ranks(runs: dict[str, Path]) -> None:
    train_items = set((runs["straight"] / "filelists" / "train.txt").read_text().split())
    assert len(train_items) == 8
    shares = [(runs["trace"] / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 12  # 3 epochs x 2 steps x batch 2
    for epoch in range(3):
        first, second = (set(share[epoch * 4 : epoch * 4 + 4]) for share in shares)
        assert not first & second
        assert first | second == train_items


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(runs) -> None:
    straight, resumed = weights(runs["straight"], 6), weights(runs["resumed"], 6)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    first = weights(runs["straight"], 4)
    assert any(not torch.equal(first[k], straight[k]) for k in straight)  # it trained


@pytest.mark.slow
def test_model_files_keep_upstreams_format_and_our_run_state(runs) -> None:
    folder = runs["resumed"] / EXPDIR
    assert model_steps(folder) == [6, 4]  # model_3 (the stop) rotated out, 4 is a force save
    checkpoint = torch.load(folder / "model_6.pt", weights_only=True)
    assert checkpoint["global_step"] == 6
    assert checkpoint["train_state"]["world_size"] == 2
    assert len(checkpoint["train_state"]["rng_per_rank"]) == 2
    assert "optimizer" not in checkpoint and checkpoint["train_optimizer"]["state"]
    assert (folder / "config.yaml").is_file()


def read_events(root: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    guidance = {"scalars": 0, "images": 0, "audio": 0}
    events = EventAccumulator(str(root / EXPDIR / "logs"), size_guidance=guidance)
    events.Reload()
    return events


@pytest.mark.slow
def test_tensorboard_holds_losses_mels_and_vocoder_audio(runs) -> None:
    events = read_events(runs["straight"])
    tags = events.Tags()
    assert {"train/loss", "train/lr", "validation/loss"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert {"validation/alice_alice_000", "validation/bob_bob_000"} <= set(tags["images"])
    assert "validation/alice_alice_000_pred" in tags["audio"]
    assert "validation/alice_alice_000_gt" in tags["audio"]
    assert np.isfinite(events.Scalars("validation/loss")[0].value)
    without_vocoder = read_events(runs["resumed"]).Tags()
    assert "validation/alice_alice_000" in without_vocoder["images"]
    assert without_vocoder["audio"] == []


def test_rotation_keeps_the_newest_the_base_and_every_force_save(tmp_path: Path) -> None:
    for step in (0, 2000, 4000, 5000, 6000, 8000, 8300):
        (tmp_path / f"model_{step}.pt").write_bytes(b"")
    removed = rotate_models(tmp_path, 8300, 5000)
    assert sorted(Path(p).name for p in removed) == [
        "model_2000.pt", "model_4000.pt", "model_6000.pt", "model_8000.pt",
    ]  # fmt: skip
    assert model_steps(tmp_path) == [8300, 5000, 0]


@pytest.fixture
def small_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A run in `tmp_path`, trained in this process; its log handlers are closed after."""
    config = make_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    yield config
    log = logging.getLogger("so-vits-svc")
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def test_a_missing_mel_names_the_file_and_the_fix(small_run: Path, capsys) -> None:
    wav = (small_run.parent.parent / "filelists" / "train.txt").read_text().split()[0]
    os.remove(ff.mel_path(wav))
    assert train_diff.main(["-c", str(small_run)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    # The dataset check's layout: one heading, one line per problem.
    assert error == [
        "error: dataset check found 1 problem; fix them before training:",
        f"  {wav}.mel.npy: missing; rerun preprocess_hubert_f0.py --use_diff",
    ]


def test_features_of_another_encoder_width_are_refused_up_front(small_run: Path, capsys) -> None:
    config = yaml.safe_load(small_run.read_text())
    config["data"]["encoder_out_channels"] = 768
    small_run.write_text(yaml.safe_dump(config))
    assert train_diff.main(["-c", str(small_run)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 3  # the heading and one line per filelist
    assert "alice_001.wav.soft.pt: content width 32 but data.encoder_out_channels" in error[1]
    assert error[1].endswith("is 768: set data.encoder and encoder_out_channels to the "
                             "features' encoder, or rerun preprocess_hubert_f0.py with the "
                             "config's encoder")  # fmt: skip


def test_a_model_of_another_encoder_width_is_refused_up_front(small_run: Path, capsys) -> None:
    folder = small_run.parent.parent / EXPDIR
    folder.mkdir(parents=True)
    other = Unit2Mel(48, 2, True, 128, n_layers=2, n_chans=16, n_hidden=16, timesteps=100)
    save_diffusion_model(other, 0, folder / "model_0.pt")
    assert train_diff.main(["-c", str(small_run)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "model_0.pt: the diffusion model takes content of width 48" in error[0]
    assert "encoder_out_channels 32" in error[0]


def test_fine_tuning_starts_from_a_single_speaker_base_model(small_run: Path) -> None:
    folder = small_run.parent.parent / EXPDIR
    folder.mkdir(parents=True)
    base = Unit2Mel(32, 1, True, 128, n_layers=2, n_chans=16, n_hidden=16, timesteps=100)
    save_diffusion_model(base, 0, folder / "model_0.pt")
    assert train_diff.main(["-c", str(small_run), "--max_steps", "1"]) == 0
    assert model_steps(folder) == [1, 0]  # the base model is never rotated out
    tuned = torch.load(folder / "model_1.pt", weights_only=True)["model"]
    assert "spk_embed.weight" in tuned  # fresh: the base has one speaker (strict=False)
    start = base.state_dict()
    moved = torch.stack([(tuned[k] - start[k]).abs().max() for k in start])
    assert 0 < moved.max() <= 1.01e-4  # one AdamW step at train.lr from the base's weights
    assert "fine-tuning from the base model" in (folder / "train.log").read_text()


def test_a_damaged_newest_model_is_skipped_and_only_damage_stops(tmp_path: Path) -> None:
    model = Unit2Mel(32, 1, False, 128, n_layers=2, n_chans=16, n_hidden=16, timesteps=100)
    save_diffusion_model(model, 4, tmp_path / "model_4.pt")
    (tmp_path / "model_8.pt").write_bytes(b"truncated")
    point = find_diffusion_resume_point(tmp_path)
    assert point is not None and point.step == 4 and not point.is_base_model
    (tmp_path / "model_4.pt").write_bytes(b"truncated too")
    with pytest.raises(UserError, match="diffusion models are present but none can be resumed"):
        find_diffusion_resume_point(tmp_path)


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_exits_zero(tmp_path: Path) -> None:
    config = make_run(tmp_path, epochs=1000, interval_val=1000)
    log = tmp_path / EXPDIR / "train.log"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train_diff.py"), "-c", str(config)], cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.exists() and "| step 3 |" in log.read_text():
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    last = max(model_steps(tmp_path / EXPDIR))
    assert last >= 3
    assert f"SIGTERM received: saved step {last}" in output
    saved = torch.load(tmp_path / EXPDIR / f"model_{last}.pt", weights_only=True)
    assert saved["train_state"]["step"] == saved["global_step"] == last


def test_a_step_that_does_not_log_reads_nothing_on_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synthesizer's no-sync rule holds for the denoising step: no tensor value is read
    on the host outside the logging steps (each read would stall a GPU's queue)."""
    monkeypatch.chdir(tmp_path)
    config = load_diffusion_config(make_run(tmp_path, interval_log=100, interval_val=100))
    runtime = init_runtime(0, 0, 1, "cpu", False, "fp16")
    trainer = train_diff.DiffusionTrainer(config, runtime, StopRequest(), None)
    batch = next(iter(trainer.train_loader))
    trainer.state.step = 1
    trainer.train_step(batch)  # warm-up: the optimizer's moments are created
    before = [p.detach().clone() for p in trainer.net.parameters()]
    trainer.state.step = 2
    assert not trainer.nonfinite.is_check_step(trainer.state.step)
    with counting_host_reads() as counts:
        output = trainer.train_step(batch)
        stop = trainer.stop_vote.poll(trainer.stop_request.requested)
    assert sum(counts.values()) == 0, dict(counts)
    assert not stop and torch.isfinite(output["train/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.net.parameters()))


def test_fp16_on_cpu_trains_in_bf16_and_saves_float32_weights(small_run: Path) -> None:
    """amp_dtype fp16 has no CPU kernels: the run says so, trains under bf16 autocast, and its
    model file holds float32 weights as upstream's does."""
    config = yaml.safe_load(small_run.read_text())
    config["train"]["amp_dtype"] = "fp16"
    small_run.write_text(yaml.safe_dump(config))
    assert train_diff.main(["-c", str(small_run), "--max_steps", "2"]) == 0
    folder = small_run.parent.parent / EXPDIR
    assert (
        "fp16 is not supported for CPU training: using bf16 instead"
        in (folder / "train.log").read_text()
    )
    saved = torch.load(folder / "model_2.pt", weights_only=True)["model"]
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in saved.values())
