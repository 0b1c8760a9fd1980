"""Shared machinery for the preprocessing commands: parallel runs, summaries, CLI exits.

Every command processes many independent files. One bad file must never stop
the run, so each task returns an `ItemResult` instead of raising, and the run
ends with a summary that names every failure and its reason.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from tqdm import tqdm

from core.errors import UserError
from core.lifecycle import run_main, sigterm_unwinds
from preprocessing.worker_pool import WorkerPool, error_text

Status = Literal["done", "skipped", "failed"]
JobT = TypeVar("JobT")

STOPPED_BY_SIGTERM = (
    "stopped by SIGTERM: the files finished so far are complete; "
    "run the command again to do the rest"
)


@dataclass(frozen=True)
class ItemResult:
    """What happened to one input file.

    `fatal` marks a failure that is not about the file (a model that cannot be
    loaded, a config that does not fit): the run stops with that message.
    """

    source: str
    status: Status
    reason: str = ""
    outputs: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    fatal: bool = False


@dataclass
class RunSummary:
    """Counts and failure reasons of a whole run, printed at its end."""

    title: str
    results: list[ItemResult] = field(default_factory=list)

    def with_status(self, status: Status) -> list[ItemResult]:
        """The results that ended with `status`, in input order."""
        return [result for result in self.results if result.status == status]

    @property
    def done(self) -> int:
        return len(self.with_status("done"))

    @property
    def skipped(self) -> int:
        return len(self.with_status("skipped"))

    @property
    def failed(self) -> int:
        return len(self.with_status("failed"))

    def format(self) -> str:
        """A human summary: one count line, then one line per failure and per note."""
        lines = [
            f"{self.title}: {self.done} done, {self.skipped} skipped (already done), "
            f"{self.failed} failed"
        ]
        for result in self.results:
            for note in result.notes:
                lines.append(f"  note: {result.source}: {note}")
        for result in self.with_status("failed"):
            lines.append(f"  failed: {result.source}: {result.reason}")
        return "\n".join(lines)


def _crash_result(source: str, reason: str) -> ItemResult:
    return ItemResult(source=source, status="failed", reason=reason)


def _run_here(
    task: Callable[[JobT], ItemResult],
    jobs: Sequence[JobT],
    sources: Sequence[str],
    record: Callable[[int, ItemResult], None],
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> None:
    """Run every job in this process, in order."""
    if initializer is not None:
        initializer(*initargs)
    for index, job in enumerate(jobs):
        try:
            result = task(job)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # a task bug must not end the run
            result = _crash_result(sources[index], error_text(error))
        record(index, result)


def _run_in_pool(
    task: Callable[[JobT], ItemResult],
    jobs: Sequence[JobT],
    sources: Sequence[str],
    record: Callable[[int, ItemResult], None],
    workers: int,
    initializer: Callable[..., None] | None,
    initargs: tuple[Any, ...],
) -> None:
    """Run the jobs in spawned workers (`WorkerPool`), recording results as they complete.

    SIGTERM unwinds through the pool, which kills its workers on any exit.
    """
    with (
        sigterm_unwinds(STOPPED_BY_SIGTERM),
        WorkerPool(task, workers, initializer, initargs) as pool,
    ):
        for index, returned, value in pool.run(jobs, sources):
            record(index, value if returned else _crash_result(sources[index], value))


def run_parallel(
    task: Callable[[JobT], ItemResult],
    jobs: Sequence[JobT],
    sources: Sequence[str],
    num_processes: int,
    description: str,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> list[ItemResult]:
    """Run `task` over `jobs` with a tqdm bar and return one result per job, in job order.

    With one process (or one job) everything runs here, which keeps small runs
    cheap and debuggable; otherwise in a `WorkerPool`, whose workers run
    `initializer(*initargs)` once (to load models once per process). A result
    marked `fatal` stops the run with a `UserError` carrying its reason; a
    worker that dies stops it with `WorkerDiedError`. Either way, and on SIGTERM or
    Ctrl-C, the other workers are killed at once. `sources` name the jobs.
    """
    if len(jobs) != len(sources):
        raise ValueError("jobs and sources must have the same length")
    results: list[ItemResult | None] = [None] * len(jobs)
    progress = tqdm(total=len(jobs), desc=description, unit="file", file=sys.stderr)

    def record(index: int, result: ItemResult) -> None:
        _raise_if_fatal(result)
        results[index] = result
        progress.update(1)

    try:
        if num_processes <= 1 or len(jobs) <= 1:
            _run_here(task, jobs, sources, record, initializer, initargs)
        else:
            workers = min(num_processes, len(jobs))
            _run_in_pool(task, jobs, sources, record, workers, initializer, initargs)
    finally:
        progress.close()
    return [result for result in results if result is not None]


def _raise_if_fatal(result: ItemResult) -> None:
    if result.fatal:
        raise UserError(result.reason)


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call an entry point's `main(argv)` and return its exit code (`core.lifecycle.run_main`).

    A `UserError` becomes one line on stderr and exit 2, a dead worker one line
    and exit 1, Ctrl-C exit 130; a real bug keeps its traceback.
    """
    return run_main(functools.partial(main, argv))
