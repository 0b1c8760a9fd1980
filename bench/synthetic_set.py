"""Build a tiny synthetic training set and config in upstream's on-disk format.

The benchmark trains on it, and the tests use it for the data pipeline and the
trainer's end-to-end runs (through tests/helpers_data.py). The audio is
a harmonic tone whose pitch is exactly what the `.f0.npy` file says, and the
content features are a fixed projection of the audio's band energies, so a
model can actually learn the mapping; nothing depends on pretrained encoders.

Layout written under `root` (upstream's, with absolute paths in the filelists):

    dataset/<sr // 1000>k/<speaker>/<name>.wav        16-bit PCM mono
    dataset/<sr // 1000>k/<speaker>/<name>.wav.soft.pt (1, ssl_dim, T_content) float32
    dataset/<sr // 1000>k/<speaker>/<name>.wav.f0.npy  pickled (f0, uv) object array
    dataset/<sr // 1000>k/<speaker>/<name>.wav.vol.npy (frames,) float32  [vol=True]
    filelists/train.txt, filelists/val.txt

`write_diffusion_features` adds the `.mel.npy`, `.aug_mel.npy` and
`.aug_vol.npy` files of `preprocess_hubert_f0.py --use_diff`.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch

import feature_files as ff
from core.safe_io import save_f0_uv

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "configs_template" / "config_template.json"

CONTENT_FRAME_RATE = 50  # frames per second of every upstream speech encoder
_CONTENT_BANDS = 24


def _synth_item(
    rng: np.random.Generator, n_samples: int, sampling_rate: int, hop_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A gliding harmonic tone with a silent tail, and its per-frame f0 and voicing."""
    n_frames = n_samples // hop_length
    base = rng.uniform(110.0, 330.0)
    glide = rng.uniform(-0.2, 0.2)  # fraction of an octave over the clip
    voiced_frames = max(1, int(n_frames * rng.uniform(0.75, 0.9)))

    frame_times = (np.arange(n_frames) + 0.5) * hop_length / sampling_rate
    duration = n_samples / sampling_rate
    f0_voiced = base * 2.0 ** (glide * frame_times / duration)
    uv = (np.arange(n_frames) < voiced_frames).astype(np.float64)
    # Upstream's predictors return f0 with unvoiced gaps filled by the neighbours.
    f0 = np.where(uv > 0, f0_voiced, f0_voiced[voiced_frames - 1])

    sample_times = np.arange(n_samples) / sampling_rate
    f0_per_sample = base * 2.0 ** (glide * sample_times / duration)
    phase = 2 * np.pi * np.cumsum(f0_per_sample) / sampling_rate
    harmonics = np.arange(1, 9)[:, None]
    tone = (np.sin(harmonics * phase[None, :]) / harmonics).sum(axis=0)
    voiced_samples = np.arange(n_samples) < voiced_frames * hop_length
    audio = np.where(voiced_samples, tone, 0.0)
    audio = audio / (np.abs(audio).max() + 1e-9) * rng.uniform(0.3, 0.8)
    audio = audio + rng.normal(0.0, 1e-3, n_samples)  # breath noise, so silence is not exact 0
    return audio.astype(np.float32), f0, uv


def _content_features(audio: np.ndarray, sampling_rate: int, projection: np.ndarray) -> np.ndarray:
    """(ssl_dim, T_content) features at 50 frames/s: projected log band energies."""
    n_frames = max(1, len(audio) * CONTENT_FRAME_RATE // sampling_rate)
    frame = sampling_rate // CONTENT_FRAME_RATE
    padded = np.pad(audio, (0, n_frames * frame + frame - len(audio)))
    frames = np.stack([padded[i * frame : i * frame + 2 * frame] for i in range(n_frames)])
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(2 * frame), axis=1))
    edges = np.linspace(0, spectrum.shape[1], _CONTENT_BANDS + 1).astype(int)
    bands = np.stack(
        [spectrum[:, lo:hi].mean(axis=1) for lo, hi in itertools.pairwise(edges)], axis=1
    )
    log_bands = np.log(bands + 1e-5)
    return np.tanh(projection @ (log_bands.T - log_bands.mean()) / 4.0).astype(np.float32)


def volume_of(audio: np.ndarray, hop_length: int) -> np.ndarray:
    """Per-frame RMS loudness, the formula of upstream's Volume_Extractor."""
    n_frames = len(audio) // hop_length
    power = np.pad(
        audio.astype(np.float64) ** 2, (hop_length // 2, (hop_length + 1) // 2), mode="reflect"
    )
    framed = power[: n_frames * hop_length].reshape(n_frames, hop_length)
    return np.sqrt(framed.mean(axis=1)).astype(np.float32)


def _write_item(
    wav_path: str,
    audio: np.ndarray,
    f0: np.ndarray,
    uv: np.ndarray,
    sampling_rate: int,
    hop_length: int,
    projection: np.ndarray,
    vol: bool,
) -> None:
    """One clip's wav and feature files, as preprocessing would write them."""
    soundfile.write(wav_path, audio, sampling_rate, subtype="PCM_16")
    # Features are computed from what the loader will read back (16-bit).
    stored, _ = soundfile.read(wav_path, dtype="float32")
    content = _content_features(stored, sampling_rate, projection)
    torch.save(torch.from_numpy(content).unsqueeze(0), ff.content_path(wav_path))
    save_f0_uv(ff.pitch_path(wav_path), f0, uv)
    if vol:
        np.save(ff.volume_path(wav_path), volume_of(stored, hop_length))


def make_dataset(
    root: Path,
    speakers: tuple[str, ...] = ("alice", "bob"),
    items_per_speaker: int = 4,
    seconds: float = 1.0,
    sampling_rate: int = 22050,
    hop_length: int = 256,
    ssl_dim: int = 32,
    vol: bool = True,
    seed: int = 0,
    val_per_speaker: int = 1,
) -> dict[str, Any]:
    """Write a synthetic preprocessed dataset and its filelists under `root`.

    The first `val_per_speaker` items of each speaker go to the validation
    filelist (as upstream's preprocess_flist_config.py does), the rest to the
    training filelist. Returns the paths written and the parameters used.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    projection = np.random.default_rng(seed + 1).normal(
        0.0, 1.0 / np.sqrt(_CONTENT_BANDS), (ssl_dim, _CONTENT_BANDS)
    )
    dataset_dir = root / "dataset" / f"{sampling_rate // 1000}k"
    n_samples = round(seconds * sampling_rate)
    train: list[str] = []
    val: list[str] = []
    for speaker in speakers:
        folder = dataset_dir / speaker
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(items_per_speaker):
            wav_path = str(folder / f"{speaker}_{index:03d}.wav")
            audio, f0, uv = _synth_item(rng, n_samples, sampling_rate, hop_length)
            _write_item(wav_path, audio, f0, uv, sampling_rate, hop_length, projection, vol)
            (val if index < val_per_speaker else train).append(wav_path)

    filelist_dir = root / "filelists"
    filelist_dir.mkdir(parents=True, exist_ok=True)
    train_list = filelist_dir / "train.txt"
    val_list = filelist_dir / "val.txt"
    train_list.write_text("".join(f"{p}\n" for p in train), encoding="utf-8")
    val_list.write_text("".join(f"{p}\n" for p in val), encoding="utf-8")
    return {
        "root": root,
        "dataset_dir": dataset_dir,
        "train_list": train_list,
        "val_list": val_list,
        "train_wavs": train,
        "val_wavs": val,
        "speakers": tuple(speakers),
        "sampling_rate": sampling_rate,
        "hop_length": hop_length,
        "ssl_dim": ssl_dim,
        "n_samples": n_samples,
    }


def write_diffusion_features(wavs: list[str]) -> None:
    """The three `--use_diff` files of each clip, with the released vocoder's mel settings:
    the mel, a mel 3 semitones up (upstream's pitch augmentation) and its loudness."""
    from diffusion.vocoder import RELEASED_MEL

    for wav in wavs:
        audio, _ = soundfile.read(wav, dtype="float32")
        samples = torch.from_numpy(audio)[None]
        ff.write_mel(ff.mel_path(wav), RELEASED_MEL.extract(samples)[0])
        ff.write_aug_mel(ff.aug_mel_path(wav), RELEASED_MEL.extract(samples, keyshift=3)[0], 3.0)
        ff.write_volume(ff.aug_volume_path(wav), np.load(ff.volume_path(wav)) * 0.8)


def make_config(root: Path, **overrides: Any) -> dict[str, Any]:
    """A CPU-sized config in upstream's format, pointing at `root`'s filelists.

    Starts from configs_template/config_template.json and shrinks the model.
    Each keyword names a section (`train`, `data`, `model`) whose dict is merged
    into that section, or `spk` (a full speaker map, replacing the default
    {"alice": 0, "bob": 1}).
    """
    root = Path(root)
    config = json.loads(TEMPLATE.read_text(encoding="utf-8"))
    config["train"].update(
        {
            "log_interval": 1,
            "eval_interval": 4,
            "epochs": 2,
            "batch_size": 2,
            "segment_size": 2048,
            "keep_ckpts": 2,
            "num_workers": 0,
        }
    )
    config["data"].update(
        {
            "training_files": str(root / "filelists" / "train.txt"),
            "validation_files": str(root / "filelists" / "val.txt"),
            "sampling_rate": 22050,
            "filter_length": 1024,
            "hop_length": 256,
            "win_length": 1024,
            "n_mel_channels": 80,
            "mel_fmax": 11025,
        }
    )
    config["model"].update(
        {
            "inter_channels": 16,
            "hidden_channels": 32,
            "filter_channels": 64,
            "n_heads": 2,
            "n_layers": 2,
            "upsample_rates": [8, 8, 2, 2],
            "upsample_kernel_sizes": [16, 16, 4, 4],
            "upsample_initial_channel": 32,
            "n_layers_trans_flow": 2,
            "n_flow_layer": 2,
            "gin_channels": 32,
            "ssl_dim": 32,
            "n_speakers": 4,
        }
    )
    config["spk"] = {"alice": 0, "bob": 1}
    for section, values in overrides.items():
        if section == "spk":
            config["spk"] = dict(values)
        elif section in config and isinstance(values, dict):
            config[section].update(copy.deepcopy(values))
        else:
            raise KeyError(f"make_config: unknown override {section!r}")
    return config


def write_config(root: Path, config: dict[str, Any], name: str = "config.json") -> Path:
    """Write `config` as JSON under root/configs and return its path."""
    path = Path(root) / "configs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path
