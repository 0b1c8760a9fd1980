"""The pre-flight dataset check reports every fault at once, running no code."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from core.config_schema import validate_config
from core.dataset_check import check_filelists, raise_if_problems
from core.errors import UserError
from core.safe_io import save_f0_uv
from tests.helpers_data import make_config, make_dataset
from utils import HParams


class _RunsCode:
    """Pickles as a call to os.system, like a malicious .f0.npy would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hps(root: Path, **overrides) -> HParams:
    config, _ = validate_config(make_config(root, **overrides), "test")
    return HParams(**config)


def test_clean_dataset_has_no_problems(tmp_path: Path) -> None:
    make_dataset(tmp_path, items_per_speaker=2, seconds=0.5, vol=True)
    hps = _hps(tmp_path, model={"vol_embedding": True})
    assert check_filelists(hps) == []
    raise_if_problems([])  # nothing to raise


def test_every_fault_reported_in_one_run(tmp_path: Path) -> None:
    info = make_dataset(
        tmp_path, speakers=("alice", "bob", "carol"), items_per_speaker=6, seconds=0.6,
        vol=True, val_per_speaker=0,
    )
    hps = _hps(tmp_path, model={"vol_embedding": True})  # spk: alice, bob (no carol)
    wavs = {Path(p).stem: p for p in info["train_wavs"]}
    marker = tmp_path / "pwned"

    # 1 missing wav (listed, absent)
    missing = str(info["dataset_dir"] / "alice" / "ghost.wav")
    # 2 unreadable wav
    Path(wavs["alice_000"]).write_bytes(b"RIFF\x00\x00garbage")
    # 3 wrong sample rate
    audio, _ = soundfile.read(wavs["alice_001"])
    soundfile.write(wavs["alice_001"], audio, 16000, subtype="PCM_16")
    # 4 missing soft.pt
    os.remove(wavs["alice_002"] + ".soft.pt")
    # 5 wrong ssl width
    torch.save(torch.zeros(1, 16, 30), wavs["alice_003"] + ".soft.pt")
    # 6 missing f0
    os.remove(wavs["alice_004"] + ".f0.npy")
    # 7 f0/uv lengths differ (a ragged pair, as a buggy tool could write)
    pair = np.empty(2, dtype=object)
    pair[0], pair[1] = np.full(51, 200.0), np.ones(40)
    np.save(wavs["alice_005"] + ".f0.npy", pair, allow_pickle=True)
    # 8 content length wildly off (5 frames for 0.6 s)
    torch.save(torch.zeros(1, 32, 5), wavs["bob_000"] + ".soft.pt")
    # 9 unknown speaker: every carol clip
    # 10 missing vol with vol_embedding
    os.remove(wavs["bob_001"] + ".vol.npy")
    # 11 tampered .f0.npy that would run os.system
    np.save(wavs["bob_002"] + ".f0.npy", np.array([_RunsCode(marker)] * 2, dtype=object),
            allow_pickle=True)
    # 12 pitch from another hop (twice the frames)
    save_f0_uv(wavs["bob_003"] + ".f0.npy", np.full(102, 200.0), np.ones(102))
    # 13 stale cached spectrogram (another filter_length)
    torch.save(torch.zeros(257, 51), wavs["bob_004"].replace(".wav", ".spec.pt"))
    # 14 empty validation filelist (val_per_speaker=0)
    with open(info["train_list"], "a", encoding="utf-8") as handle:
        handle.write(missing + "\n")

    problems = check_filelists(hps)
    text = "\n".join(problems)
    expected = [
        (missing, "audio file missing"),
        (wavs["alice_000"], "cannot be read as audio"),
        (wavs["alice_001"], "sample rate 16000 Hz"),
        (wavs["alice_002"] + ".soft.pt", "content features missing"),
        (wavs["alice_003"] + ".soft.pt", "content width 16 != model.ssl_dim 32"),
        (wavs["alice_004"] + ".f0.npy", "pitch file missing"),
        (wavs["alice_005"] + ".f0.npy", "they must be equal"),
        (wavs["bob_000"] + ".soft.pt", "5 content frames"),
        (wavs["carol_000"], "'carol' is not in the config's spk map"),
        (wavs["bob_001"] + ".vol.npy", "volume missing"),
        (wavs["bob_002"] + ".f0.npy", "refused to load"),
        (wavs["bob_003"] + ".f0.npy", "102 pitch frames"),
        (wavs["bob_004"].replace(".wav", ".spec.pt"), "expected (513, frames)"),
        (str(info["val_list"]), "filelist is empty"),
    ]
    for path, fragment in expected:
        assert any(path in line and fragment in line for line in problems), (path, fragment, text)
    assert not marker.exists()  # the tampered pickle ran nothing
    # Clean clips are not reported; each line names a fix.
    assert wavs["bob_005"] not in text
    assert all(("rerun" in line or "remove" in line or "add it" in line or "delete" in line)
               for line in problems), text
    with pytest.raises(UserError) as caught:
        raise_if_problems(problems)
    message = str(caught.value)
    assert message.startswith(f"dataset check found {len(problems)} problems")
    assert all(line in message for line in problems)


def test_missing_filelist_and_truncated_report(tmp_path: Path) -> None:
    hps = _hps(tmp_path)
    problems = check_filelists(hps)
    assert len(problems) == 2 and all("filelist not found" in p for p in problems)
    with pytest.raises(UserError, match=r"\.\.\. and 1 more"):
        raise_if_problems(problems, max_lines=1)
