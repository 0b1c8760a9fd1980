"""Export a trained generator to ONNX in upstream so-vits-svc 4.1's layout.

Tools outside Python (MoeVoiceStudio, realtime voice changers) load the
synthesizer as `NAME_SoVits.onnx` with upstream's inputs, all float32 unless
noted, T the number of output frames:

    c       (1, T_c, ssl_dim)  content features, T_c frames
    f0      (1, T)             pitch in Hz (0 where unvoiced)
    mel2ph  (1, T) int64       which content frame each output frame reads,
                               1-based; 0 reads a frame of zeros (upstream's rule)
    uv      (1, T)             voicing, 1 or 0
    noise   (1, inter, T)      prior noise, already times the noise scale
    sid     (T, n_speakers)    per-frame speaker weights, columns in the
                               config's `spk` order, for two or more speakers;
                               else (1,) int64, the speaker id
    vol     (1, T)             loudness, only for models with vol_embedding
    ->
    audio   (1, 1, T * hop)

with opset 16 and dynamic time axes. Beside it a `NAME.json` describes the
model for MoeVoiceStudio.

The one difference from the PyTorch model: the sine source's start phases
and its additive noise cannot come from a seeded generator inside an ONNX
graph, so the export carries them as fixed tables drawn once from the seed
(the noise table repeats every few seconds, far below hearing at its
level). The same inputs therefore always give the same audio.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from checkpoint import generator_hparams, load_generator, read_generator_file
from core.errors import UserError
from core.safe_io import atomic_write
from models import SynthesizerTrn
from modules.f0_utils import f0_to_coarse
from modules.modules import strip_weight_norm
from modules.nsf_hifigan import SineGen

OPSET = 16
DEFAULT_SEED = 52468
NOISE_TABLE_SECONDS = 4.0
OUTPUT_NAMES = ["audio"]
EXAMPLE_FRAMES = 64


def input_names(vol_embedding: bool) -> list[str]:
    """Upstream's input order; `vol` last and only with volume embedding."""
    names = ["c", "f0", "mel2ph", "uv", "noise", "sid"]
    return [*names, "vol"] if vol_embedding else names


def dynamic_axes(speaker_mix: bool, vol_embedding: bool) -> dict[str, list[int]]:
    """Upstream's dynamic axes: time everywhere, plus c's batch axis as upstream marks it."""
    axes = {"c": [0, 1], "f0": [1], "mel2ph": [1], "uv": [1], "noise": [2]}
    if speaker_mix:
        axes["sid"] = [0]
    if vol_embedding:
        axes["vol"] = [1]
    return axes


class FixedNoiseSineGen(SineGen):
    """The sine source with its random start phases and noise fixed as tables (exportable)."""

    def __init__(self, source: SineGen, seed: int, table_length: int) -> None:
        super().__init__(
            source.sampling_rate,
            source.harmonic_num,
            source.sine_amp,
            source.noise_std,
            source.voiced_threshold,
        )
        generator = torch.Generator().manual_seed(seed)
        phase = torch.rand(self.dim, generator=generator)
        phase[0] = 0
        self.register_buffer("phase_table", phase)
        noise = torch.randn(table_length, self.dim, generator=generator)
        self.register_buffer("noise_table", noise)

    def initial_phase(
        self, batch: int, generator: torch.Generator | None, like: torch.Tensor
    ) -> torch.Tensor:
        return self.phase_table.to(like.dtype).unsqueeze(0)  # (1, dim): broadcasts over B

    def excitation_noise(
        self, like: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        samples = torch.arange(like.shape[1], device=like.device) % self.noise_table.shape[0]
        noise = self.noise_table.to(like.dtype).index_select(0, samples)
        return noise.unsqueeze(0)  # (1, L, dim): broadcasts over B


class OnnxSynthesizer(nn.Module):
    """`SynthesizerTrn.infer` with upstream's ONNX inputs (see the module docstring).

    Works on a float32 copy with weight norm folded; the model given is left as is.
    """

    def __init__(
        self,
        net_g: SynthesizerTrn,
        speakers: dict[str, int],
        seed: int = DEFAULT_SEED,
        noise_seconds: float = NOISE_TABLE_SECONDS,
    ) -> None:
        super().__init__()
        net = copy.deepcopy(net_g).float().eval().cpu()
        strip_weight_norm(net)
        source = net.dec.m_source
        source.l_sin_gen = FixedNoiseSineGen(
            source.l_sin_gen, seed, int(noise_seconds * source.l_sin_gen.sampling_rate)
        )
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        self.net = net
        self.vol_embedding = bool(net.vol_embedding)
        self.speaker_names = list(speakers)
        self.speaker_mix = len(speakers) >= 2
        if self.speaker_mix:
            ids = torch.tensor(list(speakers.values()), dtype=torch.long)
            self.register_buffer("speaker_table", net.emb_g(ids).detach())

    def example_inputs(self, frames: int = EXAMPLE_FRAMES) -> tuple[torch.Tensor, ...]:
        """Inputs of the right shapes and dtypes for `frames` frames (tracing, tests)."""
        generator = torch.Generator().manual_seed(0)
        c = torch.randn(1, frames, self.net.ssl_dim, generator=generator)
        f0 = 100 + 200 * torch.rand(1, frames, generator=generator)
        mel2ph = torch.arange(1, frames + 1, dtype=torch.long).unsqueeze(0)
        uv = torch.ones(1, frames)
        noise = 0.4 * torch.randn(1, self.net.inter_channels, frames, generator=generator)
        if self.speaker_mix:
            n_speakers = len(self.speaker_names)
            sid = torch.full((frames, n_speakers), 1.0 / n_speakers)
        else:
            sid = torch.zeros(1, dtype=torch.long)
        inputs = (c, f0, mel2ph, uv, noise, sid)
        if self.vol_embedding:
            inputs = (*inputs, 0.1 * torch.rand(1, frames, generator=generator))
        return inputs

    def forward(
        self,
        c: torch.Tensor,
        f0: torch.Tensor,
        mel2ph: torch.Tensor,
        uv: torch.Tensor,
        noise: torch.Tensor,
        sid: torch.Tensor,
        vol: torch.Tensor | None = None,
    ) -> torch.Tensor:
        net = self.net
        # Frame t reads content frame mel2ph[t] - 1; 0 reads the zero frame padded in front.
        padded = F.pad(c, (0, 0, 1, 0))
        index = mel2ph.unsqueeze(2).expand(-1, -1, c.shape[-1])
        content = torch.gather(padded, 1, index).transpose(1, 2)
        if self.speaker_mix:
            g = torch.matmul(sid, self.speaker_table).transpose(0, 1).unsqueeze(0)
        else:
            g = net.emb_g(sid.reshape(-1, 1)).transpose(1, 2)
        x_mask = torch.ones_like(f0).unsqueeze(1)
        x = net._prenet(content, uv, x_mask, vol)
        z_p, _, _, c_mask = net.enc_p(x, x_mask, f0=f0_to_coarse(f0), noise=noise)
        z = net.flow(z_p, c_mask, g=g, reverse=True)
        # The sine source runs in float64 (f0's dtype): its running phase over a long
        # song drifts apart between PyTorch's and onnxruntime's float32 cumulative sums.
        return net.dec(z * c_mask, g=g, f0=f0.double())


def hubert_name(ssl_dim: int) -> str:
    """MoeVoiceStudio's encoder name, upstream's rule: 768 wide is layer 12, else layer 9."""
    layer = "layer-12" if ssl_dim == 768 else "layer-9"
    return f"vec-{ssl_dim}-{layer}"


def moevs_description(name: str, hps: Any, wrapper: OnnxSynthesizer) -> dict[str, Any]:
    """The `NAME.json` MoeVoiceStudio reads next to the model folder (upstream's fields)."""
    return {
        "Folder": name,
        "Name": name,
        "Type": "SoVits",
        "Rate": int(hps.data.sampling_rate),
        "Hop": int(hps.data.hop_length),
        "Hubert": hubert_name(wrapper.net.ssl_dim),
        "SoVits4": True,
        "SoVits3": False,
        "CharaMix": wrapper.speaker_mix,
        "Volume": wrapper.vol_embedding,
        "HiddenSize": int(wrapper.net.ssl_dim),
        "Characters": wrapper.speaker_names,
    }


def speakers_of(hps: Any) -> dict[str, int]:
    """The config's speaker table in its own order (that order is the mix columns')."""
    speakers = hps.get("spk")
    if not speakers:
        raise UserError("config has no 'spk' table: pass the config the model was trained with")
    return {str(name): int(index) for name, index in speakers.items()}


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and what its inputs are."""

    onnx_path: Path
    json_path: Path
    input_names: list[str]
    description: dict[str, Any]


def export_wrapper(wrapper: OnnxSynthesizer, onnx_path: str | os.PathLike) -> list[str]:
    """Trace `wrapper` to `onnx_path` (TorchScript exporter: it keeps upstream's names and
    dynamic axes as given; the dynamo exporter renames them). Returns the input names."""
    names = input_names(wrapper.vol_embedding)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    partial = onnx_path.with_name(onnx_path.name + ".partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter, not user news
        torch.onnx.export(
            wrapper,
            wrapper.example_inputs(),
            str(partial),
            input_names=names,
            output_names=OUTPUT_NAMES,
            dynamic_axes=dynamic_axes(wrapper.speaker_mix, wrapper.vol_embedding),
            opset_version=OPSET,
            do_constant_folding=False,
            dynamo=False,
        )
    os.replace(partial, onnx_path)
    return names


def export_model(
    model_path: str | os.PathLike,
    config_path: str | os.PathLike | None,
    onnx_path: str | os.PathLike,
    json_path: str | os.PathLike,
    name: str,
    fallback_config: str | os.PathLike | None = None,
) -> ExportResult:
    """Load `model_path`, write the ONNX model and its MoeVS description.

    The config is `config_path` when given, else the one the file carries,
    else `fallback_config` (upstream's checkpoints/NAME/config.json).
    """
    checkpoint = read_generator_file(model_path, "--model")
    hps = generator_hparams(checkpoint, model_path, config_path, fallback_config, "--config")
    net_g = load_generator(model_path, hps, "cpu", checkpoint)
    wrapper = OnnxSynthesizer(net_g, speakers_of(hps)).eval()
    names = export_wrapper(wrapper, onnx_path)
    description = moevs_description(name, hps, wrapper)
    with atomic_write(json_path) as handle:
        handle.write(json.dumps(description, indent=4, ensure_ascii=False).encode("utf-8"))
    return ExportResult(Path(onnx_path), Path(json_path), names, description)
