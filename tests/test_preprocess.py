"""Unit tests of the preprocessing maths, the train/val split and the config fields."""

from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile
import torch
import yaml

import feature_files
from core.errors import UserError
from core.safe_io import save_f0_uv
from preprocessing import diffusion_config, features, flist_config, resample
from preprocessing.runner import ItemResult, RunSummary, run_cli, run_parallel

REPO = Path(__file__).resolve().parent.parent
FIXTURES_41D = REPO / "tests" / "fixtures" / "upstream-4.1-diffusion"


def _tone(seconds: float, sr: int, amplitude: float = 0.5, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --------------------------------------------------------------------------- resample maths


def test_load_mono_averages_channels_and_reads_bit_depths(tmp_path: Path) -> None:
    left = _tone(0.2, 22050, 0.5)
    right = _tone(0.2, 22050, 0.25, 330.0)
    stereo = np.stack([left, right], axis=1)
    for subtype in ("PCM_16", "PCM_24", "FLOAT"):
        path = tmp_path / f"s_{subtype}.wav"
        soundfile.write(path, stereo, 22050, subtype=subtype)
        mono, sr = resample.load_mono(path)
        assert sr == 22050
        assert mono.dtype == np.float32 and mono.ndim == 1
        tolerance = 1e-4 if subtype == "PCM_16" else 1e-6
        np.testing.assert_allclose(mono, (left + right) / 2, atol=tolerance)


def test_load_mono_rejects_broken_and_empty(tmp_path: Path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(resample.BadAudioError, match="unreadable"):
        resample.load_mono(broken)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(resample.BadAudioError, match="empty"):
        resample.load_mono(empty)


def test_trim_cuts_quiet_edges_at_40_db() -> None:
    sr = 16000
    tone = _tone(0.5, sr)
    wav = np.concatenate([np.zeros(sr, np.float32), tone, 1e-4 * np.ones(sr, np.float32)])
    trimmed = resample.trim_silence(wav)
    expected, _ = librosa.effects.trim(wav, top_db=40)
    np.testing.assert_array_equal(trimmed, expected)
    assert len(trimmed) < len(tone) + 2048 * 2


def test_limit_clipping_only_when_over_full_scale() -> None:
    loud = np.array([0.1, -2.0, 1.5], dtype=np.float32)
    np.testing.assert_allclose(resample.limit_clipping(loud), 0.98 * loud / 2.0)
    quiet = np.array([0.1, -1.0, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(resample.limit_clipping(quiet), quiet)


def test_to_int16_truncates_like_upstream_and_saturates() -> None:
    values = np.array([1.0, -1.0, 0.5, 0.00002, 1.2, -1.2])
    out = resample.to_int16(values)
    assert out.dtype == np.int16
    assert out.tolist() == [32767, -32767, 16383, 0, 32767, -32768]


def test_convert_waveform_matches_upstream_chain() -> None:
    sr, target = 22050, 44100
    pause = np.zeros(4000, np.float32)
    wav = np.concatenate([pause, _tone(0.5, sr, 1.6), pause])
    trimmed, _ = librosa.effects.trim(wav, top_db=40)
    scaled = 0.98 * trimmed / np.abs(trimmed).max()
    resampled = librosa.resample(scaled, orig_sr=sr, target_sr=target)
    expected_norm = (resampled / np.abs(resampled).max() * 32767).astype(np.int16)
    got = resample.convert_waveform(wav, sr, target, loudnorm=True)
    np.testing.assert_array_equal(got, expected_norm)
    assert np.abs(got).max() == 32767
    expected_raw = np.clip(resampled * 32767, -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(resample.convert_waveform(wav, sr, target, False), expected_raw)
    assert abs(len(got) - 2 * len(trimmed)) <= 1


def test_convert_waveform_refuses_silence() -> None:
    with pytest.raises(resample.BadAudioError, match="silent"):
        resample.convert_waveform(np.zeros(16000, np.float32), 16000, 44100, True)


def test_process_job_writes_mono_int16_at_target_rate(tmp_path: Path) -> None:
    source = tmp_path / "in.flac"
    soundfile.write(source, np.stack([_tone(0.4, 32000)] * 2, axis=1), 32000)
    output = tmp_path / "out" / "spk" / "in.wav"
    job = resample.ResampleJob(str(source), str(output), 44100, True, False)
    result = resample.process_job(job)
    assert result.status == "done", result.reason
    info = soundfile.info(output)
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
    data, _ = soundfile.read(output, dtype="int16")
    assert np.abs(data).max() == 32767
    assert not list(output.parent.glob(".*.tmp"))


def test_second_run_skips_converted_files_unless_forced(tmp_path: Path) -> None:
    source = tmp_path / "raw" / "spk" / "a.wav"
    source.parent.mkdir(parents=True)
    soundfile.write(source, _tone(0.4, 32000), 32000)
    out_dir = tmp_path / "out"
    first = resample.resample_dataset(str(tmp_path / "raw"), str(out_dir), 44100)
    assert [r.status for r in first.results] == ["done"]
    written = (out_dir / "spk" / "a.wav").stat().st_mtime_ns
    again = resample.resample_dataset(str(tmp_path / "raw"), str(out_dir), 44100)
    assert [r.status for r in again.results] == ["skipped"]
    assert (out_dir / "spk" / "a.wav").stat().st_mtime_ns == written
    forced = resample.resample_dataset(str(tmp_path / "raw"), str(out_dir), 44100, force=True)
    assert [r.status for r in forced.results] == ["done"]


def test_process_job_reports_bad_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(8000, np.float32), 16000)
    for path, reason in ((broken, "unreadable"), (silent, "silent")):
        job = resample.ResampleJob(str(path), str(tmp_path / "o" / path.name), 44100, True, False)
        result = resample.process_job(job)
        assert result.status == "failed" and reason in result.reason
        assert not (tmp_path / "o" / path.name).exists()


def test_plan_jobs_names_outputs_and_refuses_clashes(tmp_path: Path) -> None:
    speaker = tmp_path / "raw" / "alice"
    speaker.mkdir(parents=True)
    for name in ("a.wav", "a.flac", "b.ogg", "notes.txt", ".hidden.wav"):
        (speaker / name).write_bytes(b"x")
    jobs, refused = resample.plan_jobs(str(tmp_path / "raw"), "out", 44100, True, False)
    outputs = sorted(Path(job.output).name for job in jobs)
    assert outputs == ["a.wav", "b.wav"]
    assert len(refused) == 1 and "same output name" in refused[0].reason


def test_split_at_pauses_keeps_non_silent_chunks() -> None:
    class StubSlicer:
        def __init__(self, sr: int) -> None:
            self.sr = sr

        def slice(self, wav: np.ndarray) -> dict:
            return {
                "0": {"slice": True, "split_time": "0,10"},
                "1": {"slice": False, "split_time": "10,30"},
                "2": {"slice": True, "split_time": "30,30"},
                "3": {"slice": False, "split_time": "30,50"},
            }

    wav = np.arange(50, dtype=np.float32)
    clips = resample.split_at_pauses(wav, 100, slicer_factory=StubSlicer)
    assert [clip.tolist() for clip in clips] == [list(range(10, 30)), list(range(30, 50))]
    assert resample.clip_output_path("d/x.wav", 3) == "d/x_0003.wav"


# --------------------------------------------------------------------------- runner


def test_run_parallel_inline_collects_results_and_stops_on_fatal() -> None:
    results = run_parallel(lambda job: ItemResult(job, "done"), ["a", "b"], ["a", "b"], 1, "t")
    assert [r.source for r in results] == ["a", "b"]
    with pytest.raises(UserError, match="boom"):
        run_parallel(
            lambda job: ItemResult(job, "failed", "boom", fatal=True), ["a"], ["a"], 1, "t"
        )

    def crashing(job: str) -> ItemResult:
        raise ValueError("bad " + job)

    crashed = run_parallel(crashing, ["a"], ["a"], 1, "t")
    assert crashed[0].status == "failed" and "bad a" in crashed[0].reason
    summary = RunSummary("x", crashed).format()
    assert "0 done" in summary and "failed: a: ValueError: bad a" in summary


def test_run_cli_turns_user_error_into_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    def failing(argv: object) -> int:
        raise UserError("configs/config.json: broken: fix it")

    assert run_cli(failing) == 2
    assert capsys.readouterr().err.strip() == "error: configs/config.json: broken: fix it"


# --------------------------------------------------------------------------- split and config


def _dataset(tmp_path: Path, counts: dict[str, int], short: int = 0) -> str:
    root = tmp_path / "dataset" / "44k"
    for speaker, count in counts.items():
        (root / speaker).mkdir(parents=True)
        for index in range(count):
            soundfile.write(root / speaker / f"{index:02d}.wav", _tone(0.4, 8000), 8000)
        for index in range(short):
            soundfile.write(root / speaker / f"short{index}.wav", _tone(0.2, 8000), 8000)
        (root / speaker / "00.wav.soft.pt").write_bytes(b"ignored")
    return str(root)


def test_split_two_val_per_speaker_and_skips_short(tmp_path: Path) -> None:
    source = _dataset(tmp_path, {"bob": 5, "alice": 4}, short=1)
    split = flist_config.split_dataset(source, seed=1234)
    assert split.speakers == {"alice": 0, "bob": 1}
    assert len(split.val) == 4 and len(split.train) == 5
    for speaker in ("alice", "bob"):
        assert sum(f"/{speaker}/" in path for path in split.val) == 2
    assert all("short" not in path for path in split.train + split.val)
    assert sum("too short" in note for note in split.notes) == 2
    assert all(path.startswith(source + "/") for path in split.train + split.val)
    assert not set(split.train) & set(split.val)


def test_split_is_deterministic_per_seed(tmp_path: Path) -> None:
    source = _dataset(tmp_path, {"a": 12, "b": 12})
    first = flist_config.split_dataset(source, seed=7)
    again = flist_config.split_dataset(source, seed=7)
    assert (first.train, first.val) == (again.train, again.val)
    others = [flist_config.split_dataset(source, seed=seed) for seed in (1, 2, 3)]
    assert any((o.train, o.val) != (first.train, first.val) for o in others)


def test_split_without_wavs_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "d" / "spk").mkdir(parents=True)
    with pytest.raises(UserError, match="no usable"):
        flist_config.split_dataset(str(tmp_path / "d"))
    with pytest.raises(UserError, match="not found"):
        flist_config.split_dataset(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("encoder", "ssl", "filter_channels"),
    [("vec768l12", 768, 768), ("vec256l9", 256, 768), ("hubertsoft", 256, 768),
     ("vec768l9", 768, 768), ("vec256l12", 256, 768)],
)
def test_config_fields_per_encoder(encoder: str, ssl: int, filter_channels: int) -> None:
    template = flist_config.load_template(REPO / "configs_template" / "config_template.json")
    config = flist_config.build_config(template, {"a": 0, "b": 1}, encoder)
    model = config["model"]
    assert (model["ssl_dim"], model["gin_channels"], model["filter_channels"]) == (
        ssl, ssl, filter_channels)
    assert model["speech_encoder"] == encoder and model["n_speakers"] == 2
    assert config["spk"] == {"a": 0, "b": 1}
    assert model["vol_embedding"] is False and config["train"]["vol_aug"] is False
    assert template["spk"] != config["spk"]  # the template itself is untouched


def test_config_tiny_and_vol_aug() -> None:
    template = flist_config.load_template(REPO / "configs_template" / "config_tiny_template.json")
    config = flist_config.build_config(template, {"a": 0}, "vec768l12", vol_aug=True, tiny=True)
    assert config["model"]["filter_channels"] == 512
    assert config["model"]["ssl_dim"] == 768
    assert config["model"]["vol_embedding"] is True and config["train"]["vol_aug"] is True
    assert config["model"]["use_depthwise_conv"] is True
    with pytest.raises(UserError, match="unknown speech encoder"):
        flist_config.build_config(template, {"a": 0}, "nope")


def test_make_filelists_and_config_writes_upstream_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _dataset(tmp_path, {"spk": 4})
    split = flist_config.make_filelists_and_config(
        "./dataset/44k", "./filelists/train.txt", "./filelists/val.txt", "vec256l9",
        vol_aug=False, tiny=False, seed=1234, diffusion_config_path="configs/diffusion.yaml",
    )
    lines = (tmp_path / "filelists" / "train.txt").read_text().splitlines()
    assert lines == split.train and lines[0].startswith("./dataset/44k/spk/")
    config = json.loads((tmp_path / "configs" / "config.json").read_text())
    assert config["model"]["ssl_dim"] == 256 and config["spk"] == {"spk": 0}
    # configs/diffusion.yaml: upstream's template with this dataset filled in, yaml.dump style.
    text = (tmp_path / "configs" / "diffusion.yaml").read_text()
    diffusion = yaml.safe_load(text)
    assert text.startswith("data:\n  block_size: 512\n")  # block style, keys sorted
    assert diffusion["spk"] == {"spk": 0} and diffusion["model"]["n_spk"] == 1
    assert diffusion["data"]["encoder"] == "vec256l9"
    assert diffusion["data"]["encoder_out_channels"] == 256
    assert diffusion["data"]["training_files"] == "./filelists/train.txt"
    assert diffusion["data"]["validation_files"] == "./filelists/val.txt"
    assert diffusion["vocoder"] == {"type": "nsf-hifigan", "ckpt": "pretrain/nsf_hifigan/model"}


def test_diffusion_template_has_upstreams_keys_and_defaults() -> None:
    """The template plus the fixture's recorded changes is upstream's recorded YAML."""
    template = diffusion_config.read_yaml_config(diffusion_config.template_path(), "restore it")
    recorded = yaml.safe_load((FIXTURES_41D / "diffusion_config.yaml").read_text())
    config = diffusion_config.build_diffusion_config(
        template, {"alto": 0, "tenor": 1}, "vec768l12", "filelists/train.txt",
        "filelists/val.txt",
    )
    config["data"]["encoder_out_channels"] = 32
    config["model"].update(n_layers=2, n_chans=32, n_hidden=32, timesteps=100)
    config.update(infer={"speedup": 5, "method": "dpm-solver++"}, device="cpu")
    assert config == recorded
    assert template["model"]["n_spk"] == 1 and template["spk"] == {"nyaru": 0}  # untouched


# --------------------------------------------------------------------------- features


def _settings(**overrides: object) -> features.FeatureSettings:
    values = dict(
        sampling_rate=44100, hop_length=512, filter_length=2048, win_length=2048, ssl_dim=48,
        speech_encoder="vec768l12", vol_embedding=True, f0_predictor="dio", encoder_path=None,
        device="cpu", force=False,
    )
    values.update(overrides)
    return features.FeatureSettings(**values)  # type: ignore[arg-type]


def test_spec_frames_matches_stft_without_centering() -> None:
    for n in (4096, 5000, 44100):
        pad = (2048 - 512) // 2
        audio = torch.nn.functional.pad(torch.zeros(1, 1, n), (pad, pad), mode="reflect")
        frames = torch.stft(audio[0], 2048, 512, 2048, window=torch.hann_window(2048),
                            center=False, return_complex=True).shape[-1]
        assert feature_files.spec_frames(n, 2048, 512) == frames == n // 512


def test_stale_outputs_checks_widths_and_lengths(tmp_path: Path) -> None:
    wav = str(tmp_path / "x.wav")
    n = 44100
    settings = _settings()
    assert set(features.stale_outputs(wav, settings, n)) == {"soft", "f0", "spec", "vol"}
    frames16k = feature_files.encoder_samples(n, 44100) // 320
    torch.save(torch.zeros(1, 48, frames16k), feature_files.content_path(wav))
    save_f0_uv(feature_files.pitch_path(wav), np.full(n // 512, 100.0), np.ones(n // 512))
    torch.save(torch.zeros(1025, n // 512), feature_files.spec_path(wav))
    np.save(feature_files.volume_path(wav), np.zeros(n // 512, np.float32))
    assert features.stale_outputs(wav, settings, n) == {}
    assert set(features.stale_outputs(wav, _settings(force=True), n)) == {
        "soft", "f0", "spec", "vol"}
    assert "width" in features.stale_outputs(wav, _settings(ssl_dim=768), n)["soft"]
    assert set(features.stale_outputs(wav, settings, 2 * n)) == {"soft", "f0", "spec", "vol"}
    Path(feature_files.spec_path(wav)).write_bytes(b"truncated")
    assert set(features.stale_outputs(wav, settings, n)) == {"spec"}
    Path(feature_files.volume_path(wav)).unlink()
    assert set(features.stale_outputs(wav, _settings(vol_embedding=False), n)) == {"spec"}


def test_read_dataset_wav_refuses_what_training_cannot_use(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    soundfile.write(good, _tone(0.1, 44100), 44100, subtype="PCM_16")
    assert features.read_dataset_wav(str(good), 44100).dtype == np.float32
    with pytest.raises(features.BadWavError, match="sample rate"):
        features.read_dataset_wav(str(good), 22050)
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(44100, np.float32), 44100)
    with pytest.raises(features.BadWavError, match="silent"):
        features.read_dataset_wav(str(silent), 44100)


def test_load_settings_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config not found"):
        features.load_settings(str(tmp_path / "none.json"), "dio")
    config = tmp_path / "c.json"
    template = json.loads((REPO / "configs_template" / "config_template.json").read_text())
    config.write_text(json.dumps(template))
    with pytest.raises(UserError, match="unknown f0 predictor"):
        features.load_settings(str(config), "nope")
    settings = features.load_settings(str(config), "dio", device="cpu")
    assert (settings.ssl_dim, settings.hop_length, settings.vol_embedding) == (768, 512, False)
    del template["model"]["ssl_dim"]
    config.write_text(json.dumps(template))
    with pytest.raises(UserError, match=r"model\.ssl_dim"):
        features.load_settings(str(config), "dio")


def test_remove_stale_temp_files(tmp_path: Path) -> None:
    wav = tmp_path / "x.wav"
    wav.write_bytes(b"")
    leftover = tmp_path / ".x.wav.soft.pt.abc123.tmp"
    leftover.write_bytes(b"half")
    unrelated = tmp_path / ".other.tmp"
    unrelated.write_bytes(b"keep")
    assert feature_files.remove_stale_feature_temp_files([tmp_path]) == [str(leftover)]
    assert not leftover.exists() and unrelated.exists()


def test_models_load_only_when_a_file_needs_them(tmp_path: Path, monkeypatch) -> None:
    """An up-to-date rerun never loads the encoder (on a GPU: no CUDA context per worker)."""
    import modules.speech_encoders as speech_encoders

    loads: list[str] = []

    def refuse(name: str, **kwargs: object) -> None:
        loads.append(name)
        raise RuntimeError("encoder unavailable")

    monkeypatch.setattr(speech_encoders, "load_speech_encoder", refuse)
    wav = tmp_path / "a.wav"
    soundfile.write(wav, np.zeros(44100, dtype=np.float32), 44100, subtype="PCM_16")
    features.init_worker(_settings())
    monkeypatch.setattr(features, "stale_outputs", lambda *args: {})
    assert features.process_wav(str(wav)).status == "skipped"
    assert loads == []
    monkeypatch.setattr(features, "stale_outputs", lambda *args: {"soft": "missing"})
    result = features.process_wav(str(wav))
    assert result.fatal and "encoder unavailable" in result.reason and loads == ["vec768l12"]
