"""Every failure ends the run: the process and its data workers exit promptly, non-zero.

Each test runs `train.py` as users do, with two persistent data workers, and
makes one thing fail: the training step, a train or eval data worker (a
`UserError`, as a broken feature file raises), the OS killing a data worker, a
save, an evaluation, or one rank of a `torchrun` job. It asserts the exit
code, the one-line message, that no process of the run is left after a bound,
and that the newest checkpoint still loads.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoint as ckpt
from tests.test_train_e2e import REPO, processes_with_marker, setup_run

pytestmark = pytest.mark.slow

# Seconds within which a failed run and every process it started must be gone
# (after the failure itself, which these runs reach within a few steps).
EXIT_BOUND_S = 30.0

# A launcher that makes one thing fail, chosen by FAIL_AT, to observe the
# failure paths exactly as users would meet them.
FAILING_LAUNCHER = """
import os, sys, time
sys.path.insert(0, {repo!r})
import torch.distributed as dist
import data_utils, train
from core.errors import UserError

FAIL_AT = os.environ.get("FAIL_AT", "")
FAIL_RANK = int(os.environ.get("FAIL_RANK", "0"))
_getitem = data_utils.TextAudioSpeakerLoader.__getitem__
_train_step = train.Trainer.train_step
_save = train.Trainer.save
_evaluate = train.Trainer.evaluate

def _rank():
    return dist.get_rank() if dist.is_initialized() else 0

def _failing(error):
    # When the failure happened, for the test to time the exit from (under
    # torchrun: the failure of the last restart, after which the job must end).
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restart >= int(os.environ.get("LAST_RESTART", "0")):
        with open(os.environ["FAIL_STAMP"], "w") as handle:
            handle.write(repr(time.time()))
    return error

EVAL_CALLS = []

def getitem(self, index):
    path = self.audiopaths[index]
    epoch = getattr(index, "epoch", 0)
    is_eval = path.endswith("_000.wav")  # the validation clips of tests.helpers_data
    if is_eval:
        EVAL_CALLS.append(path)  # counted in the eval worker process
    broken = f"{{path}}: injected broken item: run preprocess_hubert_f0.py again"
    if FAIL_AT == "train_item" and not is_eval and epoch >= 2:
        raise _failing(UserError(broken))
    if FAIL_AT == "eval_item" and len(EVAL_CALLS) > 2:  # the second evaluation
        raise _failing(UserError(broken))
    if FAIL_AT == "worker_pid" and not is_eval and epoch >= 2:
        with open(os.environ["PID_FILE"], "a") as handle:
            handle.write(f"{{os.getpid()}}\\n")
    return _getitem(self, index)

def train_step(self, batch):
    if FAIL_AT == "rank_pids" and self.state.step == 1:
        with open(os.environ["PID_FILE"], "a") as handle:
            handle.write(f"{{_rank()}} {{os.getpid()}}\\n")
    if FAIL_AT == "step" and _rank() == FAIL_RANK and self.state.step >= 1:
        raise _failing(RuntimeError("CUDA out of memory (injected at step %d)" % self.state.step))
    return _train_step(self, batch)

def save(self):
    if FAIL_AT == "save" and self.state.step >= 2:
        raise _failing(OSError(28, "No space left on device (injected)"))
    return _save(self)

def evaluate(self):
    if FAIL_AT == "evaluate" and self.state.step >= 2:
        raise _failing(ValueError("injected evaluation failure"))
    return _evaluate(self)

data_utils.TextAudioSpeakerLoader.__getitem__ = getitem
train.Trainer.train_step = train_step
train.Trainer.save = save
train.Trainer.evaluate = evaluate

if __name__ == "__main__":
    sys.exit(train.main())
"""


def _launcher(root: Path) -> Path:
    script = root / "failing_train.py"
    script.write_text(FAILING_LAUNCHER.format(repo=str(REPO)))
    return script


def _setup(root: Path) -> Path:
    """4 training items, batch 2 (2 steps an epoch), a checkpoint every 2 steps, 2 data workers."""
    return setup_run(
        root,
        items_per_speaker=3,
        train={"epochs": 50, "eval_interval": 2, "log_interval": 1, "num_workers": 2},
    )


class Run:
    """A `train.py` run in its own session, its output in a file, its processes marked."""

    def __init__(self, root: Path, command: list[str], fail_at: str, **env: str) -> None:
        self.marker = f"svc-test-{random.getrandbits(32)}"
        self.stamp = root / "failed_at.txt"
        self.output_path = root / "output.txt"
        with self.output_path.open("w") as output:
            self.process = subprocess.Popen(
                command,
                cwd=root,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "FAIL_AT": fail_at,
                    "FAIL_STAMP": str(self.stamp),
                    "SVC_TEST_MARKER": self.marker,
                    **env,
                },
                start_new_session=True,
            )

    def failed_at(self) -> float | None:
        """When the failure happened (written by the failing code), or None so far."""
        try:
            return float(self.stamp.read_text())
        except (OSError, ValueError):
            return None

    def finish(self, timeout: float = 900) -> tuple[int, str]:
        """Wait for the exit; fail if the run or any child outlives EXIT_BOUND_S after the failure.

        Slow machines take long to reach the failure, not to leave after it, so
        the bound counts from the failure; `timeout` only guards the whole run.
        """
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            failed_at = self.failed_at()
            if failed_at is not None and time.time() - failed_at > EXIT_BOUND_S:
                break
            time.sleep(0.2)
        exited = self.process.poll() is not None
        if exited:  # the workers get the same bound as the process
            failed_at = self.failed_at() or time.time()
            while processes_with_marker(self.marker) and time.time() - failed_at < EXIT_BOUND_S:
                time.sleep(0.2)
        left = processes_with_marker(self.marker)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        self.process.wait()
        output = self.output_path.read_text()
        assert exited, f"the run did not exit {EXIT_BOUND_S} s after failing:\n{output[-3000:]}"
        assert left == [], f"processes left behind: {left}\n{output[-3000:]}"
        return self.process.returncode, output


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def _assert_newest_checkpoint_loads(model_dir: Path) -> int:
    point = ckpt.find_resume_point(model_dir)
    assert point is not None, sorted(path.name for path in model_dir.iterdir())
    for path in (point.g_path, point.d_path):
        assert torch.load(path, weights_only=True)["model"]
    return point.step


@pytest.mark.parametrize(
    ("fail_at", "message"),
    [
        ("step", "CUDA out of memory (injected at step 1)"),
        ("save", "No space left on device (injected)"),
        ("evaluate", "injected evaluation failure"),
    ],
)
def test_an_exception_in_the_loop_ends_the_run_and_its_workers(tmp_path, fail_at, message):
    config = _setup(tmp_path)
    command = [sys.executable, str(_launcher(tmp_path)), "-c", str(config), "-m", "run"]
    code, output = Run(tmp_path, command, fail_at).finish()
    assert code == 1, output[-3000:]
    assert message in output
    # A real bug keeps its traceback; the run still ends with a line saying so.
    assert "Traceback" in output
    assert _assert_newest_checkpoint_loads(tmp_path / "logs" / "run") >= 0


@pytest.mark.parametrize("fail_at", ["train_item", "eval_item"])
def test_a_user_error_in_a_data_worker_is_one_line_and_ends_the_run(tmp_path, fail_at):
    config = _setup(tmp_path)
    command = [sys.executable, str(_launcher(tmp_path)), "-c", str(config), "-m", "run"]
    code, output = Run(tmp_path, command, fail_at).finish()
    assert code == 2, output[-3000:]
    errors = _error_lines(output)
    assert len(errors) == 1, output[-3000:]
    assert errors[0].endswith("injected broken item: run preprocess_hubert_f0.py again")
    assert ".wav" in errors[0]  # names the file
    assert "Traceback" not in output
    _assert_newest_checkpoint_loads(tmp_path / "logs" / "run")


def test_a_data_worker_killed_by_the_os_ends_the_run(tmp_path):
    config = _setup(tmp_path)
    pid_file = tmp_path / "worker_pids.txt"
    command = [sys.executable, str(_launcher(tmp_path)), "-c", str(config), "-m", "run"]
    run = Run(tmp_path, command, "worker_pid", PID_FILE=str(pid_file))
    deadline = time.monotonic() + 600
    while not pid_file.exists() and time.monotonic() < deadline and run.process.poll() is None:
        time.sleep(0.1)
    assert pid_file.exists(), "no data worker reached epoch 2"
    time.sleep(0.5)  # the pid is written before the file is complete
    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)  # as the OOM killer does
    run.stamp.write_text(repr(time.time()))
    code, output = run.finish()
    assert code != 0, output[-3000:]
    errors = _error_lines(output)
    assert len(errors) == 1 and "data worker" in errors[0], output[-3000:]
    assert "Traceback" not in output
    _assert_newest_checkpoint_loads(tmp_path / "logs" / "run")


def test_a_failing_rank_under_torchrun_is_restarted_then_given_up(tmp_path):
    config = _setup(tmp_path)
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        "1",
        str(_launcher(tmp_path)),
        "-c",
        str(config),
        "-m",
        "run",
    ]
    code, output = Run(tmp_path, command, "step", FAIL_RANK="1", LAST_RESTART="1").finish()
    assert code != 0, output[-3000:]
    # The agent saw the failure, restarted the group once (which resumed), then gave up.
    assert "restart 1 of the group by torchrun" in output, output[-3000:]
    assert output.count("CUDA out of memory (injected at step") >= 2
    _assert_newest_checkpoint_loads(tmp_path / "logs" / "run")


def test_a_stuck_process_is_ended_by_a_second_sigterm(tmp_path):
    """Rank 1 frozen (SIGSTOP): rank 0 blocks in the gradient all-reduce, in native code,
    where no Python signal handler runs. Its watcher thread still sees the signals."""
    config = setup_run(
        tmp_path,
        items_per_speaker=3,
        train={"epochs": 50, "eval_interval": 1000, "log_interval": 1, "num_workers": 0},
    )
    pid_file = tmp_path / "rank_pids.txt"
    command = [
        sys.executable, str(_launcher(tmp_path)), "-c", str(config), "-m", "run", "--nprocs", "2",
    ]  # fmt: skip
    run = Run(tmp_path, command, "rank_pids", PID_FILE=str(pid_file))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and run.process.poll() is None:
        if pid_file.is_file() and len(pid_file.read_text().splitlines()) == 2:
            break
        time.sleep(0.2)
    pids = dict(line.split() for line in pid_file.read_text().splitlines())
    os.kill(int(pids["1"]), signal.SIGSTOP)
    time.sleep(3)  # rank 0 reaches the next all-reduce and waits there
    os.kill(int(pids["0"]), signal.SIGTERM)
    time.sleep(3)
    os.kill(int(pids["0"]), signal.SIGTERM)
    run.stamp.write_text(repr(time.time()))
    code, output = run.finish()
    assert code != 0, output[-3000:]
    assert "SIGTERM was not taken: the process is stuck" in output, output[-3000:]
