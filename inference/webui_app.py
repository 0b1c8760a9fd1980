"""What the web UI does, without the page: find models, keep one loaded, convert, word errors.

webUI.py draws the page (inference/webui_page.py) and calls these. Keeping
them free of gradio lets the tests drive them directly, and lets the page
stay a thin list of widgets.

A `ModelCache` holds one `Svc` for one choice of (model, config, cluster
model or index): converting again with the same choice reuses it, a new
choice replaces it. Requests run in gradio's worker threads, so the cache
is guarded by a lock.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import soundfile

from checkpoint.names import GENERATOR_FILES, newest_generator
from core.errors import UserError
from core.safe_io import atomic_write
from inference.diffusion_stage import DEFAULT_DIFFUSION_CONFIG, DEFAULT_DIFFUSION_MODEL

logger = logging.getLogger("so-vits-svc.webui")

NO_MODEL = (
    f"no model loaded: pick a model folder (logs/<name>) or upload a {GENERATOR_FILES} "
    "(and its config.json if the file carries none), then press Load model"
)
NO_AUDIO = "no input audio: upload a file or record one, then press Convert"


@dataclass(frozen=True)
class DiffusionChoice:
    """Shallow diffusion, diffusion only and the enhancer: `inference_main.py`'s -shd/-od/-eh."""

    shallow: bool = False
    only: bool = False
    model_path: str = DEFAULT_DIFFUSION_MODEL
    config_path: str | None = DEFAULT_DIFFUSION_CONFIG  # None: config.yaml beside the model
    enhance: bool = False

    def svc_options(self) -> dict[str, Any]:
        """The `Svc` arguments for this choice."""
        return {
            "shallow_diffusion": self.shallow,
            "only_diffusion": self.only,
            "diffusion_model_path": self.model_path,
            "diffusion_config_path": self.config_path,
            "nsf_hifigan_enhance": self.enhance,
        }


@dataclass(frozen=True)
class ModelChoice:
    """The files one loaded model is made of; equal choices share one loaded `Svc`."""

    model_path: str
    config_path: str | None  # None: the one the model file carries
    cluster_path: str | None = None
    feature_retrieval: bool = False
    diffusion: DiffusionChoice = DiffusionChoice()


@dataclass(frozen=True)
class ConvertSettings:
    """The page's conversion controls, with `inference_main.py`'s defaults."""

    speaker: str
    transpose: float = 0
    auto_predict_f0: bool = False
    f0_predictor: str = "pm"
    noise_scale: float = 0.4
    slice_db: float = -40
    pad_seconds: float = 0.5
    cluster_ratio: float = 0
    k_step: int = 100
    second_encoding: bool = False
    enhancer_adaptive_key: float = 0


def folder_model(folder: str | os.PathLike) -> tuple[Path, Path]:
    """The newest generator of a model folder and the folder's config.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: model folder not found: pick one under logs/")
    newest = newest_generator(folder)
    if newest is None:
        raise UserError(
            f"{folder}: no {GENERATOR_FILES} in this folder: train a model or upload one"
        )
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{config}: not found: the model folder needs its config.json")
    return newest, config


def model_folders(logs_dir: str | os.PathLike) -> list[str]:
    """Folders under `logs_dir` holding a generator and a config.json, sorted by name."""
    logs_dir = Path(logs_dir)
    if not logs_dir.is_dir():
        return []
    return sorted(
        str(folder)
        for folder in logs_dir.iterdir()
        if folder.is_dir()
        and (folder / "config.json").is_file()
        and newest_generator(folder) is not None
    )


def resolve_choice(
    folder: str | None,
    uploaded_model: str | None,
    uploaded_config: str | None,
    cluster_path: str | None = None,
    feature_retrieval: bool = False,
    diffusion: DiffusionChoice | None = None,
) -> ModelChoice:
    """Uploaded files win over the folder; an uploaded model may carry its own config."""
    if uploaded_model or uploaded_config:
        if not uploaded_model:
            raise UserError(f"upload the {GENERATOR_FILES} too: a config alone is no model")
        model = Path(uploaded_model)
        config = Path(uploaded_config) if uploaded_config else None
    elif folder:
        model, config = folder_model(folder)
    else:
        raise UserError(NO_MODEL)
    return ModelChoice(
        str(model),
        None if config is None else str(config),
        cluster_path or None,
        bool(feature_retrieval),
        diffusion or DiffusionChoice(),
    )


class ModelCache:
    """One loaded `Svc`, kept until a different model is asked for."""

    def __init__(
        self,
        device: str | None = None,
        encoder_path: str | None = None,
        f0_weights: str | None = None,
        trust_pickle: bool = False,
        factory: Callable[..., Any] | None = None,
    ) -> None:
        self._options = {
            "device": device,
            "encoder_path": encoder_path,
            "f0_weights": f0_weights,
            "trust_pickle": trust_pickle,
        }
        self._factory = factory
        self._lock = threading.Lock()
        self._choice: ModelChoice | None = None
        self._svc: Any = None
        self.loads = 0  # how many times a model was read from disk

    @property
    def current(self) -> Any:
        """The loaded `Svc`, or None."""
        return self._svc

    def get(self, choice: ModelChoice) -> Any:
        """The `Svc` for `choice`: the loaded one when it is the same, else a fresh load."""
        with self._lock:
            if self._svc is not None and choice == self._choice:
                return self._svc
            factory = self._factory
            if factory is None:
                from inference.svc import Svc

                factory = Svc
            if self._svc is not None:
                self._svc.unload_model()
                self._svc, self._choice = None, None
            svc = factory(
                choice.model_path,
                choice.config_path,
                cluster_model_path=choice.cluster_path,
                feature_retrieval=choice.feature_retrieval,
                **choice.diffusion.svc_options(),
                **self._options,
            )
            self.loads += 1
            self._svc, self._choice = svc, choice
            logger.info("loaded %s with %s", choice.model_path, choice.config_path)
            return svc


def speakers(svc: Any) -> list[str]:
    """The model's speaker names in config order (ids as text when the config names none)."""
    names = list(svc.spk2id)
    return names or [str(i) for i in range(svc.net_g_ms.emb_g.num_embeddings)]


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Mono float audio and its rate from any file libsndfile or librosa reads."""
    name = Path(path).name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa's fallback chatter; the error says it all
            audio, sampling_rate = librosa.load(path, sr=None, mono=True)
    except Exception as error:  # any decoder failure means the upload is not audio
        raise UserError(
            f"{name}: not an audio file this server can read (use wav, flac, ogg or mp3)"
        ) from error
    if audio.size == 0:
        raise UserError(f"{name}: the audio is empty")
    return audio, int(sampling_rate)


def result_name(source: str | os.PathLike, settings: ConvertSettings) -> str:
    """`<input>_<key>_<speaker>.wav`, the key as inference_main.py words it."""
    key = "auto" if settings.auto_predict_f0 else f"{settings.transpose:g}key"
    speaker = re.sub(r"[^\w.-]+", "_", settings.speaker) or "speaker"
    return f"{Path(source).stem}_{key}_{speaker}.wav"


def convert_file(
    svc: Any,
    audio_path: str | os.PathLike | None,
    settings: ConvertSettings,
    out_dir: str | os.PathLike,
    progress: Callable[[float], None] | None = None,
) -> tuple[Path, int, int]:
    """Convert one file; returns (written wav, its sampling rate, its length in samples)."""
    if not audio_path:
        raise UserError(NO_AUDIO)
    if not 0 <= settings.cluster_ratio <= 1:
        raise UserError(f"cluster/index ratio {settings.cluster_ratio}: must be between 0 and 1")
    svc.speaker_id(settings.speaker)  # an unknown speaker fails before any work
    audio, sampling_rate = read_audio(audio_path)
    try:
        converted = svc.convert_array(
            audio,
            sampling_rate,
            settings.speaker,
            transpose=settings.transpose,
            slice_db=settings.slice_db,
            cluster_infer_ratio=settings.cluster_ratio,
            auto_predict_f0=settings.auto_predict_f0,
            noise_scale=settings.noise_scale,
            pad_seconds=settings.pad_seconds,
            f0_predictor=settings.f0_predictor,
            progress=progress,
            k_step=settings.k_step,
            second_encoding=settings.second_encoding,
            enhancer_adaptive_key=settings.enhancer_adaptive_key,
        )
    finally:  # a failed conversion (GPU out of memory) gives its cached memory back too
        svc.clear_empty()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / result_name(audio_path, settings)
    with atomic_write(out_path) as handle:
        soundfile.write(handle, converted, svc.target_sample, format="WAV")
    return out_path, int(svc.target_sample), int(converted.shape[0])


def error_message(error: BaseException) -> str:
    """One readable line for the page: the user's mistake as is, anything else named."""
    if isinstance(error, UserError):
        return f"error: {error}"
    logger.error("web UI request failed", exc_info=error)
    return (
        f"error: {type(error).__name__}: {error} (an unexpected failure; the server log "
        "has the details)"
    )
