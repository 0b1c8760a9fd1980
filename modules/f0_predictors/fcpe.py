"""FCPE pitch estimation: the PCmer network, its log-mel front end and decoding.

FCPE ("fast context-based pitch estimation") reads a log-mel spectrogram at
16 kHz / hop 160 and outputs, per frame, a salience over 360 pitch bins spread
evenly in cents between ``f0_min`` and ``f0_max``. The network is a small conv
stack, then ``n_layers`` layers of Performer attention (random-feature linear
attention, 8 heads of 64 whatever the width) and a Conformer convolution
module, then a weight-normed linear classifier. Attribute names follow the
released checkpoint's state-dict keys, so ``pretrain/fcpe.pt`` loads unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from core.safe_io import UnsafeFileError, foreign_items, load_torch_data, load_torch_foreign
from modules.f0_predictors.base import NeuralF0Predictor
from modules.f0_predictors.resample import SincResampler

DEFAULT_WEIGHTS = "pretrain/fcpe.pt"
WEIGHTS_HELP = (
    "download https://huggingface.co/datasets/ylzz1997/rmvpe_pretrain_model/resolve/main/fcpe.pt "
    "(the file so-vits-svc 4.1 links) and save it as pretrain/fcpe.pt"
)
HEADS = 8
HEAD_WIDTH = 64
RANDOM_FEATURES = 266  # int(HEAD_WIDTH * ln(HEAD_WIDTH)), the Performer default
CONV_KERNEL = 31
LOCAL_WINDOW = 4  # the local-argmax decoder averages bins argmax-4 .. argmax+4


@dataclass(frozen=True)
class MelSettings:
    """The ``mel`` section of an FCPE checkpoint's config (the released values as defaults)."""

    sampling_rate: int = 16000
    num_mels: int = 128
    n_fft: int = 1024
    win_size: int = 1024
    hop_size: int = 160
    fmin: float = 0.0
    fmax: float = 8000.0


# --------------------------------------------------------------------- network


class WeightNormLinear(nn.Module):
    """A linear layer stored as direction ``weight_v`` and per-row length ``weight_g``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        plain = nn.Linear(in_features, out_features)  # its initialisation, re-expressed
        self.bias = nn.Parameter(plain.bias.detach().clone())
        self.weight_g = nn.Parameter(plain.weight.detach().norm(dim=1, keepdim=True))
        self.weight_v = nn.Parameter(plain.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return F.linear(x, weight, self.bias)


class Transpose(nn.Module):
    """Swap time and channels inside an ``nn.Sequential``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class DepthwiseConv(nn.Module):
    """A per-channel convolution with "same" padding."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.padding = (kernel_size // 2, kernel_size // 2 - (kernel_size + 1) % 2)
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))


class ConformerConv(nn.Module):
    """LayerNorm, pointwise conv + GLU, depthwise conv, swish, pointwise conv (no BatchNorm)."""

    def __init__(self, channels: int, expansion: int = 2) -> None:
        super().__init__()
        inner = channels * expansion
        self.net = nn.Sequential(
            nn.LayerNorm(channels),
            Transpose(),
            nn.Conv1d(channels, inner * 2, 1),
            nn.GLU(dim=1),
            DepthwiseConv(inner, CONV_KERNEL),
            nn.SiLU(),
            nn.Conv1d(inner, channels, 1),
            Transpose(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RandomFeatures(nn.Module):
    """The Performer's stored random projection; loaded from the checkpoint, never redrawn."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("projection_matrix", torch.zeros(RANDOM_FEATURES, HEAD_WIDTH))

    def features(self, x: torch.Tensor, is_query: bool, eps: float = 1e-4) -> torch.Tensor:
        """Positive random features approximating the softmax kernel (FAVOR+)."""
        projection = self.projection_matrix.to(x.dtype)
        scale = x.shape[-1] ** -0.25
        dash = torch.matmul(scale * x, projection.t())
        diag = (x**2).sum(dim=-1, keepdim=True) * (scale**2 / 2.0)
        ratio = projection.shape[0] ** -0.5
        if is_query:
            return ratio * (torch.exp(dash - diag - dash.amax(dim=-1, keepdim=True)) + eps)
        # Keys: upstream adds eps inside the exponential and subtracts no maximum.
        return ratio * torch.exp(dash - diag + eps)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self.features(q, is_query=True)
        k = self.features(k, is_query=False)
        normaliser = 1.0 / (torch.matmul(q, k.sum(dim=-2).unsqueeze(-1)) + 1e-8)
        context = torch.matmul(k.transpose(-1, -2), v)
        return torch.matmul(q, context) * normaliser


class PerformerAttention(nn.Module):
    """Global linear self-attention, 8 heads of 64 channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = HEADS * HEAD_WIDTH
        self.fast_attention = RandomFeatures()
        self.to_q = nn.Linear(channels, inner)
        self.to_k = nn.Linear(channels, inner)
        self.to_v = nn.Linear(channels, inner)
        self.to_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, frames, HEADS, HEAD_WIDTH).transpose(1, 2)

        out = self.fast_attention(heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x)))
        return self.to_out(out.transpose(1, 2).reshape(batch, frames, -1))


class PCmerLayer(nn.Module):
    """Pre-norm attention, then the convolution module, each with a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conformer = ConformerConv(channels)
        self.norm = nn.LayerNorm(channels)
        self.attn = PerformerAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm(x))
        return x + self.conformer(x)


class PCmer(nn.Module):
    """The stack of PCmer layers (named ``_layers`` as in the checkpoint)."""

    def __init__(self, n_layers: int, channels: int) -> None:
        super().__init__()
        self._layers = nn.ModuleList(PCmerLayer(channels) for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._layers:
            x = layer(x)
        return x


class FCPE(nn.Module):
    """Log-mel (batch, frames, mels) -> pitch-bin salience (batch, frames, out_dims)."""

    def __init__(
        self,
        input_channel: int = 128,
        out_dims: int = 360,
        n_layers: int = 12,
        n_chans: int = 512,
        f0_min: float = 32.70,
        f0_max: float = 1975.5,
    ) -> None:
        super().__init__()
        cents = np.linspace(_cents(f0_min), _cents(f0_max), out_dims)
        self.register_buffer("cent_table", torch.tensor(cents, dtype=torch.float32))
        self.stack = nn.Sequential(
            nn.Conv1d(input_channel, n_chans, 3, 1, 1),
            nn.GroupNorm(4, n_chans),
            nn.LeakyReLU(),
            nn.Conv1d(n_chans, n_chans, 3, 1, 1),
        )
        self.decoder = PCmer(n_layers, n_chans)
        self.norm = nn.LayerNorm(n_chans)
        self.dense_out = WeightNormLinear(n_chans, out_dims)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.stack(mel.transpose(1, 2)).transpose(1, 2)
        x = self.norm(self.decoder(x))
        return torch.sigmoid(self.dense_out(x))


def _cents(f0: float) -> float:
    """Cents above 10 Hz, computed in float32 as the released table was."""
    return float(1200.0 * torch.log2(torch.tensor([f0], dtype=torch.float32) / 10.0)[0])


# ------------------------------------------------------------- front end & decoding


class FCPEMelSpectrogram:
    """FCPE's input: log of the Slaney-mel-weighted STFT magnitude, no centring."""

    def __init__(self, settings: MelSettings, device: torch.device | str = "cpu") -> None:
        basis = librosa.filters.mel(
            sr=settings.sampling_rate,
            n_fft=settings.n_fft,
            n_mels=settings.num_mels,
            fmin=settings.fmin,
            fmax=settings.fmax,
        )
        self.settings = settings
        self.mel_basis = torch.from_numpy(basis).float().to(device)
        self.window = torch.hann_window(settings.win_size, device=device)

    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) at ``sampling_rate`` -> (batch, frames, num_mels)."""
        s = self.settings
        length = audio.shape[-1]
        pad_left = (s.win_size - s.hop_size) // 2
        pad_right = max((s.win_size - s.hop_size + 1) // 2, s.win_size - length - pad_left)
        mode = "reflect" if pad_right < length else "constant"
        padded = F.pad(audio.unsqueeze(1), (pad_left, pad_right), mode=mode).squeeze(1)
        spectrum = torch.stft(
            padded,
            s.n_fft,
            hop_length=s.hop_size,
            win_length=s.win_size,
            window=self.window.to(audio.device),
            center=False,
            return_complex=True,
        )
        magnitude = torch.sqrt(spectrum.real.pow(2) + spectrum.imag.pow(2) + 1e-9)
        mel = torch.matmul(self.mel_basis.to(audio.device), magnitude)
        return torch.log(torch.clamp(mel, min=1e-5)).transpose(1, 2)


def decode_salience(
    salience: torch.Tensor, cent_table: torch.Tensor, threshold: float = 0.05, local: bool = True
) -> torch.Tensor:
    """(batch, frames, bins) salience -> (batch, frames, 1) pitch in Hz, 0 where unvoiced.

    ``local`` (upstream's default) averages the cents of the 9 bins around the
    argmax, indices clamped to the table (so an edge bin counts several times);
    otherwise all bins are averaged. A frame whose largest salience is not
    above ``threshold`` is unvoiced.
    """
    table = cent_table.to(salience.dtype).expand_as(salience)
    confidence, peak = salience.max(dim=-1, keepdim=True)
    if local:
        offsets = torch.arange(-LOCAL_WINDOW, LOCAL_WINDOW + 1, device=salience.device)
        index = (peak + offsets).clamp(0, salience.shape[-1] - 1)
        table, salience = torch.gather(table, -1, index), torch.gather(salience, -1, index)
    cents = (table * salience).sum(-1, keepdim=True) / salience.sum(-1, keepdim=True)
    f0 = 10.0 * 2 ** (cents / 1200.0)
    return torch.where(confidence > threshold, f0, torch.zeros_like(f0))


# ------------------------------------------------------------------- loading


def _as_dict(value: Any) -> dict:
    """A config section as a dict, whether stored as a plain dict or a foreign dict subclass."""
    if isinstance(value, Mapping):
        return dict(value)
    return foreign_items(value)


def _read_checkpoint(path: Path) -> dict:
    """``{"config": ..., "model": state_dict}``, read as data; foreign config classes stay inert."""
    try:
        checkpoint = load_torch_data(str(path), map_location="cpu")
    except UnsafeFileError:
        # A config pickled as the trainer's own dict class: read it without importing it.
        checkpoint = load_torch_foreign(str(path), map_location="cpu")
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        raise UserError(f"{path} has no 'model' state dict; {WEIGHTS_HELP}")
    return dict(checkpoint)


def fcpe_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> FCPE:
    """Build an FCPE of the size the state dict describes and load it (eval mode).

    Raises ``KeyError``, ``IndexError`` or ``RuntimeError`` when the keys or shapes are
    not FCPE's.
    """
    stem = state_dict["stack.0.weight"]
    n_layers = sum(
        1
        for key in state_dict
        if key.startswith("decoder._layers.")
        and key.endswith(".norm.weight")
        and key.count(".") == 4
    )
    model = FCPE(
        input_channel=int(stem.shape[1]),
        out_dims=int(state_dict["dense_out.bias"].shape[0]),
        n_layers=n_layers,
        n_chans=int(stem.shape[0]),
    )
    model.load_state_dict(dict(state_dict))
    return model.eval()


def load_fcpe(
    weights_path: str | Path = DEFAULT_WEIGHTS, device: torch.device | str = "cpu"
) -> FCPEPitch:
    """Read an FCPE checkpoint (``pretrain/fcpe.pt`` by default) without running its pickle."""
    path = Path(weights_path)
    if not path.is_file():
        raise UserError(f"FCPE weights not found at {path}: {WEIGHTS_HELP}")
    checkpoint = _read_checkpoint(path)
    config = _as_dict(checkpoint.get("config"))
    model_config = _as_dict(config.get("model"))
    if model_config.get("use_siren") or model_config.get("use_full"):
        raise UserError(f"{path}: FCPE variants with use_siren or use_full are not supported")
    try:
        model = fcpe_from_state_dict(checkpoint["model"])
    except (KeyError, IndexError, RuntimeError, ValueError) as error:
        first_line = str(error).splitlines()[0]
        raise UserError(
            f"{path} is not an FCPE checkpoint ({type(error).__name__}: {first_line}); "
            f"{WEIGHTS_HELP}"
        ) from error
    known = MelSettings.__dataclass_fields__
    mel = MelSettings(**{k: v for k, v in _as_dict(config.get("mel")).items() if k in known})
    return FCPEPitch(model, mel, device)


class FCPEPitch:
    """A loaded FCPE with its front end: audio at any rate -> pitch per 10 ms frame."""

    def __init__(self, model: FCPE, mel: MelSettings, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.mel_settings = mel
        self.mel_extractor = FCPEMelSpectrogram(mel, self.device)
        self._resamplers: dict[int, SincResampler] = {}

    def mel(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """(1, samples) -> (1, frames, mels); resampled as upstream (Hann sinc, 128 crossings).

        The frame count is forced to ``samples // hop + 1`` counted on the input
        before resampling, by adding at most one copy of the last frame or by
        cutting: upstream's arithmetic, kept so frame counts agree.
        """
        target = self.mel_settings.sampling_rate
        resampled = audio
        if sample_rate != target:
            if sample_rate not in self._resamplers:
                self._resamplers[sample_rate] = SincResampler(
                    sample_rate, target, lowpass_filter_width=128, device=self.device
                )
            resampled = self._resamplers[sample_rate](audio)
        mel = self.mel_extractor(resampled)
        n_frames = audio.shape[-1] // self.mel_settings.hop_size + 1
        if n_frames > mel.shape[1]:
            mel = torch.cat((mel, mel[:, -1:]), dim=1)
        return mel[:, :n_frames]

    def __call__(
        self, audio: torch.Tensor, sample_rate: int, threshold: float = 0.05
    ) -> torch.Tensor:
        """Mono float audio (samples,) -> pitch in Hz (1, frames, 1), 0 where unvoiced."""
        audio = audio.to(device=self.device, dtype=torch.float32).unsqueeze(0)
        with torch.no_grad():
            salience = self.model(self.mel(audio, sample_rate))
        return decode_salience(salience, self.model.cent_table, threshold)


# ------------------------------------------------------------------- predictor


class FCPEF0Predictor(NeuralF0Predictor):
    """FCPE pitch on the model's frame grid; the network is loaded once per predictor."""

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
        self.fcpe = load_fcpe(weights_path or DEFAULT_WEIGHTS, self.device)

    def frame_f0(self, wav: np.ndarray) -> torch.Tensor:
        audio = torch.as_tensor(np.asarray(wav, dtype=np.float32), device=self.device)
        return self.fcpe(audio, self.sampling_rate, self.threshold)[0, :, 0]
