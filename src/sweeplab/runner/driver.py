"""The driver of a launch: the executor's trial events become ledger lines, and only then anything else.

`Driver` is the ledger's one writer (sweeplab/ledger.py). Its executor (Tune, or a test's fake one)
calls `start`, `result`, `end`, `retry` as trials go and `step` between batches of events; `step`
syncs the ledger and only then tells the Optuna study the outcomes that are now durable. The MLflow
follower (tracking/follow.py) reads the ledger on its own. The display (`View`) is told at once: it
shows, it does not record.

`Plan` says which trials a session runs: the compiled trials the ledger has not ended (grid and
random search, failed ones again), or for Optuna the trials the ledger holds unended, then new ones
asked from the study, up to `Sweep.size()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from sweeplab import ledger
from sweeplab.core.names import METRICS
from sweeplab.ledger import Outcome, Record, TrialRecord, ended_as, key_of
from sweeplab.search_spaces import Sweep, label

# What a trial reports besides its metrics that the ledger keeps: hardware and dataset (its first report),
# PBT's origin, a notice (its newest checkpoint did not load), the Ray node that ran the epoch.
EXTRAS = ("hardware", "dataset", "origin", "point", "label", "notice", "node_id")


class LedgerFailed(RuntimeError):
    """The ledger could not be written (a full disk, a folder made read-only): the session must stop."""


class View(Protocol):
    """What the person watching sees (commands/progress.py); nothing it does is recorded."""

    def start(self, t: TrialRecord, epochs: int) -> None: ...
    def result(self, t: TrialRecord, epochs: int, result: dict[str, Any]) -> None: ...
    def end(self, t: TrialRecord, epochs: int) -> None: ...
    def retry(self, t: TrialRecord, epochs: int, error: str) -> None: ...


class Driver:
    """Trial events -> the ledger (buffered, synced at `step`) -> the study; the view is told at once."""

    def __init__(
        self, sweep: Sweep, writer: ledger.Writer, record: Record, study: Any = None, view: View | None = None
    ) -> None:
        self.sweep, self.writer, self.record, self.study, self.view = sweep, writer, record, study, view
        self._untold: list[str] = []  # keys ended in the buffer: told to the study after the sync
        self._ended: set[str] = set()  # keys this session has ended
        self._epochs: dict[str, tuple[str, int]] = {}  # key -> (its point, as text; its train.epochs)
        self._reports: list[tuple[str, int, Any]] = []  # intermediate values, likewise after the sync
        self.synced: list[Any] = []  # called after each sync (a test's inline MLflow follower)
        self.failure: str | None = None  # why the ledger could not be written, once it could not

    def write(self, event: dict[str, Any]) -> None:
        """Buffer one ledger event and fold it into the record (it is durable after the next `step`)."""
        self.writer.append(event)
        self.record.apply(event)

    def epochs(self, t: TrialRecord) -> int:
        """The trial's train.epochs, resolved once per point (resolving validates the whole config: ~0.7 ms,
        too much for every result on Tune's loop); a PBT trial's new point is resolved again."""
        point = repr(sorted(t.point.items()))
        if self._epochs.get(t.key, ("", 0))[0] != point:
            self._epochs[t.key] = (point, self.sweep.resolve(t.point).train.epochs)
        return self._epochs[t.key][1]

    def plan(self, key: str, point: dict[str, Any]) -> TrialRecord:
        """Record a trial the session will run (once: its point, label and seed)."""
        if key not in self.record.trials:
            seed = self.sweep.resolve(point).train.seed
            self.write({"ev": "trial", "key": key, "point": point, "label": label(point), "seed": seed})
        return self.record.trials[key]

    def start(self, key: str, point: dict[str, Any]) -> None:
        t = self.plan(key, point)
        self._ended.discard(key)  # started again (a retry, PBT): it may end again
        self.write({"ev": "start", "key": key, "session": self.record.sessions})
        if self.view:
            self.view.start(t, self.epochs(t))

    def result(self, key: str, result: dict[str, Any]) -> None:
        t = self.record.trials.get(key)
        if t is None:
            return
        if isinstance(result.get("trial_failed"), str):  # its code raised: the trial's last word (tune_exec)
            self.end(key, {}, result["trial_failed"], result.get("trial_log"))
            return
        if "epoch" not in result:
            return
        epoch = int(result["epoch"])
        metrics = {k: v for k, v in result.items() if k in METRICS and _number(v) and not _stale(k, result)}
        event: dict[str, Any] = {"ev": "result", "key": key, "epoch": epoch, "metrics": metrics}
        event.update({k: result[k] for k in EXTRAS if result.get(k)})
        if isinstance(result.get("reported_at"), (int, float)):
            event["at"] = round(float(result["reported_at"]), 3)
        if isinstance(result.get("checkpoint"), str):
            event["checkpoint"] = result["checkpoint"]
        self.write(event)
        if self.study is not None and _number(metrics.get(self.sweep.metric)):
            self._reports.append((key, epoch, metrics[self.sweep.metric]))
        if self.view:
            self.view.result(t, self.epochs(t), result)

    def end(self, key: str, result: dict[str, Any], error: str | None, log: str | None = None) -> None:
        t = self.record.trials.get(key)
        if t is None or key in self._ended:  # ended already this session (a failure said in its last report)
            return
        self._ended.add(key)
        if result:
            self.result(key, result)  # a scheduler's last word on a trial comes with the result it stopped on
        outcome = ended_as(t.epoch, self.epochs(t), failed=error is not None)
        self.write({"ev": "end", "key": key, "outcome": str(outcome), "epoch": t.epoch, "error": error, "log": log})
        self._untold.append(key)
        if self.view:
            self.view.end(t, self.epochs(t))

    def retry(self, key: str, error: str) -> None:
        t = self.record.trials.get(key)
        if t is None:
            return
        self.write({"ev": "retry", "key": key, "error": error})
        if self.view:
            self.view.retry(t, self.epochs(t), error)

    def pause(self, key: str) -> None:
        if key in self.record.trials:
            self.write({"ev": "pause", "key": key})

    def step(self) -> None:
        """Sync the ledger, then hand the study what is now durable. LedgerFailed when it cannot be written."""
        try:
            self.writer.sync()
        except OSError as e:
            self.failure = f"cannot write {ledger.path_of(self.writer.folder)} ({e.strerror or e})"
            raise LedgerFailed(self.failure) from None
        for fn in self.synced:
            fn()
        if self.study is None:
            return
        for key, epoch, value in self._reports:
            self.study.report(key, epoch, value)
        self._reports.clear()
        for key in self._untold:
            self.tell(self.record.trials[key])
        self._untold.clear()

    def tell(self, t: TrialRecord) -> None:
        """The study learns an ended trial's outcome (idempotent: `resume` tells every ended trial again)."""
        self.study.tell(t.key, t.status, t.last.get(self.sweep.metric))

    def stop(self, status: str, best: dict[str, Any] | None) -> None:
        """The session's end (FINISHED, KILLED or FAILED) and its best trial; synced."""
        self.write({"ev": "stop", "status": status, "best": best})
        self.step()


class Plan:
    """The trials a session runs, in order (see the module doc)."""

    def __init__(self, sweep: Sweep, driver: Driver) -> None:
        self.sweep, self.driver = sweep, driver
        self.total = sweep.size()[0]

    def owed(self, t: TrialRecord | None) -> bool:
        return t is None or not t.status.ended or t.status is Outcome.FAILED

    def grid(self) -> list[tuple[str, dict[str, Any]]]:
        """(key, point) of every compiled trial not over; a PBT-perturbed point as the ledger has it."""
        trials = self.driver.record.trials
        out = []
        for i, point in enumerate(self.sweep.points()):
            t = trials.get(key_of(i))
            if self.owed(t):
                out.append((key_of(i), t.point if t is not None else point))
        return out

    def asked(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Optuna: the ledger's unended trials (and the study's orphans), then new trials from the study."""
        d, study = self.driver, self.driver.study
        for key, point in study.orphans(set(d.record.trials)):
            d.plan(key, point)
        d.step()
        for t in d.record.ended():
            d.tell(t)  # again: a driver killed after the ledger had an end, before the study did
        for t in d.record.ordered():
            if self.owed(t):
                yield t.key, t.point
        while len(d.record.trials) < self.total:
            key, point = study.ask()
            d.plan(key, point)
            d.step()  # in the ledger before it runs
            yield key, point

    def remaining(self) -> int:
        """How many trials a session starting now would run (failed ones again)."""
        trials = self.driver.record.trials
        owed = sum(1 for t in trials.values() if self.owed(t))
        return owed + max(0, self.total - len(trials))

    def unfinished(self) -> int:
        """How many trials have not ended (never started ones included): what `resume` continues."""
        trials = self.driver.record.trials
        return sum(1 for t in trials.values() if not t.status.ended) + max(0, self.total - len(trials))


def best_trial(sweep: Sweep, record: Record) -> TrialRecord | None:
    """The best trial that ran all its epochs, by the sweep's metric and mode (None when none did)."""
    full = [t for t in record.ordered() if t.status is Outcome.FINISHED and _number(t.last.get(sweep.metric))]
    if not full:
        return None
    sign = 1 if sweep.mode == "min" else -1
    return min(full, key=lambda t: sign * t.last[sweep.metric])


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _stale(key: str, result: dict[str, Any]) -> bool:
    """A validation metric carried forward from an earlier epoch (eval_every > 1): Tune's schedulers need
    it every epoch, the record does not."""
    return bool(result.get("val_stale")) and key.startswith("val/")
