"""The synthetic training set and config the tests build (see bench/synthetic_set.py).

The benchmark makes the same data, so the builder lives beside it; the tests
import it from here.
"""

from bench.synthetic_set import (
    CONTENT_FRAME_RATE,
    REPO_ROOT,
    TEMPLATE,
    make_config,
    make_dataset,
    volume_of,
    write_config,
    write_diffusion_features,
)

__all__ = [
    "CONTENT_FRAME_RATE",
    "REPO_ROOT",
    "TEMPLATE",
    "make_config",
    "make_dataset",
    "volume_of",
    "write_config",
    "write_diffusion_features",
]
