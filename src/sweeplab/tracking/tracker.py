"""The Tune driver's MLflow writer: a parent run per launch, a child run per trial.

Only the driver talks to MLflow, so one SQLite file serves a whole cluster. Every run is found
again by its tags (`sweeplab.launch`, `sweeplab.trial_id`), which is what makes `sweeplab resume`
re-attach instead of duplicating.
"""
from __future__ import annotations

import numbers
import time
from typing import Any

import yaml

from sweeplab.config import flatten
from sweeplab.tracking.store import (LAUNCH, METRICS, PARENT, SWEEP, TRIAL, client, ensure_experiment,
                                     git_commit, quote, resolve_uri, search)


class Tracker:
    """MLflow runs of one sweep launch; the Tune callback calls it from the driver."""

    def __init__(self, tracking_uri: str | None, experiment: str, launch: str, tags: dict[str, str]) -> None:
        self.uri = resolve_uri(tracking_uri)
        self.client = client(self.uri)
        self.experiment, self.launch = experiment, launch
        self.experiment_id = ensure_experiment(self.client, self.uri, experiment)
        self._children: dict[str, str] = {}  # trial id -> run id
        all_tags = {SWEEP: experiment, LAUNCH: launch, **tags, "sweeplab.git_commit": git_commit()}
        found = search(self.client, [self.experiment_id],
                       f"tags.`{LAUNCH}` = {quote(launch)} and tags.`{PARENT}` IS NULL")
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=launch)
            self.parent_id = run.info.run_id
        self._set_tags(self.parent_id, all_tags)

    def trial_start(self, trial_id: str, config: dict[str, Any], tags: dict[str, str]) -> None:
        """Create (or re-open after a resume) the trial's child run with params, tags and config.yaml."""
        run_id = self._find(trial_id)
        base = {PARENT: self.parent_id, SWEEP: self.experiment, LAUNCH: self.launch, TRIAL: trial_id}
        if run_id is None:
            run_id = self.client.create_run(self.experiment_id, run_name=trial_id, tags=base).info.run_id
            self._children[trial_id] = run_id
            if config:  # params are immutable: written once, when the run is new
                from mlflow.entities import Param

                params = [Param(k, _param(v)) for k, v in sorted(flatten(config).items())]
                self.client.log_batch(run_id, params=params)
                self.client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
        else:
            self.client.update_run(run_id, status="RUNNING")
        self._set_tags(run_id, {**base, **tags})

    def trial_tags(self, trial_id: str, tags: dict[str, str]) -> None:
        """Add or overwrite tags of a trial's run (e.g. sweeplab.hardware)."""
        self._set_tags(self._run_id(trial_id), tags)

    def trial_result(self, trial_id: str, metrics: dict[str, Any], at: float | None = None) -> None:
        """Log one epoch's design metrics at step=epoch, in one batch, timestamped `at` (unix seconds,
        when the trial measured them; default now); Ray's bookkeeping is dropped."""
        from mlflow.entities import Metric

        if "epoch" not in metrics:
            return
        step, now = int(metrics["epoch"]), int((at or time.time()) * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k in METRICS and _number(v)]
        if batch:
            self.client.log_batch(self._run_id(trial_id), metrics=batch)

    def trial_end(self, trial_id: str, failed: bool, stopped_early: bool) -> None:
        """Close the trial's run: FAILED on error, else FINISHED (also when a scheduler stopped it)."""
        run_id = self._run_id(trial_id)
        self._set_tags(run_id, {"stopped_early": "true" if stopped_early and not failed else "false"})
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def close(self, status: str = "FINISHED") -> None:
        """Close the launch's parent run."""
        self.client.set_terminated(self.parent_id, status)

    def _find(self, trial_id: str) -> str | None:
        if trial_id not in self._children:
            found = search(self.client, [self.experiment_id],
                           f"tags.`{PARENT}` = {quote(self.parent_id)} and tags.`{TRIAL}` = {quote(trial_id)}")
            if not found:
                return None
            self._children[trial_id] = found[0].info.run_id
        return self._children[trial_id]

    def _run_id(self, trial_id: str) -> str:
        run_id = self._find(trial_id)
        if run_id is None:  # a result before its start (driver restarted mid-trial): open a bare run
            self.trial_start(trial_id, {}, {})
            run_id = self._children[trial_id]
        return run_id

    def _set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def _param(value: Any) -> str:
    """A param value as MLflow stores it; lists stay YAML-readable ('[3, 32, 32]')."""
    if isinstance(value, (list, tuple)):
        return yaml.safe_dump(list(value), default_flow_style=True).strip()
    return str(value)


def _number(value: Any) -> bool:
    """A real number, numpy scalars included; bools and strings are not metrics (NaN is kept)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
