"""HuBERT-Soft (bshall/hubert), the `hubertsoft` speech encoder of so-vits-svc.

A HuBERT-base network whose last layer is projected to 256 "soft unit"
channels. The released checkpoint `hubert-soft-0d54a1f4.pt` is a plain state
dict saved from a DistributedDataParallel wrapper, so every key starts with
`module.`; the names below match it after that prefix is removed.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from core.safe_io import load_torch_data
from modules.speech_encoders.hubert import WeightNormConv1d

_CONV_DIM = 512
_HIDDEN_DIM = 768
_UNIT_DIM = 256
_LAYERS = 12
_HEADS = 12
_FFN_DIM = 3072
_POS_KERNEL = 128
_POS_GROUPS = 16
_NUM_LABELS = 100
# The conv stack sees 400 samples per 320-sample hop; padding half the
# difference on both sides centres each frame on its hop.
_EDGE_PAD = (400 - 320) // 2


class SoftFeatureExtractor(nn.Module):
    """Seven bias-free convs (stride 320 overall) with a per-channel group norm on the first."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv1d(1, _CONV_DIM, 10, 5, bias=False)
        self.norm0 = nn.GroupNorm(_CONV_DIM, _CONV_DIM)
        self.conv1 = nn.Conv1d(_CONV_DIM, _CONV_DIM, 3, 2, bias=False)
        self.conv2 = nn.Conv1d(_CONV_DIM, _CONV_DIM, 3, 2, bias=False)
        self.conv3 = nn.Conv1d(_CONV_DIM, _CONV_DIM, 3, 2, bias=False)
        self.conv4 = nn.Conv1d(_CONV_DIM, _CONV_DIM, 3, 2, bias=False)
        self.conv5 = nn.Conv1d(_CONV_DIM, _CONV_DIM, 2, 2, bias=False)
        self.conv6 = nn.Conv1d(_CONV_DIM, _CONV_DIM, 2, 2, bias=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm0(self.conv0(wav)))
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5, self.conv6):
            x = F.gelu(conv(x))
        return x


class SoftFeatureProjection(nn.Module):
    """Layer norm then a linear map from conv channels to the transformer width."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(_CONV_DIM)
        self.projection = nn.Linear(_CONV_DIM, _HIDDEN_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.norm(x))


class SoftPositionalEmbedding(nn.Module):
    """Grouped, weight-normed conv over time; the even kernel's extra last frame is dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = WeightNormConv1d(_HIDDEN_DIM, _POS_KERNEL, _POS_GROUPS, _POS_KERNEL // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))
        return F.gelu(y[:, :, :-1]).transpose(1, 2)


class SoftTransformerEncoder(nn.Module):
    """A stack of torch's post-norm encoder layers (the layout the checkpoint stores)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(_HIDDEN_DIM, _HEADS, _FFN_DIM, activation="gelu",
                                       batch_first=True)
            for _ in range(_LAYERS)
        )

    def forward(self, x: torch.Tensor, output_layer: int | None = None) -> torch.Tensor:
        for layer in self.layers[:output_layer]:
            x = layer(x)
        return x


class HubertSoftNetwork(nn.Module):
    """bshall's HubertSoft with its state-dict names; `units` gives the soft speech units."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_extractor = SoftFeatureExtractor()
        self.feature_projection = SoftFeatureProjection()
        self.positional_embedding = SoftPositionalEmbedding()
        self.norm = nn.LayerNorm(_HIDDEN_DIM)
        self.encoder = SoftTransformerEncoder()
        self.proj = nn.Linear(_HIDDEN_DIM, _UNIT_DIM)
        # Used only in pre-training (masking and unit logits); kept so the checkpoint loads.
        self.masked_spec_embed = nn.Parameter(torch.zeros(_HIDDEN_DIM))
        self.label_embedding = nn.Embedding(_NUM_LABELS, _UNIT_DIM)

    @property
    def dim(self) -> int:
        return _UNIT_DIM

    def encode(self, wav: torch.Tensor, output_layer: int | None = None) -> torch.Tensor:
        """Transformer states (B, T, 768) for (B, 1, N) audio, without masking."""
        x = self.feature_projection(self.feature_extractor(wav).transpose(1, 2))
        x = self.norm(x + self.positional_embedding(x))
        return self.encoder(x, output_layer)

    def units(self, wav: torch.Tensor) -> torch.Tensor:
        """Soft units (B, T, 256) for (B, 1, N) audio at 16 kHz; T = N // 320."""
        return self.proj(self.encode(F.pad(wav, (_EDGE_PAD, _EDGE_PAD))))


def load_hubert_soft(path: str | Path, device: str | torch.device = "cpu") -> HubertSoftNetwork:
    """Load `hubert-soft-0d54a1f4.pt` (keys with or without the `module.` prefix) in eval mode."""
    state = load_torch_data(path, map_location="cpu")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"{path}: not a HuBERT-Soft state dict; download hubert-soft-0d54a1f4.pt from "
            "https://github.com/bshall/hubert/releases"
        )
    prefix = "module."
    state = {key.removeprefix(prefix): value for key, value in state.items()}
    model = HubertSoftNetwork()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"{path}: weights do not fit the HuBERT-Soft network ({first_line} ...); download "
            "hubert-soft-0d54a1f4.pt from https://github.com/bshall/hubert/releases"
        ) from error
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval().to(device)
