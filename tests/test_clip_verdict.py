"""One verdict per clip: preprocessing, the pre-flight check and the loader agree.

A volume file a frame short is within the stream tolerance: every place
accepts it and the loader (with data workers) trims the clip to it. Three
frames short is not: the pre-flight check names the file and the fix before
training starts, preprocessing recomputes it, and it never reaches a worker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

import feature_files as ff
from core.config_schema import validate_config
from core.dataset_check import check_filelists, raise_if_problems
from core.errors import UserError
from data_utils import TextAudioSpeakerLoader, make_train_loader
from preprocessing import features
from tests.helpers_data import make_config, make_dataset, write_config
from tests.helpers_model import run_script
from utils import HParams

HOP = 256


def _short_volume_set(root: Path, missing_frames: int) -> tuple[HParams, str]:
    """A small set whose first training clip's volume file lacks its last frames."""
    info = make_dataset(root, items_per_speaker=3, seconds=0.4, vol=True)
    wav = info["train_wavs"][0]
    volume = np.load(ff.volume_path(wav))
    np.save(ff.volume_path(wav), volume[: len(volume) - missing_frames])
    config = make_config(root, model={"vol_embedding": True}, train={"num_workers": 2})
    config, _ = validate_config(config, "test")
    hps = HParams(**config)
    hps.model_dir = str(root / "logs")
    return hps, wav


def _preprocessing_verdict(hps: HParams, wav: str) -> dict[str, str]:
    settings = features.FeatureSettings(
        sampling_rate=hps.data.sampling_rate, hop_length=HOP,
        filter_length=hps.data.filter_length, win_length=hps.data.win_length,
        ssl_dim=hps.model.ssl_dim, speech_encoder="vec256l9", vol_embedding=True,
        f0_predictor="dio", encoder_path=None, device="cpu", force=False,
    )
    # The synthetic set caches no spectrogram; preprocessing would add it.
    stale = features.stale_outputs(wav, settings, soundfile.info(wav).frames)
    stale.pop("spec")
    return stale


def test_one_frame_short_is_accepted_everywhere_and_trains(tmp_path: Path) -> None:
    hps, wav = _short_volume_set(tmp_path, missing_frames=1)
    assert _preprocessing_verdict(hps, wav) == {}
    assert check_filelists(hps) == []

    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps)
    content, f0, spec, audio, _, uv, volume = dataset.get_audio(wav)
    frames = len(np.load(ff.volume_path(wav)))
    assert volume.shape[0] == spec.shape[1] == content.shape[1] == f0.shape[0] == frames
    assert uv.shape[0] == frames and audio.shape[1] == frames * HOP

    loader, sampler = make_train_loader(dataset, hps, 0, 1, 1234, "cpu")
    assert loader.num_workers == 2
    sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == 2 and sum(batch[0].shape[0] for batch in batches) == len(dataset)
    for batch in batches:
        assert batch[7].shape == batch[1].shape  # volume padded like pitch


def test_three_frames_short_is_named_before_training_and_recomputed(tmp_path: Path) -> None:
    hps, wav = _short_volume_set(tmp_path, missing_frames=3)
    path = ff.volume_path(wav)

    stale = _preprocessing_verdict(hps, wav)
    assert list(stale) == ["vol"] and path in stale["vol"]

    problems = check_filelists(hps)
    assert len(problems) == 1 and problems[0] == stale["vol"]
    assert "volume frames" in problems[0] and "rerun preprocess_hubert_f0.py" in problems[0]
    with pytest.raises(UserError, match="dataset check found 1 problem"):
        raise_if_problems(problems)

    # The loader's verdict is the same line (it is never reached in training).
    with pytest.raises(UserError) as caught:
        TextAudioSpeakerLoader(hps.data.training_files, hps).get_audio(wav)
    assert str(caught.value) == problems[0]


@pytest.mark.slow
def test_train_py_names_the_short_volume_file_before_any_step(tmp_path: Path) -> None:
    _, wav = _short_volume_set(tmp_path, missing_frames=3)
    config = make_config(tmp_path, model={"vol_embedding": True}, train={"num_workers": 2})
    result = run_script(
        "train.py", "-c", write_config(tmp_path, config), "-m", "short", cwd=tmp_path
    )
    assert result.returncode != 0
    assert ff.volume_path(wav) in result.stderr and "rerun preprocess_hubert_f0.py" in result.stderr
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr
    assert not list((tmp_path / "logs" / "short").glob("*.pth"))
