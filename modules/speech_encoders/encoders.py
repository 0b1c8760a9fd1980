"""The speech (content) encoders so-vits-svc 4.1 names in `model.speech_encoder`.

Each turns 16 kHz audio into the (1, dim, T) features preprocessing stores in
`X.wav.soft.pt` and inference feeds the model; the name in the config picks the
network, the layer it is read at, and whether `final_proj` is applied.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from core.components import (
    CONTENTVEC_WEIGHTS,
    HUBERT_SOFT_WEIGHTS,
    SPEECH_ENCODERS,
    speech_encoder,
)
from core.errors import UserError
from modules.speech_encoders.hubert import FairseqHubert, load_fairseq_hubert
from modules.speech_encoders.hubert_soft import HubertSoftNetwork, load_hubert_soft

CONTENTVEC_PATH = CONTENTVEC_WEIGHTS
HUBERT_SOFT_PATH = HUBERT_SOFT_WEIGHTS

_WHERE_TO_GET = {
    CONTENTVEC_PATH: (
        "download checkpoint_best_legacy_500.pt (the 'legacy' model) from the ContentVec "
        "project's README, https://github.com/auspicious3000/contentvec, into pretrain/"
    ),
    HUBERT_SOFT_PATH: (
        "download hubert-soft-0d54a1f4.pt from bshall/hubert's releases, "
        "https://github.com/bshall/hubert/releases, into pretrain/"
    ),
}

SUPPORTED_ENCODERS: tuple[str, ...] = tuple(SPEECH_ENCODERS)


def _as_mono_batch(wav16k: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N,) or (N, channels) audio to a float32 (1, N) batch on `device`, as upstream does."""
    if not isinstance(wav16k, torch.Tensor):
        wav16k = torch.as_tensor(wav16k)
    if wav16k.dim() == 2:  # (samples, channels): average the channels
        wav16k = wav16k.mean(-1)
    if wav16k.dim() != 1:
        raise ValueError(f"expected 1-D audio (or samples x channels), got {tuple(wav16k.shape)}")
    return wav16k.to(device=device, dtype=torch.float32).view(1, -1)


class SpeechEncoder(ABC):
    """A frozen content encoder: 16 kHz audio in, (1, dim, T) features out."""

    name: str
    dim: int
    device: torch.device

    @abstractmethod
    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        """Features (1, dim, T) for 1-D float audio at 16 kHz (2-D (N, channels) is averaged)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, device={self.device})"


class ContentVecEncoder(SpeechEncoder):
    """ContentVec/HuBERT hidden states at one layer, optionally through `final_proj`."""

    def __init__(self, name: str, model: FairseqHubert, output_layer: int,
                 use_final_proj: bool, device: torch.device, source: str = "checkpoint") -> None:
        if use_final_proj and model.final_proj is None:
            raise UserError(
                f"{source}: has no final_proj, which speech encoder {name!r} needs; "
                f"use ContentVec's checkpoint_best_legacy_500.pt"
            )
        self.name = name
        self.model = model
        self.output_layer = output_layer
        self.use_final_proj = use_final_proj
        self.device = device
        self.dim = (model.final_proj.out_features if use_final_proj and model.final_proj
                    else model.config.encoder_embed_dim)

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        source = _as_mono_batch(wav16k, self.device)
        if source.shape[1] < self.model.min_samples:
            raise UserError(
                f"audio of {source.shape[1]} samples is shorter than the "
                f"{self.model.min_samples} samples {self.name} needs; remove such short clips"
            )
        with torch.no_grad():
            features = self.model.extract_features(source, output_layer=self.output_layer)
            if self.use_final_proj:
                features = self.model.final_proj(features)
        return features.transpose(1, 2)


class HubertSoftEncoder(SpeechEncoder):
    """HuBERT-Soft's 256-channel soft units."""

    _MIN_SAMPLES = 320  # with the 40-sample edge padding this yields one frame

    def __init__(self, model: HubertSoftNetwork, device: torch.device) -> None:
        self.name = "hubertsoft"
        self.model = model
        self.device = device
        self.dim = model.dim

    def encode(self, wav16k: torch.Tensor) -> torch.Tensor:
        source = _as_mono_batch(wav16k, self.device)
        if source.shape[1] < self._MIN_SAMPLES:
            raise UserError(
                f"audio of {source.shape[1]} samples is shorter than the {self._MIN_SAMPLES} "
                f"samples {self.name} needs; remove such short clips"
            )
        with torch.no_grad():
            units = self.model.units(source.unsqueeze(1))
        return units.transpose(1, 2)


def _existing_weights(weights_path: str | Path | None, default: str) -> Path:
    path = Path(weights_path if weights_path is not None else default)
    if not path.is_file():
        hint = _WHERE_TO_GET[default]
        raise UserError(f"{path}: speech encoder weights not found; {hint}")
    return path


def load_speech_encoder(name: str, weights_path: str | Path | None = None,
                        device: str | torch.device = "cpu") -> SpeechEncoder:
    """Build the encoder a config's `model.speech_encoder` names, reading its weights.

    `weights_path` defaults to the file name upstream expects under `pretrain/`.
    """
    spec = speech_encoder(name)
    target = torch.device(device)
    path = _existing_weights(weights_path, spec.default_weights)
    if spec.network == "contentvec":
        model = load_fairseq_hubert(path, device=target)
        return ContentVecEncoder(name, model, spec.output_layer, spec.final_proj,
                                 target, source=str(path))
    return HubertSoftEncoder(load_hubert_soft(path, device=target), target)
