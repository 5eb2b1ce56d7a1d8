"""The Tune driver's MLflow writer: a parent run per launch, a child run per trial.

Only the driver talks to MLflow, so one SQLite file serves a whole cluster. Every run is found
again by its tags (`sweeplab.launch`, `sweeplab.trial_id`), which is what makes `sweeplab resume`
re-attach instead of duplicating. A child run is named by its trial's label (tag `sweeplab.label`),
says how it ended in `sweeplab.outcome`, and holds its dataset input and final checkpoint; the parent
holds the sweep file, the compiled trials, the sweep's settings and, at the end, the best result.
"""

from __future__ import annotations

import getpass
import json
import numbers
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from sweeplab.core.names import (
    BEST_LABEL,
    CHECKPOINT_PATH,
    GIT_COMMIT,
    LABEL,
    LAUNCH,
    METRICS,
    OUTCOME,
    PARENT,
    STOPPED_EARLY,
    SWEEP,
    SWEEP_FILE,
    TRIAL,
)
from sweeplab.schema import flatten
from sweeplab.tracking.store import client, ensure_experiment, git_commit, quote, resolve_uri, search


class Tracker:
    """MLflow runs of one sweep launch; the Tune callback calls it from the driver."""

    def __init__(
        self, tracking_uri: str | None, experiment: str, launch: str, tags: dict[str, str], source: str = ""
    ) -> None:
        self.uri = resolve_uri(tracking_uri)
        self.client = client(self.uri)
        self.experiment, self.launch = experiment, launch
        self.experiment_id = ensure_experiment(self.client, self.uri, experiment)
        self._children: dict[str, str] = {}  # trial id -> run id
        self._logged: dict[str, set[int]] = {}  # trial id -> epochs in MLflow
        commit = git_commit()
        self.standard = standard_tags(source or tags.get(SWEEP_FILE, ""), commit)
        all_tags = {SWEEP: experiment, LAUNCH: launch, **tags, GIT_COMMIT: commit, **self.standard}
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
            self._set_tags(self._children[trial_id], {OUTCOME: UNFINISHED})

    def ensure_trial(self, trial_id: str, config: dict[str, Any], tags: dict[str, str]) -> list[str]:
        """The trial's child run as its start logs it: created if missing; params, config.yaml and tags it
        lacks are added (its status is left alone). Returns what was missing ([] when nothing was)."""
        from mlflow.entities import Param

        base = {PARENT: self.parent_id, SWEEP: self.experiment, LAUNCH: self.launch, TRIAL: trial_id, **self.standard}
        name = str(tags.get(LABEL) or trial_id)
        run_id, fixed = self._find(trial_id), []
        if run_id is None:
            run_id = self.client.create_run(
                self.experiment_id, run_name=name, tags={**base, OUTCOME: UNFINISHED}
            ).info.run_id
            self._children[trial_id] = run_id
            fixed.append("run")
            have_params, have_tags, have_config = {}, {**base, "mlflow.runName": name}, False
        else:
            run = self.client.get_run(run_id)
            have_params, have_tags = dict(run.data.params), dict(run.data.tags)
            have_config = bool(config) and any(a.path == "config.yaml" for a in self.client.list_artifacts(run_id))
        if tags.get(LABEL) and have_tags.get("mlflow.runName") != name:  # a run named by its Tune id before
            self.client.update_run(run_id, name=name)
            fixed.append("name")
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
        self.trial_results(trial_id, [(metrics, at)])

    def trial_results(self, trial_id: str, results: list[tuple[dict[str, Any], float | None]]) -> None:
        """Log several epochs of a trial (each a (metrics, at) pair as `trial_result` takes them) in as few
        `log_batch` calls as MLflow allows (1000 metrics each). An epoch MLflow holds already, or twice in
        `results`, is logged once, as first logged; after a failure part-way, a call again logs the rest."""
        from mlflow.entities import Metric

        results = [(m, at) for m, at in results if "epoch" in m]
        if not results:
            return
        run_id = self._run_id(trial_id)
        if trial_id not in self._logged:  # a run re-opened after a resume may hold epochs already
            self._logged[trial_id] = self.logged_epochs(trial_id)
        logged, batch, steps = self._logged[trial_id], list[Metric](), set[int]()
        for metrics, at in results:
            step, now = int(metrics["epoch"]), int((at or time.time()) * 1000)
            if step in logged or step in steps:
                # A trial resumed or retried from an older checkpoint trains some epochs again (bit for bit,
                # bar the timings): each epoch is in MLflow once, as first logged.
                continue
            epoch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k in METRICS and _number(v)]
            if len(batch) + len(epoch) > MAX_BATCH:
                self.client.log_batch(run_id, metrics=batch)
                logged |= steps
                batch, steps = [], set()
            if epoch:
                batch += epoch
                steps.add(step)
        if batch:
            self.client.log_batch(run_id, metrics=batch)
            logged |= steps

    def trial_end(self, trial_id: str, failed: bool, stopped_early: bool, epoch: int | None = None) -> None:
        """Close the trial's run: FAILED on error, else FINISHED (also when a scheduler stopped it, which
        `sweeplab.stopped_early` and `sweeplab.outcome` say, with the epoch it stopped at)."""
        run_id = self._run_id(trial_id)
        stopped = stopped_early and not failed
        self._set_tags(run_id, {STOPPED_EARLY: str(stopped).lower(), OUTCOME: outcome(failed, stopped, epoch)})
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def trial_interrupted(self, trial_id: str) -> None:
        """Mark a trial's open run KILLED (the sweep was stopped; `resume` re-opens it as RUNNING)."""
        run_id = self._find(trial_id)
        if run_id is not None and self.client.get_run(run_id).info.status == "RUNNING":
            self._set_tags(run_id, {OUTCOME: UNFINISHED})
            self.client.set_terminated(run_id, "KILLED")

    def trial_dataset(self, trial_id: str, dataset: dict[str, Any]) -> bool:
        """Log the trial's dataset (name, train and test sizes, digest) as the run's MLflow dataset input,
        once (True when logged now). Only its description is stored: no data leaves the machine."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        run_id = self._run_id(trial_id)
        name, digest = str(dataset["name"]), str(dataset["digest"])
        have = self.client.get_run(run_id).inputs
        if any(d.dataset.name == name and d.dataset.digest == digest for d in (have.dataset_inputs if have else [])):
            return False
        sizes = {k: int(dataset[k]) for k in ("train", "test") if k in dataset}
        entity = Dataset(
            name=name,
            digest=digest,
            source_type="sweeplab",
            source=json.dumps({"dataset": name, "splits": sizes}),
            profile=json.dumps({"num_rows": sum(sizes.values()), **{f"{k}_rows": v for k, v in sizes.items()}}),
        )
        self.client.log_inputs(run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", "training")])])
        return True

    def trial_checkpoint(self, trial_id: str, path: str, metrics: dict[str, Any], upload: bool = True) -> bool:
        """Tag the trial's final checkpoint file (`sweeplab.checkpoint_path`) and, with `upload`, copy it to
        the run's `checkpoint/` artifacts as `state.pt` beside its last epoch's `metrics.json`, once per
        checkpoint (True when copied now): a re-sent end of the same checkpoint (a resume) copies nothing."""
        run_id = self._run_id(trial_id)
        run = self.client.get_run(run_id)
        same = run.data.tags.get(CHECKPOINT_PATH) == path
        copy = upload and not (same and self.client.list_artifacts(run_id, "checkpoint"))
        if copy:  # before the tag: a copy cut short is made again next time
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            # a server's mlflow-artifacts:/ root resolves against the tracking URI: ours, not MLflow's global one
            repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.uri)
            with tempfile.TemporaryDirectory(prefix="sweeplab-ckpt-") as d:
                shutil.copyfile(path, Path(d) / "state.pt")
                (Path(d) / "metrics.json").write_text(json.dumps(metrics))
                repo.log_artifacts(d, "checkpoint")
        if not same:
            self._set_tags(run_id, {CHECKPOINT_PATH: path})
        return copy

    def trial_model(self, trial_id: str, folder: Path, step: int) -> bool:
        """Log the trial's saved MLflow model folder as its run's logged model `model`, once (True when now):
        a resumed follower finds the one logged before and logs nothing."""
        from sweeplab.tracking import models

        run = self.trial_run(trial_id)
        logged = self.client.search_logged_models(
            [run.info.experiment_id], filter_string=f"name = '{models.NAME}' AND source_run_id = '{run.info.run_id}'"
        )
        if any(str(m.status) == "READY" for m in logged):
            return False
        models.log_saved_model(self.uri, run.info.run_id, folder, step=step)
        return True

    def trial_run(self, trial_id: str) -> Any:
        """The trial's MLflow run (mlflow.entities.Run); KeyError when it has none."""
        run_id = self._find(trial_id)
        if run_id is None:
            raise KeyError(trial_id)
        return self.client.get_run(run_id)

    def launch_settings(self, params: dict[str, Any], files: dict[str, str]) -> None:
        """The parent run's params (the sweep's settings) and text artifacts (e.g. sweep.yaml), each
        logged only when missing: a resume adds nothing twice and never changes a param."""
        from mlflow.entities import Param

        run = self.client.get_run(self.parent_id)
        new = [Param(k, _param(v)) for k, v in params.items() if k not in run.data.params]
        if new:
            self.client.log_batch(self.parent_id, params=new)
        have = {a.path for a in self.client.list_artifacts(self.parent_id)}
        for name, text in files.items():
            if name not in have:
                self.client.log_text(self.parent_id, text, name)

    def launch_artifacts(self, folder: Path, under: str) -> None:
        """Files of `folder` as the parent run's artifacts under `under` (the launch's report); same names replace."""
        self.client.log_artifacts(self.parent_id, str(folder), under)

    def launch_best(self, metric: str, value: float, label: str) -> None:
        """The best trial of the launch on the parent run: metric `best/<metric>`, tag `sweeplab.best_label`."""
        self.client.log_metric(self.parent_id, f"best/{metric}", float(value))
        self._set_tags(self.parent_id, {BEST_LABEL: label})

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


UNFINISHED = "unfinished"  # the OUTCOME of a trial whose run is open or was left unfinished
MAX_BATCH = 1000  # metrics in one log_batch: MLflow refuses more


def outcome(failed: bool, stopped_early: bool, epoch: int | None = None) -> str:
    """A trial's `sweeplab.outcome`: 'failed', 'stopped early at epoch E' or 'finished'."""
    if failed:
        return "failed"
    if stopped_early:
        return f"stopped early at epoch {epoch}" if epoch is not None else "stopped early"
    return "finished"


def standard_tags(source: str, commit: str) -> dict[str, str]:
    """MLflow's own source, user and git-commit tags, which its UI shows as Source, User and commit."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (some containers)
        user = "unknown"
    tags = {"mlflow.source.name": source, "mlflow.source.type": "LOCAL", "mlflow.user": user}
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    return {k: v for k, v in tags.items() if v}


def _param(value: Any) -> str:
    """A param value as MLflow stores it; lists stay YAML-readable ('[3, 32, 32]')."""
    if isinstance(value, (list, tuple)):
        return yaml.safe_dump(list(value), default_flow_style=True).strip()
    return str(value)


def _number(value: Any) -> bool:
    """A real number, numpy scalars included; bools and strings are not metrics (NaN is kept)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
