"""A launch from start to end, for `sweeplab run`, `sweeplab resume` and the Python API alike.

A launch is a folder, `STORAGE/NAME/`: `sweeplab.json` (the sweep as compiled, the tracking URI; written
once, at launch), `ledger.jsonl` (sweeplab/ledger.py), `parent.json` (what the MLflow parent run holds),
`trials/<key>/` (each trial's folder: runner/worker.py) and `tune/` (Tune's own files, never read).
A session (one `run` or `resume`) opens the ledger, starts the MLflow follower beside it, runs the
trials the ledger has not ended through its executor (Ray Tune), writes `stop`, and waits for the
follower to copy everything to MLflow.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeplab import ledger
from sweeplab.core.errors import SweepError
from sweeplab.ledger import Outcome, Record
from sweeplab.runner.driver import Driver, LedgerFailed, Plan, View, best_trial
from sweeplab.runner.tune_exec import Session
from sweeplab.search_spaces import Sweep

META = "sweeplab.json"
# runs a session's trials; may return what to call once the ledger's `stop` is written (e.g. stop Ray)
Executor = Callable[[Session, Driver, Plan], Callable[[], None] | None]


@dataclass
class Result:
    """How a session ended, as the ledger has it."""

    sweep: Sweep
    launch: str
    launch_dir: Path
    record: Record
    status: str  # FINISHED, KILLED (stopped with trials owed) or FAILED (some trial failed)
    owed: int  # trials not over: unfinished, or never started (Ctrl-C came first)
    out_of_time: bool = False
    lost: list[str] = field(default_factory=list)  # trials ('' = the parent run) MLflow still lacks something of
    failure: str | None = None  # why the session stopped short of its trials (the ledger could not be written)


def write_meta(launch_dir: Path, meta: dict[str, Any]) -> None:
    """The launch's sweeplab.json, whole or not at all."""
    launch_dir.mkdir(parents=True, exist_ok=True)
    _write_json(launch_dir / META, meta)


def read_meta(launch_dir: Path) -> dict[str, Any] | None:
    """The launch's sweeplab.json (None when there is none); SweepError when it is not one sweeplab wrote."""
    path = launch_dir / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_bytes())
        if not isinstance(meta, dict) or not isinstance(meta.get("sweep"), dict) or "tracking_uri" not in meta:
            raise ValueError("not a launch's description")
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise SweepError(f"{path} is not a launch file sweeplab wrote ({type(e).__name__}); it was not used") from None
    return meta


def launches(storage: Path) -> list[str]:
    """Launch names under `storage`, oldest first."""
    found = [p.parent for p in storage.glob(f"*/{META}")] if storage.is_dir() else []
    return [p.name for p in sorted(found, key=lambda p: (p / META).stat().st_mtime)]


def session(
    sweep: Sweep,
    launch_dir: Path,
    parent: dict[str, Any],
    executor: Executor,
    view: View | None = None,
    max_concurrent: int | None = None,
    tune_reporter: bool = False,
    follow: str = "process",
) -> Result:
    """One session of a launch: the ledger opened (LedgerBusy: another driver has it), the follower started
    (`follow`: "process", "inline" for tests, or "none"), the owed trials run, `stop` written."""
    try:
        writer = ledger.Writer(launch_dir)
    except ledger.LedgerBusy:
        raise SweepError(f"launch {launch_dir.name} is being run by another sweeplab process right now") from None
    from sweeplab.runner import cluster

    cluster.reap(launch_dir / cluster.PROCESSES)  # what a killed driver of this launch left running
    record = ledger.read(launch_dir)[0]
    study = None
    if sweep.search.name == "optuna":
        from sweeplab.runner.study import Study
        from sweeplab.tracking.follow import run_ids

        study = Study(sweep, launch_dir.name)
        study.run_ids = lambda: run_ids(launch_dir)
    driver = Driver(sweep, writer, record, study, view)
    driver.write({"ev": "session", "pid": os.getpid(), "host": socket.gethostname()})
    driver.step()
    _write_json(launch_dir / "parent.json", {**parent, "session": record.sessions})
    follower = _follow(launch_dir, follow, driver)
    plan = Plan(sweep, driver)
    status, started = "KILLED", time.monotonic()
    # SIGTERM (a scheduler's kill, `timeout`, `ray job stop`) ends the session as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    close: Callable[[], None] | None = None
    try:
        if study is not None or plan.remaining():  # a launch with nothing left starts no Ray (an Optuna one
            # does: its study may hold a trial the ledger lacks, and is told the ended ones again)
            close = executor(Session(sweep, launch_dir, record.sessions, max_concurrent, tune_reporter), driver, plan)
        budget = sweep.search.time_budget_s
        out_of_time = budget is not None and time.monotonic() - started >= budget
        if out_of_time:  # Tune stopped the running trials without a word: they stopped early, as a scheduler's
            for t in [t for t in record.trials.values() if t.status is Outcome.RUNNING]:
                driver.end(t.key, {}, None)
            driver.step()
        owed = 0 if out_of_time else plan.unfinished()
        failed = any(t.status is Outcome.FAILED for t in record.trials.values())
        status = "KILLED" if owed else "FAILED" if failed else "FINISHED"
    except KeyboardInterrupt:
        out_of_time, owed = False, plan.unfinished()
    except Exception:
        if driver.failure is None:  # not the ledger's: a bug, shown whole
            raise
        out_of_time, owed = False, plan.unfinished()
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            _stop(driver, writer, sweep, record, status)
        finally:
            if close is not None:
                close()
    lost = follower() if follower is not None else []
    return Result(sweep, launch_dir.name, launch_dir, record, status, owed, out_of_time, lost, driver.failure)


def _stop(driver: Driver, writer: ledger.Writer, sweep: Sweep, record: Record, status: str) -> None:
    """The session's `stop` line (its status and best trial) and the ledger let go of; a ledger that cannot
    be written any more (the failure already recorded) is let go of all the same."""
    best = best_trial(sweep, record)
    value = best.last[sweep.metric] if best is not None else None
    stop = {"key": best.key, "label": best.label, "value": value} if best is not None else None
    try:
        driver.stop(status, stop)
    except LedgerFailed:
        pass
    try:
        writer.close()
    except OSError:
        pass


def _follow(launch_dir: Path, how: str, driver: Driver) -> Callable[[], list[str]] | None:
    """Start the MLflow follower; returns the function that waits for it and gives what it could not write."""
    if how == "none":
        return None
    if how == "inline":  # tests: the same follower, polled after every sync of the ledger, in this process
        from sweeplab.tracking.follow import open_launch

        inline = open_launch(launch_dir)[0]
        driver.synced.append(inline.poll)

        def finish_inline() -> list[str]:
            inline.finish()
            return sorted(inline.lost)

        return finish_inline
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeplab.tracking.follow", str(launch_dir)], stdout=subprocess.PIPE, text=True
    )

    def finish() -> list[str]:
        out, _ = proc.communicate()
        try:
            return list(json.loads(out.strip().splitlines()[-1])["lost"])
        except (ValueError, IndexError, KeyError, TypeError):  # it died: whatever it missed, resume fills
            return [""] if proc.returncode else []

    return finish


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
