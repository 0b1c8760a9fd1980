"""Unit2Mel: content, pitch, loudness and speaker in; a 128-bin log mel out, by diffusion.

Upstream so-vits-svc 4.1's shallow-diffusion model with its parameter names
(`unit_embed`, `f0_embed`, `volume_embed`, `aug_shift_embed`, `spk_embed`,
`decoder.*`) and its call signature, so its files and callers work here.

Where upstream fails this works, equal to upstream wherever upstream works:
`init_spkmix` (upstream reads a missing attribute) and the per-frame speaker
mix, `spk_id` of shape (T, n_spk) or (B, T, n_spk) holding per-frame weights
(upstream applies the synthesizer's (B, H, T) arithmetic to a (B, T, H)
tensor): each frame adds sum_k w_k * spk_embed(k), exactly what
`spk_mix_dict` adds for constant weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from core.errors import UserError
from diffusion.config import DiffusionConfig
from diffusion.gaussian import GaussianDiffusion, LossTerms
from diffusion.wavenet import WaveNet


class Unit2Mel(nn.Module):
    """The condition embeddings and the GaussianDiffusion decoder they drive."""

    def __init__(
        self,
        input_channel: int,
        n_spk: int | None,
        use_pitch_aug: bool = False,
        out_dims: int = 128,
        n_layers: int = 20,
        n_chans: int = 384,
        n_hidden: int = 256,
        timesteps: int | None = 1000,
        k_step_max: int | None = 1000,
    ) -> None:
        super().__init__()
        self.unit_embed = nn.Linear(input_channel, n_hidden)
        self.f0_embed = nn.Linear(1, n_hidden)
        self.volume_embed = nn.Linear(1, n_hidden)
        self.aug_shift_embed = nn.Linear(1, n_hidden, bias=False) if use_pitch_aug else None
        self.n_spk = n_spk
        if n_spk is not None and n_spk > 1:
            self.spk_embed = nn.Embedding(n_spk, n_hidden)
        self.timesteps = timesteps if timesteps is not None else 1000
        k = k_step_max if k_step_max is not None else 0
        self.k_step_max = k if 0 < k < self.timesteps else self.timesteps
        self.n_hidden = n_hidden
        self.input_channel = input_channel
        denoiser = WaveNet(out_dims, n_layers, n_chans, n_hidden)
        self.decoder = GaussianDiffusion(
            denoiser, out_dims=out_dims, timesteps=self.timesteps, k_step=self.k_step_max
        )

    @classmethod
    def from_config(cls, config: DiffusionConfig, out_dims: int = 128) -> Unit2Mel:
        """The model a diffusion YAML describes; `out_dims` is the vocoder's mel bins."""
        model = config.model
        return cls(
            config.data.encoder_out_channels,
            model.n_spk,
            model.use_pitch_aug,
            out_dims,
            model.n_layers,
            model.n_chans,
            model.n_hidden,
            model.timesteps,
            model.k_step_max,
        )

    @property
    def has_speakers(self) -> bool:
        """True when the model embeds speakers (n_spk > 1)."""
        return self.n_spk is not None and self.n_spk > 1

    def init_spkmix(self, n_spk: int) -> None:
        """Upstream's set-up call for the per-frame mix; the mix reads the embeddings directly.

        Only checks that the mix's speaker count is the model's.
        """
        if self.has_speakers and n_spk != self.n_spk:
            raise UserError(
                f"speaker mix over {n_spk} speakers but the diffusion model has {self.n_spk}: "
                "use the diffusion model trained on the same speakers"
            )

    def _speaker_term(
        self,
        spk_id: torch.Tensor | None,
        spk_mix_dict: Mapping[int, float] | None,
        device: torch.device,
    ) -> torch.Tensor | float:
        """What the speaker adds to the (B, T, H) condition (0 without speakers)."""
        if not self.has_speakers:
            return 0.0
        if spk_mix_dict is not None:
            term: torch.Tensor | float = 0.0
            for sid, weight in spk_mix_dict.items():
                index = torch.tensor([[int(sid)]], dtype=torch.long, device=device)
                term = term + weight * self.spk_embed(index)
            return term
        if spk_id is None:
            raise UserError("this diffusion model has several speakers: pass a speaker id")
        if spk_id.dim() >= 2 and spk_id.shape[-1] > 1:  # per-frame weights (…, T, n_spk)
            if spk_id.shape[-1] != self.n_spk:
                raise UserError(
                    f"speaker mix has {spk_id.shape[-1]} speakers but the diffusion model "
                    f"has {self.n_spk}: use the diffusion model trained on the same speakers"
                )
            return spk_id.to(self.spk_embed.weight.dtype) @ self.spk_embed.weight
        return self.spk_embed(spk_id)

    def condition(
        self,
        units: torch.Tensor,
        f0: torch.Tensor,
        volume: torch.Tensor,
        spk_id: torch.Tensor | None = None,
        spk_mix_dict: Mapping[int, float] | None = None,
        aug_shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The (B, T, n_hidden) condition: units (B, T, C), f0 Hz and volume (B, T, 1)."""
        if units.shape[-1] != self.input_channel:
            raise UserError(
                f"content width {units.shape[-1]} but the diffusion model expects "
                f"{self.input_channel}: use a diffusion model trained with the same speech encoder"
            )
        x = self.unit_embed(units) + self.f0_embed((1 + f0 / 700).log()) + self.volume_embed(volume)
        x = x + self._speaker_term(spk_id, spk_mix_dict, units.device)
        if self.aug_shift_embed is not None and aug_shift is not None:
            x = x + self.aug_shift_embed(aug_shift / 5)
        return x

    def loss_terms(
        self,
        units: torch.Tensor,
        f0: torch.Tensor,
        volume: torch.Tensor,
        spk_id: torch.Tensor | None,
        gt_spec: torch.Tensor,
        aug_shift: torch.Tensor | None = None,
    ) -> LossTerms:
        """The training loss and its parts (the steps and noise drawn as upstream draws them)."""
        condition = self.condition(units, f0, volume, spk_id, aug_shift=aug_shift)
        return self.decoder.loss_terms(condition, gt_spec)

    def check_steps(self, shallow: bool, k_step: int) -> None:
        """Refuse what the model was not trained for, as upstream does, in one line."""
        if shallow and k_step > self.k_step_max:
            raise UserError(
                f"shallow diffusion k_step {k_step} is more than the model's k_step_max "
                f"{self.k_step_max}: lower -ks to {self.k_step_max} or less"
            )
        if not shallow and self.k_step_max != self.timesteps:
            raise UserError(
                f"this diffusion model was trained on {self.k_step_max} of {self.timesteps} "
                "steps (k_step_max): it can only refine the synthesizer's mel (-shd), "
                "not convert alone (-od)"
            )

    def forward(
        self,
        units: torch.Tensor,
        f0: torch.Tensor,
        volume: torch.Tensor,
        spk_id: torch.Tensor | None = None,
        spk_mix_dict: Mapping[int, float] | None = None,
        aug_shift: torch.Tensor | None = None,
        gt_spec: torch.Tensor | None = None,
        infer: bool = True,
        infer_speedup: int = 10,
        method: str | None = "dpm-solver",
        k_step: int = 300,
        use_tqdm: bool = True,
    ) -> torch.Tensor:
        """Upstream's call: the training loss (`infer=False`) or a (B, T, M) log mel.

        Shallow diffusion refines `gt_spec` from step k_step; without `gt_spec`
        the mel is made from noise over all the model's steps.
        """
        if not self.training:
            self.check_steps(gt_spec is not None, k_step)
        condition = self.condition(units, f0, volume, spk_id, spk_mix_dict, aug_shift)
        return self.decoder(
            condition,
            gt_spec=gt_spec,
            infer=infer,
            infer_speedup=infer_speedup,
            method=method,
            k_step=k_step,
            use_tqdm=use_tqdm,
        )
