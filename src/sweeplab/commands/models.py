"""`sweeplab models`: the model registry, as a list."""

from __future__ import annotations

from sweeplab import models


def list_models(counts: bool) -> int:
    """Print each registered model with its options and its parameter count at the defaults."""
    for name in models.names():
        opts = ", ".join(f"{k}={v!r}" for k, v in models.options(name).items())
        size = f"{models.num_parameters(models.build(name)) / 1e6:8.2f}M" if counts else ""
        print(f"{name:18s} {size}  {opts}")
    return 0
