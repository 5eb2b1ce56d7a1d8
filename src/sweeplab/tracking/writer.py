"""MLflow writes off the driver's event loop: one thread applies tracker calls in the order they came.

Tune calls its callbacks on its own loop, so a write that waits for a busy SQLite file or a remote
server slows every trial's scheduling (Ray warns when `on_trial_result` takes over half a second).
The driver queues each call and returns; the thread applies them in order (so a trial's start comes
before its metrics and its end), logs the queued epochs of one run in one `log_batch`, retries a
call that fails, and hands what never worked to `on_lost`. What is still queued when the driver is
killed is not lost either: `sweeplab resume` logs it again from Tune's results.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sweeplab.core.names import METRICS

# MLflow refuses a log_batch of more than 1000 metrics; one epoch is at most len(METRICS) of them.
BATCH_EPOCHS = 1000 // len(METRICS)


def retry(fn: Callable[[], Any], delays: Sequence[float]) -> BaseException | None:
    """`fn()`, tried again after each of `delays` seconds; None once it worked, else its last error."""
    for delay in (*delays, None):
        try:
            fn()
            return None
        except Exception as e:
            if delay is None:
                return e
            time.sleep(delay)
    return None


@dataclass
class _Call:
    """One queued tracker call; `epoch` marks an epoch's metrics (`args` = (metrics, at); `fn` None: the
    tracker's `trial_results`), which coalesce."""

    trial_id: str
    what: str
    fn: Callable[..., Any] | None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None


class Writer:
    """A daemon thread applying tracker calls in order; `drain()` waits until all are applied."""

    def __init__(
        self,
        tracker: Any,
        delays: Callable[[], Sequence[float]],
        on_lost: Callable[[str, str, BaseException], None],
    ) -> None:
        self.tracker, self.delays, self.on_lost = tracker, delays, on_lost
        self._queue: deque[_Call] = deque()
        self._cond = threading.Condition()
        self._busy = False  # a batch taken off the queue is being applied
        self._thread: threading.Thread | None = None
        self.batches = 0  # metric batches sent (one log_batch each), for tests and timing

    def call(self, trial_id: str, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue `fn(*args, **kwargs)`; `what` names it if it is lost (e.g. 'end (FINISHED)')."""
        self._put(_Call(trial_id, what, fn, args, kwargs))

    def result(self, trial_id: str, metrics: dict[str, Any], at: float | None = None) -> None:
        """Queue one epoch's metrics for `tracker.trial_results`, batched with the run's next ones."""
        epoch = int(metrics.get("epoch", 0))
        self._put(_Call(trial_id, f"epoch {epoch} metrics", None, (metrics, at), epoch=epoch))

    def drain(self, timeout: float | None = None) -> bool:
        """Block until every queued call is applied (or lost); False if `timeout` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def pending(self) -> int:
        """Calls queued and not yet taken by the thread."""
        with self._cond:
            return len(self._queue)

    def _put(self, call: _Call) -> None:
        with self._cond:
            self._queue.append(call)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="sweeplab-mlflow", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                calls, self._busy = list(self._queue), True
                self._queue.clear()
            try:
                for group in plan(calls):
                    try:
                        self._apply(group)
                    except Exception:  # _apply reports its own failures: this only keeps the thread alive
                        pass
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _apply(self, group: list[_Call]) -> None:
        first = group[0]
        if first.fn is not None:
            fn, args = first.fn, first.args
        else:  # a run's epochs, in one log_batch
            args = (first.trial_id, [c.args for c in group])
            fn = lambda *a: self.tracker.trial_results(*a)  # noqa: E731 - looked up inside the retries
            self.batches += 1
        error = retry(lambda: fn(*args, **first.kwargs), self.delays())
        if error is None:
            return
        for c in group:  # an epoch lost is named as the driver names it: 'epoch 3 metrics'
            try:
                self.on_lost(c.trial_id, c.what, error)
            except Exception:  # reporting must never stop the thread
                pass


def plan(calls: list[_Call]) -> list[list[_Call]]:
    """Calls in groups to apply in order: a run's consecutive epochs (up to BATCH_EPOCHS) form one
    group, moved up to where the first of them was; any other call of that run closes the group, so
    each run's own calls keep their order (calls of different runs are independent)."""
    groups: list[list[_Call]] = []
    open_: dict[str, list[_Call]] = {}  # trial id -> its group of epochs still taking more
    for c in calls:
        if c.epoch is None:
            open_.pop(c.trial_id, None)
            groups.append([c])
            continue
        group = open_.get(c.trial_id)
        if group is not None and len(group) < BATCH_EPOCHS:
            group.append(c)
        else:
            open_[c.trial_id] = [c]
            groups.append(open_[c.trial_id])
    return groups
