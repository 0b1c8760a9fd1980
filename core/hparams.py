"""Configs as attribute trees: `hps.train.batch_size`, read from upstream's JSON.

`HParams`, `get_hparams` and `get_hparams_from_file` keep upstream's names and
behaviour because users' scripts import them from `utils`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.safe_io import atomic_write


class HParams:
    """A config section with attribute access (`hps.train.batch_size`) and dict access."""

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            self[key] = HParams(**value) if isinstance(value, dict) else value

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def __len__(self) -> int:
        return len(self.__dict__)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dict__)

    def __repr__(self) -> str:
        return f"HParams({self.__dict__!r})"

    def keys(self) -> Iterable[str]:
        return self.__dict__.keys()

    def items(self) -> Iterable[tuple[str, Any]]:
        return self.__dict__.items()

    def values(self) -> Iterable[Any]:
        return self.__dict__.values()

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready copy."""
        return {
            key: value.to_dict() if isinstance(value, HParams) else value
            for key, value in self.__dict__.items()
        }


def read_config_json(config_path: str | os.PathLike) -> dict[str, Any]:
    """Read a config file, turning a missing or malformed file into a one-line error."""
    path = Path(config_path)
    if not path.is_file():
        raise UserError(
            f"{path}: config not found: run preprocess_flist_config.py to write it, "
            "or pass the right file with -c"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error}): fix the file") from error


def get_hparams_from_file(config_path: str | os.PathLike, infer_mode: bool = False) -> HParams:
    """Load a config JSON as `HParams` (upstream's signature; `infer_mode` is accepted)."""
    return HParams(**read_config_json(config_path))


def get_hparams(init: bool = True) -> HParams:
    """Upstream's command-line entry: `-c config -m model_name`, model dir `./logs/<name>`.

    With `init` the config is copied into the model folder (atomically, so a
    kill never leaves half a config there); without it the copy is read back.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config", default="./configs/config.json")
    parser.add_argument("-m", "--model", required=True)
    args = parser.parse_args()
    model_dir = os.path.join("./logs", args.model)
    os.makedirs(model_dir, exist_ok=True)
    saved_config = os.path.join(model_dir, "config.json")
    config = read_config_json(args.config if init else saved_config)
    if init:
        with atomic_write(saved_config) as handle:
            handle.write(json.dumps(config, indent=2).encode("utf-8"))
    hparams = HParams(**config)
    hparams.model_dir = model_dir
    return hparams
