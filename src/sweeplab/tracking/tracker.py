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

from sweeplab.core.names import LAUNCH, METRICS, PARENT, SWEEP, TRIAL
from sweeplab.schema import flatten
from sweeplab.tracking.store import client, ensure_experiment, git_commit, quote, resolve_uri, search


class Tracker:
    """MLflow runs of one sweep launch; the Tune callback calls it from the driver."""

    def __init__(self, tracking_uri: str | None, experiment: str, launch: str, tags: dict[str, str]) -> None:
        self.uri = resolve_uri(tracking_uri)
        self.client = client(self.uri)
        self.experiment, self.launch = experiment, launch
        self.experiment_id = ensure_experiment(self.client, self.uri, experiment)
        self._children: dict[str, str] = {}  # trial id -> run id
        self._logged: dict[str, set[int]] = {}  # trial id -> epochs in MLflow
        all_tags = {SWEEP: experiment, LAUNCH: launch, **tags, "sweeplab.git_commit": git_commit()}
        found = search(
            self.client, [self.experiment_id], f"tags.`{LAUNCH}` = {quote(launch)} and tags.`{PARENT}` IS NULL"
        )
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=launch)
            self.parent_id = run.info.run_id
        self._set_tags(self.parent_id, all_tags)

    def trial_start(self, trial_id: str, config: dict[str, Any], tags: dict[str, str]) -> None:
        """Create (or re-open after a resume) the trial's child run with params, tags and config.yaml.
        Safe to call again after a failure part-way: what is there already is not logged twice."""
        reopened = self._find(trial_id) is not None
        self.ensure_trial(trial_id, config, tags)
        if reopened:
            self.client.update_run(self._children[trial_id], status="RUNNING")

    def ensure_trial(self, trial_id: str, config: dict[str, Any], tags: dict[str, str]) -> list[str]:
        """The trial's child run as its start logs it: created if missing; params, config.yaml and tags it
        lacks are added (its status is left alone). Returns what was missing ([] when nothing was)."""
        from mlflow.entities import Param

        base = {PARENT: self.parent_id, SWEEP: self.experiment, LAUNCH: self.launch, TRIAL: trial_id}
        run_id, fixed = self._find(trial_id), []
        if run_id is None:
            run_id = self.client.create_run(self.experiment_id, run_name=trial_id, tags=base).info.run_id
            self._children[trial_id] = run_id
            fixed.append("run")
            have_params, have_tags, have_config = {}, dict(base), False
        else:
            run = self.client.get_run(run_id)
            have_params, have_tags = dict(run.data.params), dict(run.data.tags)
            have_config = bool(config) and any(a.path == "config.yaml" for a in self.client.list_artifacts(run_id))
        if config:  # params are immutable: only the missing ones are written (MLflow splits a batch over 100)
            params = [Param(k, _param(v)) for k, v in sorted(flatten(config).items()) if k not in have_params]
            if params:
                self.client.log_batch(run_id, params=params)
                fixed.append("params")
            if not have_config:
                self.client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
                fixed.append("config.yaml")
        missing = {k: v for k, v in {**base, **tags}.items() if have_tags.get(k) != str(v)}
        if missing:
            self._set_tags(run_id, missing)
            fixed.append("tags")
        return fixed

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
        run_id = self._run_id(trial_id)
        if trial_id not in self._logged:  # a run re-opened after a resume may hold epochs already
            self._logged[trial_id] = self.logged_epochs(trial_id)
        if step in self._logged[trial_id]:
            # A trial resumed or retried from an older checkpoint trains some epochs again (bit for bit,
            # bar the timings): each epoch is in MLflow once, as first logged.
            return
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k in METRICS and _number(v)]
        if batch:
            self.client.log_batch(run_id, metrics=batch)
            self._logged[trial_id].add(step)

    def trial_end(self, trial_id: str, failed: bool, stopped_early: bool) -> None:
        """Close the trial's run: FAILED on error, else FINISHED (also when a scheduler stopped it)."""
        run_id = self._run_id(trial_id)
        self._set_tags(run_id, {"stopped_early": "true" if stopped_early and not failed else "false"})
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def trial_interrupted(self, trial_id: str) -> None:
        """Mark a trial's open run KILLED (the sweep was stopped; `resume` re-opens it as RUNNING)."""
        run_id = self._find(trial_id)
        if run_id is not None and self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, "KILLED")

    def logged_epochs(self, trial_id: str) -> set[int]:
        """The epochs MLflow holds metrics of for a trial (the steps of its `epoch` metric; one batch per epoch)."""
        run_id = self._find(trial_id)
        return set() if run_id is None else {m.step for m in self.client.get_metric_history(run_id, "epoch")}

    def run_status(self, trial_id: str) -> str | None:
        """The status of a trial's run (RUNNING, FINISHED, FAILED, KILLED), None when it has none."""
        run_id = self._find(trial_id)
        return None if run_id is None else self.client.get_run(run_id).info.status

    def close(self, status: str = "FINISHED") -> None:
        """Close the launch's parent run."""
        self.client.set_terminated(self.parent_id, status)

    def _find(self, trial_id: str) -> str | None:
        if trial_id not in self._children:
            found = search(
                self.client,
                [self.experiment_id],
                f"tags.`{PARENT}` = {quote(self.parent_id)} and tags.`{TRIAL}` = {quote(trial_id)}",
            )
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
