"""The MLflow run of one `sweeplab train`: its config as params and config.yaml, a metric step per epoch,
and at the end its final weights as the run's model (`models.py`).

The run's id is kept in the run folder (`mlflow.json`), so `--resume` continues the same MLflow run
and logs each epoch once. `epoch` is the step of every metric, not a metric of its own. Unlike a sweep
trial, a training run carries no `sweeplab.trial_id` tag: `best`, `table` and `report` leave it out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sweeplab.core.names import METRICS, RESUMED_WITH, RUN_FOLDER
from sweeplab.schema import flatten
from sweeplab.tracking import models
from sweeplab.tracking.store import client, ensure_experiment, git_commit, resolve_uri
from sweeplab.tracking.tracker import standard_tags

EXPERIMENT = "train"  # the default experiment of `sweeplab train` runs
RECORD = "mlflow.json"  # in the run folder: the store and run id that --resume continues


class TrainRun:
    """One training run in MLflow, opened (or re-opened, from the run folder's record) at the start."""

    def __init__(
        self, tracking_uri: str | None, folder: Path, config: dict[str, Any], source: str, experiment: str = EXPERIMENT
    ) -> None:
        from mlflow.entities import Param

        self.uri = resolve_uri(tracking_uri)
        self.client = client(self.uri)
        record = _read(folder / RECORD)
        if record.get("tracking_uri") == self.uri and self._exists(record.get("run_id", "")):
            self.run_id = record["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            # MLflow's params never change: a longer schedule (the one change --resume allows) is a tag,
            # and config.yaml is rewritten to the config the run now trains
            params = self.client.get_run(self.run_id).data.params
            changed = {k: v for k, v in flatten(config).items() if k in params and params[k] != str(v)}
            if changed:
                tag = " ".join(f"{k}={v}" for k, v in sorted(changed.items()))
                self.client.set_tag(self.run_id, RESUMED_WITH, tag)
                self.client.log_text(self.run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
        else:
            exp = ensure_experiment(self.client, self.uri, experiment)
            tags = {**standard_tags(source, git_commit()), RUN_FOLDER: str(folder.resolve())}
            self.run_id = self.client.create_run(exp, run_name=folder.name, tags=tags).info.run_id
            params = [Param(k, str(v)) for k, v in sorted(flatten(config).items())]
            self.client.log_batch(self.run_id, params=params)
            self.client.log_text(self.run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
            (folder / RECORD).write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}) + "\n")
        history = self.client.get_metric_history(self.run_id, "val/error") if record else []
        self.logged = {m.step for m in history}  # epochs a killed run logged already: each is logged once

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def epoch(self, metrics: dict[str, float]) -> None:
        """One epoch's metrics, at step = epoch."""
        import time

        from mlflow.entities import Metric

        step, now = int(metrics["epoch"]), int(time.time() * 1000)
        if step in self.logged:
            return
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k in METRICS and k != "epoch"]
        self.client.log_batch(self.run_id, metrics=batch)
        self.logged.add(step)

    def model(self, folder: Path, step: int) -> str:
        """The saved model folder as the run's logged model; returns its id."""
        return models.log_saved_model(self.uri, self.run_id, folder, step=step)

    def end(self, status: str = "FINISHED") -> None:
        """FINISHED, KILLED (stopped with --stop-after or Ctrl-C: --resume continues it) or FAILED."""
        self.client.set_terminated(self.run_id, status=status)

    @property
    def url_hint(self) -> str:
        """Where to look: the run id and the store, as one line."""
        return f"MLflow run {self.run_id} in {self.uri} (its model: runs:/{self.run_id}/{models.NAME})"


def _read(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
