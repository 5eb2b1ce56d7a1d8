"""sweeplab: hyperparameter sweeps of image-classification training."""

import os as _os

# Nothing sweeplab starts may talk to anything but 127.0.0.1: MLflow 3 sends telemetry unless told
# not to, and Ray phones home usage stats. Set here, so it holds whichever module is imported first.
for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_AGENT_HINT": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    _os.environ.setdefault(_key, _value)
