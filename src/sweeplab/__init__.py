"""sweeplab: hyperparameter sweeps of image-classification training.

`import sweeplab` stays light (no torch, Ray or MLflow until a function needs them).
"""

from __future__ import annotations

from typing import Any

from sweeplab.core import env as _env

_env.no_telemetry()  # here, so it holds whichever sweeplab module is imported first


def load_model(run_id: str, tracking_uri: str | None = None) -> Any:
    """The trained `torch.nn.Module` that MLflow run `run_id` logged (`sweeplab train`), in eval mode: it
    takes float images in [0, 1], shape (N, C, H, W), and returns logits. `tracking_uri` defaults to
    $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db, as every command's."""
    from sweeplab.tracking.models import load_model as load

    return load(run_id, tracking_uri)
