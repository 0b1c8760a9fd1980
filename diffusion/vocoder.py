"""The pretrained NSF-HiFiGAN vocoder that turns shallow-diffusion mels into audio.

Upstream's `diffusion/vocoder.py` `Vocoder`, reading openvpi's released
`nsf_hifigan_20221211` in upstream's layout: the weights file
`pretrain/nsf_hifigan/model` (`{"generator": state_dict}`, old-style
`weight_g`/`weight_v` names) with its `config.json` beside it. The network is
the project's one NSF-HiFiGAN `Generator` (modules/nsf_hifigan.py) with the
vocoder's switches; the mel it reads is made by `MelSettings.extract`, the
vocoder's own STFT (modules/mel_processing.vocoder_mel), which needs the
config but not the weights. Weights are read as data only and loaded on the
first `infer`, as upstream does, so extracting mels never needs them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from checkpoint.legacy_keys import from_legacy_state_dict
from core import components
from core.errors import UserError
from core.safe_io import load_torch_data
from modules.mel_processing import vocoder_mel
from modules.nsf_hifigan import Generator

DEFAULT_CKPT = components.NSF_HIFIGAN_WEIGHTS
CONFIG_NAME = "config.json"
RELEASE_URL = (
    "https://github.com/openvpi/vocoders/releases/download/nsf-hifigan-v1/nsf_hifigan_20221211.zip"
)
GET_VOCODER = (
    f"download nsf_hifigan_20221211.zip from openvpi's vocoders releases ({RELEASE_URL}) "
    "and unzip it into pretrain/ (it holds pretrain/nsf_hifigan/model and config.json)"
)
_GENERATOR_KEYS = (
    "resblock",
    "resblock_kernel_sizes",
    "resblock_dilation_sizes",
    "upsample_rates",
    "upsample_initial_channel",
    "upsample_kernel_sizes",
)


class VocoderError(UserError):
    """The vocoder's files are missing, unreadable or do not fit each other."""


@dataclass(frozen=True)
class MelSettings:
    """The vocoder's STFT; the defaults are those of the nsf_hifigan_20221211 release."""

    sampling_rate: int = 44100
    n_fft: int = 2048
    win_size: int = 2048
    hop_size: int = 512
    num_mels: int = 128
    fmin: float = 40.0
    fmax: float = 16000.0

    def extract(
        self, audio: torch.Tensor, keyshift: float = 0.0, speed: float = 1.0
    ) -> torch.Tensor:
        """audio (B, T) at `sampling_rate` -> natural-log mel (B, frames, num_mels)."""
        mel = vocoder_mel(
            audio,
            self.sampling_rate,
            self.n_fft,
            self.win_size,
            self.hop_size,
            self.num_mels,
            self.fmin,
            self.fmax,
            keyshift=keyshift,
            speed=speed,
        )
        return mel.transpose(1, 2)


RELEASED_MEL = MelSettings()


def config_path(vocoder_ckpt: str | Path) -> Path:
    """Upstream's rule: `config.json` in the folder of the weights file."""
    ckpt = Path(vocoder_ckpt)
    if ckpt.is_dir():
        raise VocoderError(
            f"{ckpt}: a folder; name the weights file in it (vocoder.ckpt), e.g. {DEFAULT_CKPT}"
        )
    return ckpt.parent / CONFIG_NAME


def read_vocoder_config(vocoder_ckpt: str | Path) -> dict[str, Any]:
    """The vocoder's config.json as a dict; a one-line error when it is absent or broken."""
    path = config_path(vocoder_ckpt)
    if not path.is_file():
        raise VocoderError(
            f"{path}: vocoder config missing (it belongs beside the model); {GET_VOCODER}"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VocoderError(
            f"{path}: cannot read the vocoder config ({error}); {GET_VOCODER}"
        ) from error
    if not isinstance(config, dict):
        raise VocoderError(f"{path}: not a vocoder config (a JSON object); {GET_VOCODER}")
    return config


def _need(config: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in config:
        raise VocoderError(f"{path}: key {key!r} missing; {GET_VOCODER}")
    return config[key]


def mel_settings_from_config(config: Mapping[str, Any], path: Path) -> MelSettings:
    """The STFT part of a vocoder config.json."""
    try:
        return MelSettings(
            sampling_rate=int(_need(config, "sampling_rate", path)),
            n_fft=int(_need(config, "n_fft", path)),
            win_size=int(_need(config, "win_size", path)),
            hop_size=int(_need(config, "hop_size", path)),
            num_mels=int(_need(config, "num_mels", path)),
            fmin=float(_need(config, "fmin", path)),
            fmax=float(_need(config, "fmax", path)),
        )
    except (TypeError, ValueError) as error:
        raise VocoderError(f"{path}: an STFT setting is not a number ({error})") from error


def mel_settings_for(vocoder_ckpt: str | Path) -> tuple[MelSettings, str | None]:
    """The mel settings for preprocessing, and a note when the release's defaults stand in.

    The mel needs only the vocoder's STFT settings. Without its config.json the
    released nsf_hifigan_20221211 settings are used (the mels are then the
    ones that vocoder reads); a broken config.json is still an error.
    """
    path = config_path(vocoder_ckpt)
    if not path.exists():
        note = (
            f"{path} not found: mels use the nsf_hifigan_20221211 release's STFT settings "
            f"({RELEASED_MEL.sampling_rate} Hz, hop {RELEASED_MEL.hop_size}, "
            f"{RELEASED_MEL.num_mels} mels); put the vocoder there before training"
        )
        return RELEASED_MEL, note
    return mel_settings_from_config(read_vocoder_config(vocoder_ckpt), path), None


def _ints(value: Any, key: str, path: Path) -> list[int]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise VocoderError(f"{path}: {key} must be a list of integers, got {value!r}")
    return [int(item) for item in value]


def build_generator(config: Mapping[str, Any], path: Path) -> Generator:
    """An untrained vocoder network shaped by config.json (upstream's `Generator(h)`)."""
    mel = mel_settings_from_config(config, path)
    values = {key: _need(config, key, path) for key in _GENERATOR_KEYS}
    rates = _ints(values["upsample_rates"], "upsample_rates", path)
    kernels = _ints(values["upsample_kernel_sizes"], "upsample_kernel_sizes", path)
    if int(np.prod(rates)) != mel.hop_size or len(rates) != len(kernels):
        raise VocoderError(
            f"{path}: upsample_rates {rates} must multiply to hop_size "
            f"{mel.hop_size}, one kernel each ({kernels})"
        )
    # The vocoder pads with (k - u) // 2 and stride // 2, the synthesizer's decoder
    # with (k - u + 1) // 2 and (stride + 1) // 2: equal when these are even, as in
    # every released config.
    strides = [int(np.prod(rates[i + 1 :])) for i in range(len(rates) - 1)]
    if any((k - u) % 2 for k, u in zip(kernels, rates)) or any(s % 2 for s in strides):
        raise VocoderError(
            f"{path}: upsample kernels minus rates and the products of later "
            "rates must be even (as in nsf_hifigan_20221211)"
        )
    return Generator(
        sampling_rate=mel.sampling_rate,
        inter_channels=mel.num_mels,
        resblock=str(values["resblock"]),
        resblock_kernel_sizes=_ints(values["resblock_kernel_sizes"], "resblock_kernel_sizes", path),
        resblock_dilation_sizes=[
            _ints(d, "resblock_dilation_sizes", path) for d in values["resblock_dilation_sizes"]
        ],
        upsample_rates=rates,
        upsample_initial_channel=int(values["upsample_initial_channel"]),
        upsample_kernel_sizes=kernels,
        gin_channels=0,
        frame_rate_source=True,
    )


def load_generator(vocoder_ckpt: str | Path, device: str | torch.device = "cpu") -> Generator:
    """The vocoder with its released weights, weight norm folded, in eval mode."""
    ckpt = Path(vocoder_ckpt)
    path = config_path(ckpt)
    # Building draws initial weights; fork the CPU random state so that loading the
    # vocoder (first use may come mid-training) leaves the caller's draws unchanged.
    with torch.random.fork_rng(devices=[]):
        generator = build_generator(read_vocoder_config(ckpt), path)
    if not ckpt.is_file():
        raise VocoderError(f"{ckpt}: vocoder weights missing; {GET_VOCODER}")
    stored = load_torch_data(ckpt)
    if not isinstance(stored, dict) or not isinstance(stored.get("generator"), dict):
        raise VocoderError(
            f"{ckpt}: not an NSF-HiFiGAN vocoder file (no 'generator' weights); {GET_VOCODER}"
        )
    own = generator.state_dict()
    state = from_legacy_state_dict(stored["generator"], own.keys())
    try:
        generator.load_state_dict(state)
    except RuntimeError as error:
        missing = sorted(set(own) - set(state))[:3]
        unexpected = sorted(set(state) - set(own))[:3]
        detail = (
            f"missing {missing}, unexpected {unexpected}"
            if missing or unexpected
            else (str(error).splitlines()[-1].strip())
        )
        raise VocoderError(
            f"{ckpt}: the weights do not fit {path} ({detail}); use the "
            "config.json that came with the model"
        ) from error
    generator.remove_weight_norm()
    return generator.requires_grad_(False).eval().to(device)


class Vocoder:
    """Mel extraction and mel-to-audio with one vocoder (upstream's `Vocoder`)."""

    def __init__(
        self,
        vocoder_type: str = "nsf-hifigan",
        vocoder_ckpt: str | Path = DEFAULT_CKPT,
        device: str | torch.device | None = None,
    ) -> None:
        self.scale = components.diffusion_vocoder_scale(vocoder_type)
        self.vocoder_type = vocoder_type
        self.vocoder_ckpt = Path(vocoder_ckpt)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.mel = mel_settings_from_config(
            read_vocoder_config(vocoder_ckpt), config_path(vocoder_ckpt)
        )
        self.vocoder_sample_rate = self.mel.sampling_rate
        self.vocoder_hop_size = self.mel.hop_size
        self.dimension = self.mel.num_mels
        self._generator: Generator | None = None

    def network(self) -> Generator:
        """The generator, its weights read on first use; raises VocoderError."""
        if self._generator is None:
            self._generator = load_generator(self.vocoder_ckpt, self.device)
        return self._generator

    def extract(self, audio: torch.Tensor, sample_rate: int, keyshift: float = 0.0) -> torch.Tensor:
        """audio (B, T) -> log mel (B, frames, dimension); audio must be at the vocoder's rate."""
        if sample_rate != self.vocoder_sample_rate:
            raise VocoderError(
                f"{config_path(self.vocoder_ckpt)}: the vocoder works at "
                f"{self.vocoder_sample_rate} Hz, the audio is {sample_rate} Hz: resample the "
                f"dataset to {self.vocoder_sample_rate} Hz (resample.py --sr2)"
            )
        return self.mel.extract(audio, keyshift=keyshift)

    def infer(
        self, mel: torch.Tensor, f0: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """mel (B, frames, dimension), f0 (B, >= frames, 1) Hz -> audio (B, 1, frames * hop)."""
        network = self.network()
        f0 = f0[:, : mel.size(1), 0]
        with torch.no_grad():
            features = mel.transpose(1, 2) * self.scale
            return network(features, f0, generator=generator)
