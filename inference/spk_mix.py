"""Speaker-mix timelines: read `spkmix.py` as data and turn it into per-frame weights."""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from core.errors import UserError

SpkMixMap = dict[int | str, list[list[float]]]


def read_spk_mix_map(path: str | os.PathLike = "spkmix.py") -> SpkMixMap:
    """The literal assigned to `spk_mix_map` in `path`, parsed without running the file."""
    source = Path(path)
    if not source.is_file():
        raise UserError(f"{source}: speaker-mix file not found: copy spkmix.py from the project")
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    except SyntaxError as error:
        raise UserError(f"{source}: not valid Python ({error.msg}, line {error.lineno})") from error
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "spk_mix_map" for t in node.targets)
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError as error:
                raise UserError(f"{source}: spk_mix_map must be a plain literal dict") from error
            if not isinstance(value, dict):
                raise UserError(f"{source}: spk_mix_map must be a dict")
            return value
    raise UserError(f"{source}: no spk_mix_map = {{...}} assignment found")


def _row_for(key: int | str, speakers: Mapping[str, int]) -> int:
    if isinstance(key, int):
        return key
    if key in speakers:
        return int(speakers[key])
    raise UserError(f"spkmix: unknown speaker {key!r}; the model has: {', '.join(speakers)}")


def build_mix_weights(
    spk_mix_map: Mapping[int | str, Sequence[Sequence[float]]],
    speakers: Mapping[str, int],
    n_frames: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-frame speaker weights (n_speakers, n_frames), each column summing to 1.

    Follows upstream: every segment ramps linearly over its frames; a frame no
    speaker has weight in is split equally.
    """
    n_speakers = len(speakers)
    if len(spk_mix_map) != n_speakers:
        raise UserError(
            f"spkmix: the timeline lists {len(spk_mix_map)} speakers but the model has "
            f"{n_speakers}; list every speaker (unused ones as [[0., 1., 0., 0.]])"
        )
    weights = torch.zeros(n_speakers, n_frames, dtype=torch.float32)
    for key, segments in spk_mix_map.items():
        row = _row_for(key, speakers)
        if not 0 <= row < n_speakers:
            raise UserError(f"spkmix: speaker id {row} is outside 0..{n_speakers - 1}")
        last_end = None
        for segment in segments:
            start_time, end_time, first, last = (float(v) for v in segment)
            if first < 0 or last < 0:
                raise UserError(f"spkmix: speaker {key}: mix values must not be negative")
            begin, end = int(n_frames * start_time), int(n_frames * end_time)
            if end <= begin:
                raise UserError(f"spkmix: speaker {key}: a segment ends before it begins")
            if last_end is not None and last_end != begin:
                raise UserError(
                    f"spkmix: speaker {key}: each segment must start where the previous one ends"
                )
            last_end = end
            length = end - begin
            weights[row, begin:end] = first + (last - first) * torch.arange(length) / length
    totals = weights.sum(dim=0)
    empty = totals == 0
    weights[:, empty] = 1.0 / n_speakers
    totals[empty] = 1.0
    return (weights / totals).to(device)
