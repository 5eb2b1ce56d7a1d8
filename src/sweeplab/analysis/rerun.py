"""One trial's child run read back for a rerun (`sweeplab train --from-run`): its config, label and checkpoint.

A trial is rerun from MLflow alone: its `config.yaml` artifact (else its params) and its `checkpoint/`
artifact (the Tune checkpoint folder's `state.pt` and `metrics.json`). Only files are downloaded here;
the checkpoint is read, as tensors only, by the command that trains.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeplab.analysis.runs import UnknownTarget, _trial, config_of, open_client
from sweeplab.core.errors import ConfigError
from sweeplab.core.names import CHECKPOINT_PATH, LABEL, LAUNCH, PARENT, TRIAL
from sweeplab.tracking.store import resolve_uri

CHECKPOINT_DIR = "checkpoint"  # the child run's artifact folder: state.pt and metrics.json


class NoCheckpoint(ConfigError):
    """The run has no `checkpoint/` artifact (its sweep set `mlflow: {log_checkpoints: false}`), exit 2."""


@dataclass
class TrialRun:
    """A sweeplab trial's child run: what a rerun needs of it."""

    run_id: str
    uri: str
    config: dict[str, Any]
    label: str
    tags: dict[str, str]


def trial_run(uri: str | None, run_id: str) -> TrialRun:
    """The child run `run_id` of a sweeplab sweep with its nested config; UnknownTarget (exit 2) for an
    unknown id, a launch's parent run or a run sweeplab did not log."""
    where = resolve_uri(uri)
    c = open_client(where, must_exist=True)  # before MLflow is imported: no store is refused in a blink
    assert c is not None  # must_exist raised otherwise
    from mlflow.exceptions import MlflowException

    try:
        run = c.get_run(run_id)
    except MlflowException as e:
        why = "" if e.error_code == "RESOURCE_DOES_NOT_EXIST" else f" ({e.error_code})"
        raise UnknownTarget(f"no run '{run_id}' in the MLflow store at {where}{why}") from None
    if run.info.lifecycle_stage == "deleted":
        raise UnknownTarget(f"run '{run_id}' is deleted in the MLflow store at {where}")
    tags = dict(run.data.tags)
    if TRIAL not in tags:
        if LAUNCH in tags and PARENT not in tags:
            raise UnknownTarget(
                f"run '{run_id}' is the parent run of launch '{tags[LAUNCH]}', not a trial: pass one of its "
                f"child runs (see `sweeplab best {tags[LAUNCH]} --top 10 --json`)"
            )
        raise UnknownTarget(f"run '{run_id}' was not logged by a sweeplab sweep (it has no '{TRIAL}' tag)")
    config = config_of(c, _trial(run, {}))
    if not config:
        raise UnknownTarget(f"run '{run_id}' has neither a config.yaml artifact nor config params")
    return TrialRun(run_id, where, config, tags.get(LABEL, ""), tags)


def folder_name(found: TrialRun) -> str:
    """A run folder's name for the trial: its label made one safe folder name, else the run id."""
    name = re.sub(r"[\s/\\]+", "_", "".join(ch for ch in found.label if ch.isprintable())).lstrip(".")
    return name[:128] or found.run_id


def download_checkpoint(found: TrialRun, into: Path) -> tuple[Path, dict[str, Any]]:
    """Download the run's `checkpoint/` artifact into `into`: (its state.pt, its metrics.json as a dict).
    NoCheckpoint (exit 2) names the run and the tag that says where the Tune checkpoint is."""
    c = open_client(found.uri, must_exist=True)
    assert c is not None
    names = {Path(a.path).name for a in c.list_artifacts(found.run_id, CHECKPOINT_DIR)}
    if "state.pt" not in names:
        where = found.tags.get(CHECKPOINT_PATH)
        tune = f"its Tune checkpoint is at {where} (tag {CHECKPOINT_PATH})" if where else f"no {CHECKPOINT_PATH} tag"
        raise NoCheckpoint(
            f"run '{found.run_id}' has no '{CHECKPOINT_DIR}/' artifact to resume from (its sweep set "
            f"mlflow: {{log_checkpoints: false}}, or the trial never checkpointed); {tune}"
        )
    folder = Path(c.download_artifacts(found.run_id, CHECKPOINT_DIR, str(into)))
    metrics: dict[str, Any] = {}
    try:
        loaded = json.loads((folder / "metrics.json").read_text())
        metrics = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass  # the weights are what resumes; the metrics only seed metrics.jsonl
    return folder / "state.pt", metrics
