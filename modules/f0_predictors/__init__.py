"""Pitch (F0) predictors: ``get_f0_predictor(name, ...)`` builds one by name.

Available: ``dio`` and ``harvest`` (WORLD, via pyworld), ``pm`` (Praat, via
parselmouth) and ``rmvpe`` (neural; needs ``pretrain/rmvpe.pt``). Each returns
pitch on the ``hop_length`` / ``sampling_rate`` frame grid with unvoiced frames
filled in, plus a voicing mask.
"""

from __future__ import annotations

from core.errors import UserError
from modules.f0_predictors.base import F0Predictor, interpolate_f0, resize_f0

AVAILABLE_F0_PREDICTORS = ("dio", "harvest", "pm", "rmvpe")

__all__ = [
    "AVAILABLE_F0_PREDICTORS",
    "F0Predictor",
    "get_f0_predictor",
    "interpolate_f0",
    "resize_f0",
]


def get_f0_predictor(
    name: str,
    hop_length: int = 512,
    sampling_rate: int = 44100,
    f0_min: float = 50,
    f0_max: float = 1100,
    device: str | None = None,
    threshold: float = 0.05,
    weights_path: str | None = None,
) -> F0Predictor:
    """Build the pitch predictor called ``name``.

    ``device``, ``threshold`` and ``weights_path`` only matter for ``rmvpe``
    (default weights ``pretrain/rmvpe.pt``); the model is loaded here, once.
    """
    common = {
        "hop_length": hop_length,
        "sampling_rate": sampling_rate,
        "f0_min": f0_min,
        "f0_max": f0_max,
    }
    if name == "dio":
        from modules.f0_predictors.world import DioF0Predictor

        return DioF0Predictor(**common)
    if name == "harvest":
        from modules.f0_predictors.world import HarvestF0Predictor

        return HarvestF0Predictor(**common)
    if name == "pm":
        from modules.f0_predictors.pm import PMF0Predictor

        return PMF0Predictor(**common)
    if name == "rmvpe":
        from modules.f0_predictors.rmvpe import RMVPEF0Predictor

        return RMVPEF0Predictor(
            **common, device=device, threshold=threshold, weights_path=weights_path
        )
    available = ", ".join(AVAILABLE_F0_PREDICTORS)
    if name in ("crepe", "fcpe"):
        raise UserError(
            f"f0 predictor '{name}' is not supported by this reimplementation; "
            f"choose one of: {available}"
        )
    raise UserError(f"unknown f0 predictor '{name}'; choose one of: {available}")
