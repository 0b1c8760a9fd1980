"""`torchrun` whose job ends with the workers' status when a stop signal reaches it.

    python -m core.launch [torchrun options] train.py -c configs/config.json -m 44k

takes exactly torchrun's options. The difference: torchrun's agent answers
SIGTERM/SIGINT by stopping its workers and then failing itself (exit 1 and a
traceback), even when the workers finished their step, saved and exited 0.
Schedulers (SLURM's scancel, systemd, Ctrl-C) signal the whole job, so a
preempted run would always look failed. Here the agent leaves those two
signals to the workers: it passes them on (a signal sent to the agent alone
still stops the job), keeps supervising, and returns what the workers return.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
AGENT_SIGNALS = "SIGHUP,SIGQUIT"  # torchrun's defaults, less the two the workers handle


def child_processes(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc), for passing a signal on."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            children += [int(value) for value in (task / "children").read_text().split()]
    return children


def pass_on(signum: int, frame: Any) -> None:
    """Give the stop signal to the workers; they save and exit, and the agent follows."""
    for child in child_processes(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)


def main(argv: list[str] | None = None) -> None:
    from torch.distributed import run

    for signum in STOP_SIGNALS:
        signal.signal(signum, pass_on)
    arguments = list(sys.argv[1:] if argv is None else argv)
    run.main(["--signals-to-handle", AGENT_SIGNALS, *arguments])


if __name__ == "__main__":
    main()
