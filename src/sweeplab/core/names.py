"""Names shared by every layer: the per-epoch metrics, the MLflow tags, and launch/sweep names.

Metric and tag names are a contract (docs/architecture.md, "Contracts"): Tune, MLflow and metrics.jsonl
use the same ones.
"""

from __future__ import annotations

import unicodedata

from sweeplab.core.errors import ConfigError

# The per-epoch metrics: everything else Tune reports (pid, timestamp, ...) is clutter.
METRICS = (
    "epoch",
    "lr",
    "train/loss",
    "train/error",
    "val/loss",
    "val/error",
    "train/accuracy",
    "val/accuracy",
    "time/epoch_s",
    "time/images_per_s",
    "time/train_s",
    "time/compile_s",
)

# Metrics where higher is better: a sweep ranking by one maximises it unless its file says `mode: min`.
MAXIMISED = ("train/accuracy", "val/accuracy", "time/images_per_s")


def default_mode(metric: str) -> str:
    """'max' for a metric where higher is better (accuracy, throughput), else 'min' (errors, losses, times)."""
    return "max" if metric in MAXIMISED else "min"


LAUNCH, TRIAL, SWEEP, TABLES = "sweeplab.launch", "sweeplab.trial_id", "sweeplab.sweep", "sweeplab.tables"
PARENT = "mlflow.parentRunId"

MAX_LENGTH = 128  # characters of a launch or sweep name


def check_name(name: object, what: str) -> str:
    """`name` if it is safe as a single folder name under a storage root, else ConfigError naming `what`.

    A launch name is joined onto --storage: a separator or '..' would write outside it, and control
    characters (newlines) would forge lines in `sweeplab status` and in logs.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{what} must be a non-empty name, got {name!r}")
    bad = [c for c in name if unicodedata.category(c)[0] == "C"]
    if bad:
        raise ConfigError(f"{what} {name!r} contains a control character ({bad[0]!r})")
    if "/" in name or "\\" in name:
        raise ConfigError(f"{what} {name!r} must be one folder name, without '/' or '\\'")
    if name.startswith(".") or name != name.strip():
        raise ConfigError(f"{what} {name!r} must not start with '.' or with/end in spaces")
    if len(name) > MAX_LENGTH:
        raise ConfigError(f"{what} is {len(name)} characters long; at most {MAX_LENGTH}")
    return name
