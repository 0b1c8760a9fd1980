"""RMVPE pitch estimation: the E2E0 network, its log-mel front end and decoding.

RMVPE ("robust model for vocal pitch estimation") reads a 128-band log-mel
spectrogram at 16 kHz / hop 160 and outputs, per frame, a salience over 360
pitch bins 20 cents apart. The network is a deep residual U-Net (5 encoder
levels of ``n_blocks`` residual blocks, 4 intermediate levels, 5 decoder levels)
followed by a bidirectional GRU and a sigmoid classifier. The module attribute
names below follow the published checkpoint's state-dict keys so that
``pretrain/rmvpe.pt`` loads unchanged.
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from core.safe_io import load_torch_data
from modules.f0_predictors.base import NeuralF0Predictor
from modules.f0_predictors.resample import SincResampler

RMVPE_SAMPLE_RATE = 16000
RMVPE_HOP_LENGTH = 160
N_MELS = 128
N_PITCH_BINS = 360
MEL_FMIN = 30.0
MEL_FMAX = RMVPE_SAMPLE_RATE // 2
WINDOW_LENGTH = 1024
# Cents of pitch bin 0; bin i is worth CENTS_OFFSET + 20 * i cents (re 10 Hz).
CENTS_OFFSET = 1997.3794084376191
CENTS_PER_BIN = 20
# Frames are pooled 5 times by 2 inside the U-Net.
FRAME_MULTIPLE = 32
BN_MOMENTUM = 0.01
DEFAULT_WEIGHTS = "pretrain/rmvpe.pt"
WEIGHTS_HELP = (
    "download rmvpe.zip from https://github.com/yxlllc/RMVPE/releases/tag/230917, "
    "unzip it and save its model.pt as pretrain/rmvpe.pt"
)


# --------------------------------------------------------------------- network


class ConvBlockRes(nn.Module):
    """Two 3x3 conv-BN-ReLU layers with a residual connection (1x1 conv if widths differ)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, (3, 3), padding=(1, 1), bias=False),
            nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, (3, 3), padding=(1, 1), bias=False),
            nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
            nn.ReLU(),
        )
        self.shortcut: nn.Module = (
            nn.Conv2d(in_channels, out_channels, (1, 1))
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.shortcut(x)


class ResidualStack(nn.Module):
    """``n_blocks`` residual blocks, optionally followed by average pooling."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_blocks: int,
        pool_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * n_blocks
        self.conv = nn.ModuleList(ConvBlockRes(widths[i], widths[i + 1]) for i in range(n_blocks))
        self.pool = nn.AvgPool2d(pool_size) if pool_size is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv:
            x = block(x)
        return x


class Encoder(nn.Module):
    """Input BatchNorm, then levels that double the width and halve time and frequency."""

    def __init__(
        self,
        in_channels: int,
        n_levels: int,
        pool_size: tuple[int, int],
        n_blocks: int,
        base_channels: int,
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels, momentum=BN_MOMENTUM)
        widths = [in_channels] + [base_channels * 2**level for level in range(n_levels)]
        self.layers = nn.ModuleList(
            ResidualStack(widths[i], widths[i + 1], n_blocks, pool_size) for i in range(n_levels)
        )
        self.out_channels = widths[-1]
        self.skip_channels = widths[1:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        x = self.bn(x)
        for level in self.layers:
            x = level(x)
            skips.append(x)
            x = level.pool(x)
        return x, skips


class Intermediate(nn.Module):
    """Un-pooled residual stacks at the bottom of the U."""

    def __init__(self, in_channels: int, out_channels: int, n_levels: int, n_blocks: int) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * n_levels
        self.layers = nn.ModuleList(
            ResidualStack(widths[i], widths[i + 1], n_blocks) for i in range(n_levels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for level in self.layers:
            x = level(x)
        return x


class DecoderLevel(nn.Module):
    """Upsample by the pooling factor, concatenate the skip, then residual blocks."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: tuple[int, int], n_blocks: int
    ) -> None:
        super().__init__()
        output_padding = (0, 1) if tuple(stride) == (1, 2) else (1, 1)
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(
                in_channels,
                out_channels,
                (3, 3),
                stride=stride,
                padding=(1, 1),
                output_padding=output_padding,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
            nn.ReLU(),
        )
        widths = [out_channels * 2] + [out_channels] * n_blocks
        self.conv2 = nn.ModuleList(ConvBlockRes(widths[i], widths[i + 1]) for i in range(n_blocks))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.conv1(x), skip), dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class Decoder(nn.Module):
    """Levels that halve the width and restore the encoder's resolution."""

    def __init__(
        self, in_channels: int, n_levels: int, stride: tuple[int, int], n_blocks: int
    ) -> None:
        super().__init__()
        widths = [in_channels // 2**level for level in range(n_levels + 1)]
        self.layers = nn.ModuleList(
            DecoderLevel(widths[i], widths[i + 1], stride, n_blocks) for i in range(n_levels)
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for level, skip in zip(self.layers, reversed(skips)):
            x = level(x, skip)
        return x


class TimbreFilter(nn.Module):
    """Residual blocks on the skip connections.

    Present in the checkpoint but not applied by the E2E0 variant; kept so the
    state dict loads strictly.
    """

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ConvBlockRes(width, width) for width in channels)


class DeepUnet0(nn.Module):
    """Residual U-Net over (time, mel) without the timbre filter on skips."""

    def __init__(
        self,
        pool_size: tuple[int, int],
        n_blocks: int,
        n_levels: int = 5,
        n_intermediate: int = 4,
        in_channels: int = 1,
        base_channels: int = 16,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(in_channels, n_levels, pool_size, n_blocks, base_channels)
        bottom = self.encoder.out_channels * 2
        self.intermediate = Intermediate(
            self.encoder.out_channels, bottom, n_intermediate, n_blocks
        )
        self.tf = TimbreFilter(self.encoder.skip_channels)
        self.decoder = Decoder(bottom, n_levels, pool_size, n_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        x = self.intermediate(x)
        return self.decoder(x, skips)


class BiGRU(nn.Module):
    """Bidirectional GRU returning only the output sequence."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(
            input_size, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class E2E0(nn.Module):
    """RMVPE network: log-mel (batch, 128, frames) → pitch-bin salience (batch, frames, 360)."""

    def __init__(
        self,
        n_blocks: int = 4,
        n_gru: int = 1,
        pool_size: tuple[int, int] = (2, 2),
        n_levels: int = 5,
        n_intermediate: int = 4,
        in_channels: int = 1,
        base_channels: int = 16,
    ) -> None:
        super().__init__()
        self.unet = DeepUnet0(
            pool_size, n_blocks, n_levels, n_intermediate, in_channels, base_channels
        )
        self.cnn = nn.Conv2d(base_channels, 3, (3, 3), padding=(1, 1))
        if n_gru:
            self.fc = nn.Sequential(
                BiGRU(3 * N_MELS, 256, n_gru),
                nn.Linear(512, N_PITCH_BINS),
                nn.Dropout(0.25),
                nn.Sigmoid(),
            )
        else:
            self.fc = nn.Sequential(
                nn.Linear(3 * N_MELS, N_PITCH_BINS), nn.Dropout(0.25), nn.Sigmoid()
            )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel.transpose(-1, -2).unsqueeze(1)
        x = self.cnn(self.unet(x))
        x = x.transpose(1, 2).flatten(-2)
        return self.fc(x)


# ------------------------------------------------------------- front end & decoding


class RMVPEMelSpectrogram:
    """RMVPE's input features: log of the HTK-mel-weighted STFT magnitude at 16 kHz."""

    def __init__(self, device: torch.device | str = "cpu", clamp: float = 1e-5) -> None:
        basis = librosa.filters.mel(
            sr=RMVPE_SAMPLE_RATE,
            n_fft=WINDOW_LENGTH,
            n_mels=N_MELS,
            fmin=MEL_FMIN,
            fmax=MEL_FMAX,
            htk=True,
        )
        self.mel_basis = torch.from_numpy(basis).float().to(device)
        self.window = torch.hann_window(WINDOW_LENGTH, device=device)
        self.clamp = clamp

    def __call__(self, audio: torch.Tensor, center: bool = True) -> torch.Tensor:
        """(batch, samples) at 16 kHz → (batch, 128, frames) log-mel."""
        spectrum = torch.stft(
            audio,
            n_fft=WINDOW_LENGTH,
            hop_length=RMVPE_HOP_LENGTH,
            win_length=WINDOW_LENGTH,
            window=self.window.to(audio.device),
            center=center,
            return_complex=True,
        )
        magnitude = spectrum.abs()
        mel = torch.matmul(self.mel_basis.to(audio.device), magnitude)
        return torch.log(torch.clamp(mel, min=self.clamp))


def salience_to_f0(salience: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """Decode (frames, 360) salience to pitch in Hz, 0 where unvoiced.

    Per frame: the salience-weighted mean of the cents of the 9 bins around the
    argmax (cut at the edges); unvoiced when the largest salience in that
    window is not above ``threshold``.
    """
    n_bins = salience.shape[-1]
    centre = salience.argmax(dim=-1, keepdim=True)
    offsets = torch.arange(-4, 5, device=salience.device)
    bins = centre + offsets
    inside = (bins >= 0) & (bins < n_bins)
    bins = bins.clamp(0, n_bins - 1)
    weights = torch.gather(salience, -1, bins) * inside
    cents = CENTS_PER_BIN * bins + CENTS_OFFSET
    mean_cents = (weights * cents).sum(dim=-1) / weights.sum(dim=-1)
    f0 = 10 * 2 ** (mean_cents / 1200)
    voiced = weights.amax(dim=-1) > threshold
    return torch.where(voiced, f0, torch.zeros_like(f0))


def load_rmvpe_model(
    weights_path: str | Path = DEFAULT_WEIGHTS, device: torch.device | str = "cpu"
) -> E2E0:
    """Build E2E0 and load ``{"model": state_dict}`` from ``weights_path`` (eval mode)."""
    path = Path(weights_path)
    if not path.is_file():
        raise UserError(f"RMVPE weights not found at {path}: {WEIGHTS_HELP}")
    checkpoint = load_torch_data(str(path), map_location="cpu")
    state_dict = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise UserError(f"{path} has no 'model' state dict; {WEIGHTS_HELP}")
    model = E2E0(4, 1, (2, 2))
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise UserError(
            f"{path} is not an RMVPE E2E0 checkpoint ({first_line}); {WEIGHTS_HELP}"
        ) from error
    return model.to(device).eval()


class RMVPE:
    """A loaded RMVPE network with its front end, reusable across files."""

    def __init__(self, model: E2E0, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.mel_extractor = RMVPEMelSpectrogram(self.device)
        self._resamplers: dict[int, SincResampler] = {}

    @classmethod
    def load(
        cls, weights_path: str | Path = DEFAULT_WEIGHTS, device: torch.device | str = "cpu"
    ) -> RMVPE:
        """Load ``{"model": state_dict}`` weights (``pretrain/rmvpe.pt`` by default)."""
        return cls(load_rmvpe_model(weights_path, device), device)

    def mel2hidden(self, mel: torch.Tensor, pad_mode: str = "reflect") -> torch.Tensor:
        """Run the network on (batch, 128, frames), padding frames to a multiple of 32.

        so-vits-svc pads by reflection (``pad_mode="reflect"``); ``"constant"``
        pads with zeros. Only the last few frames depend on the choice.
        """
        n_frames = mel.shape[-1]
        pad = -n_frames % FRAME_MULTIPLE
        if pad:
            if pad_mode == "reflect" and pad >= n_frames:
                # Reflection needs more frames than it adds; very short clips
                # repeat the edge frame instead.
                pad_mode = "replicate"
            mel = F.pad(mel, (0, pad), mode=pad_mode)
        with torch.no_grad():
            hidden = self.model(mel)
        return hidden[:, :n_frames]

    def resample_to_16k(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Resample as upstream does (Hann sinc, 128 zero crossings)."""
        if sample_rate == RMVPE_SAMPLE_RATE:
            return audio
        if sample_rate not in self._resamplers:
            self._resamplers[sample_rate] = SincResampler(
                sample_rate, RMVPE_SAMPLE_RATE, lowpass_filter_width=128, device=self.device
            )
        return self._resamplers[sample_rate](audio)

    def infer_from_audio(
        self, audio: torch.Tensor, sample_rate: int = 16000, threshold: float = 0.05
    ) -> torch.Tensor:
        """Mono float audio (samples,) → pitch in Hz per 10 ms frame (0 = unvoiced)."""
        audio = audio.to(device=self.device, dtype=torch.float32).unsqueeze(0)
        audio = self.resample_to_16k(audio, sample_rate)
        mel = self.mel_extractor(audio, center=True)
        hidden = self.mel2hidden(mel)
        return salience_to_f0(hidden.squeeze(0), threshold)


# ------------------------------------------------------------------- predictor


class RMVPEF0Predictor(NeuralF0Predictor):
    """RMVPE pitch mapped onto the model's frame grid.

    The network is loaded once per predictor so one process can reuse it for
    every file it processes.
    """

    def __init__(
        self,
        hop_length: int = 512,
        sampling_rate: int = 44100,
        f0_min: float = 50,
        f0_max: float = 1100,
        device: str | None = None,
        threshold: float = 0.05,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__(hop_length, sampling_rate, f0_min, f0_max, device, threshold)
        self.rmvpe = RMVPE.load(weights_path or DEFAULT_WEIGHTS, self.device)

    def frame_f0(self, wav: np.ndarray) -> torch.Tensor:
        audio = torch.as_tensor(np.asarray(wav, dtype=np.float32), device=self.device)
        return self.rmvpe.infer_from_audio(audio, self.sampling_rate, self.threshold)
