"""What a person sees of a running sweep: a line per trial start, epoch and end, and the live status.

Tune's own reporter prints a wide table every few seconds; a sweep of long trials reads better as one
line per event, each naming the trial by its label (as its MLflow run is named), with the status
block of commands/live.py under them. The view records nothing: the runner's Driver writes the
ledger and tells this view afterwards (runner/driver.py, `View`).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from sweeplab.commands.live import Status
from sweeplab.ledger import Outcome, Record, TrialRecord
from sweeplab.search_spaces import Sweep

SHOWN = ("train/loss", "val/error", "time/images_per_s")


class View:
    """runner.driver.View: progress lines and the live status, on `out`."""

    def __init__(self, sweep: Sweep, out: Any = None) -> None:
        self.sweep, self.out = sweep, out or sys.stdout
        self.start_t = time.monotonic()
        self.status = Status(sweep.size()[0], budget(sweep), sweep.metric, sweep.mode, self.out)

    def seen(self, record: Record) -> None:
        """`resume`: the trials as earlier drivers left them, for the status block."""
        for t in record.ordered():
            self.status.seed(t.key, t.label, self.sweep.resolve(t.point).train.epochs, t.status, t.last)

    def say(self, t: TrialRecord, text: str, ended: bool = False) -> None:
        self.status.line(f"[{time.monotonic() - self.start_t:6.0f}s] {t.label}  {text}", ended)

    def start(self, t: TrialRecord, epochs: int) -> None:
        self.status.start(t.key, t.label, epochs)
        self.say(t, f"start  (trial {t.key})")

    def result(self, t: TrialRecord, epochs: int, result: dict[str, Any]) -> None:
        self.status.result(t.key, t.label, epochs, result)
        if isinstance(result.get("notice"), str):  # e.g. its newest checkpoint did not load: the older one did
            self.say(t, f"note: {result['notice']}")
        shown = "  ".join(f"{k} {result[k]:.4g}" for k in SHOWN if is_number(result.get(k)))
        self.say(t, f"epoch {int(result.get('epoch', 0))}/{epochs}  {shown}")

    def end(self, t: TrialRecord, epochs: int) -> None:
        self.status.end(t.key, t.label, epochs, t.status, t.last)
        metric = self.sweep.metric
        shown = f"{metric} {t.last[metric]:.4g}" if is_number(t.last.get(metric)) else ""
        if t.status is Outcome.FAILED:
            where = f" (traceback: {t.log})" if t.log else ""
            self.say(t, f"FAILED at epoch {t.epoch}/{epochs}: {t.error}{where}", ended=True)
        elif t.status is Outcome.STOPPED:
            self.say(t, f"stopped early at epoch {t.epoch}/{epochs}  {shown}", ended=True)
        else:
            self.say(t, f"done  {shown}", ended=True)

    def retry(self, t: TrialRecord, epochs: int, error: str) -> None:
        self.status.retry(t.key)
        where = f"its epoch {t.epoch} checkpoint" if t.epoch else "the start"
        self.say(t, f"failed at epoch {t.epoch}/{epochs}: {error}; retrying from {where}")


def budget(sweep: Sweep) -> int:
    """The sweep's epochs if no trial ends early (optuna's: num_samples x the mean of its prior's draws)."""
    epochs = [t.config.train.epochs for t in sweep.trials()]
    n = sweep.size()[0]
    return sum(epochs) if len(epochs) == n or not epochs else round(n * sum(epochs) / len(epochs))


def is_number(value: Any) -> bool:
    """A real number, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
