"""The three preprocessing commands run as a user runs them, on a small synthetic raw set.

Raw recordings of two speakers (mixed rates, stereo and mono, 16-bit, 24-bit
and float wavs, a flac, a non-ASCII name, one broken file) go through
resample.py, preprocess_flist_config.py and preprocess_hubert_f0.py (killed
part-way once, then resumed) and the result feeds the training data loader.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from core.safe_io import load_f0_uv, load_torch_data

REPO = Path(__file__).resolve().parent.parent
TINY_ENCODER = REPO / "tests" / "fixtures" / "fairseq-hubert-tiny" / "tiny_hubert_fairseq.pt"
TINY_WIDTH = 48

pytestmark = pytest.mark.slow


def _voice(seconds: float, sr: int, f0: float, seed: int) -> np.ndarray:
    """A sung-like tone (harmonics, vibrato, a little noise) between short pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    tone = sum(np.sin(k * phase) / k for k in (1, 2, 3)) * 0.3
    tone = tone + 0.005 * rng.standard_normal(t.size)
    pause = np.zeros(int(0.1 * sr))
    return np.concatenate([pause, tone, pause]).astype(np.float32)


def _make_raw_set(raw: Path) -> None:
    alice, bob = raw / "alice", raw / "bob"
    alice.mkdir(parents=True)
    bob.mkdir(parents=True)
    soundfile.write(alice / "a1.wav", _voice(1.0, 44100, 220, 1), 44100, subtype="PCM_16")
    stereo = np.stack([_voice(0.9, 48000, 180, 2), _voice(0.9, 48000, 180, 3)], axis=1)
    soundfile.write(alice / "a2_stereo.wav", stereo, 48000, subtype="PCM_24")
    soundfile.write(alice / "a3_float.wav", 1.5 * _voice(0.8, 22050, 250, 4), 22050,
                    subtype="FLOAT")
    soundfile.write(alice / "a4.flac", _voice(0.8, 32000, 300, 5), 32000)
    soundfile.write(alice / "é_ü_歌.wav", _voice(0.8, 16000, 200, 6), 16000, subtype="PCM_16")
    (alice / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage, not audio")
    for index, (sr, f0) in enumerate(((44100, 150), (24000, 170), (44100, 190), (32000, 210))):
        soundfile.write(bob / f"b{index}.wav", _voice(0.8, sr, f0, 10 + index), sr)


def _run(project: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def _feature_files(wav: Path, with_vol: bool) -> list[Path]:
    names = [wav.name + ".soft.pt", wav.name + ".f0.npy", wav.name.replace(".wav", ".spec.pt")]
    if with_vol:
        names.append(wav.name + ".vol.npy")
    return [wav.with_name(name) for name in names]


def _check_outputs_load(wav: Path) -> None:
    n = soundfile.info(wav).frames
    content = load_torch_data(wav.with_name(wav.name + ".soft.pt"))
    assert content.shape[:2] == (1, TINY_WIDTH)
    f0, uv = load_f0_uv(wav.with_name(wav.name + ".f0.npy"))
    assert len(f0) == len(uv) == n // 512
    spec = load_torch_data(wav.with_name(wav.name.replace(".wav", ".spec.pt")))
    assert tuple(spec.shape) == (1025, n // 512)
    volume = np.load(wav.with_name(wav.name + ".vol.npy"), allow_pickle=False)
    assert volume.shape == (n // 512,)


def test_three_commands_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not TINY_ENCODER.is_file():
        pytest.skip(f"{TINY_ENCODER} missing")
    project = tmp_path / "project"
    shutil.copytree(REPO / "configs_template", project / "configs_template")
    _make_raw_set(project / "dataset_raw")

    # 1. resample: every readable file -> mono int16 at 44.1 kHz; the broken one is reported.
    done = _run(project, "resample.py", "--num_processes", "2")
    assert done.returncode == 0, done.stderr
    assert "broken.wav" in done.stdout and "1 failed" in done.stdout
    out = project / "dataset" / "44k"
    alice_wavs = sorted(p.name for p in (out / "alice").glob("*.wav"))
    assert alice_wavs == sorted(["a1.wav", "a2_stereo.wav", "a3_float.wav", "a4.wav", "é_ü_歌.wav"])
    assert len(list((out / "bob").glob("*.wav"))) == 4
    for wav in out.glob("*/*.wav"):
        info = soundfile.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")

    # 2. filelists and config; the encoder width is the tiny checkpoint's.
    done = _run(project, "preprocess_flist_config.py", "--speech_encoder", "vec768l12",
                "--vol_aug")
    assert done.returncode == 0, done.stderr
    lists = (project / "filelists" / "train.txt").read_text(encoding="utf-8") + (
        project / "filelists" / "val.txt").read_text(encoding="utf-8")
    assert "broken" not in lists and len(lists.splitlines()) == 9
    config_path = project / "configs" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["spk"] == {"alice": 0, "bob": 1} and config["model"]["vol_embedding"] is True
    config["model"]["ssl_dim"] = TINY_WIDTH
    config_path.write_text(json.dumps(config, indent=2))

    # 3. features, killed part-way, then resumed.
    command = [sys.executable, str(REPO / "preprocess_hubert_f0.py"), "--f0_predictor", "dio",
               "--encoder_path", str(TINY_ENCODER), "--num_processes", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if len(list(out.glob("*/*.vol.npy"))) >= 2:
                break
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    wavs = sorted(out.glob("*/*.wav"))
    complete_before = [w for w in wavs if all(p.exists() for p in _feature_files(w, True))]
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 0 < len(complete_before) < len(wavs)

    done = _run(project, "preprocess_hubert_f0.py", "--f0_predictor", "dio",
                "--encoder_path", str(TINY_ENCODER), "--num_processes", "1")
    assert done.returncode == 0, done.stderr
    assert "0 failed" in done.stdout, done.stdout
    assert f"{len(complete_before)} skipped" in done.stdout, done.stdout
    assert not list(out.glob("*/.*.tmp"))
    for wav in wavs:
        _check_outputs_load(wav)

    done = _run(project, "preprocess_hubert_f0.py", "--f0_predictor", "dio",
                "--encoder_path", str(TINY_ENCODER))
    assert done.returncode == 0, done.stderr
    assert f"0 done, {len(wavs)} skipped" in done.stdout, done.stdout

    # 4. shallow diffusion: only the three new files per clip are computed (the encoder is not
    # loaded: no --encoder_path needed); without the vocoder in pretrain/ its release's mel
    # settings are used, with a note.
    diffusion = yaml.safe_load((project / "configs" / "diffusion.yaml").read_text())
    assert diffusion["spk"] == {"alice": 0, "bob": 1} and diffusion["model"]["n_spk"] == 2
    done = _run(project, "preprocess_hubert_f0.py", "--f0_predictor", "dio", "--use_diff")
    assert done.returncode == 0, done.stderr
    assert "note: pretrain/nsf_hifigan/config.json not found" in done.stdout
    assert f"{len(wavs)} done, 0 skipped" in done.stdout and "0 failed" in done.stdout
    for wav in wavs:
        frames = soundfile.info(wav).frames // 512
        mel = np.load(wav.with_name(wav.name + ".mel.npy"), allow_pickle=False)
        aug_mel, keyshift = np.load(wav.with_name(wav.name + ".aug_mel.npy"), allow_pickle=True)
        aug_vol = np.load(wav.with_name(wav.name + ".aug_vol.npy"), allow_pickle=False)
        assert mel.shape == aug_mel.shape == (frames, 128) and aug_vol.shape == (frames,)
        assert mel.dtype == aug_mel.dtype == aug_vol.dtype == np.float32 and abs(keyshift) <= 5
    done = _run(project, "preprocess_hubert_f0.py", "--f0_predictor", "dio", "--use_diff")
    assert f"0 done, {len(wavs)} skipped" in done.stdout, done.stdout

    # 5. the training data loader reads every item.
    data_utils = pytest.importorskip("data_utils")
    utils = pytest.importorskip("utils")
    monkeypatch.chdir(project)
    hps = utils.get_hparams_from_file("configs/config.json")
    for filelist in ("filelists/train.txt", "filelists/val.txt"):
        dataset = data_utils.TextAudioSpeakerLoader(filelist, hps)
        for index in range(len(dataset)):
            item = dataset[index]
            assert all(not isinstance(part, torch.Tensor) or torch.isfinite(part.float()).all()
                       for part in item)


@pytest.mark.parametrize("predictor", ["crepe", "fcpe"])
def test_features_with_each_neural_pitch_predictor(tmp_path: Path, predictor: str) -> None:
    """preprocess_hubert_f0.py with crepe (weights given by --f0_weights) and fcpe (read
    from pretrain/fcpe.pt), both with small random weights in the released layouts."""
    if not TINY_ENCODER.is_file():
        pytest.skip(f"{TINY_ENCODER} missing")
    from modules.f0_predictors.crepe import Crepe

    project = tmp_path / "project"
    shutil.copytree(REPO / "configs_template", project / "configs_template")
    speaker = project / "dataset" / "44k" / "alice"
    speaker.mkdir(parents=True)
    for index, f0 in enumerate((200, 260)):
        soundfile.write(speaker / f"s{index}.wav", _voice(0.4, 44100, f0, index), 44100,
                        subtype="PCM_16")
    done = _run(project, "preprocess_flist_config.py", "--speech_encoder", "vec768l12",
                "--vol_aug")
    assert done.returncode == 0, done.stderr
    config_path = project / "configs" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["ssl_dim"] = TINY_WIDTH
    config_path.write_text(json.dumps(config))
    args = ["--f0_predictor", predictor, "--encoder_path", str(TINY_ENCODER)]
    if predictor == "crepe":
        torch.manual_seed(0)
        weights = tmp_path / "crepe_tiny.pth"
        torch.save(Crepe((128, 16, 16, 16, 32, 64)).state_dict(), weights)
        args += ["--f0_weights", str(weights)]
    else:
        (project / "pretrain").mkdir()
        shutil.copy(REPO / "tests" / "fixtures" / "fcpe" / "fcpe_small.pt",
                    project / "pretrain" / "fcpe.pt")
    done = _run(project, "preprocess_hubert_f0.py", *args)
    assert done.returncode == 0, done.stderr
    assert f"f0 predictor {predictor}" in done.stdout and "2 done" in done.stdout, done.stdout
    for wav in sorted(speaker.glob("*.wav")):
        _check_outputs_load(wav)
        f0, uv = load_f0_uv(wav.with_name(wav.name + ".f0.npy"))
        assert set(np.unique(uv)) <= {0.0, 1.0} and np.all(np.isfinite(f0))
        assert np.all(f0[uv == 1] > 0)
