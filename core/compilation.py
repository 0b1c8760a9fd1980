"""`train.compile`: which parts of a training step run compiled, and the eager fallback.

Only work whose shapes are fixed by `train.segment_size` is compiled: the
decoder on the sliced latent, the multi-period discriminator (its D pass and
the two scoring calls of the G pass) and the GAN losses. The mel of the
generated audio is an STFT and a matmul, about ten kernels, and stays eager.
The text/posterior encoders and the flow see every clip's own length and stay
eager, so no batch triggers a recompile.

Modules are compiled in place (`nn.Module.compile`): their parameters and
state-dict keys stay exactly as they were, so checkpoints do not change.
Random ops (the NSF source's noise) keep PyTorch's eager random streams
(`fallback_random`), so a compiled run draws the same numbers as an eager one
and resumes exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch

logger = logging.getLogger("so-vits-svc")

COMPILE_OPTIONS = {"fallback_random": True}
BACKEND = "inductor"

F = TypeVar("F", bound=Callable[..., Any])


def wants_compile(setting: bool | None, device_type: str) -> bool:
    """The config's `train.compile`: null means on for CUDA, off on the CPU."""
    if setting is None:
        return device_type == "cuda"
    return bool(setting)


def compiler_problem(device: torch.device) -> str | None:
    """Why compiling cannot work on `device` (no C compiler, no Triton...), or None.

    Compilation is lazy and would otherwise fail deep inside the first step; a
    two-op probe finds a missing toolchain up front.
    """
    if not hasattr(torch, "compile"):
        return "this PyTorch has no torch.compile"
    try:
        probe = compile_function(_probe)
        value = probe(torch.ones(4, device=device))
        expected = _probe(torch.ones(4, device=device))
    except Exception as error:  # any toolchain failure means: stay eager
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{type(error).__name__}: {first_line}"[:300]
    if not torch.allclose(value, expected):
        return "the compiled probe computed a wrong value"
    return None


def _probe(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x * 2.0 - 1.0).sum(0, keepdim=True)


def compile_in_place(module: torch.nn.Module, backend: str | None = None) -> None:
    """Compile `module`'s forward without renaming a parameter or a state-dict key.

    Static shapes first; a second shape (a short last batch, an evaluation
    clip) compiles once with dynamic shapes instead of once per shape.
    """
    backend = backend or BACKEND
    module.compile(backend=backend, options=_options(backend))


def compile_function(function: F, backend: str | None = None) -> F:
    """A compiled `function`: static shapes first; a second shape compiles once, dynamically."""
    backend = backend or BACKEND
    return torch.compile(function, backend=backend, options=_options(backend))  # type: ignore[return-value]


def _options(backend: str) -> dict[str, Any] | None:
    # Inductor options; other backends (tests use aot_eager) take none.
    return COMPILE_OPTIONS if backend == "inductor" else None


def compile_enabled(setting: bool | None, device: torch.device) -> bool:
    """Whether this run compiles: the config's choice, unless the toolchain is missing."""
    if not wants_compile(setting, device.type):
        return False
    problem = compiler_problem(device)
    if problem is not None:
        logger.warning("train.compile: cannot compile here (%s); training runs eagerly", problem)
        return False
    return True
