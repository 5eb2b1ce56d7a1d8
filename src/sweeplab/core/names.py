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


# MLflow tags. Their values are a contract with users' queries (`tags.`sweeplab.outcome` = 'finished'`):
# never rename one. Every `sweeplab.*` tag is named here and only here (tests/test_layers.py checks).
LAUNCH = "sweeplab.launch"  # parent and child runs: the launch's name (the parent run is named by it too)
TRIAL = "sweeplab.trial_id"  # a child run: its trial's key in the launch; runs without it are no sweep trials
SWEEP = "sweeplab.sweep"  # parent and child runs: the sweep's name (also the experiment's)
TABLES = "sweeplab.tables"  # parent and child runs: the table ids the sweep fills, comma-separated
PARENT = "mlflow.parentRunId"  # MLflow's own: a child run's parent run id
SWEEP_FILE = "sweeplab.sweep_file"  # the parent run: the sweep file's path as launched
COMMAND = "sweeplab.command"  # the parent run: the command line that started the launch
GIT_COMMIT = "sweeplab.git_commit"  # the parent run: sweeplab's git commit ('-dirty' with local edits), else 'unknown'
SMOKE = "sweeplab.smoke"  # parent and child runs: "true" for a `sweeplab run --smoke` launch, else "false"
BEST_LABEL = "sweeplab.best_label"  # the parent run, at the end: the label of the launch's best trial
LABEL = "sweeplab.label"  # a child run: its trial's label ("lr=0.1 weight_decay=0.0005"), also its run name
SEED = "sweeplab.seed"  # a child run: its trial's seed (`train.seed`)
VARIANT = "sweeplab.variant"  # a child run: its variant's label ("" without variants); a tag, not a param
HARDWARE = "sweeplab.hardware"  # a child run: the device it trained on ("NVIDIA H100 80GB HBM3", "2 x cpu x4 threads")
OUTCOME = "sweeplab.outcome"  # a child run: finished, stopped early at epoch E, failed or unfinished
STOPPED_EARLY = "sweeplab.stopped_early"  # a child run that ended: "true" when a scheduler stopped it
CHECKPOINT_PATH = "sweeplab.checkpoint_path"  # a child run: where its final Tune checkpoint is, logged or not
ERROR = "sweeplab.error"  # a failed child run: its error, at most 500 characters
ERROR_LOG = "sweeplab.error_log"  # a failed child run: the file holding the error's whole traceback
PBT_ORIGIN = "sweeplab.pbt.origin"  # a PBT child run: whose checkpoint it last continued from, at which epoch (JSON)
PBT_LABEL = "sweeplab.pbt.label"  # a PBT child run: the label of the point it explored to then
OPTUNA_TRIAL = "sweeplab.optuna_trial"  # an Optuna sweep's child run: its study trial's number
RUN_FOLDER = "sweeplab.run_folder"  # a `sweeplab train` run: its run folder's absolute path
RESUMED_WITH = "sweeplab.resumed_with"  # a `sweeplab train` run: the keys a --resume changed ("train.epochs=30")
ROW_PREFIX = "sweeplab.row."  # + a table id: see `row_tag`


def row_tag(table: str) -> str:
    """The child-run tag `sweeplab.row.<table>`: the index (from 0) of the published row the trial fills."""
    return f"{ROW_PREFIX}{table}"


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
