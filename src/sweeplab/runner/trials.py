"""The trials of a launch as Tune saved them, in sweeplab's words: the one place that reads Tune's trial states.

Read without starting Ray (`sweeplab status`), and after a Tuner's fit. A failed trial's error comes
from its `error.txt`, never from the pickled `error.pkl` Tune would otherwise load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeplab.runner import launch_state
from sweeplab.runner.outcome import Outcome, ended_as
from sweeplab.search_spaces import Sweep


@dataclass
class TrialSummary:
    """A trial as Tune last saw it, in sweeplab's words."""

    trial_id: str
    outcome: Outcome
    point: dict[str, Any]
    result: dict[str, Any]
    error: str | None = None
    path: str | None = None  # the trial's folder (Tune's result.json), when it is local


def quiet_analysis() -> None:
    """Tune warns of each trial without result files when it reads a launch (our reads, and the result
    grid `fit` returns): read from a state copy's folder, and a trial stopped before its first epoch
    (Ctrl-C) has none. None are needed (the state holds each trial's last result), nor is the warning."""
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def trials(storage: str, launch: str, sweep: Sweep | None = None) -> list[TrialSummary]:
    """The trials of a launch as last saved (its newest verified copy), read without starting Ray.
    `sweep` (the launch's) tells a trial that ran all its epochs from one stopped early."""
    from ray.tune import ExperimentAnalysis

    no_pickled_errors()
    path = f"{storage.rstrip('/')}/{launch}"
    source = path
    if "://" not in storage:
        copy = launch_state.verified(path)
        if launch_state.differing(path, copy):  # a running sweep's newer state, or not its own: the copy
            source = str(copy)
    quiet_analysis()
    return from_tune(ExperimentAnalysis(source).trials, sweep)


def from_tune(trials: list[Any], sweep: Sweep | None) -> list[TrialSummary]:
    out = []
    for t in trials:
        point, result = dict(t.config.get("point", {})), ended_result(t)
        outcome = outcome_of(t.status, point, result, sweep)
        error = error_of(t) if outcome is Outcome.FAILED else None
        out.append(TrialSummary(t.trial_id, outcome, point, result, error, _local_path(t)))
    return out


def ended_result(trial: Any) -> dict[str, Any]:
    """A trial's last result, with `checkpoint_path`: its latest checkpoint's folder (a URI on remote
    storage). A DDP trial's results carry Ray Train's already; Tune keeps a one-worker trial's."""
    result = dict(trial.last_result or {})
    try:
        checkpoint = trial.checkpoint
    except Exception:
        checkpoint = None
    if checkpoint is not None and getattr(checkpoint, "path", None):
        kind = getattr(getattr(checkpoint, "filesystem", None), "type_name", "local")
        result["checkpoint_path"] = checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"
    return result


def from_results(results: Any, sweep: Sweep) -> list[TrialSummary]:
    """The trials of `tuner.fit()`'s ResultGrid, as Tune had them in memory at the end. A Result has no
    status: one with an error failed; the others ended; one that never reported has no id and is left out."""
    from ray.tune.experiment import Trial

    out = []
    for r in results:
        result = dict(r.metrics or {})
        if getattr(r, "checkpoint", None) is not None and "://" not in str(r.path or ""):
            result.setdefault("checkpoint_path", r.checkpoint.path)
        if "trial_id" not in result:  # never reported: nothing tells its id; counted as not created
            continue
        point = dict((r.config or {}).get("point", {}))
        status = Trial.ERROR if r.error else Trial.TERMINATED
        error = _last_line(r.error) if r.error else None
        path = r.path if r.path and "://" not in r.path and Path(r.path).is_dir() else None
        out.append(
            TrialSummary(result["trial_id"], outcome_of(status, point, result, sweep), point, result, error, path)
        )
    return out


def outcome_of(status: str, point: dict[str, Any], result: dict[str, Any], sweep: Sweep | None) -> Outcome:
    """Tune's trial status in sweeplab's words: the one place that reads Tune's states. A trial Tune
    ended without an error finished or was stopped early, by its last epoch (without the sweep, a
    launch saved without its snapshot: finished)."""
    from ray.tune.experiment import Trial

    if status == Trial.ERROR:
        return Outcome.FAILED
    if status == Trial.TERMINATED:
        epochs = sweep.resolve(point).train.epochs if sweep is not None and point else 0
        return ended_as(int(result.get("epoch", 0)), epochs)
    # a state Tune may add later is one that has not ended: `resume` continues the trial
    return {Trial.RUNNING: Outcome.RUNNING, Trial.PAUSED: Outcome.PAUSED}.get(status, Outcome.PENDING)


def _local_path(trial: Any) -> str | None:
    """The trial's folder on this machine, if its storage is a local folder."""
    try:
        path = trial.path
    except Exception:
        return None
    return path if path and "://" not in path and Path(path).is_dir() else None


def error_of(trial: Any) -> str:
    err = trial.get_error()
    if err is None and getattr(trial, "error_file", None) and Path(trial.error_file).is_file():
        err = Path(trial.error_file).read_text()  # the driver's copy: a retried trial's error is not synced yet
    return _last_line(err)


def _last_line(err: Any) -> str:
    """An error's last non-blank line (the exception, after Ray's traceback), or 'failed'."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()] if err else []
    return lines[-1] if lines else "failed"


def no_pickled_errors() -> None:
    """Tune reads a failed trial's `error.pkl` from the storage folder with cloudpickle (building the
    results of `fit`, in the driver): a planted file would run code, a torn one (full disk) raises.
    Its `error.txt` says the same in text, and `Trial.get_error` reads that: use only it."""
    from ray.tune.experiment.trial import Trial

    Trial.get_pickled_error = lambda self: None
