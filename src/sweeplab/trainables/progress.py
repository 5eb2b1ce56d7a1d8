"""The driver side of a sweep: trial events -> MLflow (through the Tracker) and short progress lines.

Tune's own reporter prints a wide table every few seconds; a sweep of long trials reads better as
one line per trial start, per epoch and per end.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

from sweeplab.search_spaces import Sweep, label
from sweeplab.tracking import METRICS

SHOWN = ("train/loss", "val/error", "time/images_per_s")


class Driver:
    """The Listener of ray_backend: tags and logs each trial, prints its progress."""

    def __init__(self, sweep: Sweep, tracker: Any, out: Any = None) -> None:
        self.sweep, self.tracker, self.out = sweep, tracker, out or sys.stdout
        self.start = time.monotonic()
        self.epochs: dict[str, int] = {}

    def safe(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call the tracker; a tracking failure is reported, never allowed to stop the sweep."""
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            print(f"sweeplab: warning: tracking failed ({getattr(fn, '__name__', fn)}): "
                  f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)

    def say(self, trial_id: str, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.0f}s] {trial_id}  {text}", file=self.out, flush=True)

    def trial_start(self, trial_id: str, point: dict[str, Any]) -> None:
        trial = self.sweep.trial(point)
        self.epochs[trial_id] = trial.config.train.epochs
        tags = {"sweeplab.trial_id": trial_id, "sweeplab.seed": str(trial.config.train.seed),
                "sweeplab.variant": str(point.get("variant", "")), "sweeplab.tables": ",".join(trial.rows),
                "sweeplab.smoke": str(self.sweep.smoke).lower(),
                **{f"sweeplab.row.{tid}": str(row) for tid, row in trial.rows.items()}}
        self.safe(self.tracker.trial_start, trial_id, trial.config.to_dict(), tags)
        self.say(trial_id, f"start  {label(trial.values)}")

    def trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if result.get("replay"):  # a trial that had finished before a resume: logged already
            self.say(trial_id, f"finished before the resume, at epoch {int(result.get('epoch', 0))}")
            return
        if isinstance(result.get("hardware"), str):
            self.safe(self.tracker.trial_tags, trial_id, {"sweeplab.hardware": result["hardware"]})
        metrics = {k: result[k] for k in METRICS if k in result}
        if result.get("val_stale"):  # carried forward for the scheduler, not measured this epoch
            metrics = {k: v for k, v in metrics.items() if not k.startswith("val/")}
        self.safe(self.tracker.trial_result, trial_id, metrics, result.get("reported_at"))
        shown = "  ".join(f"{k} {metrics[k]:.4g}" for k in SHOWN if k in metrics)
        self.say(trial_id, f"epoch {int(result.get('epoch', 0))}/{self._epochs(trial_id, result)}  {shown}")

    def trial_end(self, trial_id: str, result: dict[str, Any], error: str | None) -> None:
        epoch, epochs = int(result.get("epoch", 0)), self._epochs(trial_id, result)
        stopped = error is None and epoch < epochs
        self.safe(self.tracker.trial_end, trial_id, failed=error is not None, stopped_early=stopped)
        metric = f"{self.sweep.metric} {result[self.sweep.metric]:.4g}" if self.sweep.metric in result else ""
        if error is not None:
            self.say(trial_id, f"FAILED at epoch {epoch}/{epochs}: {error}")
        elif stopped:
            self.say(trial_id, f"stopped early at epoch {epoch}/{epochs}  {metric}")
        else:
            self.say(trial_id, f"done  {metric}")

    def trial_retry(self, trial_id: str, result: dict[str, Any], error: str) -> None:
        """Tune runs a failed trial again (FailureConfig) from its last checkpoint: its run stays open."""
        epoch = int(result.get("epoch", 0))
        self.say(trial_id, f"failed at epoch {epoch}/{self._epochs(trial_id, result)}: {error}; "
                           f"retrying from {'its epoch ' + str(epoch) + ' checkpoint' if epoch else 'the start'}")

    def _epochs(self, trial_id: str, result: dict[str, Any]) -> int:
        if trial_id not in self.epochs:  # an event of a trial started by an earlier driver
            point = (result.get("config") or {}).get("point")
            self.epochs[trial_id] = self.sweep.resolve(point).train.epochs if point else 0
        return self.epochs[trial_id]


def finished(sweep: Sweep, summaries: list[Any]) -> list[Any]:
    """Trials that reported the sweep's metric at their last epoch (not stopped early, not failed)."""
    out = []
    for s in summaries:
        if s.status == "TERMINATED" and sweep.metric in s.result:
            if int(s.result.get("epoch", 0)) >= sweep.resolve(s.point).train.epochs:
                out.append(s)
    return out


def print_summary(sweep: Sweep, summaries: list[Any]) -> None:
    """Counts of trial outcomes and the best finished trial with a command that reproduces it."""
    from sweeplab.trainables.launch import best_command

    full = finished(sweep, summaries)
    states: dict[str, int] = {}
    for s in summaries:
        states[s.status] = states.get(s.status, 0) + 1
    stopped = sum(1 for s in summaries if s.status == "TERMINATED") - len(full)
    print(f"sweeplab: {len(summaries)} trials: {len(full)} finished, {stopped} stopped early, "
          f"{states.get('ERROR', 0)} failed")
    if not full:
        return
    sign = 1 if sweep.mode == "min" else -1
    best = min(full, key=lambda s: sign * s.result[sweep.metric])
    print(f"best: {best.trial_id}  {sweep.metric} {best.result[sweep.metric]:.4g}  {label(best.point)}")
    print(f"best config: {best_command(sweep, best.point)}")


def print_status(name: str, meta: dict[str, Any], trials: list[Any], detail: bool) -> None:
    """One line per launch; with `detail`, one line per trial. A trial a scheduler stopped is 'stopped'."""
    from sweeplab.search_spaces import from_snapshot

    sweep = meta.get("sweep", {})
    compiled = from_snapshot(sweep) if sweep else None
    counts: dict[str, int] = {}
    for t in trials:
        if compiled and t.status == "TERMINATED" and t.point:
            if int(t.result.get("epoch", 0)) < compiled.resolve(t.point).train.epochs:
                t.status = "STOPPED"
            else:
                t.status = "FINISHED"
        counts[t.status] = counts.get(t.status, 0) + 1
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "no saved state"
    print(f"{name}  {sweep.get('path', '?')}{' (smoke)' if sweep.get('smoke') else ''}  {len(trials)} trials: {states}")
    if not detail:
        return
    for t in sorted(trials, key=lambda t: t.trial_id):
        r = t.result
        shown = "  ".join(f"{k} {r[k]:.4g}" for k in ("epoch", "val/error") if isinstance(r.get(k), (int, float)))
        print(f"  {t.trial_id}  {t.status:10s}  {shown:28s}  {label(t.point)}{'  ' + t.error if t.error else ''}")
