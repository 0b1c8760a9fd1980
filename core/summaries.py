"""What TensorBoard shows: scalars, spectrogram and curve images, audio.

Figures are drawn with matplotlib's object API on the Agg canvas, so no global
pyplot state or display is involved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


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
