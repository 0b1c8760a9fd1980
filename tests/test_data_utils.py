"""The dataset, collate, sampler and loader factories on a synthetic dataset."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import feature_files
from core.config_schema import validate_config
from core.errors import UserError
from data_utils import (
    CROP_FRAMES,
    DistributedEpochSampler,
    EpochIndex,
    TextAudioCollate,
    TextAudioSpeakerLoader,
    batches_per_epoch,
    load_filepaths,
    make_eval_loader,
    make_train_loader,
    resolve_num_workers,
)
from tests.helpers_data import make_config, make_dataset
from utils import HParams


def _hps(root: Path, **overrides) -> HParams:
    config, _ = validate_config(make_config(root, **overrides), "test")
    return HParams(**config)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, items_per_speaker=3, seconds=0.6, vol=True, seed=3)
    return root


def test_load_filepaths_skips_blanks_and_takes_first_field(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("a\\b\\x.wav|spk|text\n\n  c/y.wav  \n", encoding="utf-8")
    assert load_filepaths(listing) == ["a/b/x.wav", "c/y.wav"]
    with pytest.raises(UserError, match="missing.txt"):
        load_filepaths(tmp_path / "missing.txt")


def test_items_have_upstream_shapes_and_content_stretched_to_f0(dataset_root: Path) -> None:
    hps = _hps(dataset_root, model={"vol_embedding": True})
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps, vol_aug=False)
    assert len(dataset) == 4
    state = random.getstate()
    content, f0, spec, audio, spk, uv, volume = dataset[0]
    assert random.getstate() == state  # short clips: no crop, no augmentation drawn
    frames = f0.shape[0]
    assert frames == int(0.6 * 22050) // 256
    assert content.shape == (32, frames) and content.dtype == torch.float32
    assert spec.shape == (513, frames) and spec.dtype == torch.float32
    assert audio.shape == (1, frames * 256) and audio.abs().max() <= 1.0
    assert uv.shape == (frames,) and set(uv.unique().tolist()) <= {0.0, 1.0}
    assert volume is not None and volume.shape == (frames,)
    speaker = Path(dataset.audiopaths[0]).parent.name
    assert spk.tolist() == [hps.spk[speaker]]


def test_spec_cached_atomically_once(dataset_root: Path) -> None:
    hps = _hps(dataset_root)
    dataset = TextAudioSpeakerLoader(hps.data.validation_files, hps)
    wav = dataset.audiopaths[0]
    spec_file = Path(feature_files.spec_path(wav))
    assert wav.endswith(".wav") and spec_file.name.endswith(".spec.pt")
    if spec_file.exists():
        spec_file.unlink()
    first = dataset[0][2]
    assert spec_file.exists()
    stamp = spec_file.stat().st_mtime_ns
    second = dataset[0][2]
    assert spec_file.stat().st_mtime_ns == stamp  # read back, not rewritten
    torch.testing.assert_close(first, second)
    leftovers = [p for p in spec_file.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_spec_written_meanwhile_is_read_not_replaced(dataset_root: Path, monkeypatch) -> None:

    hps = _hps(dataset_root)
    dataset = TextAudioSpeakerLoader(hps.data.validation_files, hps)
    spec_file = Path(feature_files.spec_path(dataset.audiopaths[1]))
    if spec_file.exists():
        spec_file.unlink()
    marker = torch.full((513, dataset.get_audio(dataset.audiopaths[1])[2].shape[1]), 7.0)
    spec_file.unlink()
    real_spectrogram = dataset._spectrogram

    def racing_spectrogram(audio: torch.Tensor) -> torch.Tensor:
        torch.save(marker, spec_file)  # another worker wins the race
        return real_spectrogram(audio)

    monkeypatch.setattr(dataset, "_spectrogram", racing_spectrogram)
    spec = dataset.get_audio(dataset.audiopaths[1])[2]
    assert torch.all(spec == 7.0)
    assert not [p for p in spec_file.parent.iterdir() if p.name.endswith(".tmp")]
    spec_file.unlink()  # leave no fake spectrogram behind
    assert feature_files.spec_path(dataset.audiopaths[1]) == str(spec_file)


def test_collate_pads_and_sorts_longest_first(dataset_root: Path) -> None:
    hps = _hps(dataset_root, model={"vol_embedding": True})
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps, vol_aug=False)
    short = dataset[0]
    cut = 20
    shorter = (
        short[0][:, :cut], short[1][:cut], short[2][:, :cut], short[3][:, : cut * 256],
        short[4], short[5][:cut], short[6][:cut],
    )
    c, f0, spec, wav, spkids, lengths, uv, volume = TextAudioCollate()([shorter, dataset[1]])
    frames = dataset[1][0].shape[1]
    assert lengths.tolist() == [frames, cut]
    assert c.shape == (2, 32, frames) and spec.shape == (2, 513, frames)
    assert f0.shape == uv.shape == volume.shape == (2, frames)
    assert wav.shape == (2, 1, frames * 256)
    assert spkids.shape == (2, 1) and spkids.dtype == torch.long
    assert torch.all(c[1, :, cut:] == 0) and torch.all(wav[1, :, cut * 256 :] == 0)
    torch.testing.assert_close(c[1, :, :cut], shorter[0])
    # Without volume the last entry is None.
    no_vol = [(*item[:6], None) for item in (shorter, dataset[1])]
    assert TextAudioCollate()(no_vol)[7] is None


def test_volume_absent_without_vol_embedding(dataset_root: Path) -> None:
    hps = _hps(dataset_root)
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps)
    assert dataset[0][6] is None


def test_long_clip_cropped_to_790_frames(tmp_path: Path) -> None:
    make_dataset(tmp_path, speakers=("alice",), items_per_speaker=2, seconds=9.6, vol=True)
    hps = _hps(tmp_path, model={"vol_embedding": True}, spk={"alice": 0})
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps, vol_aug=False)
    full = dataset.get_audio(dataset.audiopaths[0])
    assert full[0].shape[1] > 800
    content, f0, spec, audio, _, uv, volume = dataset[EpochIndex(0, 5)]
    assert content.shape[1] == f0.shape[0] == spec.shape[1] == uv.shape[0] == CROP_FRAMES
    assert volume.shape[0] == CROP_FRAMES and audio.shape[1] == CROP_FRAMES * 256
    # The crop is a window of the full clip, aligned across streams.
    start = next(s for s in range(full[1].shape[0]) if torch.equal(full[1][s : s + 790], f0))
    torch.testing.assert_close(audio, full[3][:, start * 256 : (start + 790) * 256])
    torch.testing.assert_close(content, full[0][:, start : start + 790])
    # The crop depends on (seed, epoch, index) alone, not on the process's random state.
    random.seed(99)
    torch.testing.assert_close(dataset[EpochIndex(0, 5)][1], f0)
    starts = {int(dataset[EpochIndex(0, epoch)][1][0]) for epoch in range(6)}
    assert len(starts) > 1  # other epochs crop elsewhere


def test_volume_augmentation_scales_audio_volume_and_spec(dataset_root: Path) -> None:
    hps = _hps(dataset_root, model={"vol_embedding": True}, train={"vol_aug": True})
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps)
    base = dataset.get_audio(dataset.audiopaths[0])
    changed = 0
    for epoch in range(8):
        _, _, spec, audio, _, _, volume = dataset[EpochIndex(0, epoch)]
        gain = float(audio.abs().max() / base[3].abs().max())
        torch.testing.assert_close(volume, base[6] * gain, rtol=1e-4, atol=1e-6)
        # Recomputed from the scaled audio (the last frame differs: the cached
        # spectrogram saw the untrimmed clip; sqrt(|X|^2 + 1e-6) floors tiny bins).
        assert spec.shape == base[2].shape
        torch.testing.assert_close(spec[:, :-1], base[2][:, :-1] * gain, rtol=1e-3, atol=2e-3)
        changed += abs(gain - 1.0) > 1e-3
    assert 0 < changed < 8  # augmented about half the time
    no_aug = TextAudioSpeakerLoader(hps.data.training_files, hps, vol_aug=False)
    torch.testing.assert_close(no_aug[0][3], base[3])


def test_all_in_mem_gives_same_items(dataset_root: Path) -> None:
    hps = _hps(dataset_root, model={"vol_embedding": True})
    on_disk = TextAudioSpeakerLoader(hps.data.training_files, hps, vol_aug=False)
    in_mem = TextAudioSpeakerLoader(hps.data.training_files, hps, all_in_mem=True, vol_aug=False)
    assert len(in_mem.cache) == len(on_disk)
    for index in range(len(on_disk)):
        for a, b in zip(on_disk[index], in_mem[index]):
            torch.testing.assert_close(a, b)


def test_dataset_does_not_touch_global_random(dataset_root: Path) -> None:
    hps = _hps(dataset_root)
    random.seed(11)
    state = random.getstate()
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps, all_in_mem=True)
    assert random.getstate() == state
    assert dataset.audiopaths == load_filepaths(hps.data.training_files)  # file order kept


def test_wrong_lengths_and_unknown_speaker_are_user_errors(tmp_path: Path) -> None:
    info = make_dataset(tmp_path, items_per_speaker=2, seconds=0.5, vol=False)
    hps = _hps(tmp_path, spk={"alice": 0})
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps)
    with pytest.raises(UserError, match="'bob' is not in the config's spk"):
        dataset.get_audio(info["train_wavs"][1])
    from core.safe_io import save_f0_uv

    wav = info["train_wavs"][0]
    save_f0_uv(wav + ".f0.npy", np.full(10, 200.0), np.ones(10))
    with pytest.raises(UserError, match="rerun preprocess_hubert_f0.py"):
        dataset.get_audio(wav)


# --------------------------------------------------------------------------- sampler


def _epoch(num_items: int, ranks: int, epoch: int, seed: int = 0) -> list[list[int]]:
    shares = []
    for rank in range(ranks):
        sampler = DistributedEpochSampler(num_items, num_replicas=ranks, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        shares.append(list(sampler))
    return shares


def test_sampler_two_ranks_cover_every_item_once_per_epoch() -> None:
    orders = []
    for epoch in range(4):
        shares = _epoch(8, 2, epoch)
        assert [len(s) for s in shares] == [4, 4]
        assert sorted(shares[0] + shares[1]) == list(range(8))
        assert not set(shares[0]) & set(shares[1])
        orders.append(shares[0] + shares[1])
    assert len({tuple(o) for o in orders}) == 4  # epochs differ
    assert batches_per_epoch(8, 2, 2) == 2


def test_sampler_uneven_items_same_count_on_every_rank() -> None:
    shares = _epoch(9, 2, epoch=1)
    assert [len(s) for s in shares] == [5, 5]
    assert set(shares[0] + shares[1]) == set(range(9))
    assert batches_per_epoch(9, 2, 2) == 3
    shares = _epoch(2, 3, epoch=0)  # fewer items than ranks
    assert [len(s) for s in shares] == [1, 1, 1]
    sampler = DistributedEpochSampler(9, num_replicas=2, rank=1)
    assert len(sampler) == 5
    assert batches_per_epoch(0, 2, 4) == 0


def test_sampler_same_seed_same_order_and_other_seed_differs() -> None:
    assert _epoch(16, 2, 3, seed=7) == _epoch(16, 2, 3, seed=7)
    assert _epoch(16, 2, 3, seed=7) != _epoch(16, 2, 3, seed=8)
    plain = DistributedEpochSampler(5, shuffle=False)
    assert list(plain) == [0, 1, 2, 3, 4]


def test_sampler_skip_resumes_mid_epoch_exactly() -> None:
    sampler = DistributedEpochSampler(10, num_replicas=2, rank=1, seed=4)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, skip=3)
    assert len(sampler) == 2
    assert list(sampler) == full[3:]
    sampler.set_epoch(3)
    assert len(sampler) == 5
    with pytest.raises(ValueError):
        sampler.set_epoch(3, skip=6)


# --------------------------------------------------------------------------- loaders


def test_item_draws_depend_on_epoch_and_index_not_on_the_process(dataset_root: Path) -> None:
    """Resume is exact with data workers: draws come from (seed, epoch, index) alone."""
    hps = _hps(dataset_root, model={"vol_embedding": True}, train={"vol_aug": True})
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps)

    def epoch_batches(num_workers: int, epoch: int, skip: int = 0) -> list[torch.Tensor]:
        hps.train.num_workers = num_workers
        loader, sampler = make_train_loader(dataset, hps, rank=0, world_size=1, seed=1,
                                            device_type="cpu")
        sampler.set_epoch(epoch, skip=skip)
        random.seed(num_workers)  # the trainer's own random state must not matter
        return [batch[3] for batch in loader]

    in_process = epoch_batches(0, epoch=2)
    with_workers = epoch_batches(2, epoch=2)
    assert len(in_process) == len(with_workers) == 2
    for a, b in zip(in_process, with_workers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    resumed = epoch_batches(2, epoch=2, skip=hps.train.batch_size)
    torch.testing.assert_close(resumed[0], in_process[1], rtol=0, atol=0)
    other_epoch = epoch_batches(0, epoch=3)
    assert any(a.shape != b.shape or not torch.equal(a, b)
               for a, b in zip(in_process, other_epoch))


def test_train_and_eval_loaders(dataset_root: Path) -> None:
    hps = _hps(dataset_root, model={"vol_embedding": True})
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps)
    loader, sampler = make_train_loader(dataset, hps, rank=0, world_size=1, seed=1,
                                        device_type="cpu")
    assert loader.num_workers == 0 and not loader.pin_memory
    sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == batches_per_epoch(len(dataset), 1, hps.train.batch_size) == 2
    assert all(len(batch) == 8 and batch[7] is not None for batch in batches)
    sampler.set_epoch(1, skip=2)
    resumed = list(loader)
    assert len(resumed) == 1
    torch.testing.assert_close(resumed[0][0], batches[1][0])

    eval_dataset = TextAudioSpeakerLoader(hps.data.validation_files, hps, vol_aug=False)
    eval_loader = make_eval_loader(eval_dataset, hps, device_type="cpu")
    assert eval_loader.batch_size == 1 and eval_loader.num_workers == 0
    assert len(list(eval_loader)) == 2


def test_num_workers_default_is_upstreams_choice(dataset_root: Path) -> None:
    cpus = os.cpu_count() or 1
    hps = _hps(dataset_root, train={"num_workers": None})
    assert resolve_num_workers(hps) == min(5 if cpus > 4 else cpus, cpus)
    assert resolve_num_workers(_hps(dataset_root, train={"num_workers": None,
                                                         "all_in_mem": True})) == 0
    assert resolve_num_workers(_hps(dataset_root, train={"num_workers": 64})) == cpus


def test_train_loader_with_a_worker_process(dataset_root: Path) -> None:
    hps = _hps(dataset_root, train={"num_workers": 1})
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps)
    loader, sampler = make_train_loader(dataset, hps, rank=1, world_size=2, seed=3,
                                        device_type="cpu")
    assert loader.num_workers == min(1, os.cpu_count() or 1)
    sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == batches_per_epoch(4, 2, 2) == 1
    assert batches[0][0].shape[0] == 2
    sampler.set_epoch(1)  # persistent workers see the new epoch's order
    assert [b[4].shape for b in loader] == [torch.Size([2, 1])]
