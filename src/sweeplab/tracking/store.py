"""The MLflow store: URI resolution, one client per process, experiments and paged searches.

Importing this module sets MLflow's environment first: telemetry is on by default in MLflow 3
and nothing may leave 127.0.0.1, so it is switched off before `mlflow` is ever imported.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sweeplab.core import inputs
from sweeplab.core.errors import ConfigError

# Telemetry is switched off in sweeplab/__init__.py (it runs before this module); these only quiet MLflow.
for _key, _value in {
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # a server's "View run at" lines, amid the progress lines
}.items():
    os.environ.setdefault(_key, _value)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run


_clients: dict[str, MlflowClient] = {}


def resolve_uri(uri: str | None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db; a relative sqlite path made absolute.

    Every one is checked first (`core/inputs.tracking_uri`: a scheme MLflow 3.17 accepts - its file store is
    refused -, host, port, an SQLite path that can be a file, no password), so a bad one is bad input here
    rather than a traceback or minutes of retries from deep inside MLflow."""
    if uri is not None:
        inputs.tracking_uri(uri)
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = inputs.tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI")
    else:
        uri = "sqlite:///mlflow.db"
    db = sqlite_path(uri)
    if db is not None and not db.is_absolute():  # so `resume` from another folder finds the same store
        return f"sqlite:///{Path.cwd().resolve() / db}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def client(uri: str) -> MlflowClient:
    """The process's client for `uri`; created once because the sqlite store's first use costs ~1 s.

    A sqlite store is created, migrated and checked under an exclusive lock on `DB.lock` beside it:
    two drivers migrating one new file at once leave it half-migrated for good. A store left so (by a kill
    mid-migration) is reported as bad input (ConfigError) naming the file and the fix."""
    if uri not in _clients:
        from mlflow import MlflowClient

        db = sqlite_path(uri)
        if db is None:
            _clients[uri] = MlflowClient(tracking_uri=uri)
        else:
            with _locked(db):
                _clients[uri] = _open_sqlite(uri, db)
    return _clients[uri]


def warm_store(uri: str) -> None:
    """Create (and migrate) the store now, e.g. in a thread while Ray starts; errors surface later."""
    try:
        client(uri).search_experiments(max_results=1)
    except Exception:
        pass


# ---- a sqlite store: created and migrated once, under a lock ------------------------------------------

LOCK_WAIT_S = 600  # a migration takes seconds; a holder this slow is stuck, and waiting longer helps no one


@contextmanager
def _locked(db: Path) -> Iterator[None]:
    """An exclusive flock on DB.lock beside the database (NFS locks it too; other processes wait)."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would, so the lock can sit beside it
        fd: int | None = os.open(f"{db}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a read-only folder: no one can create or migrate a store there, so no one races
        fd = None
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{db}.lock: another process has held the MLflow store's lock for "
                        f"{LOCK_WAIT_S} s; is a sweeplab or mlflow process stuck?"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _open_sqlite(uri: str, db: Path) -> MlflowClient:
    """Under the lock: MLflow's client creates, migrates or checks the schema. Two first sweeps on one
    new file would otherwise both migrate it and leave it half-migrated; with the lock only a kill in
    the middle of a migration can, and then MLflow's own `mlflow db upgrade` is the fix, named here."""
    from mlflow import MlflowClient

    try:
        c = MlflowClient(tracking_uri=uri)
        c.search_experiments(max_results=1)
    except Exception as e:
        if not _schema_error(e):
            raise  # not the schema: e.g. a full disk or a locked file, reported as it is
        raise ConfigError(
            f"MLflow store {db} cannot be opened ({type(e).__name__}: {_line(e)}); if a migration was cut "
            f"short, run `mlflow db upgrade {uri}`, or move the file aside (the next sweep makes a new one)"
        ) from None
    return c


def _schema_error(e: BaseException) -> bool:
    """Whether MLflow failed on the database's schema (tables missing, a migration not applied), or in a
    migration it ran on opening the file (a store with tables missing is migrated again, and a store cut
    short in its first migration fails there with whatever alembic met: a KeyError, say)."""
    text = f"{type(e).__name__} {e}".lower()
    if any(w in text for w in ("no such table", "no such column", "alembic", "migrat", "schema", "already exists")):
        return True
    return any(f.f_globals.get("__name__", "").startswith("alembic.") for f, _ in traceback.walk_tb(e.__traceback__))


def _line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else "")[:200]


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


def search(
    c: MlflowClient,
    experiment_ids: list[str],
    filter_string: str = "",
    order_by: list[str] | None = None,
    limit: int | None = None,
) -> list[Run]:
    """Every run matching the filter, following MLflow's page tokens."""
    runs: list[Run] = []
    token = None
    while True:
        page_size = min(1000, limit - len(runs)) if limit else 1000
        page = c.search_runs(
            experiment_ids, filter_string=filter_string, order_by=order_by, max_results=page_size, page_token=token
        )
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
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        # read-only: `git diff` never writes the index (unlike `git status`)
        dirty = (
            subprocess.run(
                ["git", "diff", "--quiet", "HEAD", "--"], cwd=here, capture_output=True, timeout=5
            ).returncode
            == 1
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
