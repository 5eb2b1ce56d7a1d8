"""The writer thread between the driver and MLflow (issue 17): Tune's callback never waits for the
store; a run's epochs go in few `log_batch` calls, in order per run, each epoch once; a store that is
briefly down loses nothing, one that stays down is reported; `drain` waits for all of it. Unit tests on
a real SQLite store; the slow end-to-end test SIGKILLs a real sweep's driver and resumes it."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import sweeplab.tracking  # noqa: F401 - first: it turns MLflow telemetry off before mlflow loads
import test_faults as faults
from mlflow_store import fresh_uri
from sweep_cli import cli, write_sweep
from sweeplab.commands.progress import Driver
from sweeplab.search_spaces import load
from sweeplab.tracking import Tracker
from sweeplab.tracking.store import client
from sweeplab.tracking.writer import BATCH_EPOCHS, _Call, plan

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
SWEEP = load(ROOT / "sweeps" / "quickstart.yaml", smoke=True)
POINTS = SWEEP.points()


class Store:
    """The tracker's MLflow client, watched: every call recorded as (method, run id), a `log_batch` as
    'metrics', 'params' or 'tags' by what it carries, its metric counts kept; the calls numbered in
    `fail` (1-based), or all from `fail_from` on, refused as a locked SQLite file refuses them; `gate`,
    when set, holds every call until it opens."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls, self.batches = inner, [], []
        self.fail: set[int] = set()
        self.fail_from: int | None = None
        self.gate: threading.Event | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.gate is not None:
                self.gate.wait(30)
            n = len(self.calls) + 1
            run_id = args[0] if args and isinstance(args[0], str) else kwargs.get("run_id", "")
            kind = next((k for k in ("metrics", "params", "tags") if kwargs.get(k)), name)
            self.calls.append((kind if name == "log_batch" else name, run_id))
            if n in self.fail or (self.fail_from is not None and n >= self.fail_from):
                raise RuntimeError("(sqlite3.OperationalError) database is locked\n[SQL: INSERT ...]")
            if name == "log_batch" and kwargs.get("metrics"):
                self.batches.append(len(kwargs["metrics"]))
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def uri(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return fresh_uri(tmp_path, tmp_path_factory)


def _driver(uri: str, launch: str = "qs-w") -> tuple[Driver, Tracker, Store]:
    tracker = Tracker(uri, "quickstart", launch, {})
    store = Store(tracker.client)
    tracker.client = store
    d = Driver(SWEEP, tracker, out=open(os.devnull, "w"))
    d.RETRY_DELAYS = (0.0, 0.0, 0.0)
    return d, tracker, store


def _result(i: int, epoch: int, **extra: Any) -> dict[str, Any]:
    """Trial i's result for `epoch`, as Tune hands it to the callback (Ray's clutter included)."""
    return {
        "epoch": epoch,
        "lr": 0.1,
        "train/loss": 1.0 / epoch,
        "train/error": 20.0,
        "val/loss": 0.5,
        "val/error": 10.0 + epoch,
        "time/epoch_s": 1.0,
        "time/images_per_s": 900.0,
        "reported_at": 1_700_000_000.0 + epoch,
        "training_iteration": epoch,
        "pid": 42,
        "config": {"point": POINTS[i]},
        **extra,
    }


def _hold(d: Driver) -> threading.Event:
    """Keep the writer thread busy until the returned event is set: what is sent meanwhile queues up."""
    gate, taken = threading.Event(), threading.Event()
    d.writer.call("", "gate", lambda: (taken.set(), gate.wait(30)))
    assert taken.wait(10)
    return gate


def _runs(uri: str, t: Tracker) -> dict[str, Any]:
    """trial id -> its one child run, read with a fresh client (not the tracker's)."""
    runs = client(uri).search_runs([t.experiment_id], f"tags.`mlflow.parentRunId` = '{t.parent_id}'")
    out: dict[str, Any] = {}
    for r in runs:
        tid = r.data.tags["sweeplab.trial_id"]
        assert tid not in out, f"two runs of trial {tid}"
        out[tid] = r
    return out


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


def test_many_results_become_few_batches_and_all_arrive(uri: str) -> None:
    d, t, store = _driver(uri)
    for i in range(4):
        d.trial_start(f"t{i}", POINTS[i])
    d.drain()
    gate = _hold(d)
    for epoch in range(1, 51):
        for i in range(4):
            d.trial_result(f"t{i}", _result(i, epoch))
    for i in range(4):
        d.trial_end(f"t{i}", _result(i, 50), None)
    gate.set()
    d.drain()
    # 200 epochs, queued while the store was busy: one log_batch per run instead of one per epoch
    assert len(store.batches) == 4 and d.writer.batches == 4, store.batches
    runs = _runs(uri, t)
    assert sorted(runs) == ["t0", "t1", "t2", "t3"] and d.lost == []
    for r in runs.values():
        assert [s for s, _ in _history(uri, r.info.run_id, "epoch")] == list(range(1, 51))
        assert _history(uri, r.info.run_id, "val/error") == [(e, 10.0 + e) for e in range(1, 51)]
        assert r.info.status == "FINISHED"


def test_a_batch_never_exceeds_mlflows_1000_metrics(uri: str) -> None:
    d, t, store = _driver(uri)
    d.trial_start("t0", POINTS[0])
    gate = _hold(d)
    for epoch in range(1, 301):
        d.trial_result("t0", _result(0, epoch))
    gate.set()
    d.drain()
    assert len(store.batches) == -(-300 // BATCH_EPOCHS) and max(store.batches) <= 1000, store.batches
    run = _runs(uri, t)["t0"]
    assert [s for s, _ in _history(uri, run.info.run_id, "epoch")] == list(range(1, 301))


def test_each_run_keeps_its_order_and_ends_as_it_ended(uri: str) -> None:
    d, t, store = _driver(uri)
    gate = _hold(d)  # all of it queued at once: the batching must not reorder a run's own calls
    d.trial_start("a", POINTS[0])
    d.trial_result("a", _result(0, 1, hardware="cpu x1"))
    d.trial_start("b", POINTS[1])
    d.trial_result("a", _result(0, 2))
    d.trial_result("b", _result(1, 1))
    d.trial_end("a", _result(0, 2), None)  # 2 of its 3 epochs: stopped early by a scheduler
    d.trial_result("b", _result(1, 2))
    d.trial_result("a", _result(0, 3))  # a result after its end (a retried trial): logged after the end
    d.trial_end("b", _result(1, 2), "RuntimeError: boom")
    gate.set()
    d.drain()
    runs = _runs(uri, t)
    a, b = runs["a"].info.run_id, runs["b"].info.run_id

    def order(run_id: str) -> list[str]:
        kinds = [k for k, rid in store.calls if rid == run_id and k in ("params", "metrics", "set_terminated")]
        return [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]

    assert order(a) == ["params", "metrics", "set_terminated", "metrics"]
    assert order(b) == ["params", "metrics", "set_terminated"]
    assert [s for s, _ in _history(uri, a, "epoch")] == [1, 2, 3]
    assert [s for s, _ in _history(uri, b, "epoch")] == [1, 2]
    assert runs["a"].info.status == "FINISHED" and runs["a"].data.tags["sweeplab.stopped_early"] == "true"
    assert runs["a"].data.tags["sweeplab.outcome"] == "stopped early at epoch 2"
    assert runs["a"].data.tags["sweeplab.hardware"] == "cpu x1"
    assert runs["b"].info.status == "FAILED" and runs["b"].data.tags["sweeplab.outcome"] == "failed"
    assert d.lost == []


def test_plan_batches_a_runs_epochs_without_crossing_its_other_calls() -> None:
    def call(trial: str, epoch: int | None = None, what: str = "x") -> _Call:
        return _Call(trial, what if epoch is None else f"epoch {epoch} metrics", None, epoch=epoch)

    calls = [call("a", what="start"), call("a", 1), call("b", 1), call("a", 2), call("b", what="end"), call("b", 2)]
    calls += [call("a", 3), call("a", what="end"), call("a", 4)]
    groups = [[c.what if c.epoch is None else f"{c.trial_id}{c.epoch}" for c in g] for g in plan(calls)]
    assert groups == [["start"], ["a1", "a2", "a3"], ["b1"], ["end"], ["b2"], ["end"], ["a4"]]
    many = plan([call("a", e) for e in range(1, 2 * BATCH_EPOCHS + 2)])
    assert [len(g) for g in many] == [BATCH_EPOCHS, BATCH_EPOCHS, 1]


def test_each_epoch_once_with_batching_and_after_a_reattach(uri: str) -> None:
    d, t, _ = _driver(uri)
    d.trial_start("t0", POINTS[0])
    gate = _hold(d)
    for n, epoch in enumerate((1, 2, 3, 2, 3, 4)):  # retried from its epoch 1 checkpoint: 2 and 3 again
        d.trial_result("t0", _result(0, epoch, **({"val/error": 99.0} if n in (3, 4) else {})))
    gate.set()
    d.drain()
    run_id = _runs(uri, t)["t0"].info.run_id
    assert [s for s, _ in _history(uri, run_id, "epoch")] == [1, 2, 3, 4]
    assert _history(uri, run_id, "val/error") == [(e, 10.0 + e) for e in (1, 2, 3, 4)]  # as first logged
    # a resumed driver re-attaches to the run and replays from an older checkpoint: nothing twice
    d2, t2, _ = _driver(uri)
    d2.trial_start("t0", POINTS[0])
    for epoch in (3, 4, 5):
        d2.trial_result("t0", _result(0, epoch))
    d2.trial_end("t0", _result(0, 5), None)
    d2.drain()
    assert [s for s, _ in _history(uri, run_id, "epoch")] == [1, 2, 3, 4, 5] and d2.lost == []


@pytest.mark.parametrize("failing", [{1, 2, 3}, {6, 7, 8}, {9, 10}])
def test_a_store_failing_briefly_loses_nothing(uri: str, failing: set[int], capsys: pytest.CaptureFixture) -> None:
    d, t, store = _driver(uri)
    store.fail = failing  # three tries of one call at most: the fourth works
    for i in range(2):
        d.trial_start(f"t{i}", POINTS[i])
        for epoch in (1, 2, 3):
            d.trial_result(f"t{i}", _result(i, epoch, **({"hardware": "cpu x1"} if epoch == 1 else {})))
        d.trial_end(f"t{i}", _result(i, 3), None)
    d.drain()
    assert d.lost == [] and "tracking lost" not in capsys.readouterr().err
    assert store.fail <= set(range(1, len(store.calls) + 1))  # every planned failure happened
    runs = _runs(uri, t)
    assert sorted(runs) == ["t0", "t1"]
    for r in runs.values():
        assert [s for s, _ in _history(uri, r.info.run_id, "epoch")] == [1, 2, 3]
        assert r.info.status == "FINISHED" and "optim.lr" in r.data.params
        assert r.data.tags["sweeplab.hardware"] == "cpu x1"


def test_a_store_down_for_good_is_reported_never_raised_and_the_thread_lives_on(
    uri: str, capsys: pytest.CaptureFixture
) -> None:
    d, t, store = _driver(uri)
    d.trial_start("t0", POINTS[0])
    d.drain()
    store.fail_from = len(store.calls) + 1  # from now on every call fails
    gate = _hold(d)
    for epoch in (1, 2):
        d.trial_result("t0", _result(0, epoch))
    d.trial_end("t0", _result(0, 2), None)
    gate.set()
    d.drain()
    assert [(x.trial_id, x.what) for x in d.lost] == [
        ("t0", "epoch 1 metrics"),
        ("t0", "epoch 2 metrics"),
        ("t0", "end (FINISHED)"),
    ]
    assert d.lost_trials() == ["t0"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("sweeplab: tracking lost trial t0: ") for line in err), err
    assert "(after 4 tries: RuntimeError: (sqlite3.OperationalError) database is locked)" in err[0]
    store.fail_from = None  # the store is back: the same thread logs what comes next
    d.trial_start("t1", POINTS[1])
    d.trial_result("t1", _result(1, 1))
    d.drain()
    assert len(d.lost) == 3 and [s for s, _ in _history(uri, _runs(uri, t)["t1"].info.run_id, "epoch")] == [1]


def test_a_tracker_without_the_call_is_a_loss_not_a_silence(capsys: pytest.CaptureFixture) -> None:
    from types import SimpleNamespace

    d = Driver(SWEEP, SimpleNamespace(launch="qs-x"), out=open(os.devnull, "w"))
    d.RETRY_DELAYS = ()
    d.trial_result("t0", _result(0, 1))
    d.drain()
    assert [(x.trial_id, x.what) for x in d.lost] == [("t0", "epoch 1 metrics")]
    assert "sweeplab: tracking lost trial t0: epoch 1 metrics (after 1 tries: AttributeError" in capsys.readouterr().err


def test_a_failing_loss_report_does_not_stop_the_thread(uri: str) -> None:
    d, t, _ = _driver(uri)
    d.writer.on_lost = lambda *a: 1 / 0
    d.writer.call("t0", "boom", lambda: 1 / 0)
    d.trial_start("t0", POINTS[0])
    d.trial_result("t0", _result(0, 1))
    d.drain()
    assert [s for s, _ in _history(uri, _runs(uri, t)["t0"].info.run_id, "epoch")] == [1]


def test_the_callback_never_waits_for_the_store_and_drain_waits_for_all(uri: str) -> None:
    d, t, store = _driver(uri)
    store.gate = threading.Event()  # the store hangs (a locked file, a slow server)
    started = time.monotonic()
    for i in range(2):
        d.trial_start(f"t{i}", POINTS[i])
        for epoch in (1, 2, 3):
            d.trial_result(f"t{i}", _result(i, epoch))
        d.trial_end(f"t{i}", _result(i, 3), None)
    assert time.monotonic() - started < 5  # the store holds every call for 30 s
    assert not d.writer.drain(timeout=0.3)  # still waiting on the store
    store.gate.set()
    d.drain()
    assert d.writer.pending() == 0
    runs = _runs(uri, t)  # all of it is in MLflow the moment drain returns
    assert sorted(runs) == ["t0", "t1"] and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert all([s for s, _ in _history(uri, r.info.run_id, "epoch")] == [1, 2, 3] for r in runs.values())


def test_safe_and_reconcile_wait_for_the_queue(uri: str) -> None:
    """The parent's end and the reconcile read or write after every trial event queued before them."""
    d, t, store = _driver(uri)
    gate = _hold(d)
    d.trial_start("t0", POINTS[0])
    d.trial_result("t0", _result(0, 1))
    d.trial_end("t0", _result(0, 1), None)
    threading.Timer(0.3, gate.set).start()
    assert d.safe(t.close, "FINISHED")
    names = [n for n, _ in store.calls]
    assert names[-1] == "set_terminated" and store.calls[-1][1] == t.parent_id
    assert names.count("set_terminated") == 2 and d.reconcile([]) == []


# ---- end to end: SIGKILL the driver mid-sweep, resume ------------------------------------------------


@pytest.mark.slow
def test_a_driver_killed_mid_sweep_resumes_with_every_epoch_once(tmp_path: Path) -> None:
    """The store locked mid-sweep (another process holds SQLite's write lock): the driver keeps printing
    epochs while its writer waits; SIGKILLed then, it loses what was queued, and `resume` logs it again
    from Tune's results, each epoch once."""
    epochs = 4
    env = faults.keyed(tmp_path)
    path = write_sweep(
        tmp_path,
        name="killed",
        overrides={"train.epochs": epochs, **faults.SLOW},
        space={"optim.lr": {"grid": [0.01, 0.1, 0.3]}},
        max_concurrent=2,
    )
    d = faults.Driver(cli(tmp_path, "run", str(path), "--name", "killed", "--num-cpus", "2"), env, tmp_path / "err")
    lock = None
    try:
        first = d.until(faults.STARTED)
        assert first is not None, d.out
        assert d.until(rf" epoch 1/{epochs} ") is not None, d.out
        lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=60, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # from here on every MLflow write of the driver waits
        # Tune's callback does not: the next epochs are reported (and printed) while the store is locked
        assert d.until(rf" epoch 3/{epochs} ") is not None, d.out
    finally:
        d.kill()  # SIGKILL, the driver and everything below it: what its writer thread held is gone
        if lock is not None:
            lock.rollback()
            lock.close()
    assert d.proc.returncode == -signal.SIGKILL
    ids = faults.trial_ids(first.group(1), 3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, _, runs = faults.mlflow_runs(uri, "killed")
    logged = sum(len(client.get_metric_history(r.info.run_id, "epoch")) for r in runs)
    printed = len(re.findall(rf" epoch \d/{epochs} ", "".join(d.lines)))
    assert logged < printed, f"MLflow holds {logged} epochs of the {printed} printed: nothing was left to lose"

    r = faults.sweeplab(cli(tmp_path, "resume", "killed", "--num-cpus", "2"), env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 trials: 3 finished" in r.stdout, r.stdout + r.stderr
    assert re.search(r"logged again from Tune's results: .*epoch \d metrics", r.stderr), r.stderr
    faults.assert_logged_once(uri, "killed", ids, epochs)  # every epoch of every trial once, every run FINISHED
    faults.assert_tune_finished_once(tmp_path / "ray", "killed", ids, env)
    # Tune warns when handling a result (our callback included) takes over 0.5 s (from its 60th second
    # on); MLflow's writes are no longer part of it, even with the store locked
    for err in (d.stderr, r.stderr):
        slow = re.findall(r".*(?:`process_trial_result` operation took|Processing trial results took).*", err)
        assert not slow, slow
    assert "tracking lost" not in r.stderr, r.stderr
