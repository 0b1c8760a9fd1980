"""NSF-HiFiGAN vocoder: a harmonic sine source driven by F0 plus a HiFi-GAN upsampler.

One `Generator` covers both upstream vocoders: `snake=False` is "nsf-hifigan"
(leaky ReLU), `snake=True` is "nsf-snake-hifigan" (anti-aliased SnakeBeta
activations). Parameter and buffer names match upstream checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from modules import commons
from modules.commons import get_padding, init_weights
from modules.modules import LRELU_SLOPE, strip_weight_norm

# Upstream's source settings: 8 overtones above F0, sine amplitude 0.1,
# voiced noise std 0.003, unvoiced noise std sine_amp / 3.
HARMONIC_NUM = 8
SINE_AMP = 0.1
NOISE_STD = 0.003


# ----------------------------------------------------------------------------
# Anti-aliased Snake activation
# ----------------------------------------------------------------------------


def kaiser_sinc_filter1d(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass filter of shape (1, 1, kernel_size), summing to 1."""
    even = kernel_size % 2 == 0
    half_size = kernel_size // 2
    delta_f = 4 * half_width
    attenuation = 2.285 * (half_size - 1) * math.pi * delta_f + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False)
    if even:
        time = torch.arange(-half_size, half_size) + 0.5
    else:
        time = torch.arange(kernel_size) - half_size
    if cutoff == 0:
        taps = torch.zeros_like(time)
    else:
        taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
        taps = taps / taps.sum()
    return taps.view(1, 1, kernel_size)


class UpSample1d(nn.Module):
    """x2 upsampling by transposed convolution with a Kaiser-sinc filter."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        self.pad_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.pad_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        taps = kaiser_sinc_filter1d(0.5 / ratio, 0.6 / ratio, kernel_size)
        self.register_buffer("filter", taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = int(x.size(1))  # a constant when traced: ONNX needs a known kernel
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        weight = self.filter.to(x.dtype).expand(channels, -1, -1)
        x = self.ratio * F.conv_transpose1d(x, weight, stride=self.ratio, groups=channels)
        return x[..., self.pad_left : -self.pad_right]


class LowPassFilter1d(nn.Module):
    """Strided low-pass filtering (the downsampling half of the alias-free activation)."""

    def __init__(self, cutoff: float, half_width: float, stride: int, kernel_size: int) -> None:
        super().__init__()
        even = kernel_size % 2 == 0
        self.pad_left = kernel_size // 2 - int(even)
        self.pad_right = kernel_size // 2
        self.stride = stride
        self.register_buffer("filter", kaiser_sinc_filter1d(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = int(x.size(1))  # a constant when traced: ONNX needs a known kernel
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        weight = self.filter.to(x.dtype).expand(channels, -1, -1)
        return F.conv1d(x, weight, stride=self.stride, groups=channels)


class DownSample1d(nn.Module):
    """x2 downsampling through a Kaiser-sinc low-pass filter."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """x + sin^2(alpha x) / beta per channel, alpha and beta stored as logs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.no_div_by_zero = 1e-9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.exp(self.alpha.unsqueeze(0).unsqueeze(-1))
        beta = torch.exp(self.beta.unsqueeze(0).unsqueeze(-1))
        return x + (1.0 / (beta + self.no_div_by_zero)) * torch.pow(torch.sin(x * alpha), 2)


class SnakeAlias(nn.Module):
    """SnakeBeta applied at twice the rate to keep its harmonics from aliasing."""

    def __init__(self, channels: int, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = UpSample1d(ratio, kernel_size)
        self.downsample = DownSample1d(ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


# ----------------------------------------------------------------------------
# Residual blocks
# ----------------------------------------------------------------------------


def _wn_conv(channels: int, kernel_size: int, dilation: int) -> nn.Module:
    conv = nn.Conv1d(
        channels,
        channels,
        kernel_size,
        1,
        dilation=dilation,
        padding=get_padding(kernel_size, dilation),
    )
    return weight_norm(conv)


class ResBlock1(nn.Module):
    """Three (dilated conv, conv) residual pairs ("resblock": "1")."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        dilation: Sequence[int] = (1, 3, 5),
        snake: bool = False,
    ) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList([_wn_conv(channels, kernel_size, d) for d in dilation[:3]])
        self.convs1.apply(init_weights)
        self.convs2 = nn.ModuleList([_wn_conv(channels, kernel_size, 1) for _ in range(3)])
        self.convs2.apply(init_weights)
        if snake:
            self.activations = nn.ModuleList([SnakeAlias(channels) for _ in range(6)])
            first: Sequence[nn.Module] = list(self.activations[::2])
            second: Sequence[nn.Module] = list(self.activations[1::2])
        else:
            first = second = [_leaky] * 3  # type: ignore[list-item]
        self._acts = list(zip(first, second))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2, (a1, a2) in zip(self.convs1, self.convs2, self._acts):
            x = c2(a2(c1(a1(x)))) + x
        return x


class ResBlock2(nn.Module):
    """Two dilated-conv residual steps ("resblock": "2")."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        dilation: Sequence[int] = (1, 3),
        snake: bool = False,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList([_wn_conv(channels, kernel_size, d) for d in dilation[:2]])
        self.convs.apply(init_weights)
        if snake:
            self.activations = nn.ModuleList([SnakeAlias(channels) for _ in range(2)])
            self._acts = list(self.activations)
        else:
            self._acts = [_leaky, _leaky]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, act in zip(self.convs, self._acts):
            x = conv(act(x)) + x
        return x


# ----------------------------------------------------------------------------
# Harmonic-plus-noise source
# ----------------------------------------------------------------------------


class SineGen(nn.Module):
    """Sum-of-sines excitation: F0 and its overtones, plus noise; silent when unvoiced."""

    def __init__(
        self,
        sampling_rate: int,
        harmonic_num: int = 0,
        sine_amp: float = SINE_AMP,
        noise_std: float = NOISE_STD,
        voiced_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.sampling_rate = sampling_rate
        self.harmonic_num = harmonic_num
        self.dim = harmonic_num + 1
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold

    def initial_phase(
        self, batch: int, generator: torch.Generator | None, like: torch.Tensor
    ) -> torch.Tensor:
        """Random start phase (B, dim) of every overtone, none for the fundamental.

        A method of its own so an export (inference/onnx_export.py) can fix it.
        """
        phase = commons.draw_rand((batch, self.dim), generator, like)
        phase[:, 0] = 0
        return phase

    def excitation_noise(
        self, like: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Standard normal noise shaped like the sines (B, L, dim), drawn after the phases."""
        return commons.draw_randn(like.shape, generator, like)

    def forward(
        self, f0: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """f0 (B, L, 1) at audio rate -> (sines (B, L, dim), uv (B, L, 1), noise)."""
        with torch.no_grad():
            multiples = torch.arange(1, self.dim + 1, device=f0.device, dtype=f0.dtype)
            harmonics = f0 * multiples  # (B, L, dim)
            # Phase increment per sample in cycles; whole cycles do not matter.
            rad_values = (harmonics / self.sampling_rate) % 1
            initial_phase = self.initial_phase(f0.size(0), generator, rad_values)
            rad_values[:, 0, :] = rad_values[:, 0, :] + initial_phase
            # Subtract 1 where the wrapped running phase drops, so the cumulative
            # sum stays small (avoids float32 overflow of the phase).
            wrapped = torch.cumsum(rad_values, 1) % 1
            drops = (wrapped[:, 1:, :] - wrapped[:, :-1, :]) < 0
            cumsum_shift = torch.zeros_like(rad_values)
            cumsum_shift[:, 1:, :] = drops * -1.0
            sines = torch.sin(torch.cumsum(rad_values + cumsum_shift, dim=1) * 2 * np.pi)
            sine_waves = sines * self.sine_amp
            uv = (f0 > self.voiced_threshold).to(sine_waves.dtype)
            noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
            noise = noise_amp * self.excitation_noise(sine_waves, generator)
            sine_waves = sine_waves * uv + noise
        return sine_waves, uv, noise


class SourceModuleHnNSF(nn.Module):
    """Merge the harmonics of SineGen into one excitation channel (Linear + tanh)."""

    def __init__(
        self,
        sampling_rate: int,
        harmonic_num: int = 0,
        sine_amp: float = SINE_AMP,
        add_noise_std: float = NOISE_STD,
        voiced_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.sine_amp = sine_amp
        self.l_sin_gen = SineGen(
            sampling_rate, harmonic_num, sine_amp, add_noise_std, voiced_threshold
        )
        self.l_linear = nn.Linear(harmonic_num + 1, 1)
        self.l_tanh = nn.Tanh()

    def forward(
        self, f0: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """f0 (B, L, 1) -> (excitation (B, L, 1), uv (B, L, 1)).

        Upstream also draws a noise branch here that nothing uses; it comes
        after every draw that matters, so it is left out.
        """
        sine_wavs, uv, _ = self.l_sin_gen(f0, generator)
        sine_merge = self.l_tanh(self.l_linear(sine_wavs.to(self.l_linear.weight.dtype)))
        return sine_merge, uv


# ----------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------


def _noise_conv(channels: int, later_rates: Sequence[int]) -> nn.Conv1d:
    """Brings the harmonic source (at the audio rate) down to one upsampling stage's rate."""
    if not later_rates:  # the last stage runs at the audio rate
        return nn.Conv1d(1, channels, kernel_size=1)
    stride = int(np.prod(later_rates))
    return nn.Conv1d(1, channels, kernel_size=stride * 2, stride=stride, padding=(stride + 1) // 2)


class Generator(nn.Module):
    """Upsample latent frames to audio, injecting the harmonic source at every scale."""

    def __init__(
        self,
        sampling_rate: int,
        inter_channels: int,
        resblock: str,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        upsample_rates: Sequence[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: Sequence[int],
        gin_channels: int,
        snake: bool = False,
    ) -> None:
        super().__init__()
        self.snake = snake
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.upp = int(np.prod(upsample_rates))
        self.m_source = SourceModuleHnNSF(sampling_rate=sampling_rate, harmonic_num=HARMONIC_NUM)
        self.noise_convs = nn.ModuleList()
        self.conv_pre = weight_norm(
            nn.Conv1d(inter_channels, upsample_initial_channel, 7, 1, padding=3)
        )
        block_class = ResBlock1 if str(resblock) == "1" else ResBlock2
        self.ups = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            c_in = upsample_initial_channel // (2**i)
            c_cur = upsample_initial_channel // (2 ** (i + 1))
            self.ups.append(
                weight_norm(
                    nn.ConvTranspose1d(c_in, c_cur, kernel, rate, padding=(kernel - rate + 1) // 2)
                )
            )
            self.noise_convs.append(_noise_conv(c_cur, upsample_rates[i + 1 :]))
        self.resblocks = nn.ModuleList()
        if snake:
            self.snakes = nn.ModuleList()
        ch = upsample_initial_channel
        for i in range(len(self.ups)):
            ch = upsample_initial_channel // (2 ** (i + 1))
            if snake:
                self.snakes.append(SnakeAlias(upsample_initial_channel // (2**i)))
            for kernel, dilation in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(block_class(ch, kernel, dilation, snake=snake))
        self.conv_post = weight_norm(nn.Conv1d(ch, 1, 7, 1, padding=3))
        self.ups.apply(init_weights)
        self.conv_post.apply(init_weights)
        if snake:
            self.snake_post = SnakeAlias(ch)
        self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)

    def forward(
        self,
        x: torch.Tensor,
        f0: torch.Tensor,
        g: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """x (B, inter, T), f0 (B, T) in Hz, g (B, gin, 1 or T) -> audio (B, 1, T*upp)."""
        # Each frame's f0 repeated upp times (B, T*upp, 1); expand + reshape rather than
        # repeat_interleave, whose ONNX export gets later slices' lengths wrong.
        f0_audio = f0.unsqueeze(-1).expand(-1, -1, self.upp).reshape(f0.shape[0], -1, 1)
        har_source, _ = self.m_source(f0_audio, generator)
        har_source = har_source.transpose(1, 2)
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        for i in range(self.num_upsamples):
            x = self.snakes[i](x) if self.snake else F.leaky_relu(x, LRELU_SLOPE)
            x = self.ups[i](x)
            x = x + self.noise_convs[i](har_source)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / self.num_kernels
        # The non-snake vocoder uses leaky ReLU's default slope (0.01) here, as upstream.
        x = self.snake_post(x) if self.snake else F.leaky_relu(x)
        x = self.conv_post(x)
        return torch.tanh(x)

    def remove_weight_norm(self) -> None:
        strip_weight_norm(self)
