"""The MLflow layout of a finished launch (docs/architecture.md, "Contracts"), checked on any store:
whatever the backend (SQLite, PostgreSQL, a server), a launch must read back the same."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from sweeplab.core.names import METRICS

# the contract's per-epoch metrics (docs/architecture.md, "Contracts")
EVERY_EPOCH = ("epoch", "lr", "train/loss", "train/error", "val/loss", "val/error", "time/epoch_s", "time/images_per_s")
assert set(EVERY_EPOCH) <= set(METRICS)


def check_trials(client, runs: list, labels: list[str], epochs: int, sweep: Path) -> None:
    """Child runs named by `labels`, each finished with its tags, dataset input, every metric once per
    epoch 1..`epochs` (step = epoch) and artifacts config.yaml and checkpoint/ (state.pt, metrics.json)."""
    assert sorted(r.info.run_name for r in runs) == sorted(labels)
    models_wanted = ["READY"] if logs_models(sweep) else []
    for r in runs:
        tags = r.data.tags
        assert tags["sweeplab.label"] == r.info.run_name and tags["sweeplab.outcome"] == "finished", tags
        assert tags["sweeplab.stopped_early"] == "false"
        assert tags["mlflow.source.name"] == str(sweep) and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] and "mlflow.source.git.commit" in tags and tags["sweeplab.trial_id"]
        assert r.data.params["optim.lr"] and r.data.params["train.epochs"] == str(epochs)
        (data,) = r.inputs.dataset_inputs
        assert data.dataset.name == "synthetic" and len(data.dataset.digest) == 16
        assert set(EVERY_EPOCH) <= set(r.data.metrics), sorted(r.data.metrics)
        for name in r.data.metrics:  # the others (time/compile_s) are logged at some epochs: never twice
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, name))
            if name in EVERY_EPOCH:
                assert steps == list(range(1, epochs + 1)), f"{r.info.run_name} {name}: steps {steps}"
            assert len(steps) == len(set(steps)) and set(steps) <= set(range(1, epochs + 1)), (name, steps)
        files = sorted(a.path for a in client.list_artifacts(r.info.run_id, "checkpoint"))
        assert files == ["checkpoint/metrics.json", "checkpoint/state.pt"]
        assert sorted(a.path for a in client.list_artifacts(r.info.run_id)) == ["checkpoint", "config.yaml"]
        # its final weights as an MLflow model, unless the sweep says `mlflow: {log_models: false}`
        models = client.search_logged_models([r.info.experiment_id], filter_string=f"source_run_id = '{r.info.run_id}'")
        assert [str(m.status) for m in models] == models_wanted, models


def logs_models(sweep: Path) -> bool:
    """Whether the sweep file asks for each finished trial's model in MLflow (`mlflow.log_models`, default true)."""
    return (yaml.safe_load(sweep.read_text()).get("mlflow") or {}).get("log_models", True)


def check_parent(client, runs: list, launch: str, sweep: Path, folder: Path) -> None:
    """The launch's parent run: its children point at it; settings, best result, sweep.yaml, trials.json, report/."""
    (parent,) = client.search_runs(
        [runs[0].info.experiment_id], f"tags.`sweeplab.launch` = '{launch}' and tags.`mlflow.parentRunId` IS NULL"
    )
    assert parent.info.run_name == launch and parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert parent.data.params["metric"] == "val/error" and parent.data.params["mlflow.log_checkpoints"] == "true"
    assert parent.data.params["mlflow.log_models"] == str(logs_models(sweep)).lower()
    assert parent.data.tags["mlflow.source.name"] == str(sweep)
    best = min(runs, key=lambda r: r.data.metrics["val/error"])
    assert parent.data.metrics["best/val/error"] == best.data.metrics["val/error"]
    assert parent.data.tags["sweeplab.best_label"] == best.info.run_name
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == ["report", "sweep.yaml", "trials.json"]
    report = sorted(a.path for a in client.list_artifacts(parent.info.run_id, "report"))
    assert "report/best_trials.md" in report, report
    folder.mkdir(parents=True, exist_ok=True)
    sweep_file = client.download_artifacts(parent.info.run_id, "sweep.yaml", str(folder))
    assert yaml.safe_load(Path(sweep_file).read_text()) == yaml.safe_load(sweep.read_text())
    trials = json.loads(Path(client.download_artifacts(parent.info.run_id, "trials.json", str(folder))).read_text())
    assert sorted(t["label"] for t in trials) == sorted(r.info.run_name for r in runs)
