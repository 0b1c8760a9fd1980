"""HuBERT / ContentVec in plain torch, read from fairseq checkpoints without fairseq.

so-vits-svc's `vec768l12` and `vec256l9` features come from ContentVec's
"legacy" checkpoint, which is an ordinary fairseq `HubertModel`. This module
rebuilds that network (conv feature extractor, feature layer norm, projection,
weight-normed positional convolution, transformer encoder, `final_proj`) with
the parameter names fairseq stores, so the checkpoint's state dict loads as is
and `extract_features` gives fairseq's numbers in eval mode.

The checkpoint is read with `load_torch_foreign`: the `argparse.Namespace` and
fairseq classes it pickles become inert placeholders; nothing it names is run.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from core.safe_io import load_torch_foreign

# HuBERT-base defaults: what fairseq assumes when a checkpoint omits a field.
_BASE_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"

# State-dict entries used only for pre-training (masking, label embeddings).
_TRAINING_ONLY_KEYS = ("mask_emb", "label_embs_concat", "label_embs")


@dataclass(frozen=True)
class HubertConfig:
    """The hyper-parameters of a fairseq HuBERT that change the forward pass in eval mode."""

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    extractor_mode: str = "default"
    conv_feature_layers: str = _BASE_CONV_LAYERS
    conv_bias: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    final_dim: int = 0
    layer_type: str = "transformer"
    pos_conv_depth: int = 1
    conv_pos_batch_norm: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "checkpoint") -> HubertConfig:
        """Pick the known fields from a fairseq model config; missing ones take base defaults."""
        known = {field.name: field for field in fields(cls)}
        chosen: dict[str, Any] = {}
        for name, field in known.items():
            value = values.get(name)
            if value is None:
                continue
            expected = type(field.default)
            try:
                chosen[name] = expected(value)
            except (TypeError, ValueError) as error:
                raise UserError(
                    f"{source}: model setting {name}={value!r} is not a {expected.__name__}; "
                    "the checkpoint is not a fairseq HuBERT/ContentVec model"
                ) from error
        config = cls(**chosen)
        config.validate(source)
        return config

    def validate(self, source: str) -> None:
        """Refuse variants whose forward pass this module does not implement."""
        unsupported = []
        if self.layer_type != "transformer":
            unsupported.append(f"layer_type={self.layer_type!r}")
        if self.extractor_mode not in ("default", "layer_norm"):
            unsupported.append(f"extractor_mode={self.extractor_mode!r}")
        if self.pos_conv_depth != 1:
            unsupported.append(f"pos_conv_depth={self.pos_conv_depth}")
        if self.conv_pos_batch_norm:
            unsupported.append("conv_pos_batch_norm=True")
        if self.activation_fn not in _ACTIVATIONS:
            unsupported.append(f"activation_fn={self.activation_fn!r}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            unsupported.append("encoder_embed_dim not divisible by encoder_attention_heads")
        if unsupported:
            raise UserError(
                f"{source}: unsupported HuBERT variant ({', '.join(unsupported)}); "
                "use ContentVec's checkpoint_best_legacy_500.pt or a HuBERT-base style checkpoint"
            )

    def conv_layer_spec(self, source: str = "checkpoint") -> list[tuple[int, int, int]]:
        """The (channels, kernel, stride) of each feature-extractor conv layer."""
        return parse_conv_layers(self.conv_feature_layers, source)


def parse_conv_layers(spec: str, source: str = "checkpoint") -> list[tuple[int, int, int]]:
    """Evaluate fairseq's `conv_feature_layers` string without `eval`.

    fairseq `eval`s this string; here only list/tuple literals of integers
    joined by `+` and `*` are accepted, which covers every published model.
    """

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.List):
            return [evaluate(item) for item in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(evaluate(item) for item in node.elts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = evaluate(node.left), evaluate(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")

    try:
        layers = evaluate(ast.parse(spec, mode="eval"))
        result = [(int(dim), int(kernel), int(stride)) for dim, kernel, stride in layers]
    except (SyntaxError, ValueError, TypeError) as error:
        raise UserError(
            f"{source}: conv_feature_layers {spec!r} is not a list of (channels, kernel, stride) "
            f"tuples ({error}); the checkpoint is not a fairseq HuBERT/ContentVec model"
        ) from error
    if not result:
        raise UserError(f"{source}: conv_feature_layers {spec!r} lists no layers")
    return result


def _gelu(x: torch.Tensor) -> torch.Tensor:
    # fairseq computes GELU in float32 whatever the input dtype.
    return F.gelu(x.float()).type_as(x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x.float(), approximate="tanh").type_as(x)


_ACTIVATIONS = {
    "gelu": _gelu,
    "gelu_accurate": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "relu": F.relu,
}


class WeightNormConv1d(nn.Module):
    """A Conv1d stored the old `torch.nn.utils.weight_norm` way (`weight_g`, `weight_v`).

    Both fairseq and HuBERT-Soft save their positional convolution like this
    with the norm taken over every axis but the kernel axis (`dim=2`); keeping
    the two tensors as parameters lets their checkpoints load by name.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int, padding: int) -> None:
        super().__init__()
        self.padding = padding
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, std=math.sqrt(4.0 / (kernel_size * channels)))

    def normalized_weight(self) -> torch.Tensor:
        """g * v / ||v||, the norm over output and input channels for each kernel tap."""
        norm = self.weight_v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
        return self.weight_v * (self.weight_g / norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.normalized_weight(), self.bias, padding=self.padding,
                        groups=self.groups)


class SamePad(nn.Module):
    """Drop the extra last frame a `padding=k//2` conv yields for an even kernel."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


class _Gelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _gelu(x)


class _TransposeLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


class _Fp32LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                         self.bias.float(), self.eps)
        return y.type_as(x)


class _Fp32GroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                         self.eps)
        return y.type_as(x)


class ConvFeatureExtractor(nn.Module):
    """fairseq's ConvFeatureExtractionModel: raw wave (B, N) to frames (B, C, T).

    Keys follow fairseq's `conv_layers.<i>.<j>` Sequential layout: 0 conv,
    1 dropout, 2 norm (group norm on layer 0 in "default" mode, layer norm on
    every layer in "layer_norm" mode), then GELU.
    """

    def __init__(self, layers: list[tuple[int, int, int]], mode: str, conv_bias: bool) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList()
        in_channels = 1
        for index, (channels, kernel, stride) in enumerate(layers):
            block: list[nn.Module] = [
                nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=conv_bias),
                nn.Dropout(0.0),
            ]
            if mode == "layer_norm":
                # Nested as fairseq nests it, so the keys read `<i>.2.1.weight`.
                block.append(nn.Sequential(_TransposeLast(), _Fp32LayerNorm(channels),
                                           _TransposeLast()))
            elif index == 0:
                block.append(_Fp32GroupNorm(channels, channels, affine=True))
            block.append(_Gelu())
            self.conv_layers.append(nn.Sequential(*block))
            in_channels = channels
        self.receptive_field = _receptive_field(layers)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav.unsqueeze(1)
        for block in self.conv_layers:
            x = block(x)
        return x


def _receptive_field(layers: list[tuple[int, int, int]]) -> int:
    """The fewest input samples that yield one output frame."""
    field = 1
    for _channels, kernel, stride in reversed(layers):
        field = (field - 1) * stride + kernel
    return field


class FairseqSelfAttention(nn.Module):
    """fairseq's MultiheadAttention for self-attention without masks (separate q/k/v)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, dim = x.shape
        head_dim = dim // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, frames, self.heads, head_dim).transpose(1, 2)

        # fairseq scales the queries before the dot product and takes the softmax in float32.
        q = split(self.q_proj(x) * head_dim**-0.5)
        k, v = split(self.k_proj(x)), split(self.v_proj(x))
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float(), dim=-1).type_as(q)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(batch, frames, dim)
        return self.out_proj(out)


class FairseqEncoderLayer(nn.Module):
    """fairseq's TransformerSentenceEncoderLayer (post-norm, or pre-norm if layer_norm_first)."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, activation: str,
                 layer_norm_first: bool) -> None:
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.activation = _ACTIVATIONS[activation]
        self.self_attn = FairseqSelfAttention(dim, heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.self_attn(self.self_attn_layer_norm(x))
            return x + self.fc2(self.activation(self.fc1(self.final_layer_norm(x))))
        x = self.self_attn_layer_norm(x + self.self_attn(x))
        return self.final_layer_norm(x + self.fc2(self.activation(self.fc1(x))))


class FairseqTransformerEncoder(nn.Module):
    """fairseq's wav2vec 2.0 / HuBERT TransformerEncoder, eval mode, no padding.

    fairseq pads the sequence to `required_seq_len_multiple` frames and masks
    the pad out of attention, then cuts it off again; that leaves the real
    frames unchanged, so it is not reproduced here.
    """

    def __init__(self, config: HubertConfig) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.layer_norm_first = config.layer_norm_first
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(dim, config.conv_pos, config.conv_pos_groups, config.conv_pos // 2),
            SamePad(config.conv_pos),
            _Gelu(),
        )
        self.layers = nn.ModuleList(
            FairseqEncoderLayer(dim, config.encoder_ffn_embed_dim, config.encoder_attention_heads,
                                config.activation_fn, config.layer_norm_first)
            for _ in range(config.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, target_layer: int | None = None) -> torch.Tensor:
        """Run (B, T, C) frames up to 0-based `target_layer` (all layers when None or too big).

        As in fairseq, the final layer norm of a pre-norm model is applied
        only when no target layer is given.
        """
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index == target_layer:
                break
        if self.layer_norm_first and target_layer is None:
            x = self.layer_norm(x)
        return x


class FairseqHubert(nn.Module):
    """fairseq's HubertModel, feature extraction only, with fairseq's parameter names."""

    def __init__(self, config: HubertConfig, final_proj_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        conv_layers = config.conv_layer_spec()
        conv_dim = conv_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractor(
            conv_layers, config.extractor_mode, config.conv_bias
        )
        self.layer_norm = nn.LayerNorm(conv_dim)
        self.post_extract_proj = (
            nn.Linear(conv_dim, config.encoder_embed_dim)
            if conv_dim != config.encoder_embed_dim else None
        )
        self.encoder = FairseqTransformerEncoder(config)
        if final_proj_dim is None:
            final_proj_dim = config.final_dim if config.final_dim > 0 else None
        self.final_proj = (
            nn.Linear(config.encoder_embed_dim, final_proj_dim) if final_proj_dim else None
        )

    @property
    def min_samples(self) -> int:
        """The shortest input (in samples) that gives at least one frame."""
        return self.feature_extractor.receptive_field

    def extract_features(self, source: torch.Tensor,
                         output_layer: int | None = None) -> torch.Tensor:
        """Hidden states (B, T, C) after 1-based `output_layer`, as fairseq's extract_features.

        `source` is (B, N) audio at 16 kHz, every row the same length. An
        `output_layer` beyond the last layer runs every layer and returns the
        last one (fairseq does the same).
        """
        features = self.feature_extractor(source).transpose(1, 2)
        features = self.layer_norm(features)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        target_layer = None if output_layer is None else output_layer - 1
        return self.encoder(features, target_layer)


def _model_settings(checkpoint: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """The model hyper-parameters: `cfg["model"]` (fairseq >= 0.10) or the pickled `args`."""
    cfg = checkpoint.get("cfg")
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        return cfg["model"]
    args = checkpoint.get("args")
    if args is not None and hasattr(args, "__dict__") and vars(args):
        return {key: value for key, value in vars(args).items() if not key.startswith("_")}
    raise UserError(
        f"{source}: holds neither cfg['model'] nor args; it is not a fairseq checkpoint: "
        "use ContentVec's checkpoint_best_legacy_500.pt"
    )


def hubert_from_checkpoint(checkpoint: Mapping[str, Any], source: str = "checkpoint"
                           ) -> FairseqHubert:
    """Build a FairseqHubert from an already unpickled fairseq checkpoint dict."""
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        raise UserError(
            f"{source}: has no 'model' state dict; it is not a fairseq checkpoint: "
            "use ContentVec's checkpoint_best_legacy_500.pt"
        )
    config = HubertConfig.from_mapping(_model_settings(checkpoint, source), source)
    state = {key: value for key, value in checkpoint["model"].items()
             if isinstance(value, torch.Tensor)}
    final_proj = state.get("final_proj.weight")
    model = FairseqHubert(config, None if final_proj is None else int(final_proj.shape[0]))
    expected = set(model.state_dict())
    loadable = {}
    for key, value in state.items():
        if key in expected or key.startswith("feature_extractor.conv_layers"):
            loadable[key] = value
        elif not key.startswith(_TRAINING_ONLY_KEYS) and key.startswith(
            ("encoder.", "layer_norm", "post_extract_proj")
        ):
            raise UserError(
                f"{source}: unexpected weight {key!r} for a {config.encoder_layers}-layer HuBERT; "
                "the checkpoint's config and weights disagree: download it again"
            )
    try:
        model.load_state_dict(loadable, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"{source}: weights do not fit a fairseq HuBERT/ContentVec network ({first_line} ...); "
            "use ContentVec's checkpoint_best_legacy_500.pt"
        ) from error
    return model.eval()


def load_fairseq_hubert(path: str | Path, device: str | torch.device = "cpu") -> FairseqHubert:
    """Read a fairseq HuBERT/ContentVec checkpoint as data (never importing fairseq)."""
    checkpoint = load_torch_foreign(path, map_location="cpu")
    model = hubert_from_checkpoint(checkpoint, str(path))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(device)
