"""Faults of the MLflow store: first use by several processes at once, a half-migrated file (bad input
naming the fix, the file left as it is), and a store that fails for a while, for good, or fills its
disk while the follower (tracking/follow.py) copies a launch's ledger into it."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import sweeplab.tracking  # noqa: F401 - first: it turns MLflow telemetry off before mlflow loads
from mlflow_store import append, fresh_uri
from sweeplab.cli import main
from sweeplab.search_spaces import label, load
from sweeplab.tracking import Tracker, follow
from sweeplab.tracking.follow import Follower
from sweeplab.tracking.store import client, sqlite_path

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow", "ignore::UserWarning:alembic")

ROOT = Path(__file__).resolve().parents[1]
SWEEP = load(ROOT / "sweeps" / "quickstart.yaml", smoke=True)
POINTS = SWEEP.points()

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


def _head(tmp_path: Path, tmp_path_factory) -> str:
    """The schema version MLflow migrates a new store to."""
    return _schema(sqlite_path(fresh_uri(tmp_path / "head", tmp_path_factory)))[1]


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


@pytest.mark.slow
def test_concurrent_first_use_of_a_new_store(tmp_path: Path, tmp_path_factory) -> None:
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
    head = _head(tmp_path, tmp_path_factory)
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


@pytest.mark.parametrize("how", ["behind", "leftover", "cut short"])
def test_a_half_migrated_store_is_bad_input_naming_mlflow_db_upgrade(tmp_path, tmp_path_factory, capsys, how):
    """A migration cut short (a kill mid-migration; two first uses at once are serialised by the lock):
    exit 2, one line naming the file and the fix, no traceback; sweeplab repairs nothing, and a store
    whose tables are all there is left exactly as it was."""
    uri, _ = _store_with_a_trial(tmp_path, tmp_path_factory)
    db = sqlite_path(uri)
    with sqlite3.connect(db) as con:
        if how == "leftover":  # alembic's copy of a table it was rebuilding, left over
            con.execute("CREATE TABLE _alembic_tmp_spans AS SELECT * FROM spans")
        if how == "cut short":  # a new store's first migration, killed while it rebuilt `metrics`
            con.execute("CREATE TABLE _alembic_tmp_metrics AS SELECT * FROM metrics")
            con.execute("DROP TABLE metrics")
        con.execute("UPDATE alembic_version SET version_num = 'a8c4a736bde6'")  # an early schema version
    before = _dump(db)
    capsys.readouterr()
    assert main(["best", "quickstart", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"sweeplab: error: MLflow store {db} cannot be opened (")
    assert f"run `mlflow db upgrade {uri}`, or move the file aside" in line
    if how != "cut short":  # MLflow itself tries to migrate a store with tables missing, and fails
        assert _dump(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


# ---- the follower against a failing store ------------------------------------------------------------


class Failing:
    """The tracker's MLflow client, whose calls numbered in `fail` (1-based), or all from `fail_from` on,
    are refused as a locked SQLite file refuses them."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0
        self.fail: set[int] = set()
        self.fail_from: int | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls in self.fail or (self.fail_from is not None and self.calls >= self.fail_from):
                raise RuntimeError("(sqlite3.OperationalError) database is locked\n[SQL: INSERT ...]")
            return attr(*args, **kwargs)

        return call


def _follower(launch_dir: Path, uri: str, launch: str = "qs-x") -> tuple[Follower, Failing]:
    tracker = Tracker(uri, SWEEP.name, launch, {})
    failing = Failing(tracker.client)
    tracker.client = failing
    return Follower(launch_dir, SWEEP, tracker), failing


def _trial_events(i: int, epochs: int = 3, end: bool = True) -> list[dict[str, Any]]:
    point = POINTS[i]
    events: list[dict[str, Any]] = [
        {"ev": "trial", "key": str(i), "point": point, "label": label(point), "seed": 0},
        {"ev": "start", "key": str(i)},
    ]
    for e in range(1, epochs + 1):
        m = {"epoch": e, "val/error": 40.0 - e, "train/loss": 1.0 / e}
        events.append(
            {"ev": "result", "key": str(i), "epoch": e, "metrics": m, **({"hardware": "cpu x1"} if e == 1 else {})}
        )
    if end:
        events.append({"ev": "end", "key": str(i), "outcome": "FINISHED", "epoch": epochs})
    return events


def _runs(uri: str, launch: str = "qs-x") -> dict[str, Any]:
    c = client(uri)
    exp = c.get_experiment_by_name(SWEEP.name)
    found = c.search_runs([exp.experiment_id], f"tags.`sweeplab.launch` = '{launch}'")
    out: dict[str, Any] = {}
    for r in found:
        key = r.data.tags.get("sweeplab.trial_id", "")  # '' : the parent run
        assert key not in out, f"two runs of {key or 'the parent'}"
        out[key] = r
    return out


def _epochs(uri: str, run: Any) -> list[int]:
    return sorted(m.step for m in client(uri).get_metric_history(run.info.run_id, "epoch"))


@pytest.fixture
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "RETRY_DELAYS", (0.0, 0.0, 0.0))  # 4 tries, without the seconds between them


@pytest.mark.parametrize("failing", [{1, 2, 3}, {6, 7, 8}, {9, 10}])
def test_a_store_failing_briefly_loses_nothing(tmp_path, tmp_path_factory, capsys, no_waits, failing) -> None:
    uri = fresh_uri(tmp_path / "store", tmp_path_factory)
    append(tmp_path, {"ev": "session"}, *_trial_events(0), *_trial_events(1))
    f, store = _follower(tmp_path, uri)
    store.fail = failing  # three tries of one change at most: the fourth works
    f.poll()
    assert f.lost == {} and "MLflow did not take" not in capsys.readouterr().err
    assert max(failing) <= store.calls  # every planned failure happened
    runs = _runs(uri)
    assert sorted(runs) == ["", "0", "1"]
    for key in ("0", "1"):
        r = runs[key]
        assert _epochs(uri, r) == [1, 2, 3] and r.info.status == "FINISHED", key
        assert "optim.lr" in r.data.params and r.data.tags["sweeplab.hardware"] == "cpu x1"


def test_a_store_down_for_good_is_remembered_said_once_retried_and_reported_lost(
    tmp_path, tmp_path_factory, capsys, no_waits
) -> None:
    uri = fresh_uri(tmp_path / "store", tmp_path_factory)
    f, store = _follower(tmp_path, uri)
    append(tmp_path, {"ev": "session"}, *_trial_events(0, end=False))
    f.poll()
    assert _epochs(uri, _runs(uri)["0"]) == [1, 2, 3]
    store.fail_from = store.calls + 1  # from here on every call fails
    append(tmp_path, {"ev": "end", "key": "0", "outcome": "FINISHED", "epoch": 3}, *_trial_events(1))
    f.poll()
    assert sorted(f.lost) == ["0", "1"]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"sweeplab: MLflow did not take trial {k} (RuntimeError: (sqlite3.OperationalError) database is locked); "
        "will retry"
        for k in ("0", "1")
    ]
    calls = store.calls
    f.poll()  # no new line in the ledger: what was lost is tried again, and said no more
    assert store.calls > calls and sorted(f.lost) == ["0", "1"] and capsys.readouterr().err == ""
    append(tmp_path, {"ev": "stop", "status": "FINISHED", "best": None})
    f.finish()
    assert sorted(f.lost) == ["", "0", "1"]  # '' : the parent run's end
    assert capsys.readouterr().err.splitlines() == [
        "sweeplab: MLflow did not take the launch's parent run (RuntimeError: (sqlite3.OperationalError) "
        "database is locked); will retry"
    ]
    runs = _runs(uri)
    assert runs["0"].info.status == "RUNNING" and "1" not in runs
    store.fail_from = None  # the store is back: the next poll (a resume's follower, here the same) fills it
    f.poll()
    f.finish()
    assert f.lost == {} and capsys.readouterr().err == ""
    runs = _runs(uri)
    assert {k: r.info.status for k, r in runs.items()} == {"": "FINISHED", "0": "FINISHED", "1": "FINISHED"}
    assert _epochs(uri, runs["0"]) == [1, 2, 3] and _epochs(uri, runs["1"]) == [1, 2, 3]


def test_a_store_that_is_out_costs_a_poll_one_round_of_retries_not_one_per_trial(
    tmp_path, tmp_path_factory, capsys, monkeypatch
) -> None:
    """Five trials' writes fail: the first waits out the retries, the other four are tried once each (the
    store is out for them too), and each is still said once and kept as lost; a write that works again
    brings the retries back."""
    slept: list[float] = []
    # the follower's own waits only (follow.time is the time module: patching its sleep would also catch
    # SQLite's busy waits inside MLflow)
    monkeypatch.setattr(follow, "time", SimpleNamespace(sleep=slept.append))
    uri = fresh_uri(tmp_path / "store", tmp_path_factory)
    f, store = _follower(tmp_path, uri)
    store.fail_from = 1
    append(tmp_path, {"ev": "session"}, *[e for i in range(5) for e in _trial_events(i)])
    f.poll()
    assert sorted(f.lost) == ["0", "1", "2", "3", "4"]
    assert slept == list(follow.RETRY_DELAYS) and store.calls == len(follow.RETRY_DELAYS) + 1 + 4
    assert capsys.readouterr().err.count("sweeplab: MLflow did not take trial") == 5
    slept.clear()
    f.poll()  # a new poll: the first lost write waits out the retries again
    assert slept == list(follow.RETRY_DELAYS)
    store.fail_from = None
    slept.clear()
    f.poll()
    assert f.lost == {} and slept == []
    assert sorted(_runs(uri)) == ["", "0", "1", "2", "3", "4"]


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


def test_a_full_mlflow_disk_loses_nothing_of_the_ledger(tmpfs, tmp_path, tmp_path_factory, capsys, no_waits) -> None:
    """The store's disk fills mid-launch: what MLflow did not take is said and kept as lost; once there is
    room, a new follower (`resume`'s) logs exactly what MLflow lacks, each epoch once."""
    uri = fresh_uri(tmpfs, tmp_path_factory)
    launch_dir = tmp_path / "launch"
    f, _ = _follower(launch_dir, uri, "qs-full")
    append(launch_dir, {"ev": "session"}, *_trial_events(0), *_trial_events(1, epochs=1, end=False))
    f.poll()  # trial 0 whole, trial 1's start and epoch 1 in MLflow
    assert f.lost == {}
    _fill(tmpfs)
    more = [{"ev": "result", "key": "1", "epoch": e, "metrics": {"epoch": e, "val/error": 40.0 - e}} for e in (2, 3)]
    append(launch_dir, *more, {"ev": "end", "key": "1", "outcome": "FINISHED", "epoch": 3}, *_trial_events(2))
    f.poll()
    append(launch_dir, {"ev": "stop", "status": "FINISHED", "best": None})
    f.finish()
    assert sorted(f.lost) == ["", "1", "2"]
    err = capsys.readouterr().err
    assert err.count("sweeplab: MLflow did not take") == 3 and "full" in err
    (tmpfs / "filler").unlink()
    again, _ = _follower(launch_dir, uri, "qs-full")
    again.poll()
    again.finish()
    assert again.lost == {}
    runs = _runs(uri, "qs-full")
    assert sorted(runs) == ["", "0", "1", "2"] and {r.info.status for r in runs.values()} == {"FINISHED"}
    for key in ("0", "1", "2"):
        assert _epochs(uri, runs[key]) == [1, 2, 3], key
