"""Record torchcrepe's own crepe output as so-vits-svc 4.1 uses it, for tests/test_crepe.py.

Needs torchcrepe and resampy installed without their dependencies
(``pip install --no-deps torchcrepe==0.0.24 resampy==0.4.3``). torchcrepe
imports torchaudio only to read files, which is never done here, so an empty
stand-in module takes its place. Nothing in the project imports this script.

    python tools/make_crepe_fixture.py [OUT_DIR]   (default tests/fixtures/crepe)
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE = 44100
HOP = 512
F0_MIN, F0_MAX = 50, 1100
THRESHOLDS = {"default": 0.05, "high": 0.5}


def synthetic_clip() -> np.ndarray:
    """0.5 s at 44.1 kHz: 20 ms of silence, a 220 Hz tone with vibrato and harmonics, a
    120 ms pause, a 330 Hz tone; a little noise throughout (seeded)."""
    rng = np.random.default_rng(20)
    t = np.arange(int(0.5 * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = np.where(t < 0.26, 220.0, 330.0) * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    tone = 0.4 * np.sin(phase) + 0.15 * np.sin(2 * phase) + 0.05 * np.sin(3 * phase)
    tone[(t < 0.02) | ((t > 0.26) & (t < 0.38))] = 0.0
    return (tone + 0.0002 * rng.standard_normal(t.size)).astype(np.float32)


def import_torchcrepe() -> types.ModuleType:
    """torchcrepe with an empty torchaudio in its place and dithering switched off."""
    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
    import torchcrepe

    torchcrepe.convert.dither = lambda cents: cents
    return torchcrepe


def upstream_post(
    torchcrepe: types.ModuleType,
    audio: torch.Tensor,
    pitch: torch.Tensor,
    periodicity: torch.Tensor,
    threshold: float,
    p_len: int,
) -> tuple:
    """so-vits-svc's CrepePitchExtractor after torchcrepe.predict, step by step."""
    periodicity = torchcrepe.filter.median(periodicity, 3)
    periodicity = torchcrepe.threshold.Silence(-60.0)(periodicity, audio, SAMPLE_RATE, HOP)
    pitch = torchcrepe.threshold.At(threshold)(pitch, periodicity)
    pitch = torchcrepe.filter.mean(pitch, 3)
    frame_f0 = torch.nan_to_num(pitch, nan=0.0)[0]
    stretched = F.interpolate(frame_f0[None, None], size=p_len, mode="nearest")[0, 0]
    uv = (stretched > 0).float()
    voiced = torch.nonzero(stretched)[:, 0].numpy()
    if voiced.size == 0:
        return frame_f0, np.zeros(p_len), uv.numpy()
    values = stretched.numpy()[voiced]
    times = np.arange(p_len) * HOP / SAMPLE_RATE
    f0 = np.interp(times, HOP / SAMPLE_RATE * voiced, values, left=values[0], right=values[-1])
    return frame_f0, f0, uv.numpy()


def record(out_dir: Path) -> None:
    torch.set_num_threads(1)
    torchcrepe = import_torchcrepe()
    import resampy

    audio = torch.from_numpy(synthetic_clip())[None]
    p_len = audio.shape[1] // HOP
    hop_16k = int(HOP * 16000 / SAMPLE_RATE)
    audio_16k = resampy.resample(audio[0].numpy(), SAMPLE_RATE, 16000)
    data = {
        "audio44k": audio[0],
        "audio16k": torch.from_numpy(audio_16k),
        "loudness": torchcrepe.loudness.a_weighted(audio, SAMPLE_RATE, HOP)[0],
    }
    for capacity in ("full", "tiny"):
        frames = next(torchcrepe.preprocess(audio, SAMPLE_RATE, HOP, 1024, "cpu", True))
        with torch.no_grad():
            data[f"salience_{capacity}"] = torchcrepe.infer(frames, capacity)
        pitch, periodicity = torchcrepe.predict(
            audio,
            SAMPLE_RATE,
            HOP,
            F0_MIN,
            F0_MAX,
            model=capacity,
            batch_size=1024,
            device="cpu",
            return_periodicity=True,
            decoder=torchcrepe.decode.viterbi,
            pad=True,
        )
        data[f"pitch_{capacity}"], data[f"periodicity_{capacity}"] = pitch[0], periodicity[0]
        for name, threshold in THRESHOLDS.items():
            frame_f0, f0, uv = upstream_post(
                torchcrepe, audio, pitch, periodicity, threshold, p_len
            )
            data[f"frame_f0_{capacity}_{name}"] = frame_f0
            data[f"f0_{capacity}_{name}"] = torch.from_numpy(f0)
            data[f"uv_{capacity}_{name}"] = torch.from_numpy(uv)
    data["thresholds"] = torch.tensor([THRESHOLDS["default"], THRESHOLDS["high"]])
    data["hop_16k"] = torch.tensor(hop_16k)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(data, out_dir / "crepe_reference.pt")
    for key, value in data.items():
        print(f"{key}: {tuple(value.shape)} {value.dtype}")


if __name__ == "__main__":
    record(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tests/fixtures/crepe"))
