"""The live status of a running sweep: trials by state, best so far, epochs of the budget, time left.

The driver's event lines scroll; on a terminal a 3-line block stays under them, redrawn in place
every few seconds and at each event (ANSI: cursor up, clear to the end of the screen). Anywhere else
(a pipe, a file, CI, `ray job logs`) it is one plain `status` line at each trial's end and at most
every `PLAIN_EVERY` seconds in between, with no control codes.

The budget is the sum of every trial's epochs; a trial that ends before its last epoch (stopped early
by the scheduler, or failed) takes its unrun epochs out of it, so the budget is what the sweep will
really run. Time left = epochs left / the epoch rate of this driver so far (all trials together).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from sweeplab.ledger import Outcome

REDRAW_S = 2.0  # a terminal's block is redrawn this often
PLAIN_EVERY = 30.0  # elsewhere, at most one status line this often between trial ends
RUNNING_SHOWN = 8  # running trials listed under a terminal's block
STATES = ("running", "done", "stopped early", "failed")  # and "pending": the trials not started yet
ENDED = {Outcome.FINISHED: "done", Outcome.STOPPED: "stopped early", Outcome.FAILED: "failed"}


@dataclass
class TrialState:
    label: str
    epochs: int  # the trial's own budget (its train.epochs)
    epoch: int = 0  # the last epoch it reported
    state: str = "running"
    value: float | None = None  # its last reported value of the sweep's metric
    since: float = 0.0  # when this driver saw it start (its clock), for the running trials' lines


class Status:
    """Trial events in, a status block (terminal) or status line (elsewhere) out, on `out`."""

    def __init__(
        self,
        total: int,
        budget: int,
        metric: str,
        mode: str,
        out: TextIO,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
        width: int | None = None,
        every: float = PLAIN_EVERY,
    ) -> None:
        self.total, self.budget, self.metric, self.mode, self.out = total, budget, metric, mode, out
        self.clock, self.every, self.width = clock, every, width
        self.tty = _isatty(out) if tty is None else tty
        self.t0 = clock()
        self.trials: dict[str, TrialState] = {}
        self.run_epochs = 0  # epochs reported to this driver: the rate that time left is estimated from
        self.lock = threading.RLock()  # the timer thread and the driver's callbacks both write
        self.drawn = 0  # lines of the block now on the terminal, under the event lines
        self.last_plain = self.t0
        self.stop = threading.Event()
        self.timer: threading.Thread | None = None

    # ---- events (the Driver calls these) ---------------------------------------------------------

    def start(self, trial_id: str, label: str, epochs: int) -> None:
        with self.lock:
            t = self.trials.setdefault(trial_id, TrialState(label, epochs))
            t.label, t.epochs, t.state, t.since = label, epochs, "running", self.clock()

    def result(self, trial_id: str, label: str, epochs: int, result: dict[str, Any]) -> None:
        """An epoch's result (a trial started by an earlier driver is added here)."""
        with self.lock:
            t = self.trials.setdefault(trial_id, TrialState(label, epochs))
            epoch = _int(result.get("epoch"))
            if epoch > t.epoch and not result.get("replay"):
                self.run_epochs += epoch - t.epoch
            t.epoch = max(t.epoch, epoch)
            if result.get("replay"):  # finished before a resume
                t.state = "done"
            if _number(result.get(self.metric)):
                t.value = float(result[self.metric])

    def end(self, trial_id: str, label: str, epochs: int, outcome: Outcome, result: dict[str, Any]) -> None:
        with self.lock:
            t = self.trials.setdefault(trial_id, TrialState(label, epochs))
            t.epoch = max(t.epoch, _int(result.get("epoch")))
            t.state = ENDED.get(outcome, "running")
            if _number(result.get(self.metric)):
                t.value = float(result[self.metric])

    def retry(self, trial_id: str) -> None:
        with self.lock:  # Tune runs it again from its checkpoint
            if trial_id in self.trials:
                self.trials[trial_id].state = "running"

    def seed(self, trial_id: str, label: str, epochs: int, outcome: Outcome, result: dict[str, Any]) -> None:
        """A trial as an earlier driver left it (`resume`): ended, or to be run again (pending until
        Tune starts it); its epochs count as done, but not towards this driver's epoch rate."""
        with self.lock:
            t = self.trials.setdefault(trial_id, TrialState(label, epochs))
            t.epoch = max(t.epoch, _int(result.get("epoch")))
            t.state = ENDED.get(outcome, "pending")
            if _number(result.get(self.metric)):
                t.value = float(result[self.metric])

    # ---- what is shown ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Trials by state; 'pending' = the sweep's total less those started."""
        with self.lock:
            out = {s: sum(t.state == s for t in self.trials.values()) for s in STATES}
            out["pending"] = max(0, self.total - sum(out.values()))
            return out

    def best(self) -> tuple[float, str] | None:
        """(value, label) of the best last-reported metric of any trial, by the sweep's mode."""
        with self.lock:
            seen = [(t.value, t.label) for t in self.trials.values() if t.value is not None]
        if not seen:
            return None
        pick = min if self.mode == "min" else max
        return pick(seen, key=lambda v: v[0])

    def epochs(self) -> tuple[int, int]:
        """(epochs done, budget): an ended trial's unrun epochs leave the budget."""
        with self.lock:
            done = sum(t.epoch for t in self.trials.values())
            unrun = sum(max(0, t.epochs - t.epoch) for t in self.trials.values() if t.state in ENDED.values())
            return done, max(done, self.budget - unrun)

    def left(self) -> float | None:
        """Seconds left at this driver's epoch rate so far; None before its first epoch."""
        done, budget = self.epochs()
        elapsed = self.clock() - self.t0
        if budget - done <= 0:
            return 0.0
        if self.run_epochs <= 0 or elapsed <= 0:
            return None
        return (budget - done) * elapsed / self.run_epochs

    def lines(self) -> list[str]:
        """The terminal's block: trials, best, epochs and time, then one line per running trial (at most
        RUNNING_SHOWN): its label, epoch, last value of the metric and how long it has run."""
        c = self.counts()
        done, budget = self.epochs()
        left = self.left()
        best = self.best()
        pct = f" ({100 * done / budget:.0f}%)" if budget else ""
        block = [
            f"-- trials {self.total}: " + ", ".join(f"{c[s]} {s}" for s in (*STATES, "pending")),
            f"   best   {self.metric} {best[0]:.4g}  {best[1]}" if best else f"   best   {self.metric} -",
            f"   epochs {done}/{budget}{pct}   elapsed {duration(self.clock() - self.t0)}"
            f"   left {'?' if left is None else '~' + duration(left)}",
        ]
        with self.lock:
            running = [t for t in self.trials.values() if t.state == "running"]
        now = self.clock()
        for t in running[:RUNNING_SHOWN]:
            value = f"{self.metric} {t.value:.4g}" if t.value is not None else f"{self.metric} -"
            ran = duration(now - t.since) if t.since else "-"
            block.append(f"   > {t.label}  epoch {t.epoch}/{t.epochs}  {value}  {ran}")
        if len(running) > RUNNING_SHOWN:
            block.append(f"   > ... and {len(running) - RUNNING_SHOWN} more running")
        return block

    def plain(self) -> str:
        """One line for a pipe or a file (elapsed is its prefix, as on the event lines)."""
        c = self.counts()
        done, budget = self.epochs()
        left, best = self.left(), self.best()
        return (
            f"[{self.clock() - self.t0:6.0f}s] status  "
            + ", ".join(f"{c[s]} {s}" for s in (*STATES, "pending"))
            + f" (of {self.total})  |  best {self.metric} "
            + (f"{best[0]:.4g} ({best[1]})" if best else "-")
            + f"  |  epochs {done}/{budget}  |  left {'?' if left is None else '~' + duration(left)}"
        )

    # ---- output --------------------------------------------------------------------------------

    def line(self, text: str, ended: bool = False) -> None:
        """An event line; on a terminal the block is redrawn under it; elsewhere a trial's end
        (`ended`) is followed by a status line."""
        with self.lock:
            self._clear()
            self.out.write(text + "\n")
            if self.tty:
                self._draw()
            elif ended:
                self._plain()
            self.out.flush()

    def tick(self) -> None:
        """The timer's redraw (terminal), or a status line if `every` seconds passed without one."""
        with self.lock:
            if self.tty:
                self._clear()
                self._draw()
            elif self.clock() - self.last_plain >= self.every:
                self._plain()
            self.out.flush()

    def begin(self, interval: float = REDRAW_S) -> None:
        """Start the timer thread."""
        if self.timer is None:
            self.timer = threading.Thread(target=self._loop, args=(interval,), name="sweeplab-status", daemon=True)
            self.timer.start()

    def close(self) -> None:
        """Stop the timer; the final block (terminal) or status line stays printed."""
        self.stop.set()
        if self.timer is not None:
            self.timer.join(timeout=5)
        with self.lock:
            if self.tty:
                self._clear()
                self._draw()
                self.drawn = 0  # what follows prints under it
            else:
                self._plain()
            self.out.flush()

    def _loop(self, interval: float) -> None:
        while not self.stop.wait(interval):
            try:
                self.tick()
            except (OSError, ValueError):  # the stream was closed under us (a reader went away)
                return

    def _clear(self) -> None:
        if self.drawn:  # cursor up to the block's first line, then clear to the end of the screen
            self.out.write(f"\x1b[{self.drawn}A\r\x1b[J")
            self.drawn = 0

    def _draw(self) -> None:
        width = self.width or shutil.get_terminal_size((100, 24)).columns
        rows = [r[: max(10, width - 1)] for r in self.lines()]  # a wrapped line would break the cursor count
        dim, plain = ("", "") if os.environ.get("NO_COLOR") else ("\x1b[2m", "\x1b[0m")  # no-color.org
        self.out.write("".join(f"{dim}{r}{plain}\n" for r in rows))
        self.drawn = len(rows)

    def _plain(self) -> None:
        self.out.write(self.plain() + "\n")
        self.last_plain = self.clock()


def duration(seconds: float) -> str:
    """12s, 3m05s, 2h10m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _isatty(out: Any) -> bool:
    """A terminal that moves its cursor: not a pipe or file, nor TERM=dumb (an editor's shell buffer)."""
    try:
        return bool(out.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def _int(value: Any) -> int:
    return int(value) if _number(value) else 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
