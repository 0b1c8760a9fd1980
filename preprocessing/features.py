"""Training features for every wav of the dataset, as upstream's preprocess_hubert_f0.

Per `X.wav` (upstream's order and formats): the audio is read at the config's
sampling rate; content features come from the config's speech encoder on the
audio resampled to 16 kHz (`X.wav.soft.pt`, a (1, ssl_dim, T) tensor); pitch and
voicing from the f0 predictor at the config's hop (`X.wav.f0.npy`, upstream's
pickled pair); the linear spectrogram of the audio with `center=False`
(`X.spec.pt`, (filter_length // 2 + 1, frames)); and, when the model embeds
volume, the frame volume (`X.wav.vol.npy`, 1-D float32). With `--use_diff`
(shallow diffusion) also the volume, and the diffusion vocoder's mel
(`X.wav.mel.npy`) and its augmented pair (`X.wav.aug_mel.npy`,
`X.wav.aug_vol.npy`), see `diffusion_features`.

Outputs already on disk are kept only when they load and fit the current
config (content width, frame counts, volume present when needed); everything
else is recomputed and written atomically, so a killed run resumes cleanly.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import librosa
import numpy as np
import soundfile
import torch

import feature_files as ff
from core.components import require_f0_predictor
from core.config_schema import default_value
from core.errors import UserError
from preprocessing.runner import ItemResult, RunSummary, run_parallel

if TYPE_CHECKING:
    from diffusion.vocoder import MelSettings

SILENCE_PEAK = 1e-4

# Per-process cache: the settings from `init_worker` (the pool
# initializer, or a direct call for in-process runs), and the models, loaded once per
# process when a file first needs them, not once per file.
_WORKER_MODELS: dict[str, Any] = {}


class BadWavError(Exception):
    """A dataset wav that cannot be used; its file is reported and skipped."""


@dataclass(frozen=True)
class FeatureSettings:
    """Everything a worker needs from the config and the command line."""

    sampling_rate: int
    hop_length: int
    filter_length: int
    win_length: int
    ssl_dim: int
    speech_encoder: str
    vol_embedding: bool
    f0_predictor: str
    encoder_path: str | None
    device: str
    force: bool
    # The diffusion vocoder's STFT when `--use_diff` asks for its mels, else None.
    diffusion_mel: MelSettings | None = None
    f0_weights: str | None = None  # crepe, rmvpe, fcpe: weights file


# --------------------------------------------------------------------------- settings


def _require(section: dict[str, Any], section_name: str, key: str, config_path: str) -> Any:
    if key not in section:
        raise UserError(
            f"{config_path}: key {section_name}.{key} missing: rerun preprocess_flist_config.py"
        )
    return section[key]


def load_settings(
    config_path: str,
    f0_predictor: str,
    encoder_path: str | None = None,
    device: str | None = None,
    force: bool = False,
    diffusion_mel: MelSettings | None = None,
    f0_weights: str | None = None,
) -> FeatureSettings:
    """Read the keys feature extraction needs from `configs/config.json`."""
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except FileNotFoundError as error:
        raise UserError(
            f"{config_path}: config not found: run preprocess_flist_config.py first or pass -c"
        ) from error
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{config_path}: cannot read the config ({error})") from error
    data = config.get("data") if isinstance(config, dict) else None
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(data, dict) or not isinstance(model, dict):
        raise UserError(
            f"{config_path}: sections data/model missing: rerun preprocess_flist_config.py"
        )
    require_f0_predictor(f0_predictor)
    if encoder_path is not None and not Path(encoder_path).is_file():
        raise UserError(f"--encoder_path {encoder_path}: file not found")
    if f0_weights is not None and not Path(f0_weights).is_file():
        raise UserError(f"--f0_weights {f0_weights}: file not found")
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    values = {
        key: _require(data, "data", key, config_path)
        for key in ("sampling_rate", "hop_length", "filter_length", "win_length")
    }
    for key, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise UserError(f"{config_path}: data.{key} must be a positive integer, got {value!r}")
    if diffusion_mel is not None:
        rate, hop = values["sampling_rate"], values["hop_length"]
        _require_vocoder_fits(diffusion_mel, rate, hop, config_path)
    ssl_dim = _require(model, "model", "ssl_dim", config_path)
    if not isinstance(ssl_dim, int) or ssl_dim <= 0:
        raise UserError(f"{config_path}: model.ssl_dim must be a positive integer, got {ssl_dim!r}")
    return FeatureSettings(
        sampling_rate=values["sampling_rate"],
        hop_length=values["hop_length"],
        filter_length=values["filter_length"],
        win_length=values["win_length"],
        ssl_dim=ssl_dim,
        speech_encoder=str(_require(model, "model", "speech_encoder", config_path)),
        vol_embedding=bool(model.get("vol_embedding", default_value("model", "vol_embedding"))),
        f0_predictor=f0_predictor,
        encoder_path=encoder_path,
        device=str(device),
        force=force,
        diffusion_mel=diffusion_mel,
        f0_weights=f0_weights,
    )


def _require_vocoder_fits(
    mel: MelSettings, sampling_rate: int, hop_length: int, config_path: str
) -> None:
    """The diffusion mel must share the dataset's rate and frames (f0, volume)."""
    if (mel.sampling_rate, mel.hop_size) != (sampling_rate, hop_length):
        raise UserError(
            f"{config_path}: data.sampling_rate {sampling_rate} and hop_length {hop_length} "
            f"differ from the diffusion vocoder's {mel.sampling_rate} Hz and hop "
            f"{mel.hop_size}: use a 44.1 kHz config with hop 512 (the template's) for --use_diff"
        )


# --------------------------------------------------------------------------- expected shapes


# Each reader returns the frames of a stored file, raising `FeatureFileError`
# when it cannot be used at all; `clip_verdict` then judges the frame counts.


def _soft_frames(path: str, settings: FeatureSettings) -> int:
    content = ff.read_content(path, settings.ssl_dim)
    if not torch.isfinite(content).all():
        raise ff.FeatureFileError(f"{path}: non-finite values")
    return int(content.shape[1])


def _f0_frames(path: str, settings: FeatureSettings) -> int:
    f0, uv = ff.read_pitch(path)
    if not (np.all(np.isfinite(f0)) and np.all(np.isfinite(uv))):
        raise ff.FeatureFileError(f"{path}: non-finite values")
    return int(f0.shape[0])


def _spec_frames(path: str, settings: FeatureSettings) -> int:
    spec = ff.read_spec(path, settings.filter_length)
    if not torch.isfinite(spec).all():
        raise ff.FeatureFileError(f"{path}: non-finite values")
    return int(spec.shape[1])


def _vol_frames(path: str, settings: FeatureSettings) -> int:
    volume = ff.read_volume(path)
    if not np.all(np.isfinite(volume)):
        raise ff.FeatureFileError(f"{path}: non-finite values")
    return int(volume.shape[0])


# Output name -> (the stream `clip_verdict` calls it, its path, its reader).
_OUTPUTS = {
    "soft": ("content", ff.content_path, _soft_frames),
    "f0": ("pitch", ff.pitch_path, _f0_frames),
    "spec": ("spec", ff.spec_path, _spec_frames),
    "vol": ("volume", ff.volume_path, _vol_frames),
}


def _check_mel(path: str, settings: FeatureSettings, num_samples: int) -> str | None:
    mel = settings.diffusion_mel
    assert mel is not None
    values = ff.read_mel(path, mel.num_mels)
    return _mel_mismatch(values, mel, num_samples, 0.0)


def _check_aug_mel(path: str, settings: FeatureSettings, num_samples: int) -> str | None:
    mel = settings.diffusion_mel
    assert mel is not None
    values, keyshift = ff.read_aug_mel(path, mel.num_mels)
    if not abs(keyshift) <= ff.MAX_AUG_KEYSHIFT:
        return f"key shift {keyshift} outside +-{ff.MAX_AUG_KEYSHIFT}"
    return _mel_mismatch(values, mel, num_samples, keyshift)


def _mel_mismatch(
    values: np.ndarray, mel: MelSettings, num_samples: int, keyshift: float
) -> str | None:
    frames = ff.vocoder_mel_frames(num_samples, mel.n_fft, mel.win_size, mel.hop_size, keyshift)
    if values.shape[0] != frames:
        return f"{values.shape[0]} mel frames, expected {frames}"
    if not np.all(np.isfinite(values)):
        return "non-finite values"
    return None


def stale_outputs(wav_path: str, settings: FeatureSettings, num_samples: int) -> dict[str, str]:
    """Which outputs must be (re)computed, mapped to the reason; empty when all fit.

    A stored file is kept when it loads and `clip_verdict` accepts it, the
    verdict the pre-flight check and the data loader give, so what
    preprocessing keeps always trains. The diffusion files (`--use_diff`) are
    judged against the vocoder's own frames.
    """
    diffusion = settings.diffusion_mel is not None
    names = [name for name in _OUTPUTS if name != "vol" or settings.vol_embedding or diffusion]
    diffusion_checks = {}
    if diffusion:
        diffusion_checks = {
            "mel": (ff.mel_path(wav_path), _check_mel),
            "aug_mel": (ff.aug_mel_path(wav_path), _check_aug_mel),
            "aug_vol": (ff.aug_volume_path(wav_path), _check_aug_vol),
        }
    if settings.force:
        return {name: "recompute requested (--force)" for name in [*names, *diffusion_checks]}
    stale: dict[str, str] = {}
    frames: dict[str, int] = {}
    for name in names:
        stream, path_of, read_frames = _OUTPUTS[name]
        path = path_of(wav_path)
        if not os.path.exists(path):
            stale[name] = "missing"
            continue
        try:
            frames[stream] = read_frames(path, settings)
        except UserError as error:
            stale[name] = str(error)
    verdict = ff.clip_verdict(
        wav_path, num_samples, frames, settings.sampling_rate, settings.hop_length
    )
    for name in names:
        if _OUTPUTS[name][0] in verdict:
            stale[name] = verdict[_OUTPUTS[name][0]]
    for name, (path, check) in diffusion_checks.items():
        if not os.path.exists(path):
            stale[name] = "missing"
            continue
        try:
            reason = check(path, settings, num_samples)
        except UserError as error:
            reason = str(error)
        if reason:
            stale[name] = reason
    return stale


def _check_aug_vol(path: str, settings: FeatureSettings, num_samples: int) -> str | None:
    frames = _vol_frames(path, settings)
    expected = ff.audio_frames(num_samples, settings.hop_length)
    if abs(frames - expected) >= ff.STREAM_TOLERANCE_FRAMES:
        return f"{frames} frames, expected {expected}"
    return None


# --------------------------------------------------------------------------- audio


def read_dataset_wav(path: str, sampling_rate: int) -> np.ndarray:
    """Read a dataset wav as float32 in [-1, 1); refuse what training could not use."""
    try:
        info = soundfile.info(path)
        data, file_sr = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, OSError) as error:
        raise BadWavError(f"unreadable audio ({error})") from error
    if file_sr != sampling_rate:
        raise BadWavError(
            f"sample rate {file_sr} Hz, config wants {sampling_rate} Hz: "
            f"rerun resample.py --sr2 {sampling_rate}"
        )
    if info.channels != 1:
        raise BadWavError(f"{info.channels} channels, expected mono: rerun resample.py")
    wav = np.ascontiguousarray(data[:, 0])
    if wav.size == 0:
        raise BadWavError("empty (no samples)")
    if not np.all(np.isfinite(wav)):
        raise BadWavError("contains NaN or infinite samples")
    if float(np.abs(wav).max()) < SILENCE_PEAK:
        raise BadWavError("silent (peak below -80 dBFS)")
    return wav


def _too_short_reason(num_samples: int, settings: FeatureSettings) -> str | None:
    if num_samples < 2 * settings.hop_length or num_samples < settings.filter_length // 2:
        return f"too short ({num_samples} samples, need at least {2 * settings.hop_length})"
    if ff.encoder_samples(num_samples, settings.sampling_rate) < ff.MIN_ENCODER_SAMPLES:
        return "too short for the speech encoder (under 25 ms)"
    return None


# --------------------------------------------------------------------------- workers


def init_worker(settings: FeatureSettings) -> None:
    """Prepare this process (pool initializer); the models load when a file first needs them.

    Loading lazily means a rerun whose files are all up to date never starts
    the encoder, and on a GPU machine never creates a CUDA context in each of
    the (cpu_count) workers just to skip every file.
    """
    _WORKER_MODELS.clear()
    torch.set_num_threads(1)
    _WORKER_MODELS["settings"] = settings


def _load_models(settings: FeatureSettings) -> None:
    """Load the speech encoder and f0 predictor once in this process.

    Failures are stored, not raised, so every task can report them as fatal
    instead of the pool breaking with an opaque error.
    """
    try:
        from modules.f0_predictors import get_f0_predictor
        from modules.speech_encoders import load_speech_encoder

        encoder = load_speech_encoder(
            settings.speech_encoder, weights_path=settings.encoder_path, device=settings.device
        )
        if int(encoder.dim) != settings.ssl_dim:
            raise UserError(
                f"model.ssl_dim is {settings.ssl_dim} but the {settings.speech_encoder} encoder "
                f"gives {encoder.dim}-wide features: set model.ssl_dim to {encoder.dim} in the "
                "config or rerun preprocess_flist_config.py with the right --speech_encoder"
            )
        predictor = get_f0_predictor(
            settings.f0_predictor,
            hop_length=settings.hop_length,
            sampling_rate=settings.sampling_rate,
            device=settings.device,
            threshold=0.05,
            weights_path=settings.f0_weights,
        )
    except UserError as error:
        _WORKER_MODELS["error"] = str(error)
        return
    except (ImportError, OSError, RuntimeError, ValueError, KeyError) as error:
        _WORKER_MODELS["error"] = (
            f"cannot load the {settings.speech_encoder} encoder or the {settings.f0_predictor} "
            f"predictor ({type(error).__name__}: {error})"
        )
        return
    _WORKER_MODELS.update(encoder=encoder, predictor=predictor)


def process_wav(wav_path: str) -> ItemResult:
    """Compute the missing or outdated features of one wav; a bad file is a failed result."""
    if "error" in _WORKER_MODELS:
        return ItemResult(wav_path, "failed", reason=_WORKER_MODELS["error"], fatal=True)
    settings: FeatureSettings = _WORKER_MODELS["settings"]
    try:
        info = soundfile.info(wav_path)
        stale = stale_outputs(wav_path, settings, int(info.frames))
        if not stale and info.samplerate == settings.sampling_rate and info.channels == 1:
            return ItemResult(wav_path, "skipped")
        if {"soft", "f0"} & set(stale) and "encoder" not in _WORKER_MODELS:
            _load_models(settings)
            if "error" in _WORKER_MODELS:
                return ItemResult(wav_path, "failed", reason=_WORKER_MODELS["error"], fatal=True)
        wav = read_dataset_wav(wav_path, settings.sampling_rate)
        reason = _too_short_reason(wav.shape[0], settings)
        if reason is not None:
            raise BadWavError(reason)
        written = compute_features(wav_path, wav, settings, sorted(stale), _WORKER_MODELS)
    except (BadWavError, UserError) as error:
        return ItemResult(wav_path, "failed", reason=str(error))
    except (soundfile.LibsndfileError, RuntimeError) as error:
        return ItemResult(wav_path, "failed", reason=f"{type(error).__name__}: {error}")
    except OSError as error:
        return ItemResult(wav_path, "failed", reason=f"cannot write: {error}")
    return ItemResult(wav_path, "done", outputs=tuple(written))


def compute_features(
    wav_path: str,
    wav: np.ndarray,
    settings: FeatureSettings,
    which: list[str],
    models: dict[str, Any],
) -> list[str]:
    """Compute and atomically write the named outputs (`soft`, `f0`, `spec`, `vol`, and the
    diffusion ones, see `diffusion_features`) in order."""
    from modules.mel_processing import spectrogram_torch

    written: list[str] = []
    audio_norm = torch.from_numpy(wav).unsqueeze(0)
    if "soft" in which:
        wav16k = librosa.resample(
            wav, orig_sr=settings.sampling_rate, target_sr=ff.ENCODER_SAMPLING_RATE
        )
        with torch.inference_mode():
            content = models["encoder"].encode(torch.from_numpy(wav16k).to(settings.device))
        if content.dim() != 3 or content.shape[1] != settings.ssl_dim:
            raise RuntimeError(f"encoder returned shape {tuple(content.shape)}")
        ff.write_content(ff.content_path(wav_path), content)
        written.append(ff.content_path(wav_path))
    if "f0" in which:
        f0, uv = models["predictor"].compute_f0_uv(wav)
        ff.write_pitch(ff.pitch_path(wav_path), f0, uv)
        written.append(ff.pitch_path(wav_path))
    if "spec" in which:
        spec = spectrogram_torch(
            audio_norm,
            settings.filter_length,
            settings.sampling_rate,
            settings.hop_length,
            settings.win_length,
            center=False,
        )
        ff.write_spec(ff.spec_path(wav_path), torch.squeeze(spec, 0))
        written.append(ff.spec_path(wav_path))
    if "vol" in which:
        from modules.f0_utils import VolumeExtractor

        volume = VolumeExtractor(settings.hop_length).extract(audio_norm)
        ff.write_volume(ff.volume_path(wav_path), torch.as_tensor(volume))
        written.append(ff.volume_path(wav_path))
    return written + diffusion_features(wav_path, audio_norm, settings, which)


def augmentation_draw(wav_path: str, peak: float) -> tuple[float, float]:
    """(log10 loudness factor, key shift in semitones) of a clip's augmented mel.

    Upstream's ranges: the factor from [-1, min(1, log10(1 / (peak + 1e-5)))]
    (louder only while the clip stays below full scale), the key shift from
    [-5, 5], drawn in that order; here from a generator seeded with the clip's
    `speaker/file` name instead of the unseeded global one, so a rerun or a
    resumed run writes the same pair.
    """
    rng = random.Random("/".join(Path(wav_path).parts[-2:]))
    max_log10 = min(1.0, math.log10(1.0 / (peak + 1e-5)))
    log10_gain = rng.uniform(-1.0, max_log10)
    return log10_gain, rng.uniform(-ff.MAX_AUG_KEYSHIFT, ff.MAX_AUG_KEYSHIFT)


def diffusion_features(
    wav_path: str, audio_norm: torch.Tensor, settings: FeatureSettings, which: list[str]
) -> list[str]:
    """The `--use_diff` outputs: `mel`, and `aug_mel` with `aug_vol` (always made together).

    As upstream: the mel of the clip; then the clip times 10^gain read with
    the key shift (`augmentation_draw`), its mel stored with the shift and its
    volume.
    """
    mel_settings = settings.diffusion_mel
    written: list[str] = []
    if mel_settings is None:
        return written
    audio = audio_norm.to(settings.device)
    if "mel" in which:
        ff.write_mel(ff.mel_path(wav_path), mel_settings.extract(audio)[0])
        written.append(ff.mel_path(wav_path))
    if "aug_mel" in which or "aug_vol" in which:
        from modules.f0_utils import VolumeExtractor

        log10_gain, keyshift = augmentation_draw(wav_path, float(audio_norm.abs().max()))
        louder = audio * (10**log10_gain)
        aug_mel = mel_settings.extract(louder, keyshift=keyshift)[0]
        ff.write_aug_mel(ff.aug_mel_path(wav_path), aug_mel, keyshift)
        aug_volume = VolumeExtractor(settings.hop_length).extract(louder.cpu())
        ff.write_volume(ff.aug_volume_path(wav_path), aug_volume)
        written += [ff.aug_mel_path(wav_path), ff.aug_volume_path(wav_path)]
    return written


# --------------------------------------------------------------------------- whole run


def find_wavs(in_dir: str) -> list[str]:
    """`<in_dir>/<speaker>/*.wav`, as upstream globs it, sorted."""
    root = Path(in_dir)
    if not root.is_dir():
        raise UserError(
            f"{in_dir}: dataset folder not found: run resample.py first or pass --in_dir"
        )
    wavs = [
        str(path)
        for speaker in sorted(root.iterdir())
        if speaker.is_dir() and not speaker.name.startswith(".")
        for path in sorted(speaker.glob("*.wav"))
        if not path.name.startswith(".") and path.is_file()
    ]
    if not wavs:
        raise UserError(f"{in_dir}: no <speaker>/*.wav files: run resample.py first")
    return wavs


def extract_dataset_features(
    in_dir: str, settings: FeatureSettings, num_processes: int = 1
) -> RunSummary:
    """Compute features for every wav under `in_dir`; bad files are reported, never fatal."""
    wavs = find_wavs(in_dir)
    ff.remove_stale_feature_temp_files(sorted({os.path.dirname(path) for path in wavs}))
    results = run_parallel(
        process_wav,
        wavs,
        wavs,
        num_processes=num_processes,
        description="features",
        initializer=init_worker,
        initargs=(settings,),
    )
    return RunSummary(title="features", results=results)
