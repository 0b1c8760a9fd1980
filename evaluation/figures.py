"""Validation figures: how close the model comes on clips it never trains on.

For each clip of a validation list, three measurements:

- `mel_distance`: mel L1 between the clip and its conversion through the
  inference path (content, f0 and speaker in, audio out, at the default noise
  scale of `inference_main.py`): what a user hears;
- `recon_mel_distance`: mel L1 between the clip and the decoded posterior of
  its own spectrogram, the path the training step's mel loss takes (that loss,
  `loss/g/mel`, is this distance times `train.c_mel`, on random slices);
- pitch accuracy of the conversion (`pitch_accuracy`): median |cents| against
  the given f0, and the share of frames whose voicing it gets wrong.

Every draw comes from generators seeded with `EVAL_SEED`, and the pitch is
measured with a deterministic predictor, so equal weights give equal figures
and evaluation never moves the training random streams.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.summaries import plot_spectrogram_to_numpy
from evaluation.pitch_accuracy import (
    PitchAccuracy,
    build_pitch_meter,
    measure_pitch_accuracy,
    pooled_median_cents,
    pooled_voicing_error_rate,
)
from modules.f0_predictors import F0Predictor
from modules.mel_processing import audio_to_config_mel as audio_to_mel
from modules.mel_processing import spec_to_config_mel as spec_to_mel

NOISE_SCALE = 0.4  # inference_main.py's default -ns
EVAL_SEED = 52468  # SynthesizerTrn.infer's default seed
# Figure name -> what a table column says.
FIGURE_LABELS = {
    "mel_distance": "mel distance",
    "recon_mel_distance": "recon mel distance",
    "pitch_error_cents": "pitch error (cents)",
    "voicing_error_rate": "voicing error rate",
}


@dataclass(frozen=True)
class ClipResult:
    """One validation clip's measurements."""

    speaker: str
    mel_distance: float
    recon_mel_distance: float
    pitch: PitchAccuracy


@dataclass(frozen=True)
class Figures:
    """A group of clips: mel distances averaged over clips, pitch errors pooled over frames."""

    clips: int
    mel_distance: float
    recon_mel_distance: float
    pitch_error_cents: float
    voicing_error_rate: float

    @classmethod
    def of(cls, results: list[ClipResult]) -> Figures:
        pitches = [result.pitch for result in results]
        return cls(
            clips=len(results),
            mel_distance=float(np.mean([result.mel_distance for result in results])),
            recon_mel_distance=float(np.mean([result.recon_mel_distance for result in results])),
            pitch_error_cents=pooled_median_cents(pitches),
            voicing_error_rate=pooled_voicing_error_rate(pitches),
        )

    def to_dict(self) -> dict[str, float]:
        """The figures by name (and the clip count), JSON-ready."""
        return {"clips": self.clips, **{name: getattr(self, name) for name in FIGURE_LABELS}}


@dataclass
class ValidationReport:
    """The figures of one evaluation, and what TensorBoard shows of it.

    `speakers` holds a speaker's own figures when the list has several
    speakers and that speaker more than one clip.
    """

    overall: Figures
    speakers: dict[str, Figures] = field(default_factory=dict)
    audios: dict[str, torch.Tensor] = field(default_factory=dict)
    last_mels: tuple[np.ndarray, np.ndarray] | None = None  # (converted, real)

    @classmethod
    def of(cls, results: list[ClipResult], **outputs: Any) -> ValidationReport:
        by_speaker: dict[str, list[ClipResult]] = {}
        for result in results:
            by_speaker.setdefault(result.speaker, []).append(result)
        speakers = {}
        if len(by_speaker) > 1:
            speakers = {
                name: Figures.of(group)
                for name, group in sorted(by_speaker.items())
                if len(group) > 1
            }
        return cls(Figures.of(results), speakers, **outputs)

    def scalars(self) -> dict[str, float]:
        """TensorBoard scalars: `eval/<figure>` and `eval/<speaker>/<figure>`."""
        scalars = {f"eval/{name}": getattr(self.overall, name) for name in FIGURE_LABELS}
        for speaker, figures in self.speakers.items():
            scalars.update(
                {f"eval/{speaker}/{name}": getattr(figures, name) for name in FIGURE_LABELS}
            )
        return scalars

    def images(self) -> dict[str, np.ndarray]:
        """The last clip's converted and real mel spectrograms (upstream's eval images)."""
        if self.last_mels is None:
            return {}
        converted, real = self.last_mels
        return {
            "gen/mel": plot_spectrogram_to_numpy(converted),
            "gt/mel": plot_spectrogram_to_numpy(real),
        }

    def to_dict(self) -> dict[str, Any]:
        """The figures, JSON-ready: `overall` and `speakers`."""
        return {
            "overall": self.overall.to_dict(),
            "speakers": {name: figures.to_dict() for name, figures in self.speakers.items()},
        }

    def table(self) -> str:
        """The figures as a text table: one row for all clips, one per speaker."""
        headers = ["", "clips", *FIGURE_LABELS.values()]
        rows = [("all", self.overall), *self.speakers.items()]
        cells = [
            [name, str(figures.clips), *(f"{getattr(figures, key):.4g}" for key in FIGURE_LABELS)]
            for name, figures in rows
        ]
        widths = [max(len(row[i]) for row in [headers, *cells]) for i in range(len(headers))]
        lines = [
            "  ".join(
                cell.rjust(width) if i else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths))
            )
            for row in [headers, *cells]
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------- measuring


def _mel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    frames = min(a.size(-1), b.size(-1))
    return float(F.l1_loss(a[..., :frames].float(), b[..., :frames].float()))


def _clips(batch: tuple, hop: int, device: torch.device) -> Iterable[tuple]:
    """Each row of a validation batch, cut to its own length, on `device`."""
    c, f0, spec, y, speaker, lengths, uv, volume = batch
    for row, length in enumerate(lengths.tolist()):
        yield tuple(
            None if tensor is None else tensor[row : row + 1, ..., :size].to(device)
            for tensor, size in (
                (c, length),
                (f0, length),
                (spec, length),
                (y, length * hop),
                (speaker, 1),
                (uv, length),
                (volume, length),
            )
        )


def measure_clip(
    generator: Any, clip: tuple, data: Any, meter: F0Predictor, speaker_name: str
) -> tuple[ClipResult, torch.Tensor, torch.Tensor]:
    """Convert and reconstruct one clip; its measurements, the conversion and its mel."""
    c, f0, spec, _, speaker, uv, volume = clip
    converted, _ = generator.infer(
        c, f0, uv, g=speaker, noice_scale=NOISE_SCALE, seed=EVAL_SEED, vol=volume
    )
    reconstructed = generator.reconstruct(spec, f0, speaker, seed=EVAL_SEED)
    mel = spec_to_mel(spec, data)
    converted_mel = audio_to_mel(converted, data)
    pitch = measure_pitch_accuracy(
        converted[0, 0].float().cpu().numpy(), f0[0].cpu().numpy(), uv[0].cpu().numpy(), meter
    )
    result = ClipResult(
        speaker=speaker_name,
        mel_distance=_mel_l1(converted_mel, mel),
        recon_mel_distance=_mel_l1(audio_to_mel(reconstructed, data), mel),
        pitch=pitch,
    )
    return result, converted, converted_mel


def evaluate_generator(
    generator: Any, loader: Iterable[tuple], hps: Any, device: torch.device | str
) -> ValidationReport:
    """Measure the (bare, not DDP-wrapped) generator on every clip `loader` yields.

    The generator is in eval mode meanwhile and returns to its former mode.
    """
    device = torch.device(device)
    meter = build_pitch_meter(hps.data.hop_length, hps.data.sampling_rate)
    names = {int(speaker_id): name for name, speaker_id in hps.spk.items()}
    results: list[ClipResult] = []
    audios: dict[str, torch.Tensor] = {}
    last_mels = None
    was_training = generator.training
    generator.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                for clip in _clips(batch, hps.data.hop_length, device):
                    speaker_id = int(clip[4].reshape(-1)[0])
                    name = names.get(speaker_id, f"speaker_{speaker_id}")
                    result, converted, converted_mel = measure_clip(
                        generator, clip, hps.data, meter, name
                    )
                    index = len(results)
                    results.append(result)
                    audios[f"gen/audio_{index}"] = converted[0].float().cpu()
                    audios[f"gt/audio_{index}"] = clip[3][0].float().cpu()
                    last_mels = (
                        converted_mel[0].cpu().numpy(),
                        spec_to_mel(clip[2], hps.data)[0].cpu().numpy(),
                    )
    finally:
        generator.train(was_training)
    if not results:
        raise ValueError("evaluate_generator: the validation loader yielded no clip")
    return ValidationReport.of(results, audios=audios, last_mels=last_mels)
