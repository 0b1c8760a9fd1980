"""How a process of this project ends: promptly, non-zero on failure, never leaving workers.

Data workers ignore SIGTERM and SIGINT (`data_utils.leave_stopping_to_main_process`)
so that a signal sent to the whole job stops training through the main process
alone, which finishes its step and saves. The other half of that bargain is
here: when the main process leaves, for whatever reason, its workers are
killed, since `multiprocessing`'s own exit hook would send them the SIGTERM
they ignore and then wait for them forever. Failures become one line on
stderr and an exit code; a real bug keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from core.errors import UserError

# Exit codes: a user's mistake (one line naming the file and the fix), a failure.
EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A second stop signal this long after the first forces the stop.
REPEAT_WINDOW_S = 2.0
# Seconds the main thread has to take a stop signal before the process counts as
# stuck and is ended: long for the first signal, which asks for a checkpoint
# (another rank may be evaluating while this one waits for it), short for a later one.
FIRST_SIGNAL_GRACE_S = 120.0
FORCING_SIGNAL_GRACE_S = 5.0

# Seconds to wait for a killed worker to be reaped before the process moves on.
_REAP_TIMEOUT_S = 5.0


@functools.cache
def reap_workers_at_exit() -> None:
    """Kill this process's daemonic children (data workers) when it exits, however it exits.

    Registered once per process as a `multiprocessing` finalizer, which runs
    both at interpreter exit and at the end of a spawned child, before the
    hook that would otherwise wait on workers that ignore SIGTERM.
    """
    multiprocessing.util.Finalize(None, _kill_daemonic_children, exitpriority=100)


def _kill_daemonic_children() -> None:
    children = [child for child in multiprocessing.active_children() if child.daemon]
    if not children:
        return
    # The DataLoader's SIGCHLD handler would take these deaths for a crash and raise.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
    for child in children:
        child.join(_REAP_TIMEOUT_S)


class WorkerDiedError(RuntimeError):
    """A worker process of a command ended without its result (most often killed by the OS)."""


def leave_stopping_to_parent() -> None:
    """In a worker process: ignore SIGINT and SIGTERM, and exit as soon as the parent is gone.

    Ctrl-C and schedulers signal the whole process group; the parent stops its
    workers itself (so a signal never reads as a crashed worker), and a parent
    that is killed outright must not leave its workers running.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        watcher = threading.Thread(
            target=_exit_when_ready, args=(parent.sentinel,), name="exit-with-parent", daemon=True
        )
        watcher.start()


def _exit_when_ready(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(EXIT_FAILURE)


@contextlib.contextmanager
def sigterm_unwinds(message: str) -> Iterator[None]:
    """While inside, SIGTERM prints `message` and raises SystemExit(143) in the main thread.

    The default action would end this process on the spot, skipping the
    `finally` blocks that stop its workers. Outside the main thread it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum: int, frame: object) -> None:
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(EXIT_TERMINATED)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def obey_stop_signals() -> None:
    """Let SIGTERM and SIGINT end this process at once: it is failing, nothing is left to save."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def error_line(error: BaseException) -> str:
    """The user-facing text of `error`, without the traceback a data worker wraps around it.

    A `DataLoader` re-raises a worker's exception as the same type whose message
    is "Caught X in DataLoader worker ... Original Traceback ... X: <message>".
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        name = re.escape(type(error).__name__)
        found = re.search(rf"^(?:[\w.]+\.)?{name}: (.*)\Z", text, re.MULTILINE | re.DOTALL)
        if found:
            text = found.group(1).strip()
    return text


def data_worker_death(error: BaseException) -> str | None:
    """A one-line explanation when `error` is a data worker that died (killed by the OS)."""
    text = str(error).strip()
    if not (isinstance(error, RuntimeError) and text.startswith("DataLoader worker")):
        return None
    cause = text.splitlines()[0].removeprefix("DataLoader worker").strip().rstrip(".")
    return (
        f"a data worker {cause}; the usual cause is the system running out of memory: "
        "lower train.num_workers or train.batch_size, or turn train.all_in_mem off"
    )


def report_failure(error: BaseException) -> int | None:
    """Print the one-line message of a known failure and return its exit code; None otherwise.

    Either way the process is now failing, so stop signals end it at once.
    """
    obey_stop_signals()
    if isinstance(error, UserError):
        print(f"error: {error_line(error)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    death = str(error) if isinstance(error, WorkerDiedError) else data_worker_death(error)
    if death is not None:
        print(f"error: {death}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    return None


def run_main(main: Callable[[], int | None]) -> int:
    """Run an entry point's `main` and return its exit code; unknown errors keep their traceback."""
    try:
        return main() or 0
    except KeyboardInterrupt:
        obey_stop_signals()
        return EXIT_INTERRUPTED
    except Exception as error:
        code = report_failure(error)
        if code is None:
            raise
        return code


def run_spawned(index: int, worker: Callable[..., None], *args: Any) -> None:
    """Entry of a process started by `core.launching.spawn_workers`: `worker(index, *args)`.

    A known failure prints its own line here and exits with its code, which
    the launching process passes on without another message; a real bug
    travels to the launcher with its traceback.
    """
    try:
        worker(index, *args)
    except Exception as error:
        code = report_failure(error)
        if code is None:
            raise
        sys.exit(code)


class StopRequest:
    """Turns SIGTERM/SIGINT into a request to stop after the current step.

    A preempted job gets SIGTERM; Ctrl-C gives SIGINT. Either way the trainer
    finishes the step it is in, saves, and exits 0. A second signal while
    stopping is honoured at once. A process whose main thread cannot take a
    signal (blocked in native code: a collective whose peer froze, a hung
    device call) is ended by a watcher thread instead: `FORCING_SIGNAL_GRACE_S`
    after a second signal, `FIRST_SIGNAL_GRACE_S` after the first.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._first_signal_time = 0.0
        self._taken = 0  # stop signals the main thread has handled
        self._wakeup: tuple[socket.socket, socket.socket] | None = None

    def install(self) -> None:
        """Handle SIGTERM and SIGINT here (main thread only), and watch that they are taken."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._wakeup = (reader, writer)  # kept open for the process's life
        threading.Thread(
            target=self._watch, args=(reader,), name="stop-signal-watch", daemon=True
        ).start()

    def _handle(self, signum: int, frame: Any) -> None:
        self._taken += 1
        # Ctrl-C reaches a spawned worker twice (from the terminal and from the
        # launcher that forwards it): only a signal well after the first forces.
        if self.requested and time.monotonic() - self._first_signal_time > REPEAT_WINDOW_S:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        if not self.requested:
            self._first_signal_time = time.monotonic()
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def _watch(self, reader: socket.socket) -> None:
        """Learn of every stop signal as it arrives, whatever the main thread is doing."""
        arrived, first = 0, None
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            for signum in data:
                if signum not in STOP_SIGNALS:
                    continue
                arrived += 1
                now = time.monotonic()
                forcing = first is not None and now - first > REPEAT_WINDOW_S
                first = now if first is None else first
                grace = FORCING_SIGNAL_GRACE_S if forcing else FIRST_SIGNAL_GRACE_S
                timer = threading.Timer(grace, self._end_if_not_taken, args=(arrived, signum))
                timer.daemon = True
                timer.start()

    def _end_if_not_taken(self, arrived: int, signum: int) -> None:
        if self._taken >= arrived:
            return
        name = signal.Signals(signum).name
        print(
            f"error: {name} was not taken: the process is stuck in a call that does not "
            "return (a collective whose peer froze, or a hung device call); exiting",
            file=sys.stderr,
            flush=True,
        )
        for child in multiprocessing.active_children():
            if child.daemon:
                child.kill()
        os._exit(128 + signum)
