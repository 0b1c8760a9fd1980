"""Every failure ends a long command promptly, non-zero, with one line and no workers left.

The slow tests run `resample.py` with two worker processes as a user does, through
a launcher that makes one file misbehave (the launcher's top level also runs
in the spawned workers, so the patch reaches them): a fatal result while the
other worker is busy on a slow file, a worker killed as the OOM killer does,
a bug in the main process, or a stop signal to the main process or the whole
group. Each asserts the exit code, the one-line message, that the run and
every process it started are gone within a bound counted from the failure,
and that every wav already written is complete. The fast ones run the cluster
commands in-process with the fitting made to fail.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import feature_files as ff
import train_index
from cluster import train_cluster
from preprocessing.runner import ItemResult, run_cli, run_parallel
from tests.test_failures import Run, _error_lines

REPO = Path(__file__).resolve().parent.parent
RATE = 16000

# What a raw file does is chosen by its name, <order>_<kind>.wav, kind one of ok,
# slow, fatal, killed, bug (files are processed in name order).
LAUNCHER = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
import resample
import preprocessing.resample as stage

_convert = stage.process_job

def _stamp(name):
    with open(os.path.join(os.environ["STAMPS"], name), "w") as handle:
        handle.write(repr(time.time()))

def process_job(job):
    kind = os.path.basename(job.source)[:-len(".wav")].split("_")[1]
    if kind == "slow":
        _stamp("slow_started")
        time.sleep(300)
    if kind != "ok":
        time.sleep(1.0)  # the ok files before it finish first
    if kind == "fatal":
        _stamp("failed")
        return stage.ItemResult(job.source, "failed", reason="injected fatal: fix it", fatal=True)
    if kind == "killed":
        _stamp("failed")
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "bug":
        _stamp("failed")
        return None  # not an ItemResult: the main process trips over it
    return _convert(job)

stage.process_job = process_job

if __name__ == "__main__":
    sys.exit(resample.run_cli(resample.main))
"""


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _start(root: Path, names: list[str]) -> Run:
    """`resample.py --num_processes 2` over one speaker's files named `names`, running."""
    speaker = root / "raw" / "alto"
    speaker.mkdir(parents=True)
    for name in names:
        soundfile.write(speaker / f"{name}.wav", _tone(0.5), RATE)
    (root / "stamps").mkdir()
    script = root / "failing_resample.py"
    script.write_text(LAUNCHER.format(repo=str(REPO)))
    command = [
        sys.executable,
        str(script),
        "--in_dir",
        "raw",
        "--out_dir2",
        "out",
        "--sr2",
        str(RATE),
        "--num_processes",
        "2",
    ]
    run = Run(root, command, "", STAMPS=str(root / "stamps"), OMP_NUM_THREADS="1")
    run.stamp = root / "stamps" / "failed"
    return run


def _assert_written_wavs_are_whole(root: Path, at_least: int) -> None:
    """Every visible output is a complete wav; the ok files before the failure are there."""
    written = sorted((root / "out" / "alto").glob("*.wav"))
    assert len(written) >= at_least, written
    for path in written:
        audio, rate = soundfile.read(path)
        assert rate == RATE and audio.shape == (int(0.5 * RATE),), path


def _wait_for_busy_workers(run: Run, root: Path) -> None:
    """Until both ok files are written and a worker sleeps on a slow file."""
    started = root / "stamps" / "slow_started"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert run.process.poll() is None, run.output_path.read_text()[-3000:]
        if started.exists() and len(list((root / "out" / "alto").glob("*_ok.wav"))) == 2:
            return
        time.sleep(0.1)
    raise AssertionError("the workers did not reach the slow files")


@pytest.mark.slow
def test_a_fatal_result_stops_the_busy_workers(tmp_path: Path) -> None:
    run = _start(tmp_path, ["a_ok", "b_ok", "c_slow", "d_fatal", "e_ok"])
    code, output = run.finish()
    assert code == 2, output[-3000:]
    assert _error_lines(output) == ["error: injected fatal: fix it"], output[-3000:]
    _assert_written_wavs_are_whole(tmp_path, at_least=2)


@pytest.mark.slow
def test_a_worker_killed_by_the_os_ends_the_run_with_one_line(tmp_path: Path) -> None:
    run = _start(tmp_path, ["a_ok", "b_ok", "c_slow", "d_killed", "e_ok"])
    code, output = run.finish()
    assert code == 1, output[-3000:]
    errors = _error_lines(output)
    assert len(errors) == 1, output[-3000:]
    assert "d_killed.wav" in errors[0] and "SIGKILL" in errors[0], errors
    assert "lower --num_processes" in errors[0]
    assert "Traceback" not in output
    _assert_written_wavs_are_whole(tmp_path, at_least=2)


@pytest.mark.slow
def test_a_bug_in_the_main_process_keeps_its_traceback_and_stops_the_workers(
    tmp_path: Path,
) -> None:
    run = _start(tmp_path, ["a_ok", "b_ok", "c_slow", "d_bug", "e_ok"])
    code, output = run.finish()
    assert code == 1, output[-3000:]
    assert "Traceback" in output and "AttributeError" in output
    _assert_written_wavs_are_whole(tmp_path, at_least=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "signum", "exit_code"),
    [
        ("main", signal.SIGTERM, 143),  # the workers must not be orphaned
        ("main", signal.SIGKILL, -signal.SIGKILL),  # nor when nothing could clean up
        ("group", signal.SIGTERM, 143),  # a scheduler stopping the job
        ("group", signal.SIGINT, 130),  # Ctrl-C in the terminal
    ],
)
def test_a_stop_signal_ends_the_run_and_its_workers(
    tmp_path: Path, target: str, signum: int, exit_code: int
) -> None:
    run = _start(tmp_path, ["a_ok", "b_ok", "c_slow", "d_slow", "e_ok"])
    _wait_for_busy_workers(run, tmp_path)
    time.sleep(1.0)  # both workers sleep on the slow files
    if target == "main":
        os.kill(run.process.pid, signum)
    else:
        os.killpg(run.process.pid, signum)
    run.stamp.write_text(repr(time.time()))
    code, output = run.finish()
    assert code == exit_code, output[-3000:]
    assert "Traceback" not in output
    if signum == signal.SIGTERM:
        assert "stopped by SIGTERM" in output and "run the command again" in output
    _assert_written_wavs_are_whole(tmp_path, at_least=2)


def _fails_on_b(job: str) -> ItemResult:
    if job == "b":
        raise ValueError("bad b\nsecond line")
    return ItemResult(job, "done", outputs=(f"{job}-{os.getpid()}",))


@pytest.mark.slow
def test_a_task_that_raises_in_a_worker_fails_its_file_only() -> None:
    jobs = ["a", "b", "c", "d"]
    results = run_parallel(_fails_on_b, jobs, jobs, num_processes=2, description="t")
    assert [result.source for result in results] == jobs
    assert [result.status for result in results] == ["done", "failed", "done", "done"]
    assert results[1].reason == "ValueError: bad b"
    workers = {result.outputs[0].split("-")[1] for result in results if result.outputs}
    assert str(os.getpid()) not in workers


# --------------------------------------------------------------------------- cluster commands


@pytest.fixture
def signals_restored() -> object:
    """Entry points leave a failing process to the default stop signals; not pytest's."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _features(root: Path) -> Path:
    speaker = root / "dataset" / "alto"
    speaker.mkdir(parents=True)
    ff.write_content(str(speaker / "a.wav.soft.pt"), torch.randn(1, 8, 64))
    return root / "dataset"


@pytest.mark.usefixtures("signals_restored")
@pytest.mark.parametrize(("raised", "code"), [(MemoryError(), 2), (KeyboardInterrupt(), 130)])
def test_cluster_training_failure_is_one_line_and_keeps_the_old_model(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    raised: BaseException,
    code: int,
) -> None:
    dataset = _features(tmp_path)
    old_model = tmp_path / "logs" / "kmeans_4.pt"
    old_model.parent.mkdir()
    old_model.write_bytes(b"the model of an earlier run")

    def fail(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(train_cluster, "train_cluster", fail)
    argv = ["--dataset", str(dataset), "--output", str(old_model.parent), "--n_clusters", "4"]
    assert run_cli(train_cluster.main, argv) == code
    errors = _error_lines(capsys.readouterr().err)
    if code == 2:
        assert len(errors) == 1 and "out of memory" in errors[0] and "--minibatch" in errors[0]
    assert old_model.read_bytes() == b"the model of an earlier run"


@pytest.mark.usefixtures("signals_restored")
def test_index_building_out_of_memory_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = _features(tmp_path)
    config = tmp_path / "config.json"
    config.write_text('{"spk": {"alto": 0}}')

    def fail(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(train_index, "build_index", fail)
    argv = ["--root_dir", str(dataset), "-c", str(config), "--output_dir", str(tmp_path / "out")]
    assert run_cli(train_index.main, argv) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "out of memory indexing 64 frames" in errors[0], errors
    assert not (tmp_path / "out").exists()
