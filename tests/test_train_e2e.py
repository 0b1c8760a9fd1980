"""train.py as users run it: launch, resume, TensorBoard, checkpoints, failures.

Every test here starts real training processes (`python train.py ...`, the
default spawn launcher with two gloo processes, and `torchrun`) on a tiny
synthetic set. They are marked slow.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoint as ckpt
import utils
from tests.helpers_data import make_config, make_dataset, write_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "train.py"
UPSTREAM_TAGS = {
    "loss/g/total",
    "loss/d/total",
    "learning_rate",
    "grad_norm_d",
    "grad_norm_g",
    "loss/g/fm",
    "loss/g/mel",
    "loss/g/kl",
    "loss/g/lf0",
}
UPSTREAM_IMAGES = {"slice/mel_org", "slice/mel_gen", "all/mel", "all/lf0", "all/norm_lf0"}

# A launcher script that records which training items each rank loads and can
# make one rank fail, to observe what a run cannot show from outside.
INSTRUMENTED = """
import os, sys
sys.path.insert(0, {repo!r})
import torch.distributed as dist
import data_utils, train

TRACE_DIR = os.environ.get("TRACE_DIR")
FAIL_RANK = int(os.environ.get("FAIL_RANK", "-1"))
_getitem = data_utils.TextAudioSpeakerLoader.__getitem__
_train_step = train.Trainer.train_step

def _rank():
    return dist.get_rank() if dist.is_initialized() else 0

def traced_getitem(self, index):
    if TRACE_DIR:
        with open(os.path.join(TRACE_DIR, f"rank{{_rank()}}.txt"), "a") as handle:
            handle.write(self.audiopaths[index] + "\\n")
    return _getitem(self, index)

def failing_step(self, batch):
    if _rank() == FAIL_RANK and self.state.step >= 1:
        raise RuntimeError("injected failure on rank %d" % FAIL_RANK)
    return _train_step(self, batch)

data_utils.TextAudioSpeakerLoader.__getitem__ = traced_getitem
train.Trainer.train_step = failing_step

if __name__ == "__main__":
    sys.exit(train.main())
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_run(root: Path, items_per_speaker: int = 5, **sections) -> Path:
    """A dataset of 8 training items (2 speakers x 4) and its config; returns the config."""
    make_dataset(root, items_per_speaker=items_per_speaker, val_per_speaker=1, seconds=0.6)
    train_section = {"port": str(free_port()), **sections.pop("train", {})}
    config = make_config(root, train=train_section, **sections)
    return write_config(root, config)


def run_train(
    root: Path,
    config: Path,
    name: str,
    *extra: str,
    timeout: float = 600,
    script: Path = TRAIN,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), "-c", str(config), "-m", name, *extra],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def logged_steps(output: str) -> list[int]:
    return [int(step) for step in re.findall(r"Train Epoch: \d+ \[\d+%\] step (\d+)", output)]


def read_events(directory: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(
        str(directory), size_guidance={"scalars": 0, "images": 0, "audio": 0}
    )
    accumulator.Reload()
    return accumulator


def final_weights(model_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / f"G_{step}.pth", weights_only=True)["model"]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """One run stopped at step 6 and resumed to step 10, and one never stopped.

    Settings: 8 items, batch 2 (4 steps an epoch), eval every 3 steps,
    keep 2 checkpoints, learning-rate decay 0.5 per epoch, 2 data workers,
    loudness augmentation on.
    """
    root = tmp_path_factory.mktemp("resume")
    config = setup_run(
        root,
        train={
            "eval_interval": 3,
            "keep_ckpts": 2,
            "lr_decay": 0.5,
            "epochs": 10,
            "log_interval": 1,
            # Data workers and loudness augmentation: every item draws at random
            # in a worker process, and resume must still be exact.
            "num_workers": 2,
            "vol_aug": True,
        },
        model={"vol_embedding": True},
    )
    first = check(run_train(root, config, "resumed", "--max_steps", "6"))
    second = check(run_train(root, config, "resumed", "--max_steps", "10"))
    straight = check(run_train(root, config, "straight", "--max_steps", "10"))
    return root, config, first, second, straight


def test_rerun_continues_steps_and_learning_rate(resumed_run):
    root, _, first, second, _ = resumed_run
    assert logged_steps(first) == list(range(0, 7))
    assert "resuming from G_6.pth at step 6" in second
    assert logged_steps(second) == list(range(7, 11))
    events = read_events(root / "logs" / "resumed")
    rates = {event.step: event.value for event in events.Scalars("learning_rate")}
    assert sorted(rates) == list(range(0, 11))
    for step, rate in rates.items():
        epoch = step // 4 + 1
        assert rate == pytest.approx(1e-4 * 0.5 ** (epoch - 1)), (step, rate)


def test_resumed_run_matches_uninterrupted_run_exactly(resumed_run):
    root = resumed_run[0]
    resumed = final_weights(root / "logs" / "resumed", 10)
    straight = final_weights(root / "logs" / "straight", 10)
    assert resumed.keys() == straight.keys()
    for key in resumed:
        assert torch.equal(resumed[key], straight[key]), key


def test_event_files_hold_every_upstream_tag(resumed_run):
    root = resumed_run[0]
    events = read_events(root / "logs" / "resumed")
    assert set(events.Tags()["scalars"]) >= UPSTREAM_TAGS
    assert set(events.Tags()["images"]) >= UPSTREAM_IMAGES
    evaluation = read_events(root / "logs" / "resumed" / "eval")
    assert {"gen/mel", "gt/mel"} <= set(evaluation.Tags()["images"])
    assert {"gen/audio_0", "gt/audio_0", "gen/audio_1"} <= set(evaluation.Tags()["audio"])


def test_keep_ckpts_holds_and_base_pair_stays(resumed_run):
    model_dir = resumed_run[0] / "logs" / "resumed"
    best = json.loads((model_dir / "best.json").read_text())["step"]  # also kept
    names = sorted(path.name for path in model_dir.glob("[GD]_*.pth"))
    assert names == sorted(f"{prefix}_{step}.pth" for prefix in "GD" for step in {0, 9, 10, best})
    assert not list(model_dir.glob(".*.tmp"))
    assert (model_dir / "config.json").is_file() and (model_dir / "train.log").is_file()


def test_checkpoint_loads_strictly_and_keeps_upstream_meaning(resumed_run):
    root, config_path = resumed_run[0], resumed_run[1]
    import train

    hps = utils.get_hparams_from_file(config_path)
    checkpoint = torch.load(root / "logs" / "resumed" / "G_10.pth", weights_only=True)
    assert checkpoint["iteration"] == 3  # as upstream: the epoch; the name holds the step
    assert checkpoint["train_state"]["step"] == 10
    assert isinstance(checkpoint["optimizer"], dict)
    model = train.build_generator(hps)
    ckpt.load_checkpoint(root / "logs" / "resumed" / "G_10.pth", model, strict=True)


def _trace(trace_dir: Path, rank: int, train_items: set[str]) -> list[str]:
    lines = (trace_dir / f"rank{rank}.txt").read_text().split()
    return [line for line in lines if line in train_items]


def _assert_each_epoch_split_across_ranks(root: Path, trace_dir: Path) -> None:
    train_items = set((root / "filelists" / "train.txt").read_text().split())
    assert len(train_items) == 8
    rank0, rank1 = _trace(trace_dir, 0, train_items), _trace(trace_dir, 1, train_items)
    assert len(rank0) == len(rank1) == 8  # 2 epochs x 2 steps x batch 2
    for epoch in range(2):
        share0 = rank0[epoch * 4 : (epoch + 1) * 4]
        share1 = rank1[epoch * 4 : (epoch + 1) * 4]
        assert not set(share0) & set(share1)
        assert set(share0) | set(share1) == train_items
    assert rank0[:4] != rank0[4:]  # reshuffled per epoch


def _instrumented(root: Path) -> Path:
    script = root / "instrumented_train.py"
    script.write_text(INSTRUMENTED.format(repo=str(REPO)))
    return script


def test_two_processes_through_the_default_launcher(tmp_path):
    config = setup_run(tmp_path, train={"epochs": 2, "eval_interval": 100})
    trace = tmp_path / "trace"
    trace.mkdir()
    output = check(
        run_train(
            tmp_path,
            config,
            "ddp",
            "--nprocs",
            "2",
            script=_instrumented(tmp_path),
            env={"TRACE_DIR": str(trace)},
        )
    )
    assert "starting 2 cpu processes" in output
    _assert_each_epoch_split_across_ranks(tmp_path, trace)
    assert logged_steps(output) == [0, 1, 2, 3]  # 8 items / (2 ranks x batch 2) = 2 per epoch
    checkpoint = torch.load(tmp_path / "logs" / "ddp" / "G_3.pth", weights_only=True)
    assert checkpoint["train_state"]["world_size"] == 2
    assert len(checkpoint["train_state"]["rng_per_rank"]) == 2


def test_two_processes_under_torchrun(tmp_path):
    config = setup_run(tmp_path, train={"epochs": 2, "eval_interval": 100})
    trace = tmp_path / "trace"
    trace.mkdir()
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            str(_instrumented(tmp_path)),
            "-c",
            str(config),
            "-m",
            "torchrun",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TRACE_DIR": str(trace)},
    )
    output = check(result)
    assert "starting 2" not in output  # torchrun's processes join; nothing is spawned
    _assert_each_epoch_split_across_ranks(tmp_path, trace)
    assert logged_steps(output) == [0, 1, 2, 3]


def test_one_failing_rank_ends_the_job_promptly(tmp_path):
    config = setup_run(tmp_path, train={"epochs": 50, "eval_interval": 1000})
    marker = f"svc-test-{random.getrandbits(32)}"
    started = time.monotonic()
    result = run_train(
        tmp_path,
        config,
        "fail",
        "--nprocs",
        "2",
        timeout=300,
        script=_instrumented(tmp_path),
        env={"FAIL_RANK": "1", "SVC_TEST_MARKER": marker},
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr
    assert elapsed < 120, elapsed
    time.sleep(1)
    assert processes_with_marker(marker) == []


def processes_with_marker(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (spawned workers included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"SVC_TEST_MARKER={marker}".encode() in environment:
            found.append(int(entry.name))
    return found


def test_sigterm_finishes_the_step_saves_and_exits_zero(tmp_path):
    config = setup_run(tmp_path, train={"epochs": 100, "eval_interval": 1000})
    log = tmp_path / "logs" / "term" / "train.log"
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), "-c", str(config), "-m", "term"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if log.exists() and len(logged_steps(log.read_text())) >= 3:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    last = max(logged_steps(log.read_text()))
    assert f"SIGTERM received: saved step {last}" in output
    assert (tmp_path / "logs" / "term" / f"G_{last}.pth").is_file()
    assert (tmp_path / "logs" / "term" / f"D_{last}.pth").is_file()


def _resumes_past_step_zero(model_dir: Path) -> bool:
    point = ckpt.find_resume_point(model_dir) if model_dir.exists() else None
    return point is not None and point.step >= 1


def test_sigkill_at_random_moments_always_resumes(tmp_path):
    """Kill training with SIGKILL at random moments, saves included, and resume each time."""
    config = setup_run(
        tmp_path, train={"epochs": 100, "eval_interval": 1, "keep_ckpts": 2, "log_interval": 1}
    )
    model_dir = tmp_path / "logs" / "kill"
    rng = random.Random(1234)
    kills = 0
    longest_wait = 6.0
    # Six kills; more (at most 10) while none has yet left a pair past step 0. On a
    # slow machine the kills may all land before that, so the wait doubles until one has.
    while kills < 6 or (kills < 10 and not _resumes_past_step_zero(model_dir)):
        point = ckpt.find_resume_point(model_dir) if model_dir.exists() else None
        expected_first = 0 if point is None else point.step + 1
        process = subprocess.Popen(
            [sys.executable, str(TRAIN), "-c", str(config), "-m", "kill"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log = model_dir / "train.log"
        offset = log.stat().st_size if log.exists() else 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait for the first step of this run
            if log.exists() and logged_steps(log.read_text()[offset:]):
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, longest_wait))  # then kill it anywhere: a step or a save
        process.send_signal(signal.SIGKILL)
        process.communicate()
        kills += 1
        if not _resumes_past_step_zero(model_dir):
            longest_wait *= 2
        steps = logged_steps(log.read_text()[offset:])
        # Each run resumes right after the newest complete pair.
        assert steps and steps[0] == expected_first, (steps, expected_first)
        # Files left behind always resume, except a first save cut between its G
        # and D, after which the rerun starts anew (and expects step 0, as above).
        if ckpt.find_resume_point(model_dir) is None:
            assert [p.name for p in model_dir.glob("*.pth")] in ([], ["G_0.pth"])
    point = ckpt.find_resume_point(model_dir)
    assert point is not None and point.step >= 1
    output = check(run_train(tmp_path, config, "kill", "--max_steps", str(point.step + 1)))
    assert logged_steps(output) == [point.step + 1]


def test_fine_tune_from_a_200_speaker_base_model(tmp_path):
    import train

    config_path = setup_run(tmp_path, train={"eval_interval": 1000}, model={"n_speakers": 2})
    config = json.loads(config_path.read_text())
    base_config = json.loads(json.dumps(config))
    base_config["model"]["n_speakers"] = 200
    base = utils.HParams(**base_config)
    from models import MultiPeriodDiscriminator

    model_dir = tmp_path / "logs" / "ft"
    model_dir.mkdir(parents=True)
    generator = train.build_generator(base)
    optimizer = torch.optim.AdamW(generator.parameters(), 1e-4)
    ckpt.save_checkpoint(generator, optimizer, 1e-4, 4321, model_dir / "G_0.pth")
    discriminator = MultiPeriodDiscriminator()
    ckpt.save_checkpoint(
        discriminator,
        torch.optim.AdamW(discriminator.parameters(), 1e-4),
        1e-4,
        4321,
        model_dir / "D_0.pth",
    )

    output = check(run_train(tmp_path, config_path, "ft", "--max_steps", "2"))
    assert "fine-tuning from the base models" in output
    assert re.search(r"keep their fresh values.*emb_g\.weight", output)
    assert logged_steps(output) == [1, 2]
    tuned = torch.load(model_dir / "G_2.pth", weights_only=True)
    assert tuned["model"]["emb_g.weight"].shape == (2, config["model"]["gin_channels"])
    assert tuned["iteration"] == 1  # a fine-tune starts at epoch 1
    assert (model_dir / "G_0.pth").is_file()


def test_bad_dataset_and_config_are_reported_before_training(tmp_path):
    config_path = setup_run(tmp_path)
    wavs = (tmp_path / "filelists" / "train.txt").read_text().split()
    Path(wavs[0] + ".soft.pt").unlink()
    Path(wavs[1] + ".f0.npy").write_bytes(b"garbage")
    Path(wavs[2]).write_bytes(b"not audio")
    result = run_train(tmp_path, config_path, "bad")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for wav in wavs[:3]:
        assert Path(wav).name in result.stderr
    assert not list((tmp_path / "logs" / "bad").glob("*.pth"))

    config = json.loads(config_path.read_text())
    config["data"]["hop_length"] = 300
    del config["train"]["batch_size"]
    config_path.write_text(json.dumps(config))
    result = run_train(tmp_path, config_path, "bad")
    assert result.returncode == 2
    assert "data.hop_length" in result.stderr and "train.batch_size" in result.stderr
    assert "Traceback" not in result.stderr


def test_unloadable_checkpoints_stop_instead_of_starting_over(tmp_path):
    config_path = setup_run(tmp_path)
    model_dir = tmp_path / "logs" / "broken"
    model_dir.mkdir(parents=True)
    (model_dir / "G_800.pth").write_bytes(b"\x00" * 100)
    (model_dir / "D_800.pth").write_bytes(b"\x00" * 100)
    result = run_train(tmp_path, config_path, "broken")
    assert result.returncode == 2
    assert "G_800.pth" in result.stderr and "none can be resumed" in result.stderr
    assert sorted(p.name for p in model_dir.glob("*.pth")) == ["D_800.pth", "G_800.pth"]
