"""Fault injection for the MLflow store: first use by several processes at once, a half-migrated
file, a store that fails for a while, a full disk (a real tmpfs) and reconcile from Tune's results."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import sweeplab.tracking  # noqa: F401 - first: it turns MLflow telemetry off before mlflow loads
from mlflow_store import fresh_uri
from sweeplab.commands.progress import Driver
from sweeplab.runner.outcome import Outcome
from sweeplab.schema import flatten
from sweeplab.search_spaces import load
from sweeplab.tracking import Tracker
from sweeplab.tracking.store import client, sqlite_path

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")

ROOT = Path(__file__).resolve().parents[1]
SWEEP = load(ROOT / "sweeps" / "quickstart.yaml", smoke=True)

# Each racer imports MLflow once, then for every round waits for all the others at a file barrier and
# opens the same new store at once: what two first sweeps on one new mlflow.db do.
RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import sweeplab.tracking.store as store
    import mlflow.store.tracking.sqlalchemy_store  # the import before the barrier: the race is the migration
    folder, me, n, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for r in range(rounds):
        (folder / f"ready-{r}-{me}").touch()
        while len(list(folder.glob(f"ready-{r}-*"))) < n:
            time.sleep(0.005)
        try:
            store.client(f"sqlite:///{folder}/r{r}/mlflow.db").search_experiments()
            print(f"{r} ok", flush=True)
        except Exception as e:
            print(f"{r} FAIL {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
""")


def _head() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _schema(db: Path) -> tuple[set[str], str | None]:
    with sqlite3.connect(db) as con:
        tables = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = (
            con.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
        )
    return tables, version[0] if version else None


def _dump(db: Path) -> str:
    with sqlite3.connect(db) as con:
        return hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()


def _sweeplab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sweeplab.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


@pytest.mark.slow
def test_concurrent_first_use_of_a_new_store(tmp_path: Path) -> None:
    """3 processes x 4 rounds open one new sqlite store at once: every open works, every store is whole."""
    n, rounds = 3, 4
    (tmp_path / "racer.py").write_text(RACER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "racer.py"), str(tmp_path), str(i), str(n), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        for i in range(n)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    lines = [ln for out in outs for ln in out.splitlines() if ln[:1].isdigit()]
    assert sorted(lines) == sorted(f"{r} ok" for r in range(rounds) for _ in range(n)), "\n".join(outs)
    head = _head()
    for r in range(rounds):
        tables, version = _schema(tmp_path / f"r{r}" / "mlflow.db")
        assert version == head and not [t for t in tables if t.startswith("_alembic_tmp_")]
        assert client(f"sqlite:///{tmp_path}/r{r}/mlflow.db").search_experiments()  # usable afterwards


def _store_with_a_trial(tmp_path: Path, tmp_path_factory) -> tuple[str, str]:
    """A migrated store holding one finished trial of launch 'qs' (written in another folder, then
    copied, so this process's cached client never sees the copy); returns its URI and trial run id."""
    uri = fresh_uri(tmp_path / "setup", tmp_path_factory)
    t = Tracker(uri, "quickstart", "qs", {})
    t.trial_start("t0", {"optim": {"lr": 0.1}}, {})
    t.trial_result("t0", {"epoch": 1, "val/error": 12.5})
    t.trial_end("t0", failed=False, stopped_early=False)
    t.close()
    (tmp_path / "store").mkdir()
    shutil.copy(tmp_path / "setup" / "mlflow.db", tmp_path / "store" / "mlflow.db")
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", t._children["t0"]


def _downgrade(db: Path, steps: int) -> None:
    """Undo MLflow's last `steps` migrations."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config, create_sqlalchemy_engine_with_retry

    engine = create_sqlalchemy_engine_with_retry(f"sqlite:///{db}")
    config = _get_alembic_config(f"sqlite:///{db}")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, f"-{steps}")
    engine.dispose()


@pytest.mark.slow
def test_half_migrated_store_with_data_is_repaired(tmp_path: Path, tmp_path_factory) -> None:
    """A migration cut short in a store with runs (two migrations behind, alembic's copy of `spans` left
    over): the next command repairs it and works; before, MLflow re-ran the migration into the copy
    ('table _alembic_tmp_spans already exists') and failed, that command and every later one."""
    uri, run_id = _store_with_a_trial(tmp_path, tmp_path_factory)
    db = sqlite_path(uri)
    _downgrade(db, 2)  # the last but one migration rebuilds `spans` through _alembic_tmp_spans
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE _alembic_tmp_spans AS SELECT * FROM spans")
    out = _sweeplab("best", "quickstart", "--tracking-uri", uri, "--json")
    assert out.returncode == 0, out.stderr
    assert [r["run_id"] for r in json.loads(out.stdout)] == [run_id]
    assert out.stderr.splitlines() == [
        f"sweeplab: repaired the half-migrated MLflow store {db} (leftover _alembic_tmp_spans)"
    ]
    tables, version = _schema(db)
    assert version == _head() and not [t for t in tables if t.startswith("_alembic_tmp_")]
    again = _sweeplab("best", "quickstart", "--tracking-uri", uri, "--json")  # repaired for good
    assert again.returncode == 0 and again.stderr == ""


@pytest.mark.slow
def test_new_store_cut_short_is_rebuilt(tmp_path: Path, tmp_path_factory) -> None:
    """The state the race left (no runs, _alembic_tmp_ copies, an early schema version) is rebuilt."""
    uri = fresh_uri(tmp_path, tmp_path_factory)
    db = sqlite_path(uri)
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE _alembic_tmp_metrics AS SELECT * FROM metrics")
        con.execute("DROP TABLE metrics")
        con.execute("UPDATE alembic_version SET version_num = 'a8c4a736bde6'")
    out = _sweeplab("best", "quickstart", "--tracking-uri", uri)
    assert out.returncode == 2 and "Traceback" not in out.stderr  # the store is whole but has no such sweep
    assert "repaired the half-migrated MLflow store" in out.stderr
    assert out.stderr.splitlines()[-1].startswith("sweeplab: error: no sweep or launch named 'quickstart'")
    tables, version = _schema(db)
    assert version == _head() and "metrics" in tables and not [t for t in tables if t.startswith("_alembic")]


@pytest.mark.slow
def test_store_beyond_repair_is_bad_input(tmp_path: Path, tmp_path_factory) -> None:
    """A schema version that lies (the first one, over today's tables): exit 2, one line naming the file
    and the fix, and the file left exactly as it was."""
    uri, _ = _store_with_a_trial(tmp_path, tmp_path_factory)
    db = sqlite_path(uri)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")
    before = _dump(db)
    out = _sweeplab("best", "quickstart", "--tracking-uri", uri)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeplab: error: ") and str(db) in lines[0]
    assert "move it aside" in lines[0]
    assert _dump(db) == before  # put back as it was (same schema and rows; SQLite's page counters aside)
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


# ---- retries, recorded losses, reconcile ----------------------------------------------------------


class Flaky:
    """A stand-in tracker method that fails `fails` times, then works (isolates the retry loop)."""

    def __init__(self, fails: int, name: str = "trial_results") -> None:
        self.fails, self.calls = fails, 0
        self.__name__ = name

    def __call__(self, *args: object, **kwargs: object) -> None:
        self.calls += 1
        if self.calls <= self.fails:
            raise RuntimeError("(sqlite3.OperationalError) database is locked\n[SQL: INSERT ...]")


def _driver(tracker: object) -> Driver:
    d = Driver(SWEEP, tracker, out=open(os.devnull, "w"))
    d.RETRY_DELAYS = (0.0, 0.0, 0.0)
    return d


def test_a_store_failing_twice_then_working_loses_nothing(capsys: pytest.CaptureFixture) -> None:
    flaky = Flaky(2)
    d = _driver(SimpleNamespace(trial_results=flaky))
    d.trial_result("t1", {"epoch": 1, "val/error": 3.0, "config": {"point": SWEEP.points()[0]}})
    d.drain()  # the writer thread applies it
    assert flaky.calls == 3 and d.lost == [] and "tracking" not in capsys.readouterr().err


def test_a_store_that_keeps_failing_is_recorded_and_said(capsys: pytest.CaptureFixture) -> None:
    flaky = Flaky(99)
    d = _driver(SimpleNamespace(trial_results=flaky, close=Flaky(99, "close"), launch="qs-1"))
    d.trial_result("t1", {"epoch": 2, "val/error": 3.0, "config": {"point": SWEEP.points()[0]}})
    d.drain()
    assert flaky.calls == 4 and d.safe(d.tracker.close, "FINISHED") is False
    assert [(x.trial_id, x.what) for x in d.lost] == [("t1", "epoch 2 metrics"), ("", "parent run end (FINISHED)")]
    assert d.lost_trials() == ["t1", ""]
    err = capsys.readouterr().err.splitlines()
    assert (
        len(err) == 2
        and err[0].startswith("sweeplab: tracking lost trial t1: epoch 2 metrics (after 4 tries: RuntimeError")
        and "database is locked" in err[0]
    )
    assert "[SQL" not in err[0] and err[1].startswith("sweeplab: tracking lost launch qs-1: parent run end (FINISHED)")


def _results(folder: Path, point: dict, epochs: int, start: float = 1_700_000_000.0) -> list[dict]:
    """Tune's result.json of a trial that reported `epochs` epochs (with Ray's clutter)."""
    rows = [
        {
            "epoch": e,
            "lr": 0.1,
            "train/loss": 1.0 / e,
            "train/error": 50.0 - e,
            "val/loss": 0.5,
            "val/error": 40.0 - e,
            "time/epoch_s": 2.0,
            "reported_at": start + e,
            "training_iteration": e,
            "pid": 42,
            "config": {"point": point},
            **({"hardware": "cpu x1"} if e == 1 else {}),
        }
        for e in range(1, epochs + 1)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 9, "val/e')
    return rows


def _replay(d: Driver, trial_id: str, rows: list[dict], end: bool = True) -> None:
    """Drive the Driver as Tune's callback does."""
    d.trial_start(trial_id, rows[0]["config"]["point"])
    for r in rows:
        d.trial_result(trial_id, r)
    if end:
        d.trial_end(trial_id, rows[-1], None)


def _children(uri: str, t: Tracker) -> dict[str, list]:
    runs = client(uri).search_runs([t.experiment_id], f"tags.`mlflow.parentRunId` = '{t.parent_id}'")
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags["sweeplab.trial_id"], []).append(r)
    return out


def _steps(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client(uri).get_metric_history(run_id, key))


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 6 MiB tmpfs for the MLflow store (root only, as on CI and the dev VM)."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(folder)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> None:
    subprocess.run(["dd", "if=/dev/zero", f"of={folder / 'filler'}", "bs=4k"], capture_output=True)


@pytest.mark.slow
def test_full_mlflow_disk_is_recorded_then_reconciled(
    tmpfs: Path, tmp_path: Path, tmp_path_factory, capsys: pytest.CaptureFixture
) -> None:
    uri = fresh_uri(tmpfs, tmp_path_factory)
    tracker = Tracker(uri, "quickstart", "qs-full", {})
    d = Driver(SWEEP, tracker, out=open(os.devnull, "w"))
    d.RETRY_DELAYS = (0.05, 0.05)
    points = SWEEP.points()
    trials = {f"t{i}": _results(tmp_path / "trials" / f"t{i}", points[i], 3) for i in range(3)}
    _replay(d, "t0", trials["t0"])  # logged whole before the disk fills
    d.trial_start("t1", points[1])
    d.trial_result("t1", trials["t1"][0])  # t1: start and epoch 1 logged
    d.drain()
    assert d.lost == []
    _fill(tmpfs)
    for r in trials["t1"][1:]:
        d.trial_result("t1", r)
    d.trial_end("t1", trials["t1"][-1], None)
    _replay(d, "t2", trials["t2"])  # t2: nothing reaches MLflow
    d.drain()
    err = capsys.readouterr().err
    assert d.lost_trials() == ["t1", "t2"]
    lost = {(x.trial_id, x.what) for x in d.lost}
    assert {
        ("t1", "epoch 2 metrics"),
        ("t1", "epoch 3 metrics"),
        ("t1", "end (FINISHED)"),
        ("t2", "run (params, config.yaml, tags)"),
        ("t2", "epoch 1 metrics"),
        ("t2", "end (FINISHED)"),
    } <= lost
    assert err.count("sweeplab: tracking lost") == len(d.lost) and "full" in err

    (tmpfs / "filler").unlink()
    summaries = [
        SimpleNamespace(
            trial_id=tid,
            outcome=Outcome.FINISHED,
            point=rows[0]["config"]["point"],
            result=rows[-1],
            error=None,
            path=str(tmp_path / "trials" / tid),
        )
        for tid, rows in trials.items()
    ]
    relogged = d.reconcile(summaries)
    assert [line.split(":")[0] for line in relogged] == ["t1", "t2"] and d.lost == []
    children = _children(uri, tracker)
    assert sorted(children) == ["t0", "t1", "t2"] and all(len(runs) == 1 for runs in children.values())
    for tid, (run,) in children.items():
        assert _steps(uri, run.info.run_id, "epoch") == [1, 2, 3], tid
        assert _steps(uri, run.info.run_id, "val/error") == [1, 2, 3], tid
        assert run.info.status == "FINISHED" and run.data.tags["sweeplab.stopped_early"] == "false"
        config = SWEEP.trial(trials[tid][0]["config"]["point"]).config.to_dict()
        assert set(run.data.params) == set(flatten(config)), tid
        assert run.data.tags["sweeplab.hardware"] == "cpu x1" and run.data.tags["sweeplab.seed"] == "0"
        assert [a.path for a in client(uri).list_artifacts(run.info.run_id)] == ["config.yaml"]
    timestamps = [m.timestamp for m in client(uri).get_metric_history(children["t2"][0].info.run_id, "epoch")]
    assert timestamps == [1_700_000_001_000, 1_700_000_002_000, 1_700_000_003_000]  # when the trial measured them
    assert d.reconcile(summaries) == []  # idempotent: nothing is missing any more
    assert sum(len(_steps(uri, r.info.run_id, "epoch")) for (r,) in _children(uri, tracker).values()) == 9


def test_reconcile_on_resume_logs_a_run_that_never_reached_mlflow(tmp_path: Path, tmp_path_factory) -> None:
    """After a driver died: a finished trial MLflow never heard of, an errored one with half its epochs
    and a running one are brought up to Tune's results; pending trials are left to Tune."""
    uri = fresh_uri(tmp_path / "db", tmp_path_factory)
    tracker = Tracker(uri, "quickstart", "qs-resume", {})
    d = _driver(tracker)
    points = SWEEP.points()
    done = _results(tmp_path / "a", points[0], 3)
    errored = _results(tmp_path / "b", points[1], 2)
    running = _results(tmp_path / "c", points[2], 1)
    _replay(d, "b", errored[:1], end=False)
    summaries = [
        SimpleNamespace(trial_id=tid, outcome=o, point=points[i], result=r, error=e, path=str(tmp_path / tid))
        for i, (tid, o, r, e) in enumerate(
            [
                ("a", Outcome.FINISHED, done[-1], None),
                ("b", Outcome.FAILED, errored[-1], "boom"),
                ("c", Outcome.RUNNING, running[-1], None),
                ("p", Outcome.PENDING, {}, None),  # not started: no folder
            ]
        )
    ]
    assert [line.split(":")[0] for line in d.reconcile(summaries)] == ["a", "b", "c"]
    children = {tid: runs[0] for tid, runs in _children(uri, tracker).items()}
    assert sorted(children) == ["a", "b", "c"]
    assert {tid: r.info.status for tid, r in children.items()} == {"a": "FINISHED", "b": "FAILED", "c": "RUNNING"}
    assert [_steps(uri, children[t].info.run_id, "epoch") for t in "abc"] == [[1, 2, 3], [1, 2], [1]]
    assert d.reconcile(summaries) == []
