"""so-vits-svc 4.1 networks: the synthesizer (generator) and the multi-period discriminator.

Parameter names, shapes and maths follow upstream 4.1-Stable so that
upstream checkpoints load (through checkpoint.legacy_keys) and give the
same numbers. Departures on purpose: `infer` draws its noise from a local
generator (the global RNG is left untouched), and the sine source runs at
`sampling_rate` instead of always 44.1 kHz.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from core.components import vocoder_uses_snake
from modules import attentions, commons
from modules import modules as blocks
from modules.commons import get_padding
from modules.f0_utils import f0_to_coarse, f0_to_lf0, lf0_to_f0, normalize_f0
from modules.nsf_hifigan import Generator


class CouplingBlock(nn.Module):
    """The flow: coupling layers of one kind (`residual` or `transformer`) alternating
    with channel flips, optionally all sharing one encoder (`flow_share_parameter`)."""

    def __init__(
        self,
        kind: str,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        n_layers: int,
        n_flows: int = 4,
        gin_channels: int = 0,
        share_parameter: bool = False,
        **encoder_options: Any,
    ) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        shape = (hidden_channels, kernel_size, n_layers, gin_channels)
        self.wn = (
            blocks.coupling_encoder(kind, *shape, **encoder_options) if share_parameter else None
        )
        for _ in range(n_flows):
            self.flows.append(
                blocks.CouplingLayer(
                    kind, channels, *shape, mean_only=True, shared_encoder=self.wn,
                    **encoder_options,
                )
            )
            self.flows.append(blocks.Flip())

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        g: torch.Tensor | None = None,
        reverse: bool = False,
    ) -> torch.Tensor:
        if not reverse:
            for flow in self.flows:
                x, _ = flow(x, x_mask, g=g, reverse=False)
        else:
            for flow in reversed(self.flows):
                x = flow(x, x_mask, g=g, reverse=True)
        return x


class Encoder(nn.Module):
    """Posterior encoder: linear spectrogram -> (z, mean, log-std) through a WaveNet."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        use_depthwise_conv: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = blocks.WN(
            hidden_channels,
            kernel_size,
            dilation_rate,
            n_layers,
            gin_channels=gin_channels,
            use_depthwise_conv=use_depthwise_conv,
        )
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self,
        x: torch.Tensor,
        x_lengths: torch.Tensor,
        g: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`generator` (default: the global stream) draws the posterior sample."""
        x_mask = commons.sequence_mask(x_lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.pre(x) * x_mask
        x = self.enc(x, x_mask, g=g)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        z = (m + commons.draw_randn(m.shape, generator, m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask


class TextEncoder(nn.Module):
    """Prior encoder: content frames plus coarse pitch -> (z, mean, log-std)."""

    def __init__(
        self,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        n_layers: int,
        filter_channels: int,
        n_heads: int,
        p_dropout: float,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)
        self.f0_emb = nn.Embedding(256, hidden_channels)
        self.enc_ = attentions.Encoder(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout
        )

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        f0: torch.Tensor,
        noice_scale: float = 1.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`noise` (B, inter, T), when given, replaces the standard normal draw (ONNX export)."""
        x = x + self.f0_emb(f0).transpose(1, 2)
        x = self.enc_(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        if noise is None:
            noise = commons.draw_randn(m.shape, generator, m)
        z = (m + noise * torch.exp(logs) * noice_scale) * x_mask
        return z, m, logs, x_mask


class F0Decoder(nn.Module):
    """Predicts normalised log-F0 from content features (detached) and the speaker."""

    def __init__(
        self,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        spk_channels: int = 0,
    ) -> None:
        super().__init__()
        self.prenet = nn.Conv1d(hidden_channels, hidden_channels, 3, padding=1)
        self.decoder = attentions.FFT(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout
        )
        self.proj = nn.Conv1d(hidden_channels, out_channels, 1)
        self.f0_prenet = nn.Conv1d(1, hidden_channels, 3, padding=1)
        self.cond = nn.Conv1d(spk_channels, hidden_channels, 1)

    def forward(
        self,
        x: torch.Tensor,
        norm_f0: torch.Tensor,
        x_mask: torch.Tensor,
        spk_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = torch.detach(x)
        if spk_emb is not None:
            x = x + self.cond(spk_emb)
        x = x + self.f0_prenet(norm_f0)
        x = self.prenet(x) * x_mask
        x = self.decoder(x * x_mask, x_mask)
        return self.proj(x) * x_mask


class SynthesizerTrn(nn.Module):
    """The so-vits-svc generator: content + pitch + speaker -> waveform (VITS with NSF)."""

    # Longer than 60 lines on purpose: upstream's signature (its names are the config's
    # model keys) and then the parts in creation order, which fixes the initialisation
    # the parity tests pin. It reads best as one list.
    def __init__(
        self,
        spec_channels: int,
        segment_size: int,
        inter_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        resblock: str,
        resblock_kernel_sizes: list[int],
        resblock_dilation_sizes: list[list[int]],
        upsample_rates: list[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: list[int],
        gin_channels: int,
        ssl_dim: int,
        n_speakers: int,
        sampling_rate: int = 44100,
        vol_embedding: bool = False,
        vocoder_name: str = "nsf-hifigan",
        use_depthwise_conv: bool = False,
        use_automatic_f0_prediction: bool = True,
        flow_share_parameter: bool = False,
        n_flow_layer: int = 4,
        n_layers_trans_flow: int = 3,
        use_transformer_flow: bool = False,
        **kwargs: Any,  # n_layers_q, speaker_embedding, speech_encoder, ...: ignored as upstream
    ) -> None:
        super().__init__()
        snake = vocoder_uses_snake(vocoder_name)
        self.spec_channels = spec_channels
        self.segment_size = segment_size
        self.inter_channels = inter_channels
        self.hidden_channels = hidden_channels
        self.gin_channels = gin_channels
        self.ssl_dim = ssl_dim
        self.vol_embedding = vol_embedding
        self.use_automatic_f0_prediction = use_automatic_f0_prediction
        self.sampling_rate = sampling_rate

        self.emb_g = nn.Embedding(n_speakers, gin_channels)
        if vol_embedding:
            self.emb_vol = nn.Linear(1, hidden_channels)
        self.pre = nn.Conv1d(ssl_dim, hidden_channels, kernel_size=5, padding=2)
        self.enc_p = TextEncoder(
            inter_channels,
            hidden_channels,
            kernel_size=kernel_size,
            n_layers=n_layers,
            filter_channels=filter_channels,
            n_heads=n_heads,
            p_dropout=p_dropout,
        )
        self.dec = Generator(
            sampling_rate=sampling_rate,
            inter_channels=inter_channels,
            resblock=resblock,
            resblock_kernel_sizes=resblock_kernel_sizes,
            resblock_dilation_sizes=resblock_dilation_sizes,
            upsample_rates=upsample_rates,
            upsample_initial_channel=upsample_initial_channel,
            upsample_kernel_sizes=upsample_kernel_sizes,
            gin_channels=gin_channels,
            snake=snake,
        )
        # The posterior WaveNet always has 16 layers (n_layers_q is ignored, as upstream).
        self.enc_q = Encoder(
            spec_channels,
            inter_channels,
            hidden_channels,
            5,
            1,
            16,
            gin_channels=gin_channels,
            use_depthwise_conv=use_depthwise_conv,
        )
        if use_transformer_flow:
            self.flow = CouplingBlock(
                "transformer",
                inter_channels,
                hidden_channels,
                5,
                n_layers_trans_flow,
                n_flow_layer,
                gin_channels=gin_channels,
                share_parameter=flow_share_parameter,
                p_dropout=p_dropout,
                filter_channels=filter_channels,
                n_heads=n_heads,
            )
        else:
            # Upstream passes n_flow_layer as the WaveNet depth here (4 flows always).
            self.flow = CouplingBlock(
                "residual",
                inter_channels,
                hidden_channels,
                5,
                n_flow_layer,
                gin_channels=gin_channels,
                share_parameter=flow_share_parameter,
                dilation_rate=1,
                use_depthwise_conv=use_depthwise_conv,
            )
        if use_automatic_f0_prediction:
            self.f0_decoder = F0Decoder(
                1,
                hidden_channels,
                filter_channels,
                n_heads,
                n_layers,
                kernel_size,
                p_dropout,
                spk_channels=gin_channels,
            )
        self.emb_uv = nn.Embedding(2, hidden_channels)
        self.character_mix = False
        self._speaker_table: torch.Tensor | None = None

    # ------------------------------------------------------------------ helpers

    def _speaker(self, g: torch.Tensor) -> torch.Tensor:
        """Speaker ids (B,) or (B, 1) -> embeddings (B, gin, 1)."""
        return self.emb_g(g.reshape(-1, 1)).transpose(1, 2)

    def _prenet(
        self,
        c: torch.Tensor,
        uv: torch.Tensor,
        x_mask: torch.Tensor,
        vol: torch.Tensor | None,
    ) -> torch.Tensor:
        x = self.pre(c) * x_mask + self.emb_uv(uv.long()).transpose(1, 2)
        if vol is not None and self.vol_embedding:
            x = x + self.emb_vol(vol[:, :, None]).transpose(1, 2)
        return x

    def EnableCharacterMix(self, n_speakers_map: int, device: torch.device | str) -> None:  # noqa: N802
        """Allow `infer` to take per-frame speaker mix weights (frames, n_speakers_map)."""
        ids = torch.arange(n_speakers_map, device=device)
        with torch.no_grad():
            self._speaker_table = self.emb_g(ids).detach()
        self.character_mix = True

    # ------------------------------------------------------------------ training

    def forward(
        self,
        c: torch.Tensor,
        f0: torch.Tensor,
        uv: torch.Tensor,
        spec: torch.Tensor,
        g: torch.Tensor | None = None,
        c_lengths: torch.Tensor | None = None,
        spec_lengths: torch.Tensor | None = None,
        vol: torch.Tensor | None = None,
    ) -> tuple[Any, ...]:
        """Training pass.

        Returns (y_hat, ids_slice, spec_mask, (z, z_p, m_p, logs_p, m_q, logs_q),
        pred_lf0, norm_lf0, lf0); the last three are the int 0 when automatic
        F0 prediction is off, as upstream.
        """
        if g is None:
            raise ValueError("SynthesizerTrn.forward needs speaker ids g")
        if c_lengths is None:
            c_lengths = torch.full((c.size(0),), c.size(2), dtype=torch.long, device=c.device)
        if spec_lengths is None:
            spec_lengths = c_lengths
        g = self._speaker(g)
        x_mask = commons.sequence_mask(c_lengths, c.size(2)).unsqueeze(1).to(c.dtype)
        x = self._prenet(c, uv, x_mask, vol)

        lf0: torch.Tensor | int = 0
        norm_lf0: torch.Tensor | int = 0
        pred_lf0: torch.Tensor | int = 0
        if self.use_automatic_f0_prediction:
            lf0 = f0_to_lf0(f0.unsqueeze(1))
            norm_lf0 = normalize_f0(lf0, x_mask, uv)
            pred_lf0 = self.f0_decoder(x, norm_lf0, x_mask, spk_emb=g)

        _, m_p, logs_p, _ = self.enc_p(x, x_mask, f0=f0_to_coarse(f0))
        z, m_q, logs_q, spec_mask = self.enc_q(spec, spec_lengths, g=g)
        z_p = self.flow(z, spec_mask, g=g)
        z_slice, pitch_slice, ids_slice = commons.rand_slice_segments_with_pitch(
            z, f0, spec_lengths, self.segment_size
        )
        y_hat = self.dec(z_slice, g=g, f0=pitch_slice)
        return (
            y_hat,
            ids_slice,
            spec_mask,
            (z, z_p, m_p, logs_p, m_q, logs_q),
            pred_lf0,
            norm_lf0,
            lf0,
        )

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def infer(
        self,
        c: torch.Tensor,
        f0: torch.Tensor,
        uv: torch.Tensor,
        g: torch.Tensor | None = None,
        noice_scale: float = 0.35,
        seed: int = 52468,
        predict_f0: bool = False,
        vol: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert content c (B, ssl_dim, T) with pitch f0 (B, T) to audio (B, 1, T*hop).

        All noise (prior sample, then the sine source's phases and noise) comes
        from a local generator seeded with `seed`; the global RNG is untouched.
        Returns (audio, f0 actually used).
        """
        if g is None:
            raise ValueError("SynthesizerTrn.infer needs a speaker id or mix weights g")
        generator = torch.Generator(device=c.device).manual_seed(seed)
        c_lengths = torch.full((c.size(0),), c.size(-1), dtype=torch.long, device=c.device)

        if self.character_mix and self._speaker_table is not None and len(g) > 1:
            # g: (frames, n_speakers) mix weights -> per-frame embedding (1, gin, frames).
            table = self._speaker_table.to(device=c.device, dtype=c.dtype)
            g = torch.matmul(g.to(table.dtype), table).transpose(0, 1).unsqueeze(0)
        else:
            g = self._speaker(g)

        x_mask = commons.sequence_mask(c_lengths, c.size(2)).unsqueeze(1).to(c.dtype)
        x = self._prenet(c, uv, x_mask, vol)

        if self.use_automatic_f0_prediction and predict_f0:
            lf0 = f0_to_lf0(f0.unsqueeze(1))
            norm_lf0 = normalize_f0(lf0, x_mask, uv, random_scale=False)
            pred_lf0 = self.f0_decoder(x, norm_lf0, x_mask, spk_emb=g).to(f0)
            f0 = lf0_to_f0(pred_lf0).squeeze(1)

        z_p, _, _, c_mask = self.enc_p(
            x, x_mask, f0=f0_to_coarse(f0), noice_scale=noice_scale, generator=generator
        )
        z = self.flow(z_p, c_mask, g=g, reverse=True)
        audio = self.dec(z * c_mask, g=g, f0=f0, generator=generator)
        return audio, f0

    @torch.no_grad()
    def reconstruct(
        self, spec: torch.Tensor, f0: torch.Tensor, g: torch.Tensor, seed: int = 52468
    ) -> torch.Tensor:
        """Decode the posterior of the whole spectrogram spec (B, F, T): the training path.

        The training step decodes a random slice of this; evaluation decodes it
        all, with every draw from a local generator seeded with `seed`.
        """
        generator = torch.Generator(device=spec.device).manual_seed(seed)
        lengths = torch.full((spec.size(0),), spec.size(-1), dtype=torch.long, device=spec.device)
        speaker = self._speaker(g)
        z, _, _, _ = self.enc_q(spec, lengths, g=speaker, generator=generator)
        return self.dec(z, g=speaker, f0=f0, generator=generator)

    def remove_weight_norm(self) -> None:
        """Fold all weight norms into plain weights (faster inference; keys change)."""
        blocks.strip_weight_norm(self)


# ---------------------------------------------------------------------- discriminator


def _norm(use_spectral_norm: bool) -> Callable[[nn.Module], nn.Module]:
    """The norm wrapper upstream's discriminators use."""
    return spectral_norm if use_spectral_norm else weight_norm


class DiscriminatorP(nn.Module):
    """Period discriminator: folds audio into (T/period, period) and runs 2-D convs."""

    def __init__(
        self, period: int, kernel_size: int = 5, stride: int = 3, use_spectral_norm: bool = False
    ) -> None:
        super().__init__()
        self.period = period
        norm_f = _norm(use_spectral_norm)
        pad = (get_padding(kernel_size, 1), 0)
        channels = [1, 32, 128, 512, 1024]
        convs = [
            norm_f(nn.Conv2d(c_in, c_out, (kernel_size, 1), (stride, 1), padding=pad))
            for c_in, c_out in itertools.pairwise(channels)
        ]
        convs.append(norm_f(nn.Conv2d(1024, 1024, (kernel_size, 1), 1, padding=pad)))
        self.convs = nn.ModuleList(convs)
        self.conv_post = norm_f(nn.Conv2d(1024, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fmap = []
        b, c, t = x.shape
        if t % self.period != 0:
            n_pad = self.period - (t % self.period)
            x = F.pad(x, (0, n_pad), "reflect")
            t = t + n_pad
        x = x.view(b, c, t // self.period, self.period)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), blocks.LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class DiscriminatorS(nn.Module):
    """Scale discriminator on the raw waveform with grouped 1-D convs."""

    def __init__(self, use_spectral_norm: bool = False) -> None:
        super().__init__()
        norm_f = _norm(use_spectral_norm)
        self.convs = nn.ModuleList(
            [
                norm_f(nn.Conv1d(1, 16, 15, 1, padding=7)),
                norm_f(nn.Conv1d(16, 64, 41, 4, groups=4, padding=20)),
                norm_f(nn.Conv1d(64, 256, 41, 4, groups=16, padding=20)),
                norm_f(nn.Conv1d(256, 1024, 41, 4, groups=64, padding=20)),
                norm_f(nn.Conv1d(1024, 1024, 41, 4, groups=256, padding=20)),
                norm_f(nn.Conv1d(1024, 1024, 5, 1, padding=2)),
            ]
        )
        self.conv_post = norm_f(nn.Conv1d(1024, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fmap = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), blocks.LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class MultiPeriodDiscriminator(nn.Module):
    """One scale discriminator plus period discriminators for periods 2, 3, 5, 7, 11."""

    PERIODS = (2, 3, 5, 7, 11)

    def __init__(self, use_spectral_norm: bool = False) -> None:
        super().__init__()
        discs: list[nn.Module] = [DiscriminatorS(use_spectral_norm=use_spectral_norm)]
        discs += [DiscriminatorP(p, use_spectral_norm=use_spectral_norm) for p in self.PERIODS]
        self.discriminators = nn.ModuleList(discs)
        # Spectral norm takes a power-iteration step on every call in training
        # mode, so real and fake keep a call each there, as upstream does.
        self.uses_spectral_norm = use_spectral_norm

    def score(self, audio: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Every sub-discriminator's scores and feature maps for one batch of audio."""
        scores, fmaps = [], []
        for disc in self.discriminators:
            score, fmap = disc(audio)
            scores.append(score)
            fmaps.append(fmap)
        return scores, fmaps

    def forward(
        self, y: torch.Tensor, y_hat: torch.Tensor
    ) -> tuple[
        list[torch.Tensor], list[torch.Tensor], list[list[torch.Tensor]], list[list[torch.Tensor]]
    ]:
        """Returns (real scores, fake scores, real feature maps, fake feature maps).

        Real and fake audio go through each sub-discriminator as one batch:
        every sample's numbers are those of two separate calls, for half the
        kernel launches and one weight-norm evaluation per layer.
        """
        if self.uses_spectral_norm or y.shape != y_hat.shape:
            y_d_rs, fmap_rs = self.score(y)
            y_d_gs, fmap_gs = self.score(y_hat)
            return y_d_rs, y_d_gs, fmap_rs, fmap_gs
        n_real = y.shape[0]
        scores, fmaps = self.score(torch.cat((y, y_hat)))
        y_d_rs = [score[:n_real] for score in scores]
        y_d_gs = [score[n_real:] for score in scores]
        fmap_rs = [[layer[:n_real] for layer in fmap] for fmap in fmaps]
        fmap_gs = [[layer[n_real:] for layer in fmap] for fmap in fmaps]
        return y_d_rs, y_d_gs, fmap_rs, fmap_gs
