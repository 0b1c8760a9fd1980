"""Files that survive a kill and never run code.

Every file this project writes goes through `atomic_write`: the bytes land in a
temporary file beside the target, are flushed to disk, and only then take the
target's name, so a crash leaves either the old file or the new one, never half
of one. Every file it reads that could hold a pickle is read as data only:
checkpoints and feature tensors through `torch.load(weights_only=True)`, the
pickled `.f0.npy` object arrays through an unpickler that rebuilds numpy arrays
and nothing else, and third-party checkpoints (fairseq) through an unpickler that
turns every foreign class into an inert placeholder.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import numpy as np
import torch

from core.errors import UserError

PathLike = str | os.PathLike
TEMP_SUFFIX = ".tmp"  # every temporary file this project writes ends so, and starts with "."


class UnreadableFileError(UserError):
    """A file is missing, truncated or corrupt."""


class UnsafeFileError(UserError):
    """A file holds pickled objects other than data (it could run code)."""


# --------------------------------------------------------------------------- writing


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _synced_temp_file(target: Path) -> Iterator[tuple[BinaryIO, str]]:
    """A hidden temporary file beside `target`, flushed and synced on exit, always removed.

    The name starts with a dot and ends in `.tmp` (`TEMP_SUFFIX`), so globs for
    checkpoints or features never see it. Publishing it under the target's
    name is the caller's job, inside the `with` block after the yield.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle, tmp_name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def _sync(handle: BinaryIO, tmp_name: str) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    # mkstemp makes the file private (0600); give it the usual permissions.
    os.chmod(tmp_name, 0o666 & ~_current_umask())


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` only once fully written and synced.

    On any error the temporary file is removed and the old `path`, if any, is
    untouched.
    """
    target = Path(path)
    with _synced_temp_file(target) as (handle, tmp_name):
        yield handle
        _sync(handle, tmp_name)
        os.replace(tmp_name, target)
    _fsync_directory(target.parent)


def atomic_torch_save_once(obj: Any, path: PathLike) -> bool:
    """Create `path` holding `obj` unless it exists; False when another process won.

    The temporary file is hard-linked to `path`, which fails instead of
    overwriting, so concurrent data workers caching the same file never
    replace each other's finished copy.
    """
    target = Path(path)
    with _synced_temp_file(target) as (handle, tmp_name):
        torch.save(obj, handle)
        _sync(handle, tmp_name)
        try:
            os.link(tmp_name, target)
        except FileExistsError:
            return False
        except OSError:
            # Filesystems without hard links: an atomic rename (which could
            # replace an identical file written meanwhile) is the best left.
            if target.exists():
                return False
            os.replace(tmp_name, target)
    _fsync_directory(target.parent)
    return True


def remove_temp_files(candidates: Iterable[Path]) -> list[str]:
    """Delete the given leftovers of writes that were killed part-way; returns their paths.

    Callers pass a glob of the hidden `.NAME.*.tmp` files of their own kind
    (checkpoints, features), so a folder's other files are never touched.
    """
    removed = []
    for path in candidates:
        if path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(str(path))
    return removed


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """`torch.save` that never leaves a truncated file behind."""
    with atomic_write(path) as handle:
        torch.save(obj, handle)


def atomic_np_save(path: PathLike, array: np.ndarray) -> None:
    """`np.save` of a plain (non-object) array, atomically, at exactly `path`."""
    with atomic_write(path) as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)


# --------------------------------------------------------------------------- torch files


def _refused_global(error: Exception) -> str | None:
    """The global a weights-only load refused, or None if the file was just unreadable."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else None


def load_torch_data(path: PathLike, map_location: Any = "cpu") -> Any:
    """Load a `.pt`/`.pth` file holding only tensors and plain Python data.

    Raises `UnsafeFileError` when the file pickles anything else (nothing it
    names is run) and `UnreadableFileError` when it is missing, truncated or
    corrupt.
    """
    source = Path(path)
    if not source.is_file():
        raise UnreadableFileError(f"{source}: file not found")
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except Exception as error:  # any failure to parse the file is a bad file
        refused = _refused_global(error)
        if refused:
            raise UnsafeFileError(
                f"{source}: refused to load: it pickles Python objects, not only tensors and "
                f"data (it names {refused}); it could run code, so it is not "
                "loaded: use a checkpoint saved by this project or upstream so-vits-svc"
            ) from error
        raise UnreadableFileError(
            f"{source}: cannot be read ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "the file is truncated or corrupt: delete it or replace it with a good copy"
        ) from error


class ForeignObject:
    """An inert stand-in for a class a third-party pickle names.

    It records the constructor arguments and the pickled state and does
    nothing else, so reading, say, a fairseq checkpoint never imports fairseq
    or runs code; `vars(obj)` holds the state (for an `argparse.Namespace`, its
    attributes).
    """

    _foreign_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_foreign_args"] = args

    def __call__(self, *args: Any, **kwargs: Any) -> ForeignObject:
        return ForeignObject(*args)

    def __setitem__(self, key: Any, value: Any) -> None:
        # A pickled dict subclass (a trainer's config class) sends its items here.
        self.__dict__.setdefault("_foreign_items", {})[key] = value

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_foreign_state"] = state

    def __repr__(self) -> str:
        return f"<foreign {self._foreign_name}>"


def foreign_items(value: Any) -> dict:
    """The items a pickled dict subclass held, when `value` is its stand-in; else `{}`."""
    if isinstance(value, ForeignObject):
        return dict(value.__dict__.get("_foreign_items", {}))
    return {}


def _foreign_class(module: str, name: str) -> type:
    return type(name, (ForeignObject,), {"_foreign_name": f"{module}.{name}"})


def _torch_allowed_globals() -> dict[str, Any]:
    """The globals torch's own weights-only unpickler accepts."""
    from torch import _weights_only_unpickler

    return dict(_weights_only_unpickler._get_allowed_globals())


def _foreign_pickle_module() -> SimpleNamespace:
    """A stand-in for the `pickle` module, handed to `torch.load`."""
    allowed = _torch_allowed_globals()

    class ForeignUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return allowed.get(f"{module}.{name}") or _foreign_class(module, name)

    def load(handle: BinaryIO, **kwargs: Any) -> Any:
        return ForeignUnpickler(handle, **kwargs).load()

    return SimpleNamespace(
        __name__="foreign_pickle",
        Unpickler=ForeignUnpickler,
        UnpicklingError=pickle.UnpicklingError,
        load=load,
    )


def load_torch_foreign(path: PathLike, map_location: Any = "cpu") -> Any:
    """Load a third-party torch checkpoint whose pickle names foreign classes.

    Tensors and plain data come back as usual; any other class becomes a
    `ForeignObject` subclass instance carrying its pickled state. No module the
    pickle names is imported and no function it names is called.
    """
    source = Path(path)
    if not source.is_file():
        raise UnreadableFileError(f"{source}: file not found")
    try:
        return torch.load(
            source,
            map_location=map_location,
            weights_only=False,
            pickle_module=_foreign_pickle_module(),
        )
    except Exception as error:  # any failure to parse the file is a bad file
        raise UnreadableFileError(
            f"{source}: cannot be read ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "the file is truncated or corrupt: download it again"
        ) from error


# --------------------------------------------------------------------------- f0 files

# numpy 2 names its internals `numpy._core`; numpy 1.x (which upstream pins)
# only knows `numpy.core`. Files are written with the old name, and read with
# either.
_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]


def _numpy_safe_globals() -> dict[str, Any]:
    from numpy._core import multiarray, numeric

    safe: dict[str, Any] = {}
    for package in ("numpy.core", "numpy._core"):
        safe[f"{package}.multiarray._reconstruct"] = _NUMPY_RECONSTRUCT
        safe[f"{package}.multiarray.scalar"] = multiarray.scalar
        safe[f"{package}.numeric._frombuffer"] = numeric._frombuffer
    safe["numpy.ndarray"] = np.ndarray
    safe["numpy.dtype"] = np.dtype
    for dtype_class in ("Float64DType", "Float32DType", "ObjectDType", "Int64DType", "BoolDType"):
        if hasattr(np.dtypes, dtype_class):
            safe[f"numpy.dtypes.{dtype_class}"] = getattr(np.dtypes, dtype_class)
    return safe


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def __init__(self, handle: BinaryIO, source: Path) -> None:
        super().__init__(handle)
        self.source = source
        self.safe = _numpy_safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        full_name = f"{module}.{name}"
        if full_name in self.safe:
            return self.safe[full_name]
        raise UnsafeFileError(
            f"{self.source}: refused to load: it pickles {full_name}, which is not an array; "
            "it could run code: delete it and rerun preprocess_hubert_f0.py"
        )


def save_object_array(path: PathLike, table: np.ndarray) -> None:
    """`np.save` of an object array (upstream's pickled `.npy` files), atomically.

    The file refers to numpy by the names numpy 1.x knows, so upstream's
    `np.load(allow_pickle=True)` reads it on either numpy.
    """
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(table))
    # Protocol 3 names globals in text (`c<module>\n<name>\n`), so the module
    # can be renamed in place.
    pickle.dump(table, buffer, protocol=3)
    payload = buffer.getvalue().replace(b"cnumpy._core.", b"cnumpy.core.")
    with atomic_write(path) as handle:
        handle.write(payload)


def load_object_array(path: PathLike, what: str) -> np.ndarray:
    """Read a `.npy` file, pickled object arrays included, rebuilding only arrays and numbers.

    `what` names the content in errors ("pitch", "augmented mel").
    """
    source = Path(path)
    if not source.is_file():
        raise UnreadableFileError(f"{source}: file not found: rerun preprocess_hubert_f0.py")
    try:
        with open(source, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(handle)
            else:
                header = np.lib.format.read_array_header_2_0(handle)
            dtype = header[2]
            if dtype.hasobject:
                table = _ArrayOnlyUnpickler(handle, source).load()
            else:
                handle.seek(0)
                table = np.lib.format.read_array(handle, allow_pickle=False)
    except UnsafeFileError:
        raise
    except Exception as error:  # any failure to parse the file is a bad file
        raise UnreadableFileError(
            f"{source}: cannot be read as {what} ({type(error).__name__}: {error}); "
            "delete it and rerun preprocess_hubert_f0.py"
        ) from error
    if not isinstance(table, np.ndarray):
        raise UnreadableFileError(
            f"{source}: expected an array of {what}, found {type(table).__name__}; "
            "delete it and rerun preprocess_hubert_f0.py"
        )
    return table


def save_f0_uv(path: PathLike, f0: np.ndarray, uv: np.ndarray) -> None:
    """Write pitch and voicing as upstream's `.f0.npy`: a pickled (2, T) object array.

    Upstream saves `np.asanyarray((f0, uv), dtype=object)`; the file written
    here has the same layout.
    """
    f0_values = np.asarray(f0, dtype=np.float64).reshape(-1)
    uv_values = np.asarray(uv, dtype=np.float64).reshape(-1)
    if f0_values.shape != uv_values.shape:
        raise ValueError(f"f0 and uv lengths differ: {f0_values.shape} vs {uv_values.shape}")
    table = np.empty((2, f0_values.shape[0]), dtype=object)
    table[0, :] = f0_values.tolist()
    table[1, :] = uv_values.tolist()
    save_object_array(path, table)


def load_f0_uv(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an `.f0.npy` file (ours or upstream's) as float64 `(f0, uv)`, never running code."""
    source = Path(path)
    table = load_object_array(source, "pitch")
    if table.ndim == 0 or len(table) != 2:
        raise UnreadableFileError(
            f"{source}: expected pitch and voicing (2 rows), found {getattr(table, 'shape', '?')}; "
            "delete it and rerun preprocess_hubert_f0.py"
        )
    f0 = np.asarray(list(table[0]) if table.dtype == object else table[0], dtype=np.float64)
    uv = np.asarray(list(table[1]) if table.dtype == object else table[1], dtype=np.float64)
    return f0, uv
