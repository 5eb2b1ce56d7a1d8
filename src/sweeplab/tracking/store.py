"""The MLflow store: URI resolution, one client per process, experiments and paged searches.

Importing this module sets MLflow's environment first: telemetry is on by default in MLflow 3
and nothing may leave 127.0.0.1, so it is switched off before `mlflow` is ever imported.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from sweeplab.config import ConfigError

# Telemetry is switched off in sweeplab/__init__.py (it runs before this module); these only quiet MLflow.
for _key, _value in {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                     "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
    os.environ.setdefault(_key, _value)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

# The design's per-epoch metrics: everything else Tune reports (pid, timestamp, ...) is clutter.
METRICS = ("epoch", "lr", "train/loss", "train/error", "val/loss", "val/error",
           "time/epoch_s", "time/images_per_s", "time/train_s", "time/compile_s")

LAUNCH, TRIAL, SWEEP, TABLES = "sweeplab.launch", "sweeplab.trial_id", "sweeplab.sweep", "sweeplab.tables"
PARENT = "mlflow.parentRunId"

_clients: dict[str, MlflowClient] = {}


# Stores MLflow 3.17 accepts (its file store is refused); anything else is bad input, caught
# before Ray starts rather than as a traceback from deep inside MLflow.
_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def resolve_uri(uri: str | None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; a relative sqlite path made absolute."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if scheme not in _SCHEMES:
        raise ConfigError(f"tracking URI {uri!r} is not one MLflow can use here: give sqlite:///PATH/mlflow.db, "
                          f"http(s)://HOST:PORT or a database URI ({', '.join(_SCHEMES)})")
    db = sqlite_path(uri)
    if db is not None and not db.is_absolute():  # so `resume` from another folder finds the same store
        return f"sqlite:///{Path.cwd().resolve() / db}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def client(uri: str) -> MlflowClient:
    """The process's client for `uri`; created once because the sqlite store's first use costs ~1 s."""
    if uri not in _clients:
        from mlflow import MlflowClient

        _clients[uri] = MlflowClient(tracking_uri=uri)
    return _clients[uri]


def warm_store(uri: str) -> None:
    """Create (and migrate) the store now, e.g. in a thread while Ray starts; errors surface later."""
    try:
        client(uri).search_experiments(max_results=1)
    except Exception:  # noqa: BLE001 - the Tracker reports store problems with context
        pass


def artifact_location(uri: str, experiment: str) -> str | None:
    """An absolute artifact folder next to a sqlite database (a server chooses its own)."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / "mlartifacts" / experiment).as_uri()


def ensure_experiment(c: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment `name`, created when missing (restored when deleted)."""
    from mlflow.exceptions import MlflowException

    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(name, artifact_location=artifact_location(uri, name))
        except MlflowException:  # another driver created it in between
            exp = c.get_experiment_by_name(name)
            assert exp is not None
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def search(c: MlflowClient, experiment_ids: list[str], filter_string: str = "",
           order_by: list[str] | None = None, limit: int | None = None) -> list[Run]:
    """Every run matching the filter, following MLflow's page tokens."""
    runs: list[Run] = []
    token = None
    while True:
        page_size = min(1000, limit - len(runs)) if limit else 1000
        page = c.search_runs(experiment_ids, filter_string=filter_string, order_by=order_by,
                             max_results=page_size, page_token=token)
        runs.extend(page)
        token = page.token
        if not token or (limit and len(runs) >= limit):
            return runs


def quote(value: str) -> str:
    """A string literal for an MLflow filter."""
    return "'" + value.replace("'", "\\'") + "'"


def git_commit() -> str:
    """The commit of the sweeplab checkout that runs (with '-dirty' for local edits), else 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        # read-only: `git diff` never writes the index (unlike `git status`)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=here,
                               capture_output=True, timeout=5).returncode == 1
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
