"""MLflow tracking: one parent run per sweep launch, one child run per trial (no Ray, no torch)."""

from sweeplab.tracking.store import resolve_uri, warm_store
from sweeplab.tracking.tracker import Tracker

__all__ = ["Tracker", "resolve_uri", "warm_store"]
