"""The diffusion model's training and validation data, as upstream's loader gives it.

Each item of a clip (`<wav>` in the filelist, features beside it from
`preprocess_hubert_f0.py --use_diff`): content units stretched to the pitch
frames, f0 in Hz, loudness, the vocoder's mel, the speaker id (from the
speaker folder, through the YAML's `spk`) and the pitch-augmentation shift.
Training items are a random `data.duration`-second slice; with probability
1/2 the augmented mel and loudness replace the clip's own and f0 is shifted
by the same key shift (upstream's `random.choice([True, False])`).
Validation items are whole clips, never augmented.

Unlike upstream, every draw comes from the item's own generator (seed,
epoch, index), so a resumed run draws what an uninterrupted one would, and
clips too short for a slice are dropped once, up front, with a note instead
of silently replaced by their neighbour at every draw.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data

import feature_files as ff
from core.errors import UserError
from data_utils import item_rng, load_filepaths
from diffusion.config import DiffusionConfig
from modules.f0_utils import repeat_expand_2d

logger = logging.getLogger("so-vits-svc")

# Upstream needs a clip this much longer than data.duration to slice it.
SLICE_MARGIN_S = 0.1


def speaker_of(wav_path: str) -> str:
    """The speaker folder of a clip (upstream: the path's second-to-last part)."""
    return os.path.basename(os.path.dirname(wav_path.replace("\\", "/")))


def check_diffusion_filelists(config: DiffusionConfig, source: str) -> list[str]:
    """Every problem a run would meet with its filelists, one line each, before anything starts."""
    problems: list[str] = []
    needed = (
        (ff.mel_path, ff.RERUN_DIFFUSION),
        (ff.aug_mel_path, ff.RERUN_DIFFUSION),
        (ff.aug_volume_path, ff.RERUN_DIFFUSION),
        (ff.content_path, "rerun preprocess_hubert_f0.py"),
        (ff.pitch_path, "rerun preprocess_hubert_f0.py"),
        (ff.volume_path, ff.RERUN_DIFFUSION),
    )
    for key in ("training_files", "validation_files"):
        filelist = getattr(config.data, key)
        if not os.path.isfile(filelist):
            problems.append(
                f"{filelist}: data.{key} of {source} not found; run preprocess_flist_config.py"
            )
            continue
        wavs = load_filepaths(filelist)
        if not wavs:
            problems.append(f"{filelist}: no clips listed; run preprocess_flist_config.py")
        elif os.path.isfile(ff.content_path(wavs[0])):
            problems += _content_width_problem(ff.content_path(wavs[0]), config, source)
        for wav in wavs:
            problems += [
                f"{path_of(wav)}: missing; {fix}"
                for path_of, fix in needed
                if not os.path.isfile(path_of(wav))
            ]
            speaker = speaker_of(wav)
            if config.model.n_spk > 1 and speaker not in config.spk:
                problems.append(
                    f"{wav}: speaker folder {speaker!r} is not in {source}'s spk; add it to spk "
                    "or rerun preprocess_flist_config.py"
                )
    return problems


def _content_width_problem(path: str, config: DiffusionConfig, source: str) -> list[str]:
    """A line when a filelist's content (its first clip's) is not the config's width."""
    width = ff.read_content(path).shape[0]
    expected = config.data.encoder_out_channels
    if width == expected:
        return []
    return [
        f"{path}: content width {width} but data.encoder_out_channels of {source} is "
        f"{expected}: set data.encoder and encoder_out_channels to the features' encoder, "
        "or rerun preprocess_hubert_f0.py with the config's encoder"
    ]


@dataclass
class Clip:
    """One clip's streams, trimmed to a common frame count."""

    units: torch.Tensor  # (T, C)
    f0: torch.Tensor  # (T, 1) Hz
    volume: torch.Tensor  # (T, 1)
    mel: torch.Tensor  # (T, M)
    aug_volume: torch.Tensor  # (T, 1)
    aug_mel: torch.Tensor  # (T, M)
    keyshift: float
    spk_id: torch.Tensor  # (1,)


class DiffusionDataset(torch.utils.data.Dataset):
    """Clips of one filelist; items are dicts of tensors (see the module docstring)."""

    def __init__(self, config: DiffusionConfig, filelist: str, training: bool, seed: int) -> None:
        self.config, self.training, self.seed = config, training, seed
        self.frame_seconds = config.data.block_size / config.data.sampling_rate
        self.slice_frames = int(config.data.duration / self.frame_seconds)
        self.paths = [p.replace("\\", "/") for p in load_filepaths(filelist)]
        if training:
            self.paths = self._long_enough(self.paths, filelist)
        self.cache: list[Clip] | None = None
        if config.train.cache_all_data:
            self.cache = [self.read_clip(path) for path in self.paths]

    def _long_enough(self, paths: list[str], filelist: str) -> list[str]:
        """The clips a training slice fits in; the others are named once and left out."""
        needed = self.config.data.duration + SLICE_MARGIN_S
        kept = [p for p in paths if self._frames(p) * self.frame_seconds >= needed]
        if len(kept) < len(paths):
            logger.warning(
                "%s: %d of %d clips are shorter than data.duration + %.1f s (%.2f s) and are "
                "not trained on",
                filelist, len(paths) - len(kept), len(paths), SLICE_MARGIN_S, needed,
            )  # fmt: skip
        if not kept:
            raise UserError(
                f"{filelist}: every clip is shorter than data.duration + {SLICE_MARGIN_S} s "
                f"({needed:.2f} s): lower data.duration in the diffusion config"
            )
        return kept

    @staticmethod
    def _frames(wav: str) -> int:
        path = ff.mel_path(wav)
        try:
            return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: cannot be read ({error}); {ff.RERUN_DIFFUSION}") from error

    def read_clip(self, wav: str) -> Clip:
        """Every stream of one clip from its feature files, as upstream reads them."""
        f0_values, _ = ff.read_pitch(ff.pitch_path(wav))
        f0 = torch.from_numpy(np.asarray(f0_values, dtype=np.float32))
        content = ff.read_content(ff.content_path(wav))  # (C, frames)
        units = repeat_expand_2d(content, f0.shape[0], self.config.data.unit_interpolate_mode)
        fix = ff.RERUN_DIFFUSION
        volume = torch.from_numpy(ff.read_volume(ff.volume_path(wav), fix))
        aug_volume = torch.from_numpy(ff.read_volume(ff.aug_volume_path(wav), fix))
        mel = torch.from_numpy(ff.read_mel(ff.mel_path(wav)))
        aug_mel, keyshift = ff.read_aug_mel(ff.aug_mel_path(wav), mel.shape[1])
        streams = [units.T, f0[:, None], volume[:, None], mel, aug_volume[:, None]]
        streams.append(torch.from_numpy(aug_mel))
        frames = min(stream.shape[0] for stream in streams)
        if self.config.train.cache_all_data and self.config.train.cache_fp16:
            streams[0], streams[3], streams[5] = (streams[i].half() for i in (0, 3, 5))
        units, f0, volume, mel, aug_volume, aug_mel = (s[:frames] for s in streams)
        speaker = self.config.spk.get(speaker_of(wav), 0) if self.config.model.n_spk > 1 else 0
        spk_id = torch.LongTensor([speaker])
        return Clip(units, f0, volume, mel, aug_volume, aug_mel, keyshift, spk_id)

    def __getitem__(self, index: int) -> dict[str, Any]:
        wav = self.paths[index]
        clip = self.cache[index] if self.cache is not None else self.read_clip(wav)
        start, frames, augmented = 0, clip.mel.shape[0], False
        if self.training:
            rng = item_rng(self.seed, getattr(index, "epoch", 0), int(index))
            seconds = clip.mel.shape[0] * self.frame_seconds
            offset = rng.uniform(0, seconds - self.config.data.duration - SLICE_MARGIN_S)
            start, frames = int(offset / self.frame_seconds), self.slice_frames
            augmented = rng.choice([True, False])
        span = slice(start, start + frames)
        shift = clip.keyshift if augmented else 0.0
        mel, volume = (clip.aug_mel, clip.aug_volume) if augmented else (clip.mel, clip.volume)
        return {
            "units": clip.units[span].float(),
            "f0": clip.f0[span] * 2 ** (shift / 12),
            "volume": volume[span],
            "mel": mel[span].float(),
            "spk_id": clip.spk_id,
            "aug_shift": torch.tensor([[shift]], dtype=torch.float32),
            "name": os.path.splitext(wav)[0],
            "name_ext": wav,
        }

    def __len__(self) -> int:
        return len(self.paths)
