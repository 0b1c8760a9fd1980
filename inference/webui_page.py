"""The web UI's page: gradio widgets wired to inference/webui_app.py.

Every handler returns its outcome in a status box on the page: a user's
mistake (no model, a file that is not audio, a config that does not fit the
weights, an unknown speaker) reads as one `error: ...` line and the server
goes on serving.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from checkpoint.names import GENERATOR_FILES
from core.components import F0_PREDICTORS
from inference.diffusion_stage import DEFAULT_DIFFUSION_CONFIG, DEFAULT_DIFFUSION_MODEL
from inference.webui_app import (
    ConvertSettings,
    DiffusionChoice,
    ModelCache,
    convert_file,
    error_message,
    model_folders,
    resolve_choice,
    speakers,
)

TITLE = "so-vits-svc 4.1: singing voice conversion"


class _Actions:
    """What the page's buttons do: load a model, convert an input (errors become a status)."""

    def __init__(self, cache: ModelCache, logs_dir: str | os.PathLike, results: Path) -> None:
        self.cache = cache
        self.logs_dir = logs_dir
        self.results = results

    def folder_choices(self) -> list[tuple[str, str]]:
        # Shown as logs/<name>, sent as the full path.
        return [
            (f"{Path(f).parent.name}/{Path(f).name}", f) for f in model_folders(self.logs_dir)
        ]

    def load(self, folder: str | None, model_file: str | None, config_file: str | None,
             cluster_file: str | None, retrieval: bool, shallow: bool, only: bool,
             diffusion_model: str, diffusion_config: str, enhance: bool) -> tuple[str, Any]:
        try:
            diffusion = _diffusion(shallow, only, diffusion_model, diffusion_config, enhance)
            choice = resolve_choice(
                folder, model_file, config_file, cluster_file, retrieval, diffusion
            )
            svc = self.cache.get(choice)
        except Exception as error:  # shown in the page; the server keeps serving
            return error_message(error), gr.update()
        names = speakers(svc)
        status = (
            f"loaded {Path(choice.model_path).name} ({svc.target_sample} Hz); "
            f"speakers: {', '.join(names)}"
        )
        return status, gr.update(choices=names, value=names[0])

    def convert(self, folder: str | None, model_file: str | None, config_file: str | None,
                cluster_file: str | None, retrieval: bool, shallow: bool, only: bool,
                diffusion_model: str, diffusion_config: str, enhance: bool,
                cluster_ratio: float, speaker: str | None, transpose: float, auto_f0: bool,
                f0_predictor: str, noise_scale: float, slice_db: float, pad_seconds: float,
                k_step: float, second_encoding: bool, enhancer_key: float,
                audio_file: str | None, recording: str | None,
                progress: Any = gr.Progress()) -> tuple[Any, Any, str]:  # noqa: B008
        # (gradio finds the progress bar by this default value)
        try:
            diffusion = _diffusion(shallow, only, diffusion_model, diffusion_config, enhance)
            svc = self.cache.get(
                resolve_choice(folder, model_file, config_file, cluster_file, retrieval, diffusion)
            )
            settings = ConvertSettings(
                speaker=str(speaker) if speaker else speakers(svc)[0],
                transpose=float(transpose),
                auto_predict_f0=bool(auto_f0),
                f0_predictor=f0_predictor,
                noise_scale=float(noise_scale),
                slice_db=float(slice_db),
                pad_seconds=float(pad_seconds),
                cluster_ratio=float(cluster_ratio),
                k_step=int(k_step),
                second_encoding=bool(second_encoding),
                enhancer_adaptive_key=float(enhancer_key),
            )
            progress(0, desc="converting")
            out_path, rate, length = convert_file(
                svc, audio_file or recording, settings, self.results,
                progress=lambda share: progress(share, desc="converting"),
            )
        except Exception as error:  # shown in the page; the server keeps serving
            return None, None, error_message(error)
        status = (
            f"converted to {settings.speaker}: {out_path.name}, {length} samples at {rate} Hz "
            f"({length / rate:.2f} s)"
        )
        return str(out_path), str(out_path), status


def _diffusion(
    shallow: bool, only: bool, model: str, config: str, enhance: bool
) -> DiffusionChoice:
    """The page's diffusion controls as a choice (an empty config box: the one beside the model)."""
    return DiffusionChoice(
        bool(shallow), bool(only), model or DEFAULT_DIFFUSION_MODEL, config or None, bool(enhance)
    )


def _diffusion_controls(controls: dict[str, Any]) -> None:
    """Shallow diffusion, diffusion only and the enhancer (inference_main.py's -shd/-od/-eh)."""
    with gr.Accordion("Shallow diffusion and enhancer (optional)", open=False):
        controls["shallow"] = gr.Checkbox(label="Shallow diffusion (refine the output)")
        controls["only"] = gr.Checkbox(label="Diffusion only (no synthesizer)")
        controls["diffusion_model"] = gr.Textbox(value=DEFAULT_DIFFUSION_MODEL,
                                                 label="Diffusion model")
        controls["diffusion_config"] = gr.Textbox(
            value=DEFAULT_DIFFUSION_CONFIG, label="Diffusion config (empty: beside the model)"
        )
        controls["enhance"] = gr.Checkbox(label="NSF-HiFiGAN enhancer (off with shallow diffusion)")


def _model_controls(folders: list[tuple[str, str]]) -> dict[str, Any]:
    """The model column: a folder or uploaded files, an optional cluster model, Load."""
    gr.Markdown("### Model")
    controls: dict[str, Any] = {}
    controls["folder"] = gr.Dropdown(
        choices=folders, value=folders[0][1] if folders else None,
        label=f"Model folder (newest {GENERATOR_FILES} and its config.json)",
        allow_custom_value=True, elem_id="model_folder",
    )
    controls["refresh"] = gr.Button("Refresh folders", size="sm")
    with gr.Accordion("...or upload a model file", open=False):
        controls["model_file"] = gr.File(label=GENERATOR_FILES, file_types=[".pth"],
                                         elem_id="model_file")
        controls["config_file"] = gr.File(
            label="config.json (only for files without one, e.g. upstream's)",
            file_types=[".json"], elem_id="config_file",
        )
    with gr.Accordion("Cluster model or feature index (optional)", open=False):
        controls["cluster_file"] = gr.File(label="kmeans_10000.pt or feature_and_index.pkl",
                                           elem_id="cluster_file")
        controls["retrieval"] = gr.Checkbox(label="The file is a feature index (retrieval)")
        controls["cluster_ratio"] = gr.Slider(0, 1, value=0, step=0.05,
                                              label="Cluster / index ratio (0: off)")
    _diffusion_controls(controls)
    controls["load"] = gr.Button("Load model", elem_id="load_model")
    controls["model_status"] = gr.Textbox(label="Model status", interactive=False,
                                          elem_id="model_status")
    return controls


def _conversion_controls() -> list[Any]:
    """The conversion column, in the order `_Actions.convert` takes its settings."""
    gr.Markdown("### Conversion")
    return [
        gr.Dropdown(choices=[], label="Speaker", allow_custom_value=True, elem_id="speaker"),
        gr.Slider(-24, 24, value=0, step=1, label="Transpose (semitones)"),
        gr.Checkbox(label="Auto-predict f0 (speech only: songs go off key)"),
        gr.Dropdown(choices=list(F0_PREDICTORS), value="pm", label="F0 predictor"),
        gr.Slider(0, 1, value=0.4, step=0.01, label="Noise scale"),
        gr.Slider(-100, 0, value=-40, step=1, label="Slicing threshold (dB)"),
        gr.Slider(0, 2, value=0.5, step=0.05, label="Pad seconds"),
        gr.Slider(1, 1000, value=100, step=1, label="Shallow diffusion steps (k_step)"),
        gr.Checkbox(label="Second encoding (shallow diffusion)"),
        gr.Slider(-12, 12, value=0, step=1, label="Enhancer adaptive key (semitones)"),
    ]


def _audio_controls() -> tuple[list[Any], Any, list[Any]]:
    """The input (file or recording), the Convert button and the outputs."""
    with gr.Column():
        # A plain file upload, so a file that is not audio reaches the server and
        # gets a message (gr.Audio's own upload silently drops such files).
        inputs = [
            gr.File(label="Input audio file (wav, flac, ogg, mp3)", elem_id="input_file"),
            gr.Audio(sources=["microphone"], type="filepath", label="...or record",
                     elem_id="input_recording"),
        ]
        convert_button = gr.Button("Convert", variant="primary", elem_id="convert")
    with gr.Column():
        outputs = [
            gr.Audio(type="filepath", label="Converted", interactive=False,
                     buttons=["download"], elem_id="result_audio"),
            gr.File(label="Download", interactive=False, elem_id="result_file"),
            gr.Textbox(label="Status", interactive=False, elem_id="status"),
        ]
    return inputs, convert_button, outputs


def build_page(cache: ModelCache, logs_dir: str | os.PathLike, out_dir: str | None = None) -> Any:
    """The gr.Blocks page; `out_dir` receives the converted files (default: a temp folder)."""
    results = Path(out_dir or tempfile.mkdtemp(prefix="so-vits-svc-webui-"))
    actions = _Actions(cache, logs_dir, results)
    with gr.Blocks(title=TITLE) as page:
        gr.Markdown(f"## {TITLE}")
        with gr.Row():
            with gr.Column():
                model = _model_controls(actions.folder_choices())
            with gr.Column():
                conversion = _conversion_controls()
        with gr.Row():
            audio_inputs, convert_button, outputs = _audio_controls()

        model["refresh"].click(
            lambda: gr.update(choices=actions.folder_choices()), outputs=model["folder"]
        )
        model_inputs = [model[name] for name in
                        ("folder", "model_file", "config_file", "cluster_file", "retrieval",
                         "shallow", "only", "diffusion_model", "diffusion_config", "enhance")]
        model["load"].click(
            actions.load, inputs=model_inputs, outputs=[model["model_status"], conversion[0]]
        )
        convert_button.click(
            actions.convert,
            inputs=[*model_inputs, model["cluster_ratio"], *conversion, *audio_inputs],
            outputs=outputs,
        )
    return page
