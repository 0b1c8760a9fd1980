"""Worker processes for the preprocessing commands that never outlive the run's failure.

`concurrent.futures.ProcessPoolExecutor` waits for its running tasks however
the run ends, turns one killed worker into a failure of every remaining job,
and leaves its workers running when the main process is killed. Here each
worker has its own pipe and takes one job at a time, so that:

- whatever ends a run early (a fatal result, a bug, Ctrl-C, SIGTERM), leaving
  the `with` block kills every worker at once; outputs are written atomically,
  so a killed worker leaves at most a hidden temporary file, never half a file;
- a worker that dies ends the run with one `WorkerDiedError` line naming its file
  and the signal (the OOM killer's SIGKILL, most often);
- workers ignore SIGINT and SIGTERM, which the main process handles for the
  whole group, and exit by themselves when the main process is gone
  (`core.lifecycle.leave_stopping_to_parent`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import pickle
import signal
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from core.lifecycle import WorkerDiedError, leave_stopping_to_parent, reap_workers_at_exit

# Seconds to wait for a worker to exit after it was told to, or killed.
_JOIN_TIMEOUT_S = 5.0
# The job index of a reply that is about the worker's start, not a job.
_NO_JOB = -1

# What a worker answers for one job: (job index, whether the task returned,
# its result or, when it raised, the error's one-line text).
Outcome = tuple[int, bool, Any]


def error_text(error: BaseException) -> str:
    """`Type: first line of the message`, what a failed file's summary line shows."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines and lines[0] else type(error).__name__


@dataclass
class _Worker:
    process: Any  # a multiprocessing Process of the spawn context
    connection: multiprocessing.connection.Connection
    job: int | None = None  # the index of the job it is working on
    finished: bool = False  # told to exit


class WorkerPool:
    """`num_workers` spawned processes running `task` over jobs; use it as a context manager.

    Each worker runs `initializer(*initargs)` once (to load models once per
    process). An exception raised by `task` is returned as an outcome, not
    raised: one bad file must not stop the run.
    """

    def __init__(
        self,
        task: Callable[[Any], Any],
        num_workers: int,
        initializer: Callable[..., None] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self._arguments = (task, initializer, initargs)
        self._num_workers = num_workers
        self._workers: list[_Worker] = []

    def __enter__(self) -> WorkerPool:
        reap_workers_at_exit()  # should anything skip `__exit__`
        context = multiprocessing.get_context("spawn")
        try:
            for number in range(self._num_workers):
                mine, theirs = context.Pipe()
                process = context.Process(
                    target=_serve,
                    args=(theirs, *self._arguments),
                    name=f"preprocess-worker-{number}",
                    daemon=True,
                )
                process.start()
                theirs.close()
                self._workers.append(_Worker(process, mine))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, jobs: Sequence[Any], names: Sequence[str]) -> Iterator[Outcome]:
        """Yield each job's outcome as it completes; `names` name the jobs in `WorkerDiedError`."""
        waiting = deque(range(len(jobs)))
        for worker in self._workers:
            self._hand_out(worker, jobs, waiting, names)
        while any(worker.job is not None for worker in self._workers):
            live = [worker for worker in self._workers if not worker.finished]
            ready = multiprocessing.connection.wait(
                [worker.connection for worker in live]
                + [worker.process.sentinel for worker in live]
            )
            for worker in live:
                if worker.connection in ready:
                    outcome = self._receive(worker, names)
                    self._hand_out(worker, jobs, waiting, names)
                    yield outcome
                elif worker.process.sentinel in ready:
                    raise _death(worker, names)

    def close(self) -> None:
        """Kill the workers still busy, let the finished ones exit, reap them all."""
        for worker in self._workers:
            if not worker.finished:
                worker.process.kill()
        for worker in self._workers:
            worker.process.join(_JOIN_TIMEOUT_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(_JOIN_TIMEOUT_S)
            worker.connection.close()
        self._workers = []

    def _receive(self, worker: _Worker, names: Sequence[str]) -> Outcome:
        try:
            index, returned, value = worker.connection.recv()
        except (EOFError, OSError):
            raise _death(worker, names) from None
        if index == _NO_JOB:
            raise WorkerDiedError(f"a worker process could not start: {value}")
        return index, returned, value

    @staticmethod
    def _hand_out(
        worker: _Worker, jobs: Sequence[Any], waiting: deque[int], names: Sequence[str]
    ) -> None:
        """Send `worker` the next job, or tell it to exit when none is left."""
        worker.job = waiting.popleft() if waiting else None
        worker.finished = worker.job is None
        try:
            worker.connection.send(None if worker.job is None else (worker.job, jobs[worker.job]))
        except (BrokenPipeError, ConnectionResetError):
            raise _death(worker, names) from None


def _death(worker: _Worker, names: Sequence[str]) -> WorkerDiedError:
    """The one-line error for a worker that ended without answering."""
    worker.process.join(_JOIN_TIMEOUT_S)
    code = worker.process.exitcode
    where = f"while processing {names[worker.job]}" if worker.job is not None else "between files"
    if code is not None and code < 0:
        try:
            how = f"was killed ({signal.Signals(-code).name})"
        except ValueError:
            how = f"was killed (signal {-code})"
    else:
        how = f"exited with code {code}"
    advice = ""
    if code is not None and code == -getattr(signal, "SIGKILL", 0):  # no SIGKILL on Windows
        advice = "; the usual cause is the system running out of memory: lower --num_processes"
    return WorkerDiedError(f"a worker process {how} {where}{advice}")


def _serve(
    connection: multiprocessing.connection.Connection,
    task: Callable[[Any], Any],
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> None:
    """A worker's life: start, then answer jobs until told to exit or the pipe closes."""
    leave_stopping_to_parent()
    try:
        if initializer is not None:
            initializer(*initargs)
    except Exception as error:
        traceback.print_exc()
        connection.send((_NO_JOB, False, error_text(error)))
        return
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        if message is None:
            return
        index, job = message
        try:
            reply: Outcome = (index, True, task(job))
        except Exception as error:  # a task bug fails its file, not the run
            reply = (index, False, error_text(error))
        try:
            connection.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            connection.send((index, False, f"result cannot be sent back ({error_text(error)})"))
