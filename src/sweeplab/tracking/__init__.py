"""MLflow tracking: one parent run per sweep launch, one child run per trial (no Ray, no torch)."""

from sweeplab.tracking.store import METRICS, resolve_uri, warm_store
from sweeplab.tracking.tracker import Tracker

__all__ = ["METRICS", "Tracker", "resolve_uri", "warm_store"]
