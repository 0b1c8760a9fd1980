"""The shallow-diffusion workflow chained as a user runs it, each command feeding the next.

preprocess_flist_config.py writes configs/diffusion.yaml, preprocess_hubert_f0.py
--use_diff writes every clip's features, train_diff.py trains a tiny model on
them (bf16 autocast, data workers on), and inference_main.py converts a song
with that model: -shd behind the recorded mini synthesizer and -od alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from diffusion.run_files import model_steps
from tests.helpers_model import FIXTURES, TINY_ENCODER, UPSTREAM, sung_clip

REPO = Path(__file__).resolve().parent.parent
SR = 44100
TINY_VOCODER = FIXTURES / "upstream-4.1-diffusion" / "nsf_hifigan_tiny"
TINY_WIDTH = 48  # the tiny HuBERT's feature width, as the mini synthesizer takes it
CLIPS_PER_SPEAKER = 4  # preprocess_flist_config.py sends 2 of each speaker to validation
EXPDIR = Path("logs") / "44k" / "diffusion"

pytestmark = pytest.mark.slow


def _run(project: Path, script: str, *args: str | Path) -> str:
    env = dict(os.environ, PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{script} failed:\n{output[-4000:]}"
    return output


def _shrink_diffusion_config(path: Path) -> dict:
    """The written YAML with a CPU-sized model and run; everything else as written."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["data"].update(duration=0.5, encoder_out_channels=TINY_WIDTH)
    config["model"].update(n_layers=2, n_chans=16, n_hidden=16, timesteps=100)
    config["infer"]["speedup"] = 10
    config["train"].update(
        num_workers=2, amp_dtype="bf16", batch_size=2, epochs=2, interval_log=1,
        interval_val=2, interval_force_save=2,
    )  # fmt: skip
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return config


def test_features_training_and_conversion_chain(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(REPO / "configs_template", project / "configs_template")
    shutil.copytree(TINY_VOCODER, project / "pretrain" / "nsf_hifigan")
    wavs = []
    for speaker, f0 in (("alto", 330.0), ("tenor", 220.0)):  # the mini synthesizer's ids 0, 1
        folder = project / "dataset" / "44k" / speaker
        folder.mkdir(parents=True)
        for index in range(CLIPS_PER_SPEAKER):
            wavs.append(folder / f"{speaker}{index}.wav")
            clip = sung_clip(0.8, SR, f0 * (1 + 0.04 * index), seed=index)
            soundfile.write(wavs[-1], clip, SR, subtype="PCM_16")

    _run(project, "preprocess_flist_config.py", "--speech_encoder", "vec768l12")
    config_path = project / "configs" / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["model"]["ssl_dim"] = TINY_WIDTH
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    diffusion_yaml = project / "configs" / "diffusion.yaml"
    diffusion = _shrink_diffusion_config(diffusion_yaml)
    assert diffusion["spk"] == {"alto": 0, "tenor": 1} and diffusion["model"]["n_spk"] == 2

    output = _run(project, "preprocess_hubert_f0.py", "--f0_predictor", "dio", "--use_diff",
                  "--encoder_path", TINY_ENCODER)  # fmt: skip
    assert f"{len(wavs)} done" in output and "0 failed" in output, output
    for wav in wavs:
        for suffix in (".soft.pt", ".f0.npy", ".vol.npy", ".mel.npy", ".aug_mel.npy",
                       ".aug_vol.npy"):  # fmt: skip
            assert wav.with_name(wav.name + suffix).is_file(), suffix

    output = _run(project, "train_diff.py", "-c", diffusion_yaml)
    folder = project / EXPDIR
    recorded = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    assert recorded["train"]["amp_dtype"] == "bf16" and "validation loss" in output
    assert model_steps(folder)[0] == 4  # 2 epochs of 2 batches of 2 training clips
    trained = torch.load(folder / "model_4.pt", weights_only=True)
    assert trained["global_step"] == 4
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all()
               for t in trained["model"].values())  # fmt: skip
    assert "validation loss" in (folder / "train.log").read_text(encoding="utf-8")

    song = sung_clip(0.6, SR, 260.0, seed=9)
    (project / "raw").mkdir()
    soundfile.write(project / "raw" / "song.wav", song, SR)
    common = ("-m", UPSTREAM / "mini_G.pth", "-c", UPSTREAM / "mini_config.json", "-n",
              "song.wav", "-s", "tenor", "-wf", "wav", "--encoder_path", TINY_ENCODER,
              "-dm", folder / "model_4.pt", "-dc", folder / "config.yaml")  # fmt: skip
    _run(project, "inference_main.py", *common, "-shd", "-ks", "40")
    _run(project, "inference_main.py", *common, "-od")
    for kind in ("sovdiff", "diff"):
        audio, rate = soundfile.read(project / "results" / f"song.wav_0key_tenor_{kind}_pm.wav")
        assert rate == SR and audio.shape == song.shape, kind
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0, kind
