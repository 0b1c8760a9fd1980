"""`torchrun` whose job ends with the workers' status when a stop signal reaches it.

    python launch.py [torchrun options] train.py -c configs/config.json -m 44k

takes exactly torchrun's options. The difference: torchrun's agent answers
SIGTERM/SIGINT by stopping its workers and then failing itself (exit 1 and a
traceback), even when the workers finished their step, saved and exited 0.
Schedulers (SLURM's scancel, systemd, Ctrl-C) signal the whole job, so a
preempted run would always look failed. Here the agent leaves those two
signals to the workers: it passes them on (a signal sent to the agent alone
still stops the job), keeps supervising, and returns what the workers return.
A node that cannot reach the rendezvous gets one line naming the endpoint and
the timeout (exit 2) instead of torchrun's traceback.
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


def rendezvous_settings(arguments: list[str]) -> tuple[str, dict[str, str]]:
    """The rendezvous endpoint and `--rdzv_conf` options these torchrun arguments give."""
    from torch.distributed import run

    options = run.get_args_parser().parse_args(arguments)
    conf = dict(
        item.split("=", 1) for item in (options.rdzv_conf or "").split(",") if "=" in item
    )
    endpoint = options.rdzv_endpoint or f"{options.master_addr}:{options.master_port}"
    return ("localhost:29400" if options.standalone else endpoint), conf


def main(argv: list[str] | None = None) -> int:
    from torch.distributed import run
    from torch.distributed.elastic.rendezvous.api import (
        RendezvousConnectionError,
        RendezvousTimeoutError,
    )

    for signum in STOP_SIGNALS:
        signal.signal(signum, pass_on)
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        run.main(["--signals-to-handle", AGENT_SIGNALS, *arguments])
    except (RendezvousConnectionError, RendezvousTimeoutError) as error:
        endpoint, conf = rendezvous_settings(arguments)
        connecting = isinstance(error, RendezvousConnectionError)
        name, default = ("read_timeout", "60") if connecting else ("join_timeout", "600")
        cause = error.__cause__ or error
        print(
            f"error: cannot reach the rendezvous at {endpoint} within {conf.get(name, default)} s "
            f"({type(cause).__name__}): check that --rdzv_endpoint is node 0's address as seen "
            "from this node, that its port is open in the firewall, and that node 0 runs with "
            f"--rdzv_conf is_host=1 (the wait is --rdzv_conf {name}=SECONDS)",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
