"""MLflow as a copy of the ledger (tracking/follow.py): the follower reads a launch's ledger and makes its
runs match it, against a real SQLite store. A run's epochs go in few `log_batch` calls (at most 1000
metrics each); a follower started by `resume` asks MLflow what it holds and logs only the rest, each
epoch once; `finish` marks the runs of unfinished trials KILLED and closes the parent run as the ledger's
`stop` says. (A store that fails: tests/test_store_faults.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sweeplab.tracking  # noqa: F401 - first: it turns MLflow telemetry off before mlflow loads
from mlflow_store import append, fresh_uri
from sweeplab.commands import wrapup
from sweeplab.runner import launch as L
from sweeplab.schema import flatten
from sweeplab.search_spaces import label, load
from sweeplab.tracking import Tracker
from sweeplab.tracking.follow import Follower
from sweeplab.tracking.store import client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
SWEEP = load(ROOT / "sweeps" / "quickstart.yaml", smoke=True)
POINTS = SWEEP.points()
LAUNCH = "qs-f"
AT = 1_700_000_000.0


class Watched:
    """The tracker's MLflow client, watched: the metric counts of each `log_batch` carrying metrics."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.batches = inner, []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name != "log_batch":
            return attr

        def log_batch(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("metrics"):
                self.batches.append(len(kwargs["metrics"]))
            return attr(*args, **kwargs)

        return log_batch


@pytest.fixture
def uri(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return fresh_uri(tmp_path / "store", tmp_path_factory)


def follower(launch_dir: Path, uri: str) -> tuple[Follower, Watched]:
    """A follower of the launch with its own Tracker (as a new follower process has: nothing cached)."""
    tracker = Tracker(uri, SWEEP.name, LAUNCH, {})
    watched = Watched(tracker.client)
    tracker.client = watched
    return Follower(launch_dir, SWEEP, tracker), watched


def trial(i: int) -> dict[str, Any]:
    return {"ev": "trial", "key": str(i), "point": POINTS[i], "label": label(POINTS[i]), "seed": 0}


def start(i: int) -> dict[str, Any]:
    return {"ev": "start", "key": str(i)}


def result(i: int, epoch: int, err: float | None = None, **extra: Any) -> dict[str, Any]:
    """Trial i's epoch as the ledger has it: 8 metrics, measured at AT + epoch."""
    metrics = {
        "epoch": epoch,
        "lr": 0.1,
        "train/loss": 1.0 / epoch,
        "train/error": 20.0,
        "val/loss": 0.5,
        "val/error": 10.0 + epoch if err is None else err,
        "time/epoch_s": 1.0,
        "time/images_per_s": 900.0,
    }
    return {"ev": "result", "key": str(i), "epoch": epoch, "metrics": metrics, "at": AT + epoch, **extra}


def end(i: int, outcome: str = "FINISHED", epoch: int = 3, **extra: Any) -> dict[str, Any]:
    return {"ev": "end", "key": str(i), "outcome": outcome, "epoch": epoch, "error": None, "log": None, **extra}


def runs(uri: str) -> dict[str, Any]:
    """key -> the launch's one child run of that trial, read with a fresh client (not the follower's)."""
    c = client(uri)
    exp = c.get_experiment_by_name(SWEEP.name)
    out: dict[str, Any] = {}
    for r in c.search_runs([exp.experiment_id], f"tags.`sweeplab.launch` = '{LAUNCH}'"):
        if "mlflow.parentRunId" not in r.data.tags:
            continue
        key = r.data.tags["sweeplab.trial_id"]
        assert key not in out, f"two runs of trial {key}"
        out[key] = r
    return out


def parent(uri: str) -> Any:
    c = client(uri)
    exp = c.get_experiment_by_name(SWEEP.name)
    found = [
        r
        for r in c.search_runs([exp.experiment_id], f"tags.`sweeplab.launch` = '{LAUNCH}'")
        if "mlflow.parentRunId" not in r.data.tags
    ]
    assert len(found) == 1, f"{len(found)} parent runs"
    return found[0]


def history(uri: str, run: Any, key: str = "val/error") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run.info.run_id, key))


# ---- batches ----------------------------------------------------------------------------------------


def test_many_epochs_of_a_trial_go_in_one_log_batch(tmp_path: Path, uri: str) -> None:
    events: list[dict[str, Any]] = [{"ev": "session"}]
    for i in range(4):
        events += [trial(i), start(i)]
    for epoch in range(1, 51):
        events += [result(i, epoch) for i in range(4)]
    events += [end(i, epoch=50) for i in range(4)]
    append(tmp_path, *events)
    f, store = follower(tmp_path, uri)
    f.poll()
    assert store.batches == [50 * 8] * 4 and f.lost == {}  # 200 epochs: one call per run, not one per epoch
    found = runs(uri)
    assert sorted(found) == ["0", "1", "2", "3"]
    for r in found.values():
        assert history(uri, r) == [(e, 10.0 + e) for e in range(1, 51)] and r.info.status == "FINISHED"


def test_a_batch_never_exceeds_mlflows_1000_metrics(tmp_path: Path, uri: str) -> None:
    append(tmp_path, trial(0), start(0), *(result(0, e) for e in range(1, 301)))
    f, store = follower(tmp_path, uri)
    f.poll()
    assert store.batches == [1000, 1000, 400]  # 300 epochs x 8 metrics, whole epochs per batch
    assert [s for s, _ in history(uri, runs(uri)["0"], "epoch")] == list(range(1, 301))


def test_a_follower_polled_after_each_sync_logs_each_new_epoch_once(tmp_path: Path, uri: str) -> None:
    f, store = follower(tmp_path, uri)
    append(tmp_path, trial(0), start(0))
    f.poll()
    for epoch in (1, 2, 3):
        append(tmp_path, result(0, epoch))
        f.poll()
        f.poll()  # nothing new: nothing logged
    assert store.batches == [8, 8, 8]
    assert [s for s, _ in history(uri, runs(uri)["0"], "epoch")] == [1, 2, 3]


# ---- resume: a new follower fills only what MLflow lacks ----------------------------------------------


def test_a_second_follower_logs_only_what_mlflow_lacks_each_epoch_once(tmp_path: Path, uri: str) -> None:
    append(tmp_path, {"ev": "session"}, trial(0), start(0), result(0, 1), result(0, 2))
    first, _ = follower(tmp_path, uri)
    first.poll()  # epochs 1 and 2 in MLflow
    append(tmp_path, result(0, 3))  # the driver died before its follower read this line
    # resume: trial 0 runs on from its epoch 1 checkpoint (epochs 2 and 3 again, measured anew), trial 1 starts
    append(tmp_path, {"ev": "session"}, start(0), result(0, 2, 99.0), result(0, 3, 99.0), result(0, 4), end(0, epoch=4))
    append(tmp_path, trial(1), start(1), *(result(1, e) for e in (1, 2, 3)), end(1))
    second, store = follower(tmp_path, uri)
    second.poll()
    assert store.batches == [2 * 8, 3 * 8]  # trial 0: epochs 3 and 4 only; trial 1: all three
    found = runs(uri)
    assert sorted(found) == ["0", "1"] and second.lost == {}
    assert history(uri, found["0"]) == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 14.0)]  # each as first measured
    assert found["0"].info.status == "FINISHED" and found["1"].info.status == "FINISHED"
    assert parent(uri).info.run_id == first.tracker.parent_id == second.tracker.parent_id
    third, store = follower(tmp_path, uri)  # and again: MLflow holds it all, nothing is logged
    third.poll()
    assert store.batches == [] and history(uri, runs(uri)["0"]) == history(uri, found["0"])


# ---- finish: the session's end ----------------------------------------------------------------------


def test_finish_marks_unfinished_trials_killed_and_closes_the_parent_as_the_ledger_stopped(
    tmp_path: Path, uri: str
) -> None:
    best = {"key": "0", "label": label(POINTS[0]), "value": 13.0}
    append(tmp_path, {"ev": "session"}, trial(0), trial(1), trial(2), start(0), *(result(0, e) for e in (1, 2, 3)))
    append(tmp_path, end(0), start(1), result(1, 1), {"ev": "stop", "status": "KILLED", "best": best})
    f, _ = follower(tmp_path, uri)
    f.poll()
    f.finish()  # trial 1 was cut by Ctrl-C, trial 2 never started
    found = runs(uri)
    assert {k: r.info.status for k, r in found.items()} == {"0": "FINISHED", "1": "KILLED", "2": "KILLED"}
    assert found["1"].data.tags["sweeplab.outcome"] == "unfinished"
    p = parent(uri)
    assert p.info.status == "KILLED" and p.data.metrics["best/val/error"] == 13.0
    assert p.data.tags["sweeplab.best_label"] == label(POINTS[0]) and f.lost == {}

    # resume: the killed runs are opened again as their trials run, and closed as they end
    append(tmp_path, {"ev": "session"}, start(1))
    g, _ = follower(tmp_path, uri)
    g.poll()
    assert runs(uri)["1"].info.status == "RUNNING" and parent(uri).info.status == "RUNNING"
    append(tmp_path, result(1, 2), result(1, 3), end(1), start(2), *(result(2, e) for e in (1, 2, 3)), end(2))
    append(tmp_path, {"ev": "stop", "status": "FINISHED", "best": best})
    g.poll()
    g.finish()
    found = runs(uri)
    assert {k: r.info.status for k, r in found.items()} == {"0": "FINISHED", "1": "FINISHED", "2": "FINISHED"}
    assert [s for s, _ in history(uri, found["1"], "epoch")] == [1, 2, 3]
    assert parent(uri).info.status == "FINISHED"


def test_finish_of_a_ledger_without_stop_closes_the_parent_killed(tmp_path: Path, uri: str) -> None:
    append(tmp_path, {"ev": "session"}, trial(0), start(0), result(0, 1))  # the driver died: no `stop`
    f, _ = follower(tmp_path, uri)
    f.finish()
    assert parent(uri).info.status == "KILLED" and runs(uri)["0"].info.status == "KILLED"


# ---- what a run holds -----------------------------------------------------------------------------


def test_a_run_holds_what_the_ledger_says_of_its_trial(tmp_path: Path, uri: str) -> None:
    folder = tmp_path / "trials" / "0"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"weights")
    origin = {"key": "0", "epoch": 1}  # PBT: trial 2 continued from trial 0's weights after its epoch 1
    pbt = {**POINTS[1], "optim.lr": 0.123}
    dataset = {"name": "fashion_mnist", "digest": "d1g3st", "train": 5000, "test": 2000}
    append(
        tmp_path,
        {"ev": "session"},
        trial(0),
        start(0),
        result(0, 1, hardware="cpu x2", dataset=dataset),
        *(result(0, e) for e in (2, 3)),
        end(0),
        trial(1),
        start(1),
        result(1, 1),
        end(1, "STOPPED", 1),
        trial(2),
        start(2),
        result(2, 1),
        result(2, 2, origin=origin, point=pbt, label=label(pbt)),  # with a perturbed point
        end(2, "FAILED", 2, error="ValueError: loss is nan", log=str(tmp_path / "trials/2/error.log")),
    )
    f, _ = follower(tmp_path, uri)
    f.poll()
    found = runs(uri)
    run = found["0"]
    config = SWEEP.trial(POINTS[0]).config.to_dict()
    assert set(run.data.params) == set(flatten(config)) and run.data.params["optim.lr"] == str(POINTS[0]["optim.lr"])
    tags = run.data.tags
    assert tags["sweeplab.label"] == label(POINTS[0]) and tags["mlflow.runName"] == label(POINTS[0])
    assert tags["sweeplab.seed"] == "0" and tags["sweeplab.hardware"] == "cpu x2"
    assert tags["sweeplab.outcome"] == "finished" and tags["sweeplab.checkpoint_path"] == str(folder / "checkpoint.pt")
    artifacts = {a.path for a in client(uri).list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "checkpoint"}
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == ["d1g3st"]
    stamps = [m.timestamp for m in client(uri).get_metric_history(run.info.run_id, "epoch")]
    assert sorted(stamps) == [int((AT + e) * 1000) for e in (1, 2, 3)]  # when the trial measured them
    stopped = found["1"]
    assert stopped.info.status == "FINISHED" and stopped.data.tags["sweeplab.stopped_early"] == "true"
    assert stopped.data.tags["sweeplab.outcome"] == "stopped early at epoch 1"
    failed = found["2"]
    assert failed.info.status == "FAILED" and failed.data.tags["sweeplab.error"] == "ValueError: loss is nan"
    assert failed.data.tags["sweeplab.error_log"].endswith("trials/2/error.log")
    assert json.loads(failed.data.tags["sweeplab.pbt.origin"]) == origin
    assert failed.data.tags["sweeplab.pbt.label"] == label(pbt)
    assert "checkpoint" not in {a.path for a in client(uri).list_artifacts(failed.info.run_id)}


# ---- the follower process ---------------------------------------------------------------------------


def test_the_follower_process_copies_a_stopped_session_and_says_what_it_lost(tmp_path: Path, uri: str) -> None:
    """`python -m sweeplab.tracking.follow LAUNCH_DIR`, as a session starts it: it reads the launch folder,
    copies the ledger until the session's `stop`, prints one JSON line and exits 0 when nothing is lost."""
    launch_dir = tmp_path / "ray" / LAUNCH
    meta = {"sweep": SWEEP.snapshot(), "tracking_uri": uri, "launch": LAUNCH, "command": "test"}
    L.write_meta(launch_dir, meta)
    (launch_dir / "parent.json").write_text(json.dumps({**wrapup.parent(SWEEP, meta, None), "session": 1}))
    best = {"key": "0", "label": label(POINTS[0]), "value": 13.0}
    append(launch_dir, {"ev": "session"}, trial(0), start(0), *(result(0, e) for e in (1, 2, 3)), end(0))
    append(launch_dir, {"ev": "stop", "status": "FINISHED", "best": best})
    done = subprocess.run(
        [sys.executable, "-m", "sweeplab.tracking.follow", str(launch_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"lost": []}
    assert [s for s, _ in history(uri, runs(uri)["0"], "epoch")] == [1, 2, 3]
    p = parent(uri)
    assert p.info.status == "FINISHED" and p.data.params["search.name"] == "grid"
    assert {a.path for a in client(uri).list_artifacts(p.info.run_id)} >= {"sweep.yaml", "trials.json"}
