"""The inference silence slicer reproduces upstream so-vits-svc 4.1's chunks."""

from itertools import pairwise
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile
import torch

from inference.slicer import Slicer, chunks2audio, cut, frame_rms, slice_waveform, split_chunks

FIXTURE = Path(__file__).parent / "fixtures" / "upstream-4.1-pipeline" / "slicer_reference.pt"
SR = 44100
HOP = 882  # 20 ms at 44.1 kHz


def boundaries(chunks: dict) -> list[tuple[bool, int, int]]:
    return [
        (bool(c["slice"]), *(int(v) for v in str(c["split_time"]).split(",")))
        for c in chunks.values()
    ]


def assert_same_chunks(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for (tag, start, end), (tag_ref, start_ref, end_ref) in zip(
        boundaries(actual), boundaries(expected)
    ):
        assert tag == tag_ref
        assert abs(start - start_ref) <= HOP and abs(end - end_ref) <= HOP


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def test_matches_upstream(reference: dict) -> None:
    wav = reference["wav44k"].numpy()
    chunks = Slicer(**reference["params"]).slice(wav)
    assert_same_chunks(chunks, reference["chunks"])
    # Upstream emits an empty silence chunk between the two voiced parts.
    assert boundaries(chunks)[1][0] is True
    assert boundaries(chunks)[1][1] == boundaries(chunks)[1][2]


def test_rms_matches_librosa(reference: dict) -> None:
    wav = reference["wav44k"].numpy()
    slicer = Slicer(SR)
    expected = librosa.feature.rms(y=wav, frame_length=slicer.win_size, hop_length=HOP)[0]
    np.testing.assert_allclose(frame_rms(wav, slicer.win_size, HOP), expected, atol=1e-6)


def test_files_round_trip(reference: dict, tmp_path: Path) -> None:
    wav = reference["wav44k"].numpy()
    path = tmp_path / "take.wav"
    soundfile.write(path, np.stack([wav, wav], axis=1), SR, subtype="FLOAT")
    chunks = cut(path, db_thresh=-40, min_len=5000)
    assert_same_chunks(chunks, reference["chunks"])
    pieces, sr = chunks2audio(path, chunks)
    assert sr == SR
    # The empty silence chunk is dropped; the voiced pieces tile the file.
    assert [silent for silent, _ in pieces] == [False, False]
    np.testing.assert_allclose(np.concatenate([audio for _, audio in pieces]), wav, atol=1e-7)


def test_leading_middle_and_trailing_silence() -> None:
    rng = np.random.default_rng(0)
    seconds = [1.0, 2.0, 1.5, 2.0, 1.0]  # silence, sound, silence, sound, silence
    parts = [
        (0.3 * rng.standard_normal(int(s * SR)) if i % 2 else np.zeros(int(s * SR)))
        for i, s in enumerate(seconds)
    ]
    wav = np.concatenate(parts).astype(np.float32)
    chunks = Slicer(SR, min_length=1000, min_interval=300, max_sil_kept=200).slice(wav)
    got = boundaries(chunks)
    assert [tag for tag, _, _ in got] == [True, False, True, False, True]
    edges = np.cumsum([int(s * SR) for s in seconds])
    # Leading silence ends within the kept margin (200 ms) before the sound.
    assert got[0][1] == 0 and edges[0] - 0.25 * SR <= got[0][2] <= edges[0]
    # Middle silence: cut from its quietest frame in the first 200 ms (digital
    # silence, so the first fully silent window) to the quietest frame in the
    # last 200 ms (the first one of those, 200 ms before the sound).
    assert 0 <= got[2][1] - edges[1] <= 3 * HOP
    assert abs(got[2][2] - (edges[2] - 0.2 * SR)) <= HOP
    # Trailing silence runs to the end.
    assert got[4][2] == len(wav)
    assert all(a[2] == b[1] for a, b in pairwise(got))


def test_short_or_loud_audio_is_one_chunk() -> None:
    loud = np.full(10 * SR, 0.5, dtype=np.float32)
    assert slice_waveform(loud, SR) == {"0": {"slice": False, "split_time": f"0,{len(loud)}"}}
    tiny = np.zeros(100, dtype=np.float32)
    assert slice_waveform(tiny, SR) == {"0": {"slice": False, "split_time": "0,100"}}


def test_split_chunks_skips_empty() -> None:
    audio = np.arange(10.0)
    chunks = {
        "0": {"slice": False, "split_time": "0,4"},
        "1": {"slice": True, "split_time": "4,4"},
        "2": {"slice": True, "split_time": "4,10"},
    }
    pieces = split_chunks(audio, chunks)
    assert [(s, a.tolist()) for s, a in pieces] == [
        (False, [0, 1, 2, 3]),
        (True, [4, 5, 6, 7, 8, 9]),
    ]


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        Slicer(SR, min_length=100, min_interval=300)
