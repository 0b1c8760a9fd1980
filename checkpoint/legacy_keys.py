"""Translate between our parametrised state-dict keys and upstream's on-disk keys.

Our modules use `torch.nn.utils.parametrizations` (weight_norm, spectral_norm),
whose keys differ from the old hook-based API upstream checkpoints were saved
with:

=========================================  ===================
ours                                       upstream (legacy)
=========================================  ===================
X.parametrizations.weight.original0        X.weight_g
X.parametrizations.weight.original1        X.weight_v
X.parametrizations.weight.original         X.weight_orig
X.parametrizations.weight.0._u             X.weight_u
X.parametrizations.weight.0._v             X.weight_v
=========================================  ===================

Both functions are pure: they return new dicts and share the tensors. Callers
strip any "module." (DataParallel/DDP) prefix first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

_PARAM = ".parametrizations.weight."
_TO_LEGACY = {
    "original0": "weight_g",
    "original1": "weight_v",
    "original": "weight_orig",
    "0._u": "weight_u",
    "0._v": "weight_v",
}

V = TypeVar("V")


def to_legacy_state_dict(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Our key names -> upstream's key names (other keys unchanged, order kept)."""
    legacy: dict[str, V] = {}
    for key, value in state_dict.items():
        prefix, sep, suffix = key.partition(_PARAM)
        if sep and suffix in _TO_LEGACY:
            key = f"{prefix}.{_TO_LEGACY[suffix]}"
        legacy[key] = value
    return legacy


def from_legacy_state_dict(
    state_dict: Mapping[str, V], model_state_keys: Iterable[str]
) -> dict[str, V]:
    """Upstream key names -> ours, using the model's own keys to decide each mapping.

    `weight_v` means the weight-norm direction or the spectral-norm power
    iteration vector depending on the module, so each legacy key is mapped to
    whichever candidate the model actually has. Keys without a candidate
    (already-modern keys, plain weights, unknown extras) pass through
    unchanged, so a strict load_state_dict still reports real mismatches.
    """
    model_keys = set(model_state_keys)
    candidates: dict[str, list[str]] = {}
    for modern_suffix, legacy_suffix in _TO_LEGACY.items():
        candidates.setdefault(legacy_suffix, []).append(_PARAM + modern_suffix)
    converted: dict[str, V] = {}
    for key, value in state_dict.items():
        new_key = key
        if key not in model_keys:
            prefix, dot, leaf = key.rpartition(".")
            for modern in candidates.get(leaf, []) if dot else []:
                if prefix + modern in model_keys:
                    new_key = prefix + modern
                    break
        converted[new_key] = value
    return converted
