"""Speech (content) encoders read from their published checkpoints, without fairseq."""

from modules.speech_encoders.encoders import (
    CONTENTVEC_PATH,
    HUBERT_SOFT_PATH,
    SUPPORTED_ENCODERS,
    ContentVecEncoder,
    HubertSoftEncoder,
    SpeechEncoder,
    load_speech_encoder,
)
from modules.speech_encoders.hubert import FairseqHubert, HubertConfig, load_fairseq_hubert
from modules.speech_encoders.hubert_soft import HubertSoftNetwork, load_hubert_soft

__all__ = [
    "CONTENTVEC_PATH",
    "HUBERT_SOFT_PATH",
    "SUPPORTED_ENCODERS",
    "ContentVecEncoder",
    "FairseqHubert",
    "HubertConfig",
    "HubertSoftEncoder",
    "HubertSoftNetwork",
    "SpeechEncoder",
    "load_fairseq_hubert",
    "load_hubert_soft",
    "load_speech_encoder",
]
