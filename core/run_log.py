"""A run's text record: the log file beside the checkpoints and the code revision."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from core.safe_io import atomic_write

logger = logging.getLogger("so-vits-svc")


def get_logger(model_dir: str | os.PathLike, filename: str = "train.log") -> logging.Logger:
    """Log to `<model_dir>/train.log` and the console, once per process."""
    os.makedirs(model_dir, exist_ok=True)
    log = logging.getLogger("so-vits-svc")
    log.setLevel(logging.INFO)
    log.propagate = False
    target = os.path.abspath(os.path.join(model_dir, filename))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    has_file = any(
        isinstance(handler, logging.FileHandler) and handler.baseFilename == target
        for handler in log.handlers
    )
    if not has_file:
        file_handler = logging.FileHandler(target, encoding="utf-8")
        file_handler.setFormatter(formatter)
        log.addHandler(file_handler)
    if not any(type(handler) is logging.StreamHandler for handler in log.handlers):
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(formatter)
        log.addHandler(console)
    return log


def git_revision(directory: str | os.PathLike) -> str | None:
    """The git commit of the code, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    revision = result.stdout.strip()
    return revision if result.returncode == 0 and revision else None


def record_git_revision(code_dir: str | os.PathLike, model_dir: str | os.PathLike) -> None:
    """Write the code's git revision to `<model_dir>/githash`; warn when it changed."""
    revision = git_revision(code_dir)
    if revision is None:
        logger.info("%s is not a git checkout: code revision not recorded", code_dir)
        return
    record = Path(model_dir) / "githash"
    if record.exists():
        previous = record.read_text().strip()
        if previous != revision:
            logger.warning(
                "code revision changed since the last run of this model: %s -> %s",
                previous[:8],
                revision[:8],
            )
    record.write_text(revision)


def open_model_dir(model_dir: str | os.PathLike, writes: bool, messages: list[str]) -> None:
    """Make the model folder, log to it (when this process writes), and log the config's notes."""
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    if writes:
        get_logger(model_dir)
    for message in messages:
        level = logging.WARNING if message.startswith("warning") else logging.INFO
        logger.log(level, "%s", message.removeprefix("warning: ").removeprefix("note: "))


def record_run(
    model_dir: str | os.PathLike, config_text: str, config_name: str, code_dir: str | os.PathLike
) -> None:
    """Copy the config into the model folder (atomically) and note the code revision."""
    with atomic_write(Path(model_dir) / config_name) as handle:
        handle.write(config_text.encode("utf-8"))
    record_git_revision(code_dir, model_dir)
