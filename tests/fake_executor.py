"""A fake executor for the runner (runner/launch.py's `Executor`), in place of Ray Tune.

It runs the real trial function (`runner.worker.run_trial`, with the real checkpoint files) in
threads of this process, with a stand-in trainer whose epochs take microseconds, and passes their
events to the Driver as Tune's callback would: a trial's start, each epoch's result (the trial waits
in `report` until the executor takes it, as in a Tune function trainable), its end; `step` after each.
It plays a scheduler (`stop`: key -> the epoch a trial is stopped at) and failures (`fail`: key ->
the epoch whose training raises), and it can kill the driver after its Nth event: from then on the
driver writes nothing (a SIGKILLed process's buffered ledger lines are lost with it) and the session
ends by raising `Killed`, past every clean-up.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeplab import checkpoints, engine
from sweeplab.runner import worker


class Killed(BaseException):
    """The driver died here."""


def metrics_of(point: dict[str, Any], epoch: int) -> dict[str, float]:
    """A deterministic epoch of a trial: the error falls with the epoch, faster for larger lr."""
    lr = float(point.get("optim.lr", 0.1))
    err = 90.0 / (1.0 + lr * 10 * epoch)
    err = round(err, 4)
    return {
        "epoch": epoch,
        "lr": lr,
        "train/loss": err / 30,
        "val/error": err,
        "val/accuracy": 100 - err,
        "time/epoch_s": 0.001,
    }


class FakeTrainer(worker.Engine):
    """The engine's interface, in microseconds: states hold only what a checkpoint must."""

    def __init__(self, fail: dict[str, int], key: str) -> None:
        self.fail, self.key = fail, key

    def fit(self, conf: Any, on_epoch: Callable[..., None], checkpoint: dict[str, Any] | None) -> Any:
        start = int(checkpoint["epoch"]) if checkpoint else 0
        point = {"optim.lr": conf.optim.lr}
        for epoch in range(start + 1, conf.train.epochs + 1):
            if self.fail.get(self.key) == epoch:
                raise ValueError(f"loss is nan at epoch {epoch}")
            state = {
                "version": engine.CHECKPOINT_VERSION,
                "epoch": epoch,
                "step": epoch,
                "model": {},
                "optimizer": {"state": {}, "param_groups": []},
                "scaler": {},
                "config": conf.to_dict(),
            }
            on_epoch(metrics_of(point, epoch), lambda state=state: state)
        return {}

    def save(self, folder: Path, state: dict[str, Any]) -> Path:
        return checkpoints.save(folder, state)

    def export(self, folder: Path, conf: Any) -> None:
        pass  # a stand-in network has no model to export


@dataclass
class FakeExecutor:
    """Runs a session's trials `concurrent` at a time (see the module doc)."""

    stop: dict[str, int] = field(default_factory=dict)
    fail: dict[str, int] = field(default_factory=dict)
    kill_after: int | None = None
    synced: bool = True  # the killing event reached the ledger (else it was buffered, and lost with the kill)
    concurrent: int = 2
    events: int = 0
    running: dict[str, _Running] = field(default_factory=dict)

    def __call__(self, session: Any, driver: Any, plan: Any) -> None:
        if session.sweep.search.name == "optuna":
            pairs = ((k, p, 0) for k, p in plan.asked())
        else:
            trials = driver.record.trials
            pairs = iter([(k, p, trials[k].epoch if k in trials else 0) for k, p in plan.grid()])
        running = self.running
        while True:
            while len(running) < self.concurrent:
                nxt = next(pairs, None)
                if nxt is None:
                    break
                key, point, known = nxt
                self._event(driver, driver.start, key, point)
                running[key] = _Running(session, key, point, known, self.fail)
            if not running:
                return
            for key, r in list(running.items()):
                kind, payload = r.out.get()
                if kind == "result":
                    self._event(driver, driver.result, key, payload)
                    if self.stop.get(key) == int(payload["epoch"]):
                        r.cancel()
                        del running[key]
                        self._event(driver, driver.end, key, {}, None)
                    else:
                        r.go.put(True)
                elif kind == "error":
                    del running[key]
                    error, log = worker.error_of(r.job.folder)
                    self._event(driver, driver.end, key, {}, error, log)
                else:
                    del running[key]
                    self._event(driver, driver.end, key, {}, None)

    def _event(self, driver: Any, call: Callable[..., None], *args: Any) -> None:
        call(*args)
        self.events += 1
        killed = self.kill_after is not None and self.events >= self.kill_after
        if killed and not self.synced:
            self._die(driver)
        driver.step()
        if killed:
            self._die(driver)

    def _die(self, driver: Any) -> None:
        """A SIGKILL: what the ledger has not synced is gone, and the driver writes nothing more; each
        trial is stopped at its next report (its files written up to there, as a worker's would be)."""
        for r in self.running.values():
            r.cancel()
        driver.writer.buffer.clear()
        driver.writer.append = lambda event: None
        driver.write = lambda event: None
        driver.step = lambda: None
        driver.synced.clear()
        raise Killed(f"killed after event {self.events}")


class _Running:
    """One trial in its thread: `report` hands each epoch out and waits until the executor says go on."""

    def __init__(self, session: Any, key: str, point: dict[str, Any], known: int, fail: dict[str, int]) -> None:
        self.out: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.go: queue.Queue[bool] = queue.Queue()
        self.job = worker.TrialJob(key, point, session.launch_dir / "trials" / key, known)
        trainer = FakeTrainer(fail, key)
        self.thread = threading.Thread(target=self._run, args=(session.sweep, trainer), daemon=True)
        self.thread.start()

    def _run(self, sweep: Any, trainer: FakeTrainer) -> None:
        def report(metrics: dict[str, Any], folder: Path | None) -> None:
            self.out.put(("result", metrics))
            if not self.go.get():
                raise _Cancelled()

        try:
            worker.run_trial(self.job, sweep, report, None, trainer=trainer)
        except _Cancelled:
            return
        except worker.TrialFailed:
            self.out.put(("error", None))
            return
        self.out.put(("done", None))

    def cancel(self) -> None:
        self.go.put(False)
        self.thread.join()
        while not self.out.empty():  # a result it handed out that the executor never took
            self.out.get()


class _Cancelled(BaseException):
    """The scheduler stopped the trial: its thread unwinds (a BaseException, so the trial logs no error)."""
