"""The MLflow store: URI resolution, one client per process, experiments and paged searches.

Importing this module sets MLflow's environment first: telemetry is on by default in MLflow 3
and nothing may leave 127.0.0.1, so it is switched off before `mlflow` is ever imported.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
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
    two drivers migrating one new file at once leave it half-migrated for good. A store left so is
    repaired here, or reported as bad input (ConfigError) naming the file and the fix."""
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


# ---- a sqlite store: created once under a lock, half-migrated ones repaired ---------------------------

LOCK_WAIT_S = 600  # a migration takes seconds; a holder this slow is stuck, and waiting longer helps no one
_TMP = "_alembic_tmp_"  # alembic's copy of a table during a SQLite migration; left over when one broke
_BOOKKEEPING = {"alembic_version", "experiments", "experiment_tags", "workspaces"}  # rows a new store has


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
    """Under the lock: drop what an interrupted migration left, let MLflow create or check the schema
    (its client does, when made), and repair a store MLflow cannot open because a migration broke."""
    from mlflow import MlflowClient

    def opened() -> MlflowClient:
        c = MlflowClient(tracking_uri=uri)
        c.search_experiments(max_results=1)
        return c

    dropped = _drop_leftovers(db, _tables(db))
    why = "leftover " + ", ".join(dropped) if dropped else ""
    note = ""
    try:
        if any(t.startswith(_TMP) for t in _tables(db)):  # a copy whose table is gone: keep MLflow off it
            raise RuntimeError("half-migrated")
        c = opened()  # MLflow creates, migrates or verifies the schema here
    except Exception:
        tables = _tables(db)
        problem = _broken(tables) or _behind(db)
        if not problem:
            raise  # not the schema: e.g. a full disk or a locked file, reported as it is
        why = ", ".join(w for w in (why, problem) if w)
        try:
            with warnings.catch_warnings():  # alembic's notes on old constraints, not the user's business
                warnings.simplefilter("ignore")
                note = _repair(db, tables)
                c = opened()
        except Exception as e:
            raise ConfigError(
                f"MLflow store {db} is half-migrated ({why}) and could not be repaired "
                f"({type(e).__name__}: {_line(e)}); move it aside (the next sweep makes a new "
                f"one) or restore it from a copy"
            ) from None
    if why:
        print(f"sweeplab: repaired the half-migrated MLflow store {db} ({why}){note}", file=sys.stderr, flush=True)
    return c


def _tables(db: Path) -> set[str]:
    """The tables of the database (none for a file not created yet)."""
    if not db.is_file() or db.stat().st_size == 0:
        return set()
    with _sqlite(db) as con:
        return {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@contextmanager
def _sqlite(db: Path) -> Iterator[sqlite3.Connection]:
    con = sqlite3.connect(db, timeout=30, isolation_level=None)  # autocommit: DDL as it runs
    try:
        yield con
    finally:
        con.close()


def _broken(tables: set[str]) -> str:
    """Why a store is half-migrated, as far as its table names tell ('' when they do not)."""
    if not tables:
        return ""
    leftovers = sorted(t for t in tables if t.startswith(_TMP))
    if leftovers:
        return "leftover " + ", ".join(leftovers)
    from mlflow.store.db.base_sql_model import Base

    missing = set(Base.metadata.tables) - tables
    return f"{len(missing)} of MLflow's tables missing" if missing else ""


def _behind(db: Path) -> str:
    """'schema version X, not MLflow's Y' when alembic_version is not the head ('' when it is)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    with _sqlite(db) as con:
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.Error:
            row = None
    version, head = row[0] if row else None, _get_latest_schema_revision()
    return "" if version == head else f"schema version {version}, not MLflow's {head}"


def _drop_leftovers(db: Path, tables: set[str]) -> list[str]:
    """Drop alembic's temporary copies whose table still exists (its data is in the table itself)."""
    leftovers = sorted(t for t in tables if t.startswith(_TMP) and t[len(_TMP) :] in tables)
    if leftovers:
        with _sqlite(db) as con:
            for t in leftovers:
                con.execute(f'DROP TABLE IF EXISTS "{t}"')
    return leftovers


def _repair(db: Path, tables: set[str]) -> str:
    """Make the schema whole: a store without runs (a new one whose creation was cut short) is rebuilt
    from nothing by MLflow; one with data is migrated to MLflow's head, and put back as it was if that
    fails. Returns a note for the user."""
    from mlflow.store.db.utils import _upgrade_db, create_sqlalchemy_engine_with_retry

    with _sqlite(db) as con:
        if not any(
            con.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone()
            for t in tables - _BOOKKEEPING
            if not t.startswith(_TMP)
        ):
            for kind, name in con.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'"
            ).fetchall():
                con.execute(f'DROP {kind.upper()} IF EXISTS "{name}"')
            return ""
        backup = Path(f"{db}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        with closing(sqlite3.connect(backup)) as dst:
            con.backup(dst)
    engine = create_sqlalchemy_engine_with_retry(f"sqlite:///{db}")
    try:
        _upgrade_db(engine)
    except Exception:
        engine.dispose()
        with closing(sqlite3.connect(backup)) as src, _sqlite(db) as con:
            src.backup(con)  # the store as it was: a failed repair changes nothing
        backup.unlink()
        raise
    engine.dispose()
    return f"; its state before the repair is in {backup}"


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
