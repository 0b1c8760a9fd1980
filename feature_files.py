"""The feature files beside every dataset wav: names, frame arithmetic, readers, writers.

For each `X.wav` preprocessing writes, in upstream so-vits-svc 4.1's formats:

=================  =========================================================
`X.wav.soft.pt`    content features, a (1, ssl_dim, T_content) float tensor
`X.wav.f0.npy`     upstream's pickled (f0, uv) object array, T_pitch frames
`X.spec.pt`        linear spectrogram (filter_length // 2 + 1, T_spec),
                   `center=False` (the data loader writes it when absent)
`X.wav.vol.npy`    frame loudness, 1-D float32, only with `model.vol_embedding`
=================  =========================================================

and for shallow diffusion (`preprocess_hubert_f0.py --use_diff`), `X.wav.vol.npy`
too, and:

===================  =======================================================
`X.wav.mel.npy`      the vocoder's natural-log mel, float32 (frames, num_mels)
`X.wav.aug_mel.npy`  upstream's pickled pair (mel, keyshift): the mel of the
                     clip scaled in loudness and read `keyshift` semitones
                     higher, a 2-element object array
`X.wav.aug_vol.npy`  frame loudness of that louder or quieter clip, 1-D float32
===================  =======================================================

Preprocessing, the data loader and the pre-flight dataset check all read and
write them through this module, so they agree on every name, shape and
tolerance. Readers raise `FeatureFileError` (a `UserError`) naming the file and
the fix; pickled files are read as data only (`core.safe_io`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from core.safe_io import (
    atomic_np_save,
    atomic_torch_save,
    atomic_torch_save_once,
    load_f0_uv,
    load_object_array,
    load_torch_data,
    remove_temp_files,
    save_f0_uv,
    save_object_array,
)

RERUN_FEATURES = "rerun preprocess_hubert_f0.py"

# Every speech encoder reads 16 kHz audio and emits one frame per 20 ms.
ENCODER_SAMPLING_RATE = 16000
ENCODER_HOP = 320
MIN_ENCODER_SAMPLES = 400  # the first convolution's receptive field at 16 kHz

# The pitch, spectrogram and volume files of one clip may each differ from the
# audio's frame count by fewer frames than this (upstream's loader asserts the
# same of pitch and spectrogram); the loader trims every stream to the shortest.
# Content has its own, looser rule (`content_belongs_to_clip`): it is stretched.
STREAM_TOLERANCE_FRAMES = 3

CONTENT_SUFFIX = ".soft.pt"
PITCH_SUFFIX = ".f0.npy"
SPEC_SUFFIX = ".spec.pt"
VOLUME_SUFFIX = ".vol.npy"
# Shallow diffusion (`preprocess_hubert_f0.py --use_diff`), upstream's names.
MEL_SUFFIX = ".mel.npy"
AUG_MEL_SUFFIX = ".aug_mel.npy"
AUG_VOLUME_SUFFIX = ".aug_vol.npy"
DIFFUSION_SUFFIXES = (MEL_SUFFIX, AUG_MEL_SUFFIX, AUG_VOLUME_SUFFIX)
OUTPUT_SUFFIXES = (CONTENT_SUFFIX, PITCH_SUFFIX, SPEC_SUFFIX, VOLUME_SUFFIX, *DIFFUSION_SUFFIXES)
RERUN_DIFFUSION = "rerun preprocess_hubert_f0.py --use_diff"
# Upstream draws the augmented mel's key shift from [-5, 5] semitones.
MAX_AUG_KEYSHIFT = 5.0


class FeatureFileError(UserError):
    """A feature file is missing, unreadable or of the wrong shape."""


# --------------------------------------------------------------------------- paths


def content_path(wav_path: str) -> str:
    return wav_path + CONTENT_SUFFIX


def pitch_path(wav_path: str) -> str:
    return wav_path + PITCH_SUFFIX


def spec_path(wav_path: str) -> str:
    """Upstream's `filename.replace(".wav", ".spec.pt")`: the wav's name without `.wav`."""
    return wav_path.replace(".wav", SPEC_SUFFIX)


def volume_path(wav_path: str) -> str:
    return wav_path + VOLUME_SUFFIX


def mel_path(wav_path: str) -> str:
    return wav_path + MEL_SUFFIX


def aug_mel_path(wav_path: str) -> str:
    return wav_path + AUG_MEL_SUFFIX


def aug_volume_path(wav_path: str) -> str:
    return wav_path + AUG_VOLUME_SUFFIX


def remove_stale_feature_temp_files(folders: Iterable[str | os.PathLike]) -> list[str]:
    """Delete temporary files a killed run left beside the wavs (`.X.wav.soft.pt.*.tmp`)."""
    removed: list[str] = []
    for folder in folders:
        leftovers = [
            leftover
            for leftover in Path(folder).glob(".*.tmp")
            if any(f"{suffix}." in leftover.name for suffix in OUTPUT_SUFFIXES)
        ]
        removed += remove_temp_files(leftovers)
    return removed


# --------------------------------------------------------------------------- frame arithmetic


def spec_frames(num_samples: int, filter_length: int, hop_length: int) -> int:
    """Frames of `spectrogram_torch(center=False)`: reflect-padded by (n_fft - hop) / 2 a side.

    For every config whose filter and hop lengths differ by an even count (all
    of upstream's) this is `audio_frames`, the count the clip verdict expects.
    """
    pad = int((filter_length - hop_length) / 2)
    return max(0, (num_samples + 2 * pad - filter_length) // hop_length + 1)


def vocoder_mel_frames(
    num_samples: int, n_fft: int, win_size: int, hop_size: int, keyshift: float = 0.0
) -> int:
    """Frames of the vocoder's mel (`modules.mel_processing.vocoder_mel`): num_samples // hop
    for the released settings, at any key shift."""
    factor = 2 ** (keyshift / 12)
    n_fft_new = int(np.round(n_fft * factor))
    win_new = int(np.round(win_size * factor))
    pad_left = (win_new - hop_size) // 2
    pad_right = max((win_new - hop_size + 1) // 2, win_new - num_samples - pad_left)
    return max(0, (num_samples + pad_left + pad_right - n_fft_new) // hop_size + 1)


def encoder_samples(num_samples: int, sampling_rate: int) -> int:
    """Length of the audio after resampling to 16 kHz (soxr keeps ceil(n * ratio))."""
    return math.ceil(num_samples * ENCODER_SAMPLING_RATE / sampling_rate)


def expected_content_frames(num_samples: int, sampling_rate: int) -> float:
    """About how many content frames a speech encoder gives for this much audio."""
    return encoder_samples(num_samples, sampling_rate) / ENCODER_HOP


def content_belongs_to_clip(frames: int, num_samples: int, sampling_rate: int) -> bool:
    """Loose test that content features were made from this clip, not another one.

    Loose on purpose (5 frames or a quarter): encoders differ by a frame or two
    and the loader stretches content to the pitch frames anyway.
    """
    expected = expected_content_frames(num_samples, sampling_rate)
    return abs(frames - expected) <= max(5.0, 0.25 * expected)


# --------------------------------------------------------------------------- one verdict per clip


def audio_frames(num_samples: int, hop_length: int) -> int:
    """Whole frames of `data.hop_length` samples the audio fills: what the f0 predictors
    and the volume extractor give, and the spectrogram's frames (`spec_frames`)."""
    return num_samples // hop_length


def clip_verdict(
    wav_path: str,
    num_samples: int,
    frames: Mapping[str, int],
    sampling_rate: int,
    hop_length: int,
) -> dict[str, str]:
    """The streams of one clip that disagree with its audio, each with one line naming the fix.

    `frames` maps the streams read from the clip's files (`content`, `pitch`,
    `spec`, `volume`; any subset) to their frame counts. Preprocessing
    recomputes what this names, the pre-flight check reports it before
    training, and the data loader refuses it; what it accepts the loader
    trims to `common_frames`. Every caller asks this one function, so a clip
    is accepted or refused alike everywhere.
    """
    expected = audio_frames(num_samples, hop_length)
    problems: dict[str, str] = {}
    if "content" in frames and not content_belongs_to_clip(
        frames["content"], num_samples, sampling_rate
    ):
        about = expected_content_frames(num_samples, sampling_rate)
        problems["content"] = (
            f"{content_path(wav_path)}: {frames['content']} content frames, expected about "
            f"{about:.0f} for {num_samples / sampling_rate:.2f} s of audio; the features "
            f"belong to another clip: {RERUN_FEATURES}"
        )
    files = {
        "pitch": (pitch_path(wav_path), "pitch frames", RERUN_FEATURES),
        "spec": (
            spec_path(wav_path), "spectrogram frames",
            f"delete it (the trainer recomputes it) or {RERUN_FEATURES}",
        ),
        "volume": (volume_path(wav_path), "volume frames", RERUN_FEATURES),
    }
    for stream, (path, what, fix) in files.items():
        if stream in frames and abs(frames[stream] - expected) >= STREAM_TOLERANCE_FRAMES:
            problems[stream] = (
                f"{path}: {frames[stream]} {what}, but the audio has {expected} frames of "
                f"data.hop_length {hop_length} (at most {STREAM_TOLERANCE_FRAMES - 1} apart); "
                f"made with another hop or from another clip: {fix}"
            )
    return problems


def common_frames(num_samples: int, frames: Mapping[str, int], hop_length: int) -> int:
    """The frame count the loader trims every stream of an accepted clip to: the shortest.

    Content is left out: the loader stretches it to the pitch frames first.
    """
    lengths = [frames[s] for s in ("pitch", "spec", "volume") if s in frames]
    return min([audio_frames(num_samples, hop_length), *lengths])


# --------------------------------------------------------------------------- readers


def _require_file(path: str, what: str, fix: str = RERUN_FEATURES) -> None:
    if not os.path.exists(path):
        raise FeatureFileError(f"{path}: {what} missing; {fix}")


def read_content(path: str, ssl_dim: int | None = None) -> torch.Tensor:
    """Content features as a float32 (ssl_dim, frames) tensor.

    Accepts upstream's (1, ssl_dim, T) and a bare (ssl_dim, T).
    """
    _require_file(path, "content features")
    content = load_torch_data(path)
    if isinstance(content, torch.Tensor) and content.dim() == 3 and content.shape[0] == 1:
        content = content[0]
    if not isinstance(content, torch.Tensor) or content.dim() != 2 or content.shape[1] == 0:
        shape = tuple(getattr(content, "shape", ()))
        raise FeatureFileError(
            f"{path}: expected a (1, ssl_dim, frames) tensor, found {type(content).__name__} "
            f"{shape}; {RERUN_FEATURES}"
        )
    if ssl_dim is not None and content.shape[0] != ssl_dim:
        raise FeatureFileError(
            f"{path}: content width {content.shape[0]} != model.ssl_dim {ssl_dim}; the "
            "features come from another speech encoder: set model.speech_encoder and ssl_dim "
            f"to match, or {RERUN_FEATURES}"
        )
    return content.float()


def read_pitch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Pitch and voicing as float64 arrays of equal, non-zero length."""
    _require_file(path, "pitch file")
    f0, uv = load_f0_uv(path)
    if f0.ndim != 1 or f0.shape != uv.shape:
        raise FeatureFileError(
            f"{path}: f0 has {f0.shape} values but uv has {uv.shape}; they must be equal: "
            f"{RERUN_FEATURES}"
        )
    if f0.shape[0] == 0:
        raise FeatureFileError(f"{path}: pitch file is empty; {RERUN_FEATURES}")
    return f0, uv


def read_spec(path: str, filter_length: int) -> torch.Tensor:
    """A cached spectrogram as float32 (filter_length // 2 + 1, frames)."""
    fix = "delete it (the trainer recomputes it) or " + RERUN_FEATURES
    _require_file(path, "spectrogram", fix)
    try:
        spec = load_torch_data(path)
    except UserError as error:
        raise FeatureFileError(f"{error} ({fix})") from error
    bins = filter_length // 2 + 1
    if not isinstance(spec, torch.Tensor) or spec.dim() != 2 or spec.shape[0] != bins:
        shape = tuple(getattr(spec, "shape", ()))
        raise FeatureFileError(
            f"{path}: spectrogram shape {shape}, expected ({bins}, frames) for "
            f"data.filter_length {filter_length}; {fix}"
        )
    return spec.float()


def _read_array(path: str, what: str, fix: str) -> np.ndarray:
    """A plain (non-pickled) `.npy` array; a FeatureFileError naming the file otherwise."""
    _require_file(path, what, fix)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise FeatureFileError(f"{path}: cannot be read as an array ({error}); {fix}") from error


def read_volume(
    path: str, fix: str = f"{RERUN_FEATURES} with model.vol_embedding on"
) -> np.ndarray:
    """Frame loudness (`.vol.npy`, `.aug_vol.npy`) as a 1-D float32 array."""
    volume = _read_array(path, "volume", fix)
    if volume.ndim != 1:
        raise FeatureFileError(
            f"{path}: volume has shape {volume.shape}, expected (frames,); {fix}"
        )
    return np.asarray(volume, dtype=np.float32)


def _check_mel(path: str, mel: object, num_mels: int | None) -> np.ndarray:
    shape = getattr(mel, "shape", ())
    if (
        not isinstance(mel, np.ndarray)
        or mel.ndim != 2
        or shape[0] == 0
        or (num_mels is not None and shape[1] != num_mels)
    ):
        bins = num_mels if num_mels is not None else "num_mels"
        raise FeatureFileError(
            f"{path}: mel shape {tuple(shape)}, expected (frames, {bins}) from the vocoder's "
            f"config; {RERUN_DIFFUSION}"
        )
    return np.asarray(mel, dtype=np.float32)


def read_mel(path: str, num_mels: int | None = None) -> np.ndarray:
    """The vocoder's log mel of a clip as float32 (frames, num_mels)."""
    return _check_mel(path, _read_array(path, "mel", RERUN_DIFFUSION), num_mels)


def read_aug_mel(path: str, num_mels: int | None = None) -> tuple[np.ndarray, float]:
    """The augmented mel (float32 (frames, num_mels)) and its key shift in semitones."""
    _require_file(path, "augmented mel", RERUN_DIFFUSION)
    pair = load_object_array(path, "augmented mel")  # raises UserErrors naming the file
    if pair.shape != (2,) or not isinstance(pair[1], int | float | np.floating | np.integer):
        raise FeatureFileError(
            f"{path}: expected upstream's (mel, keyshift) pair, found an array of shape "
            f"{pair.shape}; {RERUN_DIFFUSION}"
        )
    return _check_mel(path, pair[0], num_mels), float(pair[1])


# --------------------------------------------------------------------------- writers


def write_content(path: str, content: torch.Tensor) -> None:
    """Store (1, ssl_dim, frames) content features, float32 on the CPU, atomically."""
    atomic_torch_save(content.detach().to("cpu", torch.float32).contiguous().clone(), path)


def write_pitch(path: str, f0: np.ndarray, uv: np.ndarray) -> None:
    """Store pitch and voicing in upstream's pickled layout, atomically."""
    save_f0_uv(path, np.asarray(f0), np.asarray(uv))


def write_spec(path: str, spec: torch.Tensor) -> None:
    """Store a (bins, frames) spectrogram, atomically."""
    atomic_torch_save(spec.detach().cpu().contiguous().clone(), path)


def write_spec_once(path: str, spec: torch.Tensor) -> bool:
    """Cache a spectrogram unless another data worker already did; True when this one won."""
    return atomic_torch_save_once(spec.detach().cpu().contiguous(), path)


def write_volume(path: str, volume: np.ndarray | torch.Tensor) -> None:
    """Store frame loudness as 1-D float32, atomically."""
    values = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else volume
    atomic_np_save(path, np.asarray(values, dtype=np.float32).reshape(-1))


def write_mel(path: str, mel: np.ndarray | torch.Tensor) -> None:
    """Store a (frames, num_mels) log mel as float32, atomically."""
    values = mel.detach().cpu().numpy() if isinstance(mel, torch.Tensor) else mel
    atomic_np_save(path, np.asarray(values, dtype=np.float32))


def write_aug_mel(path: str, mel: np.ndarray | torch.Tensor, keyshift: float) -> None:
    """Store upstream's `np.asanyarray((mel, keyshift), dtype=object)` pair, atomically."""
    values = mel.detach().cpu().numpy() if isinstance(mel, torch.Tensor) else mel
    pair = np.empty(2, dtype=object)
    pair[0] = np.asarray(values, dtype=np.float32)
    pair[1] = float(keyshift)
    save_object_array(path, pair)
