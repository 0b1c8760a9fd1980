"""Shallow diffusion at conversion time: the diffusion model and its vocoder, loaded once.

Upstream so-vits-svc 4.1's `-shd` and `-od`: with shallow diffusion the
synthesizer's audio becomes a vocoder mel that the diffusion model refines
from step `k_step` (`-ks`) before the vocoder renders it again; diffusion only
makes the mel from noise, conditioned on content, pitch, loudness and speaker,
with no synthesizer. The sampler and its speedup are the diffusion config's
`infer` section. Unlike upstream, a missing model is an error rather than a
silent fallback to the synthesizer, and the speaker mix reaches the diffusion
model as per-frame weights instead of failing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from core.errors import UserError
from diffusion.config import DiffusionConfig, load_diffusion_config
from diffusion.files import CONFIG_BESIDE_MODEL, load_unit2mel
from diffusion.unit2mel import Unit2Mel
from diffusion.vocoder import Vocoder

logger = logging.getLogger("so-vits-svc.inference")

DEFAULT_DIFFUSION_MODEL = "logs/44k/diffusion/model_0.pt"
DEFAULT_DIFFUSION_CONFIG = "logs/44k/diffusion/config.yaml"


def fit_frames(values: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T', ...) cut or extended (last frame repeated) to (B, frames, ...)."""
    if values.shape[1] >= frames:
        return values[:, :frames]
    tail = values[:, -1:].expand(-1, frames - values.shape[1], *values.shape[2:])
    return torch.cat([values, tail], dim=1)


class DiffusionStage:
    """A diffusion model, its config and its vocoder, for `Svc` to call per piece."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        config_path: str | os.PathLike | None,
        device: torch.device,
        only_diffusion: bool,
    ) -> None:
        flag = "-od" if only_diffusion else "-shd"
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise UserError(
                f"{self.model_path}: diffusion model not found: train one with train_diff.py "
                f"or name yours with -dm, or run without {flag}"
            )
        config_file = Path(config_path or self.model_path.parent / CONFIG_BESIDE_MODEL)
        self.config: DiffusionConfig = load_diffusion_config(config_file)
        self.vocoder = Vocoder(self.config.vocoder.type, self.config.vocoder.ckpt, device)
        self.vocoder.network()  # a missing or broken vocoder fails now, not mid-song
        self.model: Unit2Mel
        self.model, _ = load_unit2mel(self.model_path, config_file, device, self.vocoder.dimension)
        self.device = device
        if only_diffusion and self.model.k_step_max != self.model.timesteps:
            raise UserError(
                f"{self.model_path}: trained on the first {self.model.k_step_max} of "
                f"{self.model.timesteps} steps (k_step_max), so it can only refine the "
                "synthesizer's mel: use -shd instead of -od, or a model trained on every step"
            )

    @property
    def sample_rate(self) -> int:
        return int(self.vocoder.vocoder_sample_rate)

    def check_fits(self, sample_rate: int, hop_size: int, what: str) -> None:
        """The mel frames must be the synthesizer's (or the diffusion data's) frames."""
        if sample_rate != self.sample_rate or hop_size != self.vocoder.vocoder_hop_size:
            raise UserError(
                f"{self.config.vocoder.ckpt}: the vocoder works at {self.sample_rate} Hz with "
                f"hop {self.vocoder.vocoder_hop_size}, {what} at {sample_rate} Hz with hop "
                f"{hop_size}: use a model and vocoder made for the same rate and hop"
            )

    def check_k_step(self, k_step: int) -> None:
        """Shallow diffusion starts at most at the last step the model was trained on."""
        top = self.model.k_step_max
        if not 1 <= k_step <= top:
            raise UserError(
                f"-ks {k_step}: {self.model_path} was trained on {top} diffusion steps: "
                f"use -ks between 1 and {top}"
            )
        speedup, method = self.config.infer.speedup, self.config.infer.method
        if method not in ("ddim", "pndm") and k_step // speedup < 2:
            raise UserError(
                f"-ks {k_step}: {method} with infer.speedup {speedup} needs -ks {2 * speedup} "
                "or more: raise -ks or lower infer.speedup in the diffusion config"
            )

    def _check_speaker(self, speaker: torch.Tensor) -> None:
        if not self.model.has_speakers or speaker.is_floating_point():
            return
        if int(speaker.max()) >= int(self.model.n_spk or 1):
            raise UserError(
                f"{self.model_path}: speaker id {int(speaker.max())} but the diffusion model "
                f"has {self.model.n_spk} speakers: train it on the synthesizer's speakers"
            )

    def render(
        self,
        units: torch.Tensor,
        f0: torch.Tensor,
        volume: torch.Tensor,
        speaker: torch.Tensor,
        mel: torch.Tensor | None,
        k_step: int,
    ) -> torch.Tensor:
        """Audio (frames * hop,) from content (1, D, T), f0 Hz (1, T), volume (1, T').

        `speaker` is an id tensor (1, 1) or per-frame mix weights (T, n_spk);
        `mel` (1, T, bins), the synthesizer's audio as a vocoder mel, makes it
        shallow diffusion from `k_step`; None makes the mel from noise.
        """
        self._check_speaker(speaker)
        frames = f0.shape[1]
        as_float = {"device": self.device, "dtype": torch.float32}
        f0 = f0.to(**as_float)[:, :, None]
        units = fit_frames(units.to(**as_float).transpose(1, 2), frames)
        volume = fit_frames(volume.to(**as_float)[:, :, None], frames)
        if mel is not None:
            mel = fit_frames(mel.to(**as_float), frames)
        if speaker.is_floating_point():
            speaker = fit_frames(speaker.to(**as_float)[None], frames)
        with torch.no_grad():
            mel_out = self.model(
                units,
                f0,
                volume,
                spk_id=speaker.to(self.device),
                gt_spec=mel,
                infer=True,
                infer_speedup=self.config.infer.speedup,
                method=self.config.infer.method,
                k_step=k_step,
                use_tqdm=False,
            )
            audio = self.vocoder.infer(mel_out, f0)
        return audio[0, 0].float()
