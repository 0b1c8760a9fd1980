"""Convert singing with a trained so-vits-svc 4.1 model.

`Svc` loads a generator once (our checkpoints and upstream's, including
half-precision release files) and converts files or arrays the way upstream's
`inference/infer_tool.py` does:

1. the input is cut at silences (`-sd`); silent pieces pass through as zeros;
2. each voiced piece (optionally cut further into `-cl` second clips that
   overlap by `-lg` seconds) is padded with `-p` seconds of silence, resampled
   to the model's rate and converted: pitch from the chosen predictor times
   2**(semitones / 12), content features from the config's speech encoder at
   16 kHz stretched to the pitch frames, optionally pulled towards the target
   speaker by a cluster model or feature retrieval (`-cr`), then the
   generator's `infer`;
3. the padding is cut off, each piece is centred in its original length, and
   clips are joined with linear crossfades;
4. with shallow diffusion (`-shd`) the generator's audio is refined by the
   diffusion model and rendered by its vocoder (inference/diffusion_stage.py);
   with diffusion only (`-od`) there is no generator and the diffusion model
   makes the audio; the enhancer (`-eh`, inference/enhancer.py) re-renders it;
5. optionally the input's loudness envelope is mixed into the output (`-lea`).

`infer_features` is the single place that calls the generator, so tools and
tests can feed it precomputed features.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import librosa
import numpy as np
import torch
from torch.nn import functional as F

import cluster
from checkpoint import generator_hparams, load_generator, read_generator_file
from cluster.feature_index import FeatureRetriever, load_feature_index
from core.components import NSF_HIFIGAN_WEIGHTS
from core.errors import UserError
from diffusion.vocoder import Vocoder
from feature_files import ENCODER_SAMPLING_RATE
from inference import slicer
from inference.diffusion_stage import (
    DEFAULT_DIFFUSION_CONFIG,
    DEFAULT_DIFFUSION_MODEL,
    DiffusionStage,
)
from inference.enhancer import Enhancer
from inference.spk_mix import build_mix_weights
from modules.f0_utils import VolumeExtractor, repeat_expand_2d

logger = logging.getLogger("so-vits-svc.inference")

DEFAULT_SEED = 52468

SpeakerSpec = str | int | torch.Tensor
AudioSource = str | os.PathLike | BinaryIO


def pad_array(audio: np.ndarray, target_length: int) -> np.ndarray:
    """Centre `audio` in `target_length` samples with zeros; longer input is returned as is."""
    missing = target_length - audio.shape[0]
    if missing <= 0:
        return audio
    return np.pad(audio, (missing // 2, missing - missing // 2))


def split_list_by_n(samples: np.ndarray, size: int, overlap: int = 0) -> Iterator[np.ndarray]:
    """Pieces of `size` samples; each but the first also takes the `overlap` samples before it."""
    for start in range(0, len(samples), size):
        begin = start - overlap if start >= overlap else start
        yield samples[begin : start + size]


def change_rms(
    source: np.ndarray, source_sr: int, target: torch.Tensor, target_sr: int, rate: float
) -> torch.Tensor:
    """Mix the source's loudness envelope into `target` (upstream's formula, from RVC).

    RMS is measured over half-second frames of both signals, interpolated to
    every output sample, and the output is scaled by
    rms_source**(1 - rate) * rms_output**(rate - 1): rate 1 keeps the output's
    own envelope, rate 0 imposes the source's.
    """
    rms_source = librosa.feature.rms(
        y=source, frame_length=source_sr // 2 * 2, hop_length=source_sr // 2
    )
    rms_target = librosa.feature.rms(
        y=target.detach().cpu().float().numpy(),
        frame_length=target_sr // 2 * 2,
        hop_length=target_sr // 2,
    )
    length = target.shape[0]

    def stretch(rms: np.ndarray) -> torch.Tensor:
        table = torch.from_numpy(rms).to(device=target.device, dtype=torch.float32)
        return F.interpolate(table.unsqueeze(0), size=length, mode="linear").squeeze()

    envelope_source = stretch(rms_source)
    envelope_target = stretch(rms_target).clamp(min=1e-6)
    gain = envelope_source.pow(1 - rate) * envelope_target.pow(rate - 1)
    return target * gain.to(target.dtype)


@dataclass(frozen=True)
class _Crossfade:
    """How consecutive forced clips overlap, in samples at the output rate.

    Measured at the output rate (upstream reuses the input-rate count, which
    lengthens the output when the rates differ): `retained` samples are
    crossfaded, `cut_left` and `cut_right` around them are dropped.
    """

    total: int
    retained: int
    cut_left: int
    cut_right: int

    @classmethod
    def at_rate(cls, seconds: float, retain: float, rate: int) -> _Crossfade:
        total = int(seconds * rate)
        retained = int(total * retain)
        cut_left = (total - retained) // 2
        return cls(total, retained, cut_left, total - retained - cut_left)

    def append(self, output: list[np.ndarray], piece: np.ndarray, fade_in: bool) -> None:
        """Add `piece` to `output`, crossfaded into its end when `fade_in` and both are long
        enough."""
        fade = self.retained + self.cut_right
        output_length = sum(len(part) for part in output)
        can_fade = output_length >= fade and len(piece) >= self.cut_left + self.retained
        if self.total and fade_in and can_fade:
            joined = np.concatenate(output)
            ramp = np.linspace(0, 1, self.retained, dtype=np.float32)
            previous = joined[len(joined) - fade : len(joined) - self.cut_right]
            current = piece[self.cut_left : self.cut_left + self.retained]
            output[:] = [joined[: len(joined) - fade], previous * (1 - ramp) + current * ramp]
            piece = piece[self.cut_left + self.retained :]
        output.append(piece.astype(np.float32))


@dataclass
class _PieceConverter:
    """Converts the pieces of one recording in order and collects the output."""

    svc: Svc
    target: Any
    transpose: float
    sampling_rate: int
    pad_seconds: float
    clip_samples: int  # 0: convert each voiced piece whole
    overlap_samples: int
    crossfade: _Crossfade
    infer_options: dict[str, Any]
    output: list[np.ndarray] = field(default_factory=list)
    frame: int = 0  # the first frame of the next piece in the whole recording

    def _output_length(self, samples: int) -> int:
        return int(np.ceil(samples / self.sampling_rate * self.svc.target_sample))

    def __call__(self, is_silence: bool, data: np.ndarray) -> None:
        """Silence passes through as zeros; voiced audio is converted clip by clip."""
        length = self._output_length(len(data))
        if is_silence:
            self.output.append(np.zeros(length, dtype=np.float32))
            self.frame += length // self.svc.hop_size
            return
        clips = (
            split_list_by_n(data, self.clip_samples, self.overlap_samples)
            if self.clip_samples
            else [data]
        )
        for clip_index, clip in enumerate(clips):
            clip_length = self._output_length(len(clip)) if self.clip_samples else length
            piece = pad_array(self._convert_clip(clip), clip_length)
            self.crossfade.append(self.output, piece, fade_in=clip_index > 0)

    def _convert_clip(self, clip: np.ndarray) -> np.ndarray:
        """One clip padded with silence, converted at the model's rate, padding removed."""
        pad_in = int(self.sampling_rate * self.pad_seconds)
        padded = np.concatenate([np.zeros(pad_in, np.float32), clip, np.zeros(pad_in, np.float32)])
        if self.sampling_rate != self.svc.target_sample:
            padded = librosa.resample(
                padded, orig_sr=self.sampling_rate, target_sr=self.svc.target_sample
            )
        converted, _, frames = self.svc.infer(
            self.target, self.transpose, padded, frame=self.frame, **self.infer_options
        )
        self.frame += frames
        piece = converted.cpu().numpy()
        pad_out = int(self.svc.target_sample * self.pad_seconds)
        return piece[pad_out : len(piece) - pad_out]

    def run(
        self,
        pieces: list[tuple[bool, np.ndarray]],
        total_samples: int,
        progress: Callable[[float], None] | None,
    ) -> np.ndarray:
        """Convert every piece, telling `progress` the share of the input done before each."""
        samples_done = 0
        for is_silence, data in pieces:
            if progress is not None:
                progress(samples_done / max(total_samples, 1))
            samples_done += len(data)
            self(is_silence, data)
        if progress is not None:
            progress(1.0)
        return self.result()

    def result(self) -> np.ndarray:
        if not self.output:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self.output).astype(np.float32)


class Svc:
    """A loaded generator with its speech encoder, pitch predictor and optional retrieval.

    With `shallow_diffusion` the generator's audio is refined by the diffusion
    model; with `only_diffusion` the generator is not loaded at all and the
    diffusion config gives the rate, hop, speakers and speech encoder. Each
    model (generator, diffusion model, vocoder, enhancer) is loaded once here.
    """

    def __init__(
        self,
        net_g_path: str | os.PathLike,
        config_path: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        cluster_model_path: str | os.PathLike | None = None,
        feature_retrieval: bool = False,
        spk_mix_enable: bool = False,
        encoder_path: str | os.PathLike | None = None,
        f0_weights: str | os.PathLike | None = None,
        trust_pickle: bool = False,
        nsf_hifigan_enhance: bool = False,
        shallow_diffusion: bool = False,
        only_diffusion: bool = False,
        diffusion_model_path: str | os.PathLike = DEFAULT_DIFFUSION_MODEL,
        diffusion_config_path: str | os.PathLike | None = DEFAULT_DIFFUSION_CONFIG,
        enhancer_ckpt: str | os.PathLike = NSF_HIFIGAN_WEIGHTS,
    ) -> None:
        self.net_g_path = str(net_g_path)
        self.device = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.dev = self.device  # upstream's attribute name
        self.only_diffusion = bool(only_diffusion)
        self.shallow_diffusion = bool(shallow_diffusion) and not self.only_diffusion
        self.diffusion: DiffusionStage | None = None
        if self.shallow_diffusion or self.only_diffusion:
            self.diffusion = DiffusionStage(
                diffusion_model_path, diffusion_config_path, self.device, self.only_diffusion
            )
        if self.only_diffusion:
            self._describe_from_diffusion()
        else:
            self._load_synthesizer(config_path, spk_mix_enable)
        self._check_diffusion_fits(spk_mix_enable)
        self.encoder_path = encoder_path
        self.f0_weights = f0_weights
        self.volume_extractor = VolumeExtractor(self.hop_size)
        self.enhancer = self._make_enhancer(nsf_hifigan_enhance, enhancer_ckpt)

        self._speech_encoder: Any = None
        self._f0_predictor: Any = None
        self._f0_predictor_key: tuple[str, float] | None = None

        self.feature_retrieval = feature_retrieval
        self.cluster_model: cluster.ClusterModel | None = None
        self.retriever: FeatureRetriever | None = None
        if cluster_model_path:
            self._load_blending(cluster_model_path, trust_pickle)

    def _load_synthesizer(self, config_path: str | os.PathLike | None, spk_mix: bool) -> None:
        """The generator and what its config says (rate, hop, speakers, encoder)."""
        checkpoint = read_generator_file(self.net_g_path)
        # The config: `config_path` when given, else the one the file carries.
        self.hps_ms = generator_hparams(checkpoint, self.net_g_path, config_path)
        data, model_config = self.hps_ms.data, self.hps_ms.model
        self.target_sample = int(data.sampling_rate)
        self.hop_size = int(data.hop_length)
        self.spk2id: dict[str, int] = {
            str(name): int(index) for name, index in self.hps_ms.spk.items()
        }
        self.unit_interpolate_mode = data.unit_interpolate_mode
        self.vol_embedding = bool(model_config.vol_embedding)
        self.speech_encoder_name = model_config.speech_encoder
        self.net_g_ms = load_generator(self.net_g_path, self.hps_ms, self.device, checkpoint)
        self.dtype = next(self.net_g_ms.parameters()).dtype
        self.n_speakers = int(self.net_g_ms.emb_g.num_embeddings)
        self.content_width = int(self.net_g_ms.ssl_dim)
        if spk_mix:
            self.net_g_ms.EnableCharacterMix(len(self.spk2id), self.device)

    def _describe_from_diffusion(self) -> None:
        """Diffusion only (upstream's -od): no generator; the diffusion config says it all."""
        assert self.diffusion is not None
        config, model = self.diffusion.config, self.diffusion.model
        self.hps_ms = None
        self.net_g_ms = None  # type: ignore[assignment]
        self.target_sample = int(config.data.sampling_rate)
        self.hop_size = int(config.data.block_size)
        self.spk2id = dict(config.spk)
        self.unit_interpolate_mode = config.data.unit_interpolate_mode
        self.vol_embedding = False
        self.speech_encoder_name = config.data.encoder
        self.dtype = torch.float32
        self.n_speakers = max(int(model.n_spk or 1), 1)
        self.content_width = int(model.input_channel)

    def _check_diffusion_fits(self, spk_mix: bool) -> None:
        """The diffusion model must read the synthesizer's frames, content and speakers."""
        if self.diffusion is None:
            return
        what = "the diffusion data" if self.only_diffusion else f"{self.net_g_path} works"
        self.diffusion.check_fits(self.target_sample, self.hop_size, what)
        width = self.diffusion.model.input_channel
        if width != self.content_width:
            raise UserError(
                f"{self.diffusion.model_path}: the diffusion model reads {width}-wide content "
                f"but {self.net_g_path} uses {self.content_width}: train the diffusion model "
                f"with the synthesizer's speech encoder ({self.speech_encoder_name})"
            )
        if spk_mix:
            self.diffusion.model.init_spkmix(len(self.spk2id))

    def _make_enhancer(self, enhance: bool, ckpt: str | os.PathLike) -> Enhancer | None:
        """The enhancer, sharing the diffusion's vocoder when it is the same file."""
        if not enhance:
            return None
        if self.shallow_diffusion:
            logger.warning("-eh is off with shallow diffusion (its vocoder already renders)")
            return None
        if self.diffusion is not None and Path(self.diffusion.vocoder.vocoder_ckpt) == Path(ckpt):
            return Enhancer(self.diffusion.vocoder)
        return Enhancer(Vocoder("nsf-hifigan", ckpt, self.device))

    def _load_blending(self, path: str | os.PathLike, trust_pickle: bool) -> None:
        """The feature index (with feature retrieval) or the cluster model at `path`."""
        if self.feature_retrieval:
            self.retriever = FeatureRetriever(load_feature_index(path, trust_pickle=trust_pickle))
            return
        if not Path(path).is_file():
            raise UserError(
                f"{path}: cluster model not found: train it with "
                "cluster/train_cluster.py, or pass -cr 0"
            )
        self.cluster_model = cluster.get_cluster_model(path, trust_pickle=trust_pickle)

    # ------------------------------------------------------------------ loading

    @property
    def speech_encoder(self) -> Any:
        """The config's speech encoder, loaded on first use and kept."""
        if self._speech_encoder is None:
            from modules.speech_encoders import load_speech_encoder

            encoder = load_speech_encoder(
                self.speech_encoder_name, weights_path=self.encoder_path, device=self.device
            )
            if encoder.dim != self.content_width:
                raise UserError(
                    f"speech encoder {self.speech_encoder_name} gives {encoder.dim}-wide "
                    f"features but the model expects ssl_dim {self.content_width}: "
                    "use the encoder weights the model was trained with (--encoder_path)"
                )
            self._speech_encoder = encoder
        return self._speech_encoder

    def f0_predictor(self, name: str, threshold: float = 0.05) -> Any:
        """The pitch predictor called `name`, built once and kept until another is asked for."""
        key = (name, float(threshold))
        if self._f0_predictor is None or self._f0_predictor_key != key:
            from modules.f0_predictors import get_f0_predictor

            self._f0_predictor = get_f0_predictor(
                name,
                hop_length=self.hop_size,
                sampling_rate=self.target_sample,
                device=str(self.device),
                threshold=threshold,
                weights_path=None if self.f0_weights is None else str(self.f0_weights),
            )
            self._f0_predictor_key = key
        return self._f0_predictor

    # ------------------------------------------------------------------ speakers

    def speaker_id(self, speaker: str | int) -> int:
        """A speaker's id from its name (or an id, or an id written as text)."""
        if isinstance(speaker, str) and speaker in self.spk2id:
            return self.spk2id[speaker]
        if isinstance(speaker, str) and speaker.strip().isdigit():
            speaker = int(speaker)
        if isinstance(speaker, int) and 0 <= speaker < self.n_speakers:
            return speaker
        raise UserError(
            f"speaker {speaker!r} is not in the config; choose one of: "
            f"{', '.join(self.spk2id) or '(none listed)'} (-s)"
        )

    def speaker_name(self, speaker: str | int) -> str:
        """The config's name for a speaker given by name or id."""
        speaker_id = self.speaker_id(speaker)
        for name, index in self.spk2id.items():
            if index == speaker_id:
                return name
        return str(speaker_id)

    def _speaker_tensor(self, speaker: SpeakerSpec) -> torch.Tensor:
        if isinstance(speaker, torch.Tensor):
            return speaker.to(self.device)
        return torch.tensor([[self.speaker_id(speaker)]], dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ features

    def get_unit_f0(
        self,
        wav: np.ndarray,
        tran: float,
        cluster_infer_ratio: float,
        speaker: str | int | None,
        f0_predictor: str = "pm",
        cr_threshold: float = 0.05,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Content (1, ssl_dim, T), transposed pitch (1, T) and voicing (1, T) of `wav`.

        `wav` is mono float audio at the model's sampling rate.
        """
        f0, uv = self.f0_predictor(f0_predictor, cr_threshold).compute_f0_uv(wav)
        f0 = torch.as_tensor(f0, dtype=torch.float32, device=self.device)
        uv = torch.as_tensor(uv, dtype=torch.float32, device=self.device)
        f0 = (f0 * 2 ** (tran / 12)).unsqueeze(0)
        uv = uv.unsqueeze(0)

        content = self.encode(wav, f0.shape[1])
        if cluster_infer_ratio != 0 and speaker is not None:
            content = self._blend_with_speaker(content, speaker, cluster_infer_ratio)
        return content.unsqueeze(0), f0, uv

    def encode(self, wav: np.ndarray, n_frames: int) -> torch.Tensor:
        """Content (D, n_frames) of mono audio at the model's rate, from the speech encoder."""
        wav16k = librosa.resample(
            np.asarray(wav, dtype=np.float32),
            orig_sr=self.target_sample,
            target_sr=ENCODER_SAMPLING_RATE,
        )
        content = self.speech_encoder.encode(torch.from_numpy(wav16k).to(self.device))
        content = repeat_expand_2d(content.squeeze(0), n_frames, self.unit_interpolate_mode)
        return content.to(self.device)

    def _blend_with_speaker(
        self, content: torch.Tensor, speaker: str | int, ratio: float
    ) -> torch.Tensor:
        """Pull content (D, T) towards the speaker's cluster centres or retrieved frames."""
        if self.retriever is not None:
            blended = self.retriever.retrieve(
                content.T.cpu().numpy(), self.speaker_id(speaker), ratio
            )
            return torch.from_numpy(blended).to(self.device).T
        if self.cluster_model is None:
            raise UserError(
                "-cr is above 0 but no cluster model or feature index is loaded: "
                "pass one with -cm (and -fr for an index), or use -cr 0"
            )
        centers = cluster.get_cluster_center_result(
            self.cluster_model, content.T, self.speaker_name(speaker)
        )
        return ratio * centers.T + (1 - ratio) * content

    # ------------------------------------------------------------------ synthesis

    def synthesize(
        self,
        c: torch.Tensor,
        f0: torch.Tensor,
        uv: torch.Tensor,
        speaker: SpeakerSpec,
        vol: torch.Tensor | None = None,
        noise_scale: float = 0.4,
        seed: int = DEFAULT_SEED,
        predict_f0: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The generator's audio (T * hop,) float32 and the pitch (1, T) it sang.

        Content c (1, D, T), pitch f0 (1, T), voicing uv (1, T); `speaker` is a
        name, an id, or per-frame mix weights (T, n_speakers). The pitch is f0
        unless `predict_f0` has the generator predict it.
        """
        if self.net_g_ms is None:
            raise UserError("diffusion only (-od) has no synthesizer: run without -od to use it")
        as_model = {"device": self.device, "dtype": self.dtype}
        with torch.no_grad():
            audio, sung = self.net_g_ms.infer(
                c.to(**as_model),
                f0=f0.to(**as_model),
                uv=uv.to(**as_model),
                g=self._speaker_tensor(speaker),
                noice_scale=noise_scale,
                seed=seed,
                predict_f0=predict_f0,
                vol=None if vol is None else vol.to(**as_model),
            )
        return audio[0, 0].float(), sung.float().reshape(1, -1)

    def infer_features(
        self,
        c: torch.Tensor,
        f0: torch.Tensor,
        uv: torch.Tensor,
        speaker: SpeakerSpec,
        vol: torch.Tensor | None = None,
        noise_scale: float = 0.4,
        seed: int = DEFAULT_SEED,
        predict_f0: bool = False,
    ) -> torch.Tensor:
        """Audio (T * hop,) float32 from content (1, D, T), pitch (1, T), voicing (1, T)."""
        audio, _ = self.synthesize(c, f0, uv, speaker, vol, noise_scale, seed, predict_f0)
        return audio

    def _diffuse(
        self,
        wav: np.ndarray,
        audio: torch.Tensor | None,
        c: torch.Tensor,
        f0: torch.Tensor,
        vol: torch.Tensor | None,
        speaker: SpeakerSpec,
        k_step: int,
        second_encoding: bool,
    ) -> torch.Tensor:
        """The diffusion stage: refine the generator's `audio`, or make audio from noise.

        Loudness is the input's when the generator embeds it (or without a
        generator), else that of the generator's audio, as upstream does.
        """
        assert self.diffusion is not None
        source = torch.from_numpy(wav).to(self.device) if audio is None else audio
        if vol is None:
            vol = self.volume_extractor.extract(source[None, :].float())
        mel = None
        if audio is not None:
            mel = self.diffusion.vocoder.extract(audio[None, :], self.target_sample)
            if second_encoding:
                c = self.encode(audio.detach().cpu().numpy(), f0.shape[1]).unsqueeze(0)
        return self.diffusion.render(c, f0, vol, self._speaker_tensor(speaker), mel, k_step)

    def _mix_weights(self, weights: torch.Tensor, frame: int, n_frames: int) -> torch.Tensor:
        """This piece's columns of the (n_speakers, total) timeline, as (n_frames, n_speakers)."""
        weights = weights[:, frame : frame + n_frames]
        if weights.shape[1] < n_frames:  # the timeline ran short: hold its last column
            tail = weights[:, -1:].expand(-1, n_frames - weights.shape[1])
            weights = torch.cat([weights, tail], dim=1)
        return weights.transpose(0, 1)

    def infer(
        self,
        speaker: SpeakerSpec,
        tran: float,
        raw_path: AudioSource | np.ndarray,
        cluster_infer_ratio: float = 0,
        auto_predict_f0: bool = False,
        noice_scale: float = 0.4,
        f0_predictor: str = "pm",
        cr_threshold: float = 0.05,
        frame: int = 0,
        spk_mix: bool = False,
        loudness_envelope_adjustment: float = 1,
        k_step: int = 100,
        second_encoding: bool = False,
        enhancer_adaptive_key: float = 0,
    ) -> tuple[torch.Tensor, int, int]:
        """Convert one piece of audio; returns (audio, its length, pitch frames used).

        `raw_path` is a file (path or file object, any rate) or a mono array
        already at the model's rate. With `spk_mix`, `speaker` is the mix
        weights (n_speakers, total_frames) and `frame` where this piece starts.
        """
        if isinstance(raw_path, np.ndarray):
            wav = np.asarray(raw_path, dtype=np.float32)
        else:
            wav, _ = librosa.load(raw_path, sr=self.target_sample, mono=True)
        started = time.time()
        ratio = 0 if spk_mix else cluster_infer_ratio
        c, f0, uv = self.get_unit_f0(
            wav, tran, ratio, None if spk_mix else speaker, f0_predictor, cr_threshold
        )
        n_frames = f0.shape[1]
        sid = self._mix_weights(speaker, frame, n_frames) if spk_mix else speaker
        vol = None
        if self.vol_embedding:
            vol = self.volume_extractor.extract(torch.from_numpy(wav)[None, :]).to(self.device)
        audio = None
        if self.net_g_ms is not None:
            audio, f0 = self.synthesize(
                c, f0, uv, sid, vol=vol, noise_scale=noice_scale, predict_f0=auto_predict_f0
            )
        if self.diffusion is not None:
            audio = self._diffuse(wav, audio, c, f0, vol, sid, k_step, second_encoding)
        assert audio is not None
        if self.enhancer is not None:
            audio = self.enhancer.enhance(
                audio, self.target_sample, f0, self.hop_size, enhancer_adaptive_key
            )
        if loudness_envelope_adjustment != 1:
            audio = change_rms(
                wav, self.target_sample, audio, self.target_sample, loudness_envelope_adjustment
            )
        logger.info("converted %d frames in %.2f s", n_frames, time.time() - started)
        return audio, audio.shape[-1], n_frames

    # ------------------------------------------------------------------ whole songs

    def _mix_timeline(
        self,
        spk_mix_map: Mapping[Any, Any],
        pieces: list[tuple[bool, np.ndarray]],
        audio_sr: int,
        per_size: int,
        lg_size: int,
        pad_seconds: float,
    ) -> torch.Tensor:
        """Mix weights over the frames the pieces will have, counted as upstream counts them."""
        total = 0
        for is_silence, data in pieces:
            if is_silence:
                total += int(np.ceil(len(data) / audio_sr * self.target_sample)) // self.hop_size
                continue
            clips = split_list_by_n(data, per_size, lg_size) if per_size else [data]
            for clip in clips:
                pad_len = int(audio_sr * pad_seconds)
                clip_length = int(np.ceil(len(clip) / audio_sr * self.target_sample))
                total += (clip_length + 2 * pad_len) // self.hop_size
        total += len(pieces)
        return build_mix_weights(spk_mix_map, self.spk2id, total, self.device)

    def _check_speaker(self, speaker: Any, use_spk_mix: bool) -> tuple[Any, bool]:
        """A timeline goes with a speaker mix, a speaker without; one speaker needs no mix."""
        if use_spk_mix and len(self.spk2id) == 1:
            speaker, use_spk_mix = next(iter(self.spk2id)), False
        if use_spk_mix and not isinstance(speaker, Mapping):
            raise UserError("speaker mix needs a timeline (spkmix.py), not a single speaker")
        if not use_spk_mix and isinstance(speaker, Mapping):
            raise UserError("a speaker-mix timeline needs use_spk_mix (-usm)")
        return speaker, use_spk_mix

    def convert_array(
        self,
        audio: np.ndarray,
        sampling_rate: int,
        speaker: str | int | Mapping[Any, Any],
        transpose: float = 0,
        slice_db: float = -40,
        cluster_infer_ratio: float = 0,
        auto_predict_f0: bool = False,
        noise_scale: float = 0.4,
        pad_seconds: float = 0.5,
        clip_seconds: float = 0,
        linear_gradient: float = 0,
        linear_gradient_retain: float = 0.75,
        f0_predictor: str = "pm",
        cr_threshold: float = 0.05,
        use_spk_mix: bool = False,
        loudness_envelope_adjustment: float = 1,
        progress: Callable[[float], None] | None = None,
        k_step: int = 100,
        second_encoding: bool = False,
        enhancer_adaptive_key: float = 0,
    ) -> np.ndarray:
        """Convert a whole mono recording; returns float32 audio at `target_sample`.

        With `use_spk_mix`, `speaker` is a speaker-mix timeline (see spkmix.py).
        `progress`, when given, is called with the share of the input done (0-1)
        after every piece, so a UI can show how far a long song is.
        """
        if self.shallow_diffusion and self.diffusion is not None:
            self.diffusion.check_k_step(k_step)
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 2:  # (samples, channels)
            audio = audio.mean(axis=1)
        speaker, use_spk_mix = self._check_speaker(speaker, use_spk_mix)
        chunks = slicer.slice_waveform(audio, sampling_rate, db_thresh=slice_db)
        pieces = slicer.split_chunks(audio, chunks)
        per_size = int(clip_seconds * sampling_rate)
        lg_size = int(linear_gradient * sampling_rate)
        target: Any = speaker
        if use_spk_mix:
            target = self._mix_timeline(
                speaker, pieces, sampling_rate, per_size, lg_size, pad_seconds
            )
        convert = _PieceConverter(
            svc=self, target=target, transpose=transpose, sampling_rate=sampling_rate,
            pad_seconds=pad_seconds, clip_samples=per_size, overlap_samples=lg_size,
            crossfade=_Crossfade.at_rate(
                linear_gradient, linear_gradient_retain, self.target_sample
            ),
            infer_options=dict(
                cluster_infer_ratio=cluster_infer_ratio, auto_predict_f0=auto_predict_f0,
                noice_scale=noise_scale, f0_predictor=f0_predictor, cr_threshold=cr_threshold,
                spk_mix=use_spk_mix, loudness_envelope_adjustment=loudness_envelope_adjustment,
                k_step=k_step, second_encoding=second_encoding,
                enhancer_adaptive_key=enhancer_adaptive_key,
            ),
        )
        return convert.run(pieces, len(audio), progress)

    def slice_inference(
        self,
        raw_audio_path: AudioSource,
        spk: str | int | Mapping[Any, Any],
        tran: float,
        slice_db: float,
        cluster_infer_ratio: float,
        auto_predict_f0: bool,
        noice_scale: float,
        pad_seconds: float = 0.5,
        clip_seconds: float = 0,
        lg_num: float = 0,
        lgr_num: float = 0.75,
        f0_predictor: str = "pm",
        enhancer_adaptive_key: int = 0,
        cr_threshold: float = 0.05,
        k_step: int = 100,
        use_spk_mix: bool = False,
        second_encoding: bool = False,
        loudness_envelope_adjustment: float = 1,
    ) -> np.ndarray:
        """Upstream's entry: convert an audio file (any format libsndfile or librosa reads)."""
        source = raw_audio_path
        if isinstance(source, str | os.PathLike) and not Path(source).is_file():
            raise UserError(f"{source}: input audio not found")
        try:
            audio, sampling_rate = librosa.load(source, sr=None, mono=True)
        except Exception as error:  # any decoder failure is a bad input file
            raise UserError(f"{source}: cannot be read as audio ({error})") from error
        return self.convert_array(
            audio,
            int(sampling_rate),
            spk,
            transpose=tran,
            slice_db=slice_db,
            cluster_infer_ratio=cluster_infer_ratio,
            auto_predict_f0=auto_predict_f0,
            noise_scale=noice_scale,
            pad_seconds=pad_seconds,
            clip_seconds=clip_seconds,
            linear_gradient=lg_num,
            linear_gradient_retain=lgr_num,
            f0_predictor=f0_predictor,
            cr_threshold=cr_threshold,
            use_spk_mix=use_spk_mix,
            loudness_envelope_adjustment=loudness_envelope_adjustment,
            k_step=k_step,
            second_encoding=second_encoding,
            enhancer_adaptive_key=enhancer_adaptive_key,
        )

    def clear_empty(self) -> None:
        """Release cached GPU memory between songs."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def unload_model(self) -> None:
        """Drop the generator and encoders (upstream's WebUI calls this)."""
        self.net_g_ms = None  # type: ignore[assignment]
        self.diffusion = None
        self.enhancer = None
        self._speech_encoder = None
        self._f0_predictor = None
        self.clear_empty()
