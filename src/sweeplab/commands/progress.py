"""The driver side of a sweep: trial events -> MLflow (through the Tracker) and short progress lines.

Tune's own reporter prints a wide table every few seconds; a sweep of long trials reads better as
one line per trial start, per epoch and per end, each naming the trial by its label (as its MLflow
run is named). Trial events reach MLflow through the tracking layer's writer thread, so Tune's loop
never waits for the store; `Driver.drain` waits for it. A tracking call that fails is retried; what MLflow
still did not take is recorded in `Driver.lost` (never just a warning), and `Driver.reconcile`
logs it again from Tune's own per-trial results.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeplab.commands.live import Status
from sweeplab.core.names import METRICS
from sweeplab.runner.outcome import Outcome, ended_as
from sweeplab.search_spaces import Sweep, label

SHOWN = ("train/loss", "val/error", "time/images_per_s")


@dataclass
class Lost:
    """Something MLflow did not take after every retry: a trial ('' for the launch's parent run) and what."""

    trial_id: str
    what: str
    error: str


class Driver:
    """The Listener of runner.ray_backend: tags and logs each trial, prints its progress."""

    # Seconds between tries of a tracking call: a locked SQLite file or a restarting server recovers
    # in seconds; a full disk does not, and then costs the driver ~3 s per call before it gives up.
    RETRY_DELAYS: tuple[float, ...] = (0.25, 1.0, 2.0)

    def __init__(self, sweep: Sweep, tracker: Any, out: Any = None, progress: str = "lines") -> None:
        self.sweep, self.tracker, self.out = sweep, tracker, out or sys.stdout
        self.start = time.monotonic()
        # `progress` "lines": these event lines and the live status (commands.live); "tune": Tune's own
        # reporter prints instead, and the driver only tracks
        self.status = (
            Status(total(sweep), budget(sweep), sweep.metric, sweep.mode, self.out) if progress == "lines" else None
        )
        self.epochs: dict[str, int] = {}
        self.labels: dict[str, str] = {}  # trial id -> label(point), the name of its run and progress lines
        self.lost: list[Lost] = []  # what MLflow still lacks; reconcile() removes what it logs again
        self._lock = threading.Lock()  # `lost` grows from the writer thread too
        from sweeplab.tracking.writer import Writer

        # trial events go through the writer thread, in order; its delays are read at each call (tests set them)
        self.writer = Writer(tracker, lambda: self.RETRY_DELAYS, self._lose)

    def drain(self) -> None:
        """Wait until every queued trial event is in MLflow (or in `lost`): before reading `lost` or MLflow."""
        self.writer.drain()

    def safe(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Call the tracker (e.g. `tracker.close`) with retries; a failure is recorded in `lost`, never raised.
        The trial events queued before it are applied first."""
        self.drain()
        name = getattr(fn, "__name__", str(fn))
        what = f"parent run end ({(args or ('FINISHED',))[0]})" if name == "close" else name
        return self._log("", what, fn, *args, **kwargs)

    def lost_trials(self) -> list[str]:
        """The trials MLflow still lacks something of, in order of their first loss ('' = the parent run)."""
        with self._lock:
            return list(dict.fromkeys(x.trial_id for x in self.lost))

    def _log(self, trial_id: str, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """`fn(*args, **kwargs)` now, tried again after each of RETRY_DELAYS; False (and one line) if it never
        worked."""
        from sweeplab.tracking.writer import retry

        error = retry(lambda: fn(*args, **kwargs), self.RETRY_DELAYS)
        if error is not None:
            self._lose(trial_id, what, error)
        return error is None

    def _send(self, trial_id: str, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """`_log` on the writer thread: queued, applied in order after the calls queued before it."""
        self.writer.call(trial_id, what, fn, *args, **kwargs)

    def _lose(self, trial_id: str, what: str, e: BaseException) -> None:
        error = f"{type(e).__name__}: {_first_line(e)}"
        with self._lock:
            self.lost.append(Lost(trial_id, what, error))
        whose = f"trial {trial_id}" if trial_id else f"launch {getattr(self.tracker, 'launch', '')}".rstrip()
        print(
            f"sweeplab: tracking lost {whose}: {what} (after {len(self.RETRY_DELAYS) + 1} tries: {error})",
            file=sys.stderr,
            flush=True,
        )

    def say(self, trial_id: str, text: str, result: dict[str, Any] | None = None, ended: bool = False) -> None:
        if self.status is None:
            return
        name = self._label(trial_id, result or {})
        self.status.line(f"[{time.monotonic() - self.start:6.0f}s] {name}  {text}", ended)

    def seen(self, summaries: Iterable[Any]) -> None:
        """`resume`: the trials as the earlier driver left them (runner.trials.TrialSummary), for the status."""
        for t in summaries:
            if self.status is not None and t.point:
                self.status.seed(
                    t.trial_id, label(t.point), self.sweep.resolve(t.point).train.epochs, t.outcome, t.result or {}
                )

    def trial_start(self, trial_id: str, point: dict[str, Any]) -> None:
        trial = self.sweep.trial(point)
        self.epochs[trial_id] = trial.config.train.epochs
        self.labels[trial_id] = label(point)
        self._send(
            trial_id,
            "run (params, config.yaml, tags)",
            self.tracker.trial_start,
            trial_id,
            trial.config.to_dict(),
            self._tags(trial_id, trial.config.train.seed, trial.rows, point),
        )
        if self.status is not None:
            self.status.start(trial_id, self.labels[trial_id], self.epochs[trial_id])
        self.say(trial_id, f"start  (trial {trial_id})")

    def trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self.status is not None:
            self.status.result(trial_id, self._label(trial_id, result), self._epochs(trial_id, result), result)
        if result.get("replay"):  # a trial that had finished before a resume: logged already
            self.say(trial_id, f"finished before the resume, at epoch {int(result.get('epoch', 0))}", result)
            return
        if isinstance(result.get("hardware"), str):
            self._send(
                trial_id, "hardware tag", self.tracker.trial_tags, trial_id, {"sweeplab.hardware": result["hardware"]}
            )
        if _dataset(result):
            self._send(trial_id, "dataset input", self.tracker.trial_dataset, trial_id, result["dataset"])
        metrics = _metrics(result)
        self.writer.result(trial_id, metrics, result.get("reported_at"))  # batched with the run's next epochs
        shown = "  ".join(f"{k} {metrics[k]:.4g}" for k in SHOWN if k in metrics)
        self.say(trial_id, f"epoch {int(result.get('epoch', 0))}/{self._epochs(trial_id, result)}  {shown}", result)

    def trial_end(self, trial_id: str, result: dict[str, Any], error: str | None) -> None:
        epoch, epochs = int(result.get("epoch", 0)), self._epochs(trial_id, result)
        outcome = ended_as(epoch, epochs, failed=error is not None)
        self._checkpoint(trial_id, result)
        self._send(
            trial_id,
            f"end ({run_status(outcome)})",
            self.tracker.trial_end,
            trial_id,
            failed=outcome is Outcome.FAILED,
            stopped_early=outcome is Outcome.STOPPED,
            epoch=epoch,
        )
        metric = f"{self.sweep.metric} {result[self.sweep.metric]:.4g}" if self.sweep.metric in result else ""
        if self.status is not None:
            self.status.end(trial_id, self._label(trial_id, result), epochs, outcome, result)
        if error is not None:
            self.say(trial_id, f"FAILED at epoch {epoch}/{epochs}: {error}", result, ended=True)
        elif outcome is Outcome.STOPPED:
            self.say(trial_id, f"stopped early at epoch {epoch}/{epochs}  {metric}", result, ended=True)
        else:
            self.say(trial_id, f"done  {metric}", result, ended=True)

    def _checkpoint(self, trial_id: str, result: dict[str, Any]) -> None:
        """The ended trial's final checkpoint: its path as a tag, its files uploaded unless the sweep says
        `mlflow: {log_checkpoints: false}`. Once, at the end: Tune waits while a large one is copied."""
        path = result.get("checkpoint_path")
        if isinstance(path, str) and path:
            what = "checkpoint" if self.sweep.log_checkpoints else "checkpoint path tag"
            self._send(trial_id, what, self.tracker.trial_checkpoint, trial_id, path, self.sweep.log_checkpoints)

    def trial_retry(self, trial_id: str, result: dict[str, Any], error: str) -> None:
        """Tune runs a failed trial again (FailureConfig) from its last checkpoint: its run stays open."""
        epoch = int(result.get("epoch", 0))
        if self.status is not None:
            self.status.retry(trial_id)
        self.say(
            trial_id,
            f"failed at epoch {epoch}/{self._epochs(trial_id, result)}: {error}; "
            f"retrying from {'its epoch ' + str(epoch) + ' checkpoint' if epoch else 'the start'}",
            result,
        )

    def reconcile(self, trials: Iterable[Any]) -> list[str]:
        """Log again, from Tune's results, what MLflow lacks of each trial: its run (params, config.yaml,
        tags), the epochs it has no metrics of (each exactly once) and the end of a finished or failed
        trial. Idempotent. `trials` are runner.trials.TrialSummary (trial_id, outcome, point, result, path).
        Returns one line per trial logged again; `lost` keeps only what still could not be logged."""
        self.drain()  # what is still queued would be logged twice (this reads MLflow) or counted lost
        relogged: list[str] = []
        for t in trials:
            results = tune_results(getattr(t, "path", None))
            point = t.point or _point(results)
            if not point or (not results and not t.result and not t.outcome.ended):
                continue  # not started yet (or no trace of it): Tune's trial_start logs it when it runs
            done: list[str] = []
            if self._log(t.trial_id, "reconcile from Tune's results", self._reconcile, t, point, results, done):
                with self._lock:
                    self.lost = [x for x in self.lost if x.trial_id != t.trial_id]
            if done:
                line = f"{t.trial_id}: {', '.join(dict.fromkeys(done))}"
                relogged.append(line)
                print(f"sweeplab: logged again from Tune's results: {line}", file=sys.stderr, flush=True)
        return relogged

    def _reconcile(self, t: Any, point: dict[str, Any], results: list[dict[str, Any]], done: list[str]) -> None:
        trial, tr = self.sweep.trial(point), self.tracker
        by_epoch = {
            int(r["epoch"]): r for r in results or [t.result or {}] if is_number(r.get("epoch")) and not r.get("replay")
        }  # the last report of each epoch
        tags = self._tags(t.trial_id, trial.config.train.seed, trial.rows, point)
        hardware = [r["hardware"] for r in results or [t.result or {}] if isinstance(r.get("hardware"), str)]
        if hardware:
            tags["sweeplab.hardware"] = hardware[-1]
        done += tr.ensure_trial(t.trial_id, trial.config.to_dict(), tags)
        data = [r["dataset"] for r in results or [t.result or {}] if _dataset(r)]
        if data and tr.trial_dataset(t.trial_id, data[-1]):
            done.append("dataset input")
        logged = tr.logged_epochs(t.trial_id)
        for epoch in sorted(set(by_epoch) - logged):
            tr.trial_result(t.trial_id, _metrics(by_epoch[epoch]), by_epoch[epoch].get("reported_at"))
            done.append(f"epoch {epoch} metrics")
        want = run_status(t.outcome)
        path = (t.result or {}).get("checkpoint_path")
        if want and isinstance(path, str) and path:
            if tr.trial_checkpoint(t.trial_id, path, self.sweep.log_checkpoints):
                done.append("checkpoint")
        if want and tr.run_status(t.trial_id) != want:
            epoch = int((t.result or {}).get("epoch", 0) or 0)
            tr.trial_end(
                t.trial_id, failed=t.outcome is Outcome.FAILED, stopped_early=t.outcome is Outcome.STOPPED, epoch=epoch
            )
            done.append(f"end ({want})")

    def _tags(self, trial_id: str, seed: int, rows: dict[str, int], point: dict[str, Any]) -> dict[str, str]:
        return {
            "sweeplab.trial_id": trial_id,
            "sweeplab.label": label(point),
            "sweeplab.seed": str(seed),
            "sweeplab.variant": str(point.get("variant", "")),
            "sweeplab.tables": ",".join(rows),
            "sweeplab.smoke": str(self.sweep.smoke).lower(),
            **{f"sweeplab.row.{tid}": str(row) for tid, row in rows.items()},
        }

    def _label(self, trial_id: str, result: dict[str, Any]) -> str:
        if trial_id not in self.labels:  # an event of a trial started by an earlier driver
            point = (result.get("config") or {}).get("point")
            if not isinstance(point, dict):
                return trial_id
            self.labels[trial_id] = label(point)
        return self.labels[trial_id]

    def _epochs(self, trial_id: str, result: dict[str, Any]) -> int:
        if trial_id not in self.epochs:  # an event of a trial started by an earlier driver
            point = (result.get("config") or {}).get("point")
            self.epochs[trial_id] = self.sweep.resolve(point).train.epochs if point else 0
        return self.epochs[trial_id]


def total(sweep: Sweep) -> int:
    """How many trials the sweep has when it is complete: optuna runs num_samples, the others every point."""
    return sweep.search.num_samples if sweep.search.name == "optuna" else len(sweep.points())


def budget(sweep: Sweep) -> int:
    """The sweep's epochs if no trial ends early (optuna's: num_samples x the mean of its prior's draws)."""
    epochs = [t.config.train.epochs for t in sweep.trials()]
    n = total(sweep)
    return sum(epochs) if len(epochs) == n or not epochs else round(n * sum(epochs) / len(epochs))


def tune_results(path: str | Path | None) -> list[dict[str, Any]]:
    """Every result Tune wrote to a trial folder's result.json (JSON lines); a torn last line is skipped."""
    if not path:
        return []
    try:
        if "://" in str(path):  # a storage URI: Tune's own file system layer reads it
            import pyarrow.fs

            fs, root = pyarrow.fs.FileSystem.from_uri(str(path))
            with fs.open_input_stream(f"{root.rstrip('/')}/result.json") as f:
                text = f.read().decode()
        else:
            text = (Path(path) / "result.json").read_text()
    except (OSError, ValueError):
        return []
    out = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The design metrics of one result; val/* left out when carried forward rather than measured."""
    metrics = {k: result[k] for k in METRICS if k in result}
    if result.get("val_stale"):  # carried forward for the scheduler, not measured this epoch
        metrics = {k: v for k, v in metrics.items() if not k.startswith("val/")}
    return metrics


def _point(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    for r in reversed(results):
        config = r.get("config")
        if isinstance(config, dict) and isinstance(config.get("point"), dict):
            return config["point"]
    return None


def _dataset(result: dict[str, Any]) -> bool:
    """Whether a result carries its trial's dataset description (the first one of each run does)."""
    data = result.get("dataset")
    return isinstance(data, dict) and isinstance(data.get("name"), str) and isinstance(data.get("digest"), str)


def is_number(value: Any) -> bool:
    """A real number, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _first_line(e: BaseException) -> str:
    """An exception's first line, short: MLflow's SQL errors carry the whole statement."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    return text if len(text) <= 200 else text[:197] + "..."


def run_status(outcome: Outcome) -> str | None:
    """The MLflow status of an ended trial's run (a trial stopped early is FINISHED, tagged
    sweeplab.stopped_early); None while the trial has not ended."""
    if not outcome.ended:
        return None
    return "FAILED" if outcome is Outcome.FAILED else "FINISHED"
