"""What MLflow keeps of a sweep: the `mlflow` key of a sweep file, and (slow) a real sweep's record,
read back with MlflowClient: runs named by label, outcomes, standard tags, dataset input, checkpoint
and the parent run's settings, files and best result."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from sweep_cli import child_runs, cli, write_sweep
from sweeplab.core.errors import SweepError
from sweeplab.search_spaces import from_snapshot, load


def test_log_checkpoints_key_defaults_true_and_smoke_overrides(tmp_path: Path) -> None:
    assert load(write_sweep(tmp_path)).log_checkpoints is True
    path = write_sweep(tmp_path, mlflow={"log_checkpoints": False}, smoke={"mlflow": {"log_checkpoints": True}})
    assert load(path).log_checkpoints is False
    assert load(path, smoke=True).log_checkpoints is True
    # a launch saved before the key existed resumes with the default
    snap = load(write_sweep(tmp_path)).snapshot()
    assert from_snapshot(snap).log_checkpoints is True


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"mlflow": {"log_checkpoint": False}}, "unknown key 'mlflow.log_checkpoint'; did you mean"),
        ({"mlflow": {"log_checkpoints": "no"}}, "'mlflow.log_checkpoints' must be true or false"),
        ({"mlflow": True}, "'mlflow' must be a mapping"),
        ({"smoke": {"mlflow": {"log_checkpoints": 0}}}, "'smoke.mlflow.log_checkpoints' must be true or false"),
    ],
)
def test_bad_mlflow_key_names_it(tmp_path: Path, spec: dict, message: str) -> None:
    with pytest.raises(SweepError, match=message.replace("(", r"\(")):
        load(write_sweep(tmp_path, **spec))


@pytest.mark.slow
def test_a_real_sweep_is_whole_in_mlflow(tmp_path: Path) -> None:
    """Two trials of two epochs; the record a user finds in MLflow without opening Tune's folders."""
    path = write_sweep(
        tmp_path,
        name="record",
        overrides={"train.epochs": 2},
        space={"optim.lr": {"grid": [0.1, 0.01]}},
        max_concurrent=2,
    )
    run = subprocess.run(
        cli(tmp_path, "run", str(path), "--name", "record", "--num-cpus", "2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "] lr=0.1  start" in run.stdout and "] lr=0.01  epoch 2/2 " in run.stdout, run.stdout
    client, runs = child_runs(tmp_path, "record")
    assert sorted(r.info.run_name for r in runs) == ["lr=0.01", "lr=0.1"]
    for r in runs:
        tags = r.data.tags
        assert tags["sweeplab.label"] == r.info.run_name and tags["sweeplab.outcome"] == "finished"
        assert tags["sweeplab.stopped_early"] == "false" and "stopped_early" not in tags
        assert tags["mlflow.source.name"] == str(path) and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] and "mlflow.source.git.commit" in tags
        (data,) = r.inputs.dataset_inputs
        assert data.dataset.name == "synthetic" and len(data.dataset.digest) == 16
        assert json.loads(data.dataset.profile) == {"num_rows": 384, "train_rows": 256, "test_rows": 128}
        ckpt = Path(tags["sweeplab.checkpoint_path"])
        assert ckpt.name.startswith("checkpoint_") and (ckpt / "state.pt").is_file()
        files = sorted(a.path for a in client.list_artifacts(r.info.run_id, "checkpoint"))
        assert files == ["checkpoint/metrics.json", "checkpoint/state.pt"]
        assert sorted(a.path for a in client.list_artifacts(r.info.run_id)) == ["checkpoint", "config.yaml"]
    digests = {r.inputs.dataset_inputs[0].dataset.digest for r in runs}
    assert len(digests) == 1  # one dataset, whatever the lr
    (parent,) = client.search_runs(
        [runs[0].info.experiment_id], "tags.`sweeplab.launch` = 'record' and tags.`mlflow.parentRunId` IS NULL"
    )
    assert parent.data.params["search.name"] == "grid" and parent.data.params["metric"] == "val/error"
    assert parent.data.params["mlflow.log_checkpoints"] == "true"
    assert parent.data.tags["mlflow.source.name"] == str(path)
    best = min(runs, key=lambda r: r.data.metrics["val/error"])
    assert parent.data.metrics["best/val/error"] == best.data.metrics["val/error"]
    assert parent.data.tags["sweeplab.best_label"] == best.info.run_name
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == ["report", "sweep.yaml", "trials.json"]
    report = sorted(a.path for a in client.list_artifacts(parent.info.run_id, "report"))
    assert "report/best_trials.md" in report and "report/best_trials.html" in report
    # the launch's figures, drawn from MLflow: short names (MLflow's artifact tree cuts long ones), SVG beside PNG
    assert {"report/curves.png", "report/curves.svg"} <= set(report), report
    folder = tmp_path / "parent"
    sweep_file = client.download_artifacts(parent.info.run_id, "sweep.yaml", str(folder))
    assert yaml.safe_load(Path(sweep_file).read_text()) == yaml.safe_load(path.read_text())
    trials = json.loads(Path(client.download_artifacts(parent.info.run_id, "trials.json", str(folder))).read_text())
    assert sorted(t["label"] for t in trials) == ["lr=0.01", "lr=0.1"]
