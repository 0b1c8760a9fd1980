"""Files are written atomically and read as data only."""

import os
import pickle

import numpy as np
import pytest
import torch

from core.safe_io import (
    ForeignObject,
    UnreadableFileError,
    UnsafeFileError,
    atomic_np_save,
    atomic_torch_save,
    atomic_write,
    load_f0_uv,
    load_torch_data,
    load_torch_foreign,
    save_f0_uv,
)

MARKER_ENV = "SVC_TEST_PICKLE_RAN"


class RunsCode:
    """Pickles as a call to os.makedirs: proof if it ever runs."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["file.bin"]


def test_atomic_saves_round_trip(tmp_path):
    atomic_torch_save({"weight": torch.arange(3.0)}, tmp_path / "a.pt")
    assert torch.equal(load_torch_data(tmp_path / "a.pt")["weight"], torch.arange(3.0))
    atomic_np_save(tmp_path / "v.npy", np.arange(4.0))
    assert np.array_equal(np.load(tmp_path / "v.npy"), np.arange(4.0))
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "v.npy"]


def test_pickled_callable_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(1)}, "payload": RunsCode(str(marker))}, path)
    with pytest.raises(UnsafeFileError, match=r"evil\.pt.*makedirs"):
        load_torch_data(path)
    # The foreign reader turns it into an inert placeholder.
    loaded = load_torch_foreign(path)
    assert isinstance(loaded["payload"], ForeignObject)
    assert torch.equal(loaded["model"]["w"], torch.ones(1))
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_broken_torch_files_name_the_file(tmp_path, damage):
    path = tmp_path / "G_100.pth"
    torch.save({"model": {"w": torch.ones(1000)}}, path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    else:
        path.unlink()
    with pytest.raises(UnreadableFileError, match="G_100.pth"):
        load_torch_data(path)


def test_f0_round_trip_and_upstream_layout(tmp_path):
    f0 = np.linspace(100.0, 300.0, 17)
    uv = (np.arange(17) % 3 != 0).astype(np.float64)
    path = tmp_path / "a.wav.f0.npy"
    save_f0_uv(path, f0, uv)
    read_f0, read_uv = load_f0_uv(path)
    assert np.array_equal(read_f0, f0) and np.array_equal(read_uv, uv)
    # Upstream reads it with np.load(allow_pickle=True) and unpacks two rows.
    up_f0, up_uv = np.load(path, allow_pickle=True)
    assert np.allclose(np.array(up_f0, dtype=float), f0)
    assert np.allclose(np.array(up_uv, dtype=float), uv)
    # The pickle names numpy's modules as numpy 1.x knows them.
    raw = path.read_bytes()
    assert b"numpy.core.multiarray" in raw and b"numpy._core" not in raw
    # And a file written the way upstream writes it reads back.
    np.save(tmp_path / "up.f0.npy", np.asanyarray((f0, uv), dtype=object))
    read_f0, read_uv = load_f0_uv(tmp_path / "up.f0.npy")
    assert np.array_equal(read_f0, f0) and np.array_equal(read_uv, uv)


def test_f0_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "bad.wav.f0.npy"
    np.save(path, np.asanyarray((RunsCode(str(marker)), 1.0), dtype=object))
    with pytest.raises(UnsafeFileError, match="makedirs"):
        load_f0_uv(path)
    assert not marker.exists()
    # A raw pickle stream is not an npy file at all.
    (tmp_path / "raw.f0.npy").write_bytes(pickle.dumps(RunsCode(str(marker))))
    with pytest.raises(UnreadableFileError):
        load_f0_uv(tmp_path / "raw.f0.npy")
    assert not marker.exists()
