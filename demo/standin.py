"""A stand-in for ContentVec's `checkpoint_best_legacy_500.pt`, for machines without it.

The demo must run on a fresh machine with nothing downloaded. ContentVec's
weights cannot be recreated, so the demo writes a checkpoint with the real
network's shape (fairseq HuBERT-base: 7 conv layers in "default" mode, 12
post-norm transformer layers of width 768 with 12 heads and FFN 3072, a
positional conv of kernel 128 in 16 groups, `final_proj` to 256) and weights
drawn from a fixed seed, in fairseq's file layout (`cfg["model"]`, `model`
state dict with fairseq's key names). Every command then runs exactly as with
the real file; only the features mean nothing linguistic, so the converted
voice shows the pipeline works, not what so-vits-svc sounds like.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.safe_io import atomic_torch_save
from modules.speech_encoders.hubert import FairseqHubert, HubertConfig

CONTENTVEC_FILE = "checkpoint_best_legacy_500.pt"
STANDIN_FILE = "standin_contentvec_legacy_500.pt"
FINAL_PROJ_DIM = 256

# fairseq's HubertConfig fields as ContentVec's legacy checkpoint stores them.
CONTENTVEC_MODEL_CFG: dict[str, Any] = {
    "_name": "hubert",
    "label_rate": 50.0,
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_type": "transformer",
    "layer_norm_first": False,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "final_dim": FINAL_PROJ_DIM,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.05,
    "untie_final_proj": False,
}


def _init_like_fairseq(model: FairseqHubert, generator: torch.Generator) -> None:
    """BERT-style init (fairseq's `init_bert_params`) and kaiming convs, from one generator."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            with torch.no_grad():
                module.weight.normal_(0.0, 0.02, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
        elif isinstance(module, nn.Conv1d):
            fan_in = module.in_channels * module.kernel_size[0]
            with torch.no_grad():
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
    pos_conv = model.encoder.pos_conv[0]
    channels, kernel = pos_conv.weight_v.shape[0], pos_conv.weight_v.shape[2]
    with torch.no_grad():
        pos_conv.weight_v.normal_(0.0, math.sqrt(4.0 / (kernel * channels)), generator=generator)
        # weight_norm starts with g = ||v||, so the effective weight is v itself.
        pos_conv.weight_g.copy_(pos_conv.weight_v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt())
        pos_conv.bias.zero_()


def build_standin_checkpoint(seed: int = 0) -> dict[str, Any]:
    """The fairseq-format checkpoint dict of a randomly initialised ContentVec network."""
    config = HubertConfig.from_mapping(CONTENTVEC_MODEL_CFG, "stand-in")
    model = FairseqHubert(config, FINAL_PROJ_DIM)
    generator = torch.Generator().manual_seed(seed)
    _init_like_fairseq(model, generator)
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    return {
        "args": None,
        "cfg": {"model": dict(CONTENTVEC_MODEL_CFG), "task": {"_name": "hubert_pretraining"}},
        "model": state,
        "optimizer_history": [],
        "extra_state": {"standin": f"random weights, seed {seed}; not ContentVec"},
        "last_optimizer_state": None,
    }


def find_real_contentvec(search_dirs: list[Path]) -> Path | None:
    """ContentVec's real checkpoint under `<dir>/pretrain/`, first match wins."""
    for folder in search_dirs:
        candidate = folder / "pretrain" / CONTENTVEC_FILE
        if candidate.is_file():
            return candidate
    return None


def ensure_standin(pretrain_dir: str | os.PathLike, seed: int = 0) -> tuple[Path, bool]:
    """Write the stand-in once into `pretrain_dir`; returns (path, whether it was written now)."""
    path = Path(pretrain_dir) / STANDIN_FILE
    if path.is_file():
        return path, False
    atomic_torch_save(build_standin_checkpoint(seed), path)
    return path, True
