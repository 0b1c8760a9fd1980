"""What TensorBoard shows: scalars, spectrogram and curve images, audio.

Figures are drawn with matplotlib's object API on the Agg canvas, so no global
pyplot state or display is involved.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _figure_to_array(figure: Any) -> np.ndarray:
    """Render a matplotlib figure to an (H, W, 3) uint8 array (Agg, current API)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.array(rgba[..., :3])


def plot_spectrogram_to_numpy(spectrogram: np.ndarray) -> np.ndarray:
    """A mel spectrogram as an image for TensorBoard (HWC, uint8)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 2))
    axes = figure.add_subplot()
    image = axes.imshow(spectrogram, aspect="auto", origin="lower", interpolation="none")
    figure.colorbar(image, ax=axes)
    axes.set_xlabel("Frames")
    axes.set_ylabel("Channels")
    figure.tight_layout()
    return _figure_to_array(figure)


def plot_data_to_numpy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two curves (e.g. predicted and real log-f0) as an image for TensorBoard."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(14, 10))
    axes = figure.add_subplot()
    axes.plot(x)
    axes.plot(y)
    figure.tight_layout()
    return _figure_to_array(figure)


def summarize(
    writer: Any,
    global_step: int,
    scalars: Mapping[str, float] | None = None,
    images: Mapping[str, np.ndarray] | None = None,
    audios: Mapping[str, Any] | None = None,
    audio_sampling_rate: int = 22050,
) -> None:
    """Write one step's scalars, images (HWC) and audio to a TensorBoard writer."""
    for tag, value in (scalars or {}).items():
        writer.add_scalar(tag, value, global_step)
    for tag, value in (images or {}).items():
        writer.add_image(tag, value, global_step, dataformats="HWC")
    for tag, value in (audios or {}).items():
        writer.add_audio(tag, value, global_step, audio_sampling_rate)


def open_writers(model_dir: str | Path, is_main: bool) -> tuple[Any, Any]:
    """TensorBoard writers for training (`model_dir`) and evaluation (`model_dir/eval`).

    Upstream's two folders, so `tensorboard --logdir logs` shows both runs;
    (None, None) on every process but the main one, which alone logs.
    """
    if not is_main:
        return None, None
    from torch.utils.tensorboard import SummaryWriter

    return (
        SummaryWriter(log_dir=str(model_dir)),
        SummaryWriter(log_dir=str(Path(model_dir) / "eval")),
    )


def read_to_host(
    scalars: Mapping[str, torch.Tensor], arrays: Mapping[str, torch.Tensor]
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Scalar and array tensors on the host, read in one transfer (one GPU sync, not many)."""
    parts = [torch.stack([value.float() for value in scalars.values()])]
    parts += [array.float().flatten() for array in arrays.values()]
    host = torch.cat(parts).cpu().numpy()
    values = dict(zip(scalars, host[: len(scalars)].tolist()))
    offset, read = len(scalars), {}
    for name, array in arrays.items():
        read[name] = host[offset : offset + array.numel()].reshape(tuple(array.shape))
        offset += array.numel()
    return values, read
