"""Training data: the dataset over preprocessed clips, batching, and data order.

For every `X.wav` in a filelist the preprocessing step has written its feature
files beside it (content, pitch, volume; the spectrogram is cached here when
absent): `feature_files` says what each holds and reads them.

The speaker is the name of the wav's folder, looked up in the config's `spk` map.
Items follow upstream 4.1's `data_utils.py`: content is stretched to the pitch
frame count, all streams are trimmed to a common length, clips over 800 frames
are randomly cropped to 790, and loudness augmentation rescales the audio.

Two deliberate differences from upstream: the dataset does not reseed or shuffle
the global `random` module (the sampler decides the order), and data order is
per-epoch deterministic and resumable mid-epoch (`DistributedEpochSampler`).
Every random draw of an item (the crop offset, the loudness augmentation) comes
from its own generator seeded by (seed, epoch, item index), never from the
random state of whichever process loads it, so a resumed run draws exactly what
an uninterrupted one would, with any number of data workers.
"""

from __future__ import annotations

import math
import os
import random
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torch.utils.data
from torch.nn import functional as F

import feature_files as ff
from core.errors import UserError
from core.lifecycle import reap_workers_at_exit
from modules.f0_utils import repeat_expand_2d
from modules.mel_processing import spectrogram_torch

CROP_THRESHOLD_FRAMES = 800  # clips longer than this are cropped ...
CROP_FRAMES = 790  # ... to this many frames (upstream's numbers)
TRAIN_PREFETCH_BATCHES = 4  # per worker; PyTorch's default is 2

# One loaded item: content (C, T), f0 (T,), spec (F, T), audio (1, T * hop),
# speaker id (1,), uv (T,), volume (T,) or None.
Item = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
    torch.Tensor | None,
]


def load_filepaths(path: str | os.PathLike) -> list[str]:
    """Wav paths of an upstream filelist: one per line, first `|`-separated field.

    Blank lines are skipped and Windows separators become `/`, as upstream's
    loader does before using the path.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(
            f"{path}: cannot read the filelist ({error}); run preprocess_flist_config.py"
        ) from error
    paths = []
    for line in lines:
        first = line.strip().split("|")[0].strip()
        if first:
            paths.append(first.replace("\\", "/"))
    return paths


def read_wav(path: str, max_wav_value: float) -> tuple[torch.Tensor, int]:
    """Mono audio as float32 (T,) scaled like upstream (16-bit PCM / max_wav_value)."""
    try:
        info = soundfile.info(path)
        if info.subtype == "PCM_16":
            data, sampling_rate = soundfile.read(path, dtype="int16", always_2d=True)
            audio = data.astype(np.float32) / np.float32(max_wav_value)
        else:
            audio, sampling_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, OSError) as error:
        raise UserError(
            f"{path}: cannot read the audio ({error}); rerun resample.py or remove it from "
            "the filelist"
        ) from error
    if audio.shape[1] != 1:
        raise UserError(f"{path}: {audio.shape[1]} channels, expected mono; rerun resample.py")
    return torch.from_numpy(np.ascontiguousarray(audio[:, 0])), sampling_rate


class TextAudioSpeakerLoader(torch.utils.data.Dataset):
    """Items of one filelist: (content, f0, spec, audio, speaker id, uv, volume).

    `hparams` is a config checked by `core.config_schema.validate_config`,
    which fills in every default; nothing here repeats one.
    """

    def __init__(
        self,
        audiopaths: str | os.PathLike,
        hparams: Any,
        all_in_mem: bool = False,
        vol_aug: bool = True,
    ) -> None:
        self.audiopaths = load_filepaths(audiopaths)
        self.hparams = hparams
        data = hparams.data
        self.max_wav_value = float(data.max_wav_value)
        self.sampling_rate = int(data.sampling_rate)
        self.filter_length = int(data.filter_length)
        self.hop_length = int(data.hop_length)
        self.win_length = int(data.win_length)
        self.unit_interpolate_mode = data.unit_interpolate_mode
        self.spk_map = hparams.spk
        self.vol_emb = bool(hparams.model.vol_embedding)
        self.vol_aug = bool(hparams.train.vol_aug) and vol_aug
        self.seed = int(hparams.train.seed)
        self.all_in_mem = all_in_mem
        self.cache: list[Item] = []
        if self.all_in_mem:
            self.cache = [self.get_audio(path) for path in self.audiopaths]

    # ----------------------------------------------------------------- loading

    def _spectrogram(self, audio_norm: torch.Tensor) -> torch.Tensor:
        """Linear magnitude spectrogram (F, frames) of (1, T) audio."""
        spec = spectrogram_torch(
            audio_norm, self.filter_length, self.sampling_rate, self.hop_length,
            self.win_length, center=False,
        )
        return torch.squeeze(spec, 0)

    def _load_spec(self, filename: str, audio_norm: torch.Tensor) -> torch.Tensor:
        """The cached spectrogram, computing and caching it (once) when absent."""
        spec_filename = ff.spec_path(filename)
        if not os.path.exists(spec_filename):
            spec = self._spectrogram(audio_norm).contiguous()
            if ff.write_spec_once(spec_filename, spec):
                return spec
        return ff.read_spec(spec_filename, self.filter_length)

    def get_audio(self, filename: str) -> Item:
        """Load one clip and its features, trimmed to a common frame count."""
        filename = filename.replace("\\", "/")
        audio, sampling_rate = read_wav(filename, self.max_wav_value)
        if sampling_rate != self.sampling_rate:
            raise UserError(
                f"{filename}: sample rate {sampling_rate} Hz, but data.sampling_rate is "
                f"{self.sampling_rate}; rerun resample.py --sr2 {self.sampling_rate}"
            )
        audio_norm = audio.unsqueeze(0)
        spec = self._load_spec(filename, audio_norm)

        speaker = os.path.basename(os.path.dirname(filename))
        if speaker not in self.spk_map:
            raise UserError(
                f"{filename}: speaker folder {speaker!r} is not in the config's spk map; "
                "add it to spk or rerun preprocess_flist_config.py"
            )
        spk = torch.LongTensor([int(self.spk_map[speaker])])

        f0_values, uv_values = ff.read_pitch(ff.pitch_path(filename))
        f0 = torch.from_numpy(f0_values).float()
        uv = torch.from_numpy(uv_values).float()

        content = ff.read_content(ff.content_path(filename))
        content_frames = content.shape[1]
        content = repeat_expand_2d(content, f0.shape[0], mode=self.unit_interpolate_mode)

        volume = None
        if self.vol_emb:
            volume = torch.from_numpy(ff.read_volume(ff.volume_path(filename)))

        num_samples = audio_norm.shape[1]
        lengths = {"content": content_frames, "pitch": f0.shape[0], "spec": spec.shape[1]}
        if volume is not None:
            lengths["volume"] = volume.shape[0]
        problems = ff.clip_verdict(
            filename, num_samples, lengths, self.sampling_rate, self.hop_length
        )
        if problems:
            raise UserError("; ".join(problems.values()))
        frames = ff.common_frames(num_samples, lengths, self.hop_length)
        spec, content, f0, uv = spec[:, :frames], content[:, :frames], f0[:frames], uv[:frames]
        audio_norm = audio_norm[:, : frames * self.hop_length]
        if volume is not None:
            volume = volume[:frames]
        return content, f0, spec, audio_norm, spk, uv, volume

    # ----------------------------------------------------------------- augmentation

    def random_slice(
        self,
        content: torch.Tensor,
        f0: torch.Tensor,
        spec: torch.Tensor,
        audio_norm: torch.Tensor,
        spk: torch.Tensor,
        uv: torch.Tensor,
        volume: torch.Tensor | None,
        rng: random.Random | None = None,
    ) -> Item:
        """Loudness augmentation (half the time) and the 790-frame crop of long clips.

        Draws from `rng` (upstream's draws, in upstream's order); without one,
        from a generator seeded for epoch 0 of an unnamed item.
        """
        rng = rng if rng is not None else item_rng(self.seed, 0, -1)
        if self.vol_aug and volume is not None and rng.choice([True, False]):
            max_amp = float(torch.max(torch.abs(audio_norm))) + 1e-5
            max_shift = min(1.0, math.log10(1.0 / max_amp))
            log10_vol_shift = rng.uniform(-1.0, max_shift)
            gain = 10**log10_vol_shift
            audio_norm = audio_norm * gain
            volume = volume * gain
            spec = self._spectrogram(audio_norm)[:, : spec.shape[1]]

        if spec.shape[1] > CROP_THRESHOLD_FRAMES:
            start = rng.randint(0, spec.shape[1] - CROP_THRESHOLD_FRAMES)
            end = start + CROP_FRAMES
            spec, content = spec[:, start:end], content[:, start:end]
            f0, uv = f0[start:end], uv[start:end]
            audio_norm = audio_norm[:, start * self.hop_length : end * self.hop_length]
            if volume is not None:
                volume = volume[start:end]
        return content, f0, spec, audio_norm, spk, uv, volume

    def __getitem__(self, index: int) -> Item:
        """Item `index`; its random draws depend on the epoch an `EpochIndex` carries."""
        item = self.cache[index] if self.all_in_mem else self.get_audio(self.audiopaths[index])
        epoch = index.epoch if isinstance(index, EpochIndex) else 0
        return self.random_slice(*item, rng=item_rng(self.seed, epoch, int(index)))

    def __len__(self) -> int:
        return len(self.audiopaths)


class EpochIndex(int):
    """A dataset index that also carries the epoch it was drawn for.

    The sampler hands these to the data workers with every batch, so an item's
    random draws can depend on the epoch even in persistent worker processes,
    which never see the main process's later state. It is an `int` everywhere
    else (indexing, comparison, printing).
    """

    epoch: int

    def __new__(cls, index: int, epoch: int) -> EpochIndex:
        value = super().__new__(cls, index)
        value.epoch = epoch
        return value

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return (EpochIndex, (int(self), self.epoch))


def item_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The generator for one item's draws in one epoch: the same in any process."""
    return random.Random(f"{seed}/{epoch}/{index}")


def _pad_stack(tensors: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """Zero-pad each tensor's last dimension to `length` and stack them."""
    return torch.stack([F.pad(t, (0, length - t.shape[-1])) for t in tensors])


class TextAudioCollate:
    """Pad a list of items into a batch, longest first (upstream's order and layout).

    Returns (c (B, C, T), f0 (B, T), spec (B, F, T), wav (B, 1, T * hop),
    spkids (B, 1), lengths (B,), uv (B, T), volume (B, T) or None).
    """

    def __call__(self, batch: Sequence[Item | None]) -> tuple[Any, ...]:
        rows = [item for item in batch if item is not None]
        content_lengths = torch.LongTensor([item[0].shape[1] for item in rows])
        lengths, order = torch.sort(content_lengths, dim=0, descending=True)
        rows = [rows[i] for i in order.tolist()]
        max_len = int(lengths[0])
        max_wav_len = max(item[3].shape[1] for item in rows)

        c_padded = _pad_stack([item[0].float() for item in rows], max_len)
        f0_padded = _pad_stack([item[1].float() for item in rows], max_len)
        spec_padded = _pad_stack([item[2].float() for item in rows], max_len)
        wav_padded = _pad_stack([item[3].float() for item in rows], max_wav_len)
        spkids = torch.stack([item[4].reshape(1).long() for item in rows])
        uv_padded = _pad_stack([item[5].float() for item in rows], max_len)
        volumes = [item[6] for item in rows]
        volume_padded = (
            None
            if any(v is None for v in volumes)
            else _pad_stack([v.float() for v in volumes], max_len)
        )
        return (
            c_padded, f0_padded, spec_padded, wav_padded, spkids, lengths, uv_padded,
            volume_padded,
        )


# --------------------------------------------------------------------------- data order


def items_per_rank(num_items: int, num_replicas: int) -> int:
    """Items each rank sees per epoch: the dataset padded up to a multiple of the ranks."""
    return math.ceil(num_items / num_replicas) if num_items > 0 else 0


def batches_per_epoch(num_items: int, num_replicas: int, batch_size: int) -> int:
    """Batches (optimizer steps) each rank runs per epoch; the last batch may be short."""
    if num_replicas < 1 or batch_size < 1:
        raise ValueError("num_replicas and batch_size must be at least 1")
    return math.ceil(items_per_rank(num_items, num_replicas) / batch_size)


class DistributedEpochSampler(torch.utils.data.Sampler[int]):
    """Per-epoch shuffled indices, split across ranks, resumable mid-epoch.

    Each epoch draws one permutation of all items from a generator seeded with
    `seed + epoch` (identical on every rank), pads it by repeating its first items
    until its length is a multiple of `num_replicas`, and gives rank r the items
    at positions r, r + R, r + 2R, ... So the ranks' shares are disjoint apart
    from the padding repeats, and every rank yields the same number of items
    and hence runs the same number of batches (DDP needs that: a rank that ran
    out early would leave the others waiting in an all-reduce forever).

    `set_epoch(epoch, skip)` selects the epoch and drops the first `skip` items
    of this rank's share, for resuming exactly where a checkpoint left off.
    """

    def __init__(
        self,
        num_items: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_items < 0:
            raise ValueError("num_items must be 0 or more")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside range(num_replicas={num_replicas})")
        self.num_items = num_items
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0

    @property
    def items_per_rank(self) -> int:
        """Items this rank yields in a whole epoch (before any skip)."""
        return items_per_rank(self.num_items, self.num_replicas)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the epoch's order; skip this rank's first `skip` items of it."""
        if not 0 <= skip <= self.items_per_rank:
            raise ValueError(f"skip {skip} is outside 0..{self.items_per_rank}")
        self.epoch = epoch
        self.skip = skip

    def epoch_indices(self) -> list[int]:
        """This rank's whole share of the current epoch, ignoring skip."""
        if self.num_items == 0:
            return []
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_items, generator=generator)
        else:
            order = torch.arange(self.num_items)
        total = self.items_per_rank * self.num_replicas
        if total > self.num_items:
            order = order.repeat(math.ceil(total / self.num_items))[:total]
        return order[self.rank : total : self.num_replicas].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(
            EpochIndex(index, self.epoch) for index in self.epoch_indices()[self.skip :]
        )

    def __len__(self) -> int:
        return self.items_per_rank - self.skip


# --------------------------------------------------------------------------- loaders


def default_num_workers(all_in_mem: bool) -> int:
    """Upstream's choice: 5 workers, or as many as there are CPUs if fewer; 0 with all_in_mem."""
    if all_in_mem:
        return 0
    cpus = os.cpu_count() or 1
    return 5 if cpus > 4 else cpus


def resolve_num_workers(hps: Any) -> int:
    """train.num_workers if set, else upstream's choice; never more than the CPUs."""
    configured = hps.train.num_workers
    if configured is None:
        configured = default_num_workers(bool(hps.train.all_in_mem))
    return max(0, min(int(configured), os.cpu_count() or 1))


def leave_stopping_to_main_process(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: a data worker ignores SIGINT and SIGTERM.

    Schedulers (SLURM's scancel, systemd) and Ctrl-C signal every process of
    the job, data workers included. A worker that died of it would make the
    main process fail with "DataLoader worker ... killed by signal" instead of
    finishing its step and saving; the main process stops its workers itself,
    and kills them whenever it exits (`core.lifecycle.reap_workers_at_exit`).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_train_loader(
    dataset: torch.utils.data.Dataset,
    hps: Any,
    rank: int,
    world_size: int,
    seed: int,
    device_type: str,
    collate_fn: Callable[[Any], Any] | None = None,
) -> tuple[torch.utils.data.DataLoader, DistributedEpochSampler]:
    """The training DataLoader of one rank and its sampler (call `set_epoch` each epoch).

    `hps.train.batch_size` is per process. The last batch of an epoch is kept
    even if short (drop_last=False, as upstream): with the small datasets this
    tool is used with, dropping it would discard a noticeable share of the
    clips every epoch, and all ranks still run the same number of batches.
    Worker seeds come from a generator seeded by (seed, rank), so building the
    loader never draws from the trainer's global torch RNG. Workers persist
    across epochs (every item's random draws come from the item and the epoch,
    not the worker, so resume stays exact); batches land in pinned memory on
    CUDA, so the trainer's non-blocking copies overlap the step. `collate_fn`
    defaults to the synthesizer's `TextAudioCollate`.
    """
    sampler = DistributedEpochSampler(
        len(dataset), num_replicas=world_size, rank=rank, seed=seed, shuffle=True
    )
    num_workers = resolve_num_workers(hps)
    if num_workers > 0:
        reap_workers_at_exit()
    generator = torch.Generator()
    generator.manual_seed(seed * 1000 + rank)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=int(hps.train.batch_size),
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn or TextAudioCollate(),
        pin_memory=device_type == "cuda",
        drop_last=False,
        persistent_workers=num_workers > 0,
        # Batches queued ahead per worker, so a slow clip never stalls the step.
        prefetch_factor=TRAIN_PREFETCH_BATCHES if num_workers > 0 else None,
        generator=generator,
        worker_init_fn=leave_stopping_to_main_process,
    )
    return loader, sampler


def make_eval_loader(
    dataset: torch.utils.data.Dataset,
    hps: Any,
    device_type: str,
    collate_fn: Callable[[Any], Any] | None = None,
) -> torch.utils.data.DataLoader:
    """The validation DataLoader: one clip per batch, file order, upstream's one worker.

    A configured `train.num_workers` of 0 also keeps evaluation in-process.
    """
    configured = hps.train.num_workers
    num_workers = 0 if configured == 0 else min(1, os.cpu_count() or 1)
    if num_workers > 0:
        reap_workers_at_exit()
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn or TextAudioCollate(),
        pin_memory=device_type == "cuda",
        drop_last=False,
        persistent_workers=num_workers > 0,
        # Its own generator: evaluating never moves the training random streams.
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=leave_stopping_to_main_process,
    )
