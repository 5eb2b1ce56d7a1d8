"""The environment switches that keep everything sweeplab starts talking only to 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# MLflow 3 sends telemetry unless told not to, and Ray phones home usage stats. Both read these once,
# when first imported, so `sweeplab/__init__.py` sets them before any module can import either.
NO_TELEMETRY = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_AGENT_HINT": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def no_telemetry(env: MutableMapping[str, str] = os.environ) -> MutableMapping[str, str]:
    """Switch telemetry off in `env` (the process's own by default) unless the user set a value; returns `env`."""
    for key, value in NO_TELEMETRY.items():
        env.setdefault(key, value)
    return env
