"""MLflow layout written by the Tracker, against a real SQLite store (no Ray: the Tracker is driven
as the Tune callback drives it)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml

import sweeplab.tracking  # noqa: F401 - first: it turns MLflow telemetry off before mlflow loads
from mlflow_store import fresh_uri, grid_point, run_trial, trial_config
from sweeplab.core.names import METRICS
from sweeplab.tracking import Tracker, resolve_uri
from sweeplab.tracking.store import client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")  # MLflow's own SQLAlchemy use

AXES = ("data.batch_size", "optim.lr", "train.epochs", "optim.weight_decay", "train.precision")


@pytest.fixture
def uri(tmp_path: Path, tmp_path_factory) -> str:
    uri = fresh_uri(tmp_path, tmp_path_factory)
    mlflow.set_tracking_uri(uri)  # mlflow.search_runs reads the global URI
    return uri


def _runs(experiment: str = "quickstart"):
    return mlflow.search_runs(experiment_names=[experiment])


def test_resolve_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_uri(None) == "http://127.0.0.1:5000"
    assert resolve_uri("sqlite:////x/y.db") == "sqlite:////x/y.db"


def test_layout_parent_children_params_metrics(uri: str, tmp_path: Path) -> None:
    t = Tracker(
        uri,
        "quickstart",
        "qs-1",
        {
            "sweeplab.command": "sweeplab run sweeps/quickstart.yaml",
            "sweeplab.ray_address": "local",
            "sweeplab.smoke": "true",
        },
    )
    for i in range(2):
        lr, wd = grid_point(i)
        run_trial(t, f"t{i}", lr, wd, seed=0, errors=[30.0, 20.0, 10.0 + i])
    t.close()
    df = _runs()
    assert len(df) == 3
    parents = df[df["tags.mlflow.parentRunId"].isna()]
    children = df[df["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 2
    parent = parents.iloc[0]
    assert parent["status"] == "FINISHED" and parent["tags.sweeplab.launch"] == "qs-1"
    assert parent["tags.sweeplab.sweep"] == "quickstart" and parent["tags.sweeplab.smoke"] == "true"
    assert parent["tags.sweeplab.git_commit"] and parent["tags.sweeplab.command"].startswith("sweeplab run")
    assert set(children["tags.mlflow.parentRunId"]) == {parent["run_id"]}
    assert set(children["status"]) == {"FINISHED"}
    for axis in AXES:  # the five grid axes as dotted params
        assert children[f"params.{axis}"].notna().all()
    assert set(children["params.optim.lr"].astype(float)) == {grid_point(0)[0], grid_point(1)[0]}
    assert set(children["params.data.synthetic_shape"]) == {"[3, 32, 32]"}
    metric_cols = {c[len("metrics.") :] for c in df.columns if c.startswith("metrics.")}
    assert metric_cols == set(METRICS) - {"time/compile_s"}  # no pid, timestamp, training_iteration, ...
    run = children[children["tags.sweeplab.trial_id"] == "t1"].iloc[0]
    assert run["tags.sweeplab.row.quickstart"] == "1" and run["tags.sweeplab.hardware"] == "cpu x2"
    hist = client(uri).get_metric_history(run["run_id"], "val/error")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(1, 30.0), (2, 20.0), (3, 11.0)]
    path = client(uri).download_artifacts(run["run_id"], "config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(path).read_text()) == trial_config(*grid_point(1), seed=0)


def test_resume_reattaches_without_duplicates(uri: str) -> None:
    lr, wd = grid_point(0)
    first = Tracker(uri, "quickstart", "qs-resume", {"sweeplab.command": "sweeplab run"})
    first.trial_start("t0", trial_config(lr, wd, 0), {"sweeplab.seed": "0"})
    first.trial_result("t0", {"epoch": 1, "val/error": 40.0})
    # the driver dies here: nothing is closed; `sweeplab resume` builds a new Tracker
    second = Tracker(uri, "quickstart", "qs-resume", {"sweeplab.command": "sweeplab resume qs-resume"})
    assert second.parent_id == first.parent_id
    second.trial_start("t0", trial_config(lr, wd, 0), {"sweeplab.seed": "0"})
    assert second._children["t0"] == first._children["t0"]
    assert client(uri).get_run(first._children["t0"]).info.status == "RUNNING"
    second.trial_result("t0", {"epoch": 2, "val/error": 30.0})
    second.trial_end("t0", failed=False, stopped_early=False)
    second.close()
    df = _runs()
    assert len(df) == 2 and df["tags.mlflow.parentRunId"].isna().sum() == 1
    assert df.loc[df["tags.mlflow.parentRunId"].isna(), "tags.sweeplab.command"].iloc[0].endswith("resume qs-resume")
    steps = [m.step for m in client(uri).get_metric_history(first._children["t0"], "val/error")]
    assert sorted(steps) == [1, 2]
    # a second launch of the same sweep is a second parent in the same experiment
    Tracker(uri, "quickstart", "qs-other", {}).close()
    assert _runs()["tags.mlflow.parentRunId"].isna().sum() == 2


def test_failed_and_stopped_early_children(uri: str) -> None:
    t = Tracker(uri, "quickstart", "qs-2", {})
    run_trial(t, "ok", *grid_point(0), seed=0, errors=[20.0, 10.0])
    run_trial(t, "stopped", *grid_point(1), seed=0, errors=[50.0], stopped=True)
    run_trial(t, "boom", *grid_point(2), seed=0, errors=[60.0], failed=True)
    t.close()
    df = _runs().set_index("tags.sweeplab.trial_id")
    assert df.loc["ok", "status"] == "FINISHED" and df.loc["ok", "tags.stopped_early"] == "false"
    assert df.loc["stopped", "status"] == "FINISHED" and df.loc["stopped", "tags.stopped_early"] == "true"
    assert df.loc["boom", "status"] == "FAILED"


def test_results_keep_only_numeric_design_metrics(uri: str) -> None:
    t = Tracker(uri, "quickstart", "qs-3", {})
    t.trial_start("t", trial_config(0.1, 1e-4, 0), {})
    t.trial_result("t", {"val/error": 5.0})  # no epoch: not a training result
    t.trial_result("t", {"epoch": 1, "val/error": "n/a", "lr": True, "train/loss": float("nan"), "pid": 1})
    run = client(uri).get_run(t._children["t"])
    assert set(run.data.metrics) == {"epoch", "train/loss"}


def test_epochs_are_timestamped_when_the_trial_measured_them(uri: str) -> None:
    """The driver may log an epoch seconds after the trial reported it; MLflow keeps the trial's time."""
    t = Tracker(uri, "quickstart", "qs-4", {})
    t.trial_start("t", trial_config(0.1, 1e-4, 0), {})
    t.trial_result("t", {"epoch": 1, "val/error": 40.0}, at=1_700_000_000.25)
    t.trial_result("t", {"epoch": 2, "val/error": 30.0})  # no time given: logged now
    history = client(uri).get_metric_history(t._children["t"], "val/error")
    assert [(m.step, m.timestamp) for m in history][0] == (1, 1_700_000_000_250)
    assert history[1].timestamp > 1_700_000_000_250
