"""MLflow layout written by the Tracker, against a real SQLite store (no Ray: the Tracker is driven
as the Tune callback drives it)."""

from __future__ import annotations

import json
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
    assert df.loc["ok", "status"] == "FINISHED" and df.loc["ok", "tags.sweeplab.stopped_early"] == "false"
    assert df.loc["stopped", "status"] == "FINISHED" and df.loc["stopped", "tags.sweeplab.stopped_early"] == "true"
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


def _child(uri: str, t: Tracker, trial_id: str):
    return client(uri).get_run(t._children[trial_id])


def test_children_named_by_label_with_outcome_and_standard_tags(uri: str) -> None:
    t = Tracker(uri, "quickstart", "qs-5", {}, source="sweeps/quickstart.yaml")
    t.trial_start("ok", trial_config(0.1, 5e-4, 0), {"sweeplab.label": "lr=0.1 weight_decay=0.0005"})
    assert _child(uri, t, "ok").data.tags["sweeplab.outcome"] == "unfinished"
    t.trial_end("ok", failed=False, stopped_early=False, epoch=3)
    t.trial_start("stop", trial_config(0.4, 5e-4, 0), {"sweeplab.label": "lr=0.4 weight_decay=0.0005"})
    t.trial_end("stop", failed=False, stopped_early=True, epoch=1)
    t.trial_start("boom", trial_config(0.8, 5e-4, 0), {"sweeplab.label": "lr=0.8 weight_decay=0.0005"})
    t.trial_end("boom", failed=True, stopped_early=False, epoch=2)
    t.trial_start("cut", trial_config(0.2, 5e-4, 0), {"sweeplab.label": "lr=0.2 weight_decay=0.0005"})
    t.trial_interrupted("cut")
    t.close()
    ok = _child(uri, t, "ok")
    assert ok.info.run_name == "lr=0.1 weight_decay=0.0005" == ok.data.tags["sweeplab.label"]
    outcomes = {tid: _child(uri, t, tid).data.tags["sweeplab.outcome"] for tid in ("ok", "stop", "boom", "cut")}
    assert outcomes == {"ok": "finished", "stop": "stopped early at epoch 1", "boom": "failed", "cut": "unfinished"}
    assert _child(uri, t, "stop").data.tags["sweeplab.stopped_early"] == "true"
    assert "stopped_early" not in _child(uri, t, "stop").data.tags  # every sweeplab tag has the prefix
    parent = client(uri).get_run(t.parent_id)
    for run in (ok, parent):
        tags = run.data.tags
        assert tags["mlflow.source.name"] == "sweeps/quickstart.yaml" and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"]
        commit = tags["sweeplab.git_commit"] if run is parent else parent.data.tags["sweeplab.git_commit"]
        assert commit == "unknown" or tags["mlflow.source.git.commit"] == commit.removesuffix("-dirty")


def test_a_run_named_by_its_tune_id_is_renamed_on_resume(uri: str) -> None:
    first = Tracker(uri, "quickstart", "qs-old", {})
    first.trial_start("25ce8_00004", trial_config(0.1, 5e-4, 0), {})
    assert _child(uri, first, "25ce8_00004").info.run_name == "25ce8_00004"
    second = Tracker(uri, "quickstart", "qs-old", {})
    assert second.ensure_trial("25ce8_00004", trial_config(0.1, 5e-4, 0), {"sweeplab.label": "lr=0.1"}) == [
        "name",
        "tags",
    ]
    assert _child(uri, second, "25ce8_00004").info.run_name == "lr=0.1"


def test_dataset_input_logged_once(uri: str) -> None:
    t = Tracker(uri, "quickstart", "qs-6", {})
    t.trial_start("t", trial_config(0.1, 1e-4, 0), {})
    data = {"name": "fashion_mnist", "train": 60000, "test": 10000, "digest": "526551a540c449fb"}
    assert t.trial_dataset("t", data) is True
    assert t.trial_dataset("t", data) is False  # a resumed trial's first result carries it again
    inputs = _child(uri, t, "t").inputs.dataset_inputs
    assert len(inputs) == 1
    d = inputs[0].dataset
    assert (d.name, d.digest) == ("fashion_mnist", "526551a540c449fb")
    assert json.loads(d.profile) == {"num_rows": 70000, "train_rows": 60000, "test_rows": 10000}
    assert [(tag.key, tag.value) for tag in inputs[0].tags] == [("mlflow.data.context", "training")]


def _checkpoint(folder: Path, epoch: int) -> Path:
    """A trial folder's newest checkpoint file (its bytes stand for the weights of `epoch`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint.pt").write_bytes(b"weights of epoch %d" % epoch)
    return folder / "checkpoint.pt"


def test_final_checkpoint_uploaded_once_and_tagged(uri: str, tmp_path: Path) -> None:
    t = Tracker(uri, "quickstart", "qs-7", {})
    t.trial_start("t", trial_config(0.1, 1e-4, 0), {})
    ckpt = str(_checkpoint(tmp_path / "trials" / "3", 2))
    assert t.trial_checkpoint("t", ckpt, {"epoch": 2}) is True
    assert t.trial_checkpoint("t", ckpt, {"epoch": 2}) is False  # the end re-sent after a resume: not copied again
    run_id = t._children["t"]
    assert _child(uri, t, "t").data.tags["sweeplab.checkpoint_path"] == ckpt
    files = sorted(a.path for a in client(uri).list_artifacts(run_id, "checkpoint"))
    assert files == ["checkpoint/metrics.json", "checkpoint/state.pt"]
    # a failed trial resumed to its end: the newer checkpoint replaces the files, none doubled
    newer = str(_checkpoint(tmp_path / "other", 3))
    assert t.trial_checkpoint("t", newer, {"epoch": 3}) is True
    assert sorted(a.path for a in client(uri).list_artifacts(run_id, "checkpoint")) == files
    got = client(uri).download_artifacts(run_id, "checkpoint/state.pt", str(tmp_path / "dl"))
    assert Path(got).read_bytes() == b"weights of epoch 3"
    got = client(uri).download_artifacts(run_id, "checkpoint/metrics.json", str(tmp_path / "dl"))
    assert json.loads(Path(got).read_text()) == {"epoch": 3}


def test_checkpoint_upload_off_keeps_the_tag(uri: str, tmp_path: Path) -> None:
    t = Tracker(uri, "quickstart", "qs-8", {})
    t.trial_start("t", trial_config(0.1, 1e-4, 0), {})
    ckpt = str(_checkpoint(tmp_path / "trials" / "1", 1))
    assert t.trial_checkpoint("t", ckpt, {"epoch": 1}, upload=False) is False
    assert _child(uri, t, "t").data.tags["sweeplab.checkpoint_path"] == ckpt
    assert client(uri).list_artifacts(t._children["t"], "checkpoint") == []


def test_parent_settings_files_and_best(uri: str, tmp_path: Path) -> None:
    t = Tracker(uri, "quickstart", "qs-9", {})
    params = {"search.name": "grid", "scheduler.name": "asha", "scheduler.grace_period": 1, "seeds": 1}
    files = {"sweep.yaml": "name: quickstart\n", "trials.json": json.dumps([{"index": 0, "label": "lr=0.1"}])}
    t.launch_settings(params, files)
    # a resume on another machine: settings that changed are not rewritten (params are immutable), files kept
    again = Tracker(uri, "quickstart", "qs-9", {})
    again.launch_settings({**params, "seeds": 2, "mode": "min"}, {**files, "sweep.yaml": "edited\n"})
    again.launch_best("val/error", 7.5, "lr=0.1")
    again.close()
    parent = client(uri).get_run(t.parent_id)
    assert parent.data.params == {
        "search.name": "grid",
        "scheduler.name": "asha",
        "scheduler.grace_period": "1",
        "seeds": "1",
        "mode": "min",
    }
    assert parent.data.metrics == {"best/val/error": 7.5}
    assert parent.data.tags["sweeplab.best_label"] == "lr=0.1"
    assert sorted(a.path for a in client(uri).list_artifacts(t.parent_id)) == ["sweep.yaml", "trials.json"]
    got = client(uri).download_artifacts(t.parent_id, "sweep.yaml", str(tmp_path))
    assert Path(got).read_text() == "name: quickstart\n"
