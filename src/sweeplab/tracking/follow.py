"""MLflow as a copy of the ledger: a process that follows a launch's ledger and makes its runs match it.

The driver starts it beside each session (`python -m sweeplab.tracking.follow LAUNCH_DIR SESSION`), so
MLflow's CPU and waits never slow Tune's loop. It reads the ledger's new whole lines every half second
and, for each trial they touch, makes the trial's child run hold what the ledger says: the run (params,
config.yaml, tags), every epoch's metrics once, the hardware tag and dataset input, the trial's end and
its final checkpoint. What MLflow already holds is asked, not assumed, the first time a trial is seen,
so a follower started by `resume` fills exactly what an earlier one missed ("lost" is a query). It ends
after the session's `stop` line (or when its driver is gone), prints one JSON line on stdout (what it
could not write) and exits 1 if anything is missing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeplab import ledger
from sweeplab.core.errors import first_line
from sweeplab.core.names import (
    ERROR,
    ERROR_LOG,
    HARDWARE,
    LABEL,
    OPTUNA_TRIAL,
    OUTCOME,
    PBT_LABEL,
    PBT_ORIGIN,
    SEED,
    SMOKE,
    TABLES,
    TRIAL,
    VARIANT,
    row_tag,
)
from sweeplab.ledger import Outcome, Record, TrialRecord
from sweeplab.search_spaces import Sweep, from_snapshot

POLL_S = 0.5
RETRY_DELAYS = (0.25, 1.0, 2.0)  # a locked SQLite file or a restarting server recovers in seconds
PARENT = "parent.json"  # in the launch folder: the parent run's tags, params and text artifacts
RUN_IDS = "mlflow_runs.jsonl"  # in the launch folder: each trial's MLflow run id, as the follower made it


def run_ids(launch_dir: Path) -> dict[str, str]:
    """Trial key -> MLflow run id, as the follower wrote them down (a torn last line is skipped)."""
    out = {}
    try:
        lines = (launch_dir / RUN_IDS).read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            row = json.loads(line)
            out[str(row["key"])] = str(row["run_id"])
        except (ValueError, KeyError, TypeError):
            continue
    return out


@dataclass
class Mirror:
    """What the trial's MLflow run is known to hold."""

    epoch: int = 0  # the last epoch logged
    status: str | None = None  # the run's status; None: no run yet
    outcome: str | None = None  # the ledger outcome its end was logged for
    hardware: str | None = None
    dataset: bool = False
    origins: int = 0


@dataclass
class Follower:
    """Applies a launch's ledger to MLflow through a Tracker (one per launch)."""

    launch_dir: Path
    sweep: Sweep
    tracker: Any
    record: Record = field(default_factory=Record)
    offset: int = 0
    mirrors: dict[str, Mirror] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)  # key ('' for the parent) -> the last error
    sessions_done: int = 0
    down: bool = False  # a write of this poll failed all its retries: the store is out for the others too

    def poll(self) -> None:
        """Read the ledger's new lines and bring every trial they touched up to date."""
        self.down = False
        touched: set[str] = set()
        self.record, self.offset = ledger.read(self.launch_dir, self.record, self.offset, touched)
        for key in sorted(touched | set(self.lost) - {""}, key=lambda k: int(k) if k.isdigit() else -1):
            t = self.record.trials.get(key)
            if t is not None:
                self._try(key, lambda t=t: self.apply(t))

    def apply(self, t: TrialRecord) -> None:
        m = self.mirrors.get(t.key) or self._mirror(t)
        self.mirrors[t.key] = m
        tr = self.tracker
        trial = self.sweep.trial(t.point)
        if m.status is None:
            tr.ensure_trial(t.key, trial.config.to_dict(), self.tags(t, trial.rows))
            m.status = "RUNNING"
            self._said_run(t.key)
        elif t.status is Outcome.RUNNING and m.status != "RUNNING":  # resumed: its run is open again
            tr.trial_start(t.key, {}, {})
            m.status, m.outcome = "RUNNING", None
        new = [(e, r) for e, r in sorted(t.results.items()) if e > m.epoch]
        if new:
            tr.trial_results(t.key, [({"epoch": e, **r}, t.reported_at.get(e)) for e, r in new])
            m.epoch = new[-1][0]
        if t.hardware and t.hardware != m.hardware:
            tr.trial_tags(t.key, {HARDWARE: t.hardware})
            m.hardware = t.hardware
        if t.dataset and not m.dataset:
            tr.trial_dataset(t.key, t.dataset)
            m.dataset = True
        if len(t.origins) > m.origins:  # PBT: which checkpoint it continued from, with which point
            o = t.origins[-1]
            tr.trial_tags(t.key, {PBT_ORIGIN: json.dumps(o), PBT_LABEL: t.label})
            m.origins = len(t.origins)
        if t.status.ended and m.outcome != t.status:
            self._end(t, m)

    def _end(self, t: TrialRecord, m: Mirror) -> None:
        tr = self.tracker
        folder = self.launch_dir / "trials" / t.key
        if t.status is not Outcome.FAILED and (folder / "checkpoint.pt").is_file():
            tr.trial_checkpoint(t.key, str(folder / "checkpoint.pt"), t.last, self.sweep.log_checkpoints)
        model = folder / "model" / "MLmodel"  # runner/worker.py's export, unless `mlflow: {log_models: false}`
        if t.status is Outcome.FINISHED and self.sweep.log_models and model.is_file():
            tr.trial_model(t.key, folder / "model", t.epoch)
        if t.error:
            tr.trial_tags(t.key, {ERROR: t.error[:500], **({ERROR_LOG: t.log} if t.log else {})})
        tr.trial_end(t.key, failed=t.status is Outcome.FAILED, stopped_early=t.status is Outcome.STOPPED, epoch=t.epoch)
        m.status = "FAILED" if t.status is Outcome.FAILED else "FINISHED"
        m.outcome = t.status

    def _said_run(self, key: str) -> None:
        """Write down the trial's MLflow run id beside the ledger (RUN_IDS), for the driver (an Optuna study
        trial carries it as a user attribute) and for anyone who has only the launch folder."""
        run_id = self.tracker.trial_run(key).info.run_id
        with (self.launch_dir / RUN_IDS).open("a") as f:
            f.write(json.dumps({"key": key, "run_id": run_id}) + "\n")

    def _mirror(self, t: TrialRecord) -> Mirror:
        """What MLflow holds of a trial the first time this follower sees it (a resume: maybe all of it)."""
        tr = self.tracker
        status = tr.run_status(t.key)
        if status is None:
            return Mirror()
        run = tr.trial_run(t.key)
        tags = run.data.tags
        outcome = _outcome_of(tags.get(OUTCOME, ""), status)
        hardware = tags.get(HARDWARE)
        return Mirror(max(tr.logged_epochs(t.key), default=0), status, outcome, hardware, bool(run.inputs))

    def finish(self) -> None:
        """The session stopped: runs of trials it left unfinished are KILLED until a resume reopens them;
        the parent run says how the session ended and which trial was best."""
        self.poll()
        status = self.record.stopped or "KILLED"
        for t in self.record.ordered():
            m = self.mirrors.get(t.key)
            if not t.status.ended and m is not None and m.status == "RUNNING":
                if self._try(t.key, lambda t=t: self.tracker.trial_interrupted(t.key)):
                    m.status = "KILLED"
        best = self.record.best
        if best is not None:
            self._try("", lambda: self.tracker.launch_best(self.sweep.metric, best["value"], best["label"]))
        self._try("", lambda: self.tracker.close(status))

    def tags(self, t: TrialRecord, rows: dict[str, int]) -> dict[str, str]:
        return {
            TRIAL: t.key,
            LABEL: t.label,
            SEED: str(t.seed),
            VARIANT: str(t.point.get("variant", "")),
            TABLES: ",".join(rows),
            SMOKE: str(self.sweep.smoke).lower(),
            **{row_tag(tid): str(row) for tid, row in rows.items()},
            **({OPTUNA_TRIAL: t.key} if self.sweep.search.name == "optuna" else {}),  # its key is the number
        }

    def _try(self, key: str, fn: Any) -> bool:
        """`fn()` with retries; a failure is remembered (tried again at the next poll) and said once."""
        # Once a write has failed all its retries, the others of the same poll get one try each: a store that
        # is out (a full disk, a server down) would otherwise hold every poll, and the session's end, for
        # the retries' seconds once per trial.
        for delay in (*(() if self.down else RETRY_DELAYS), None):
            try:
                fn()
                self.lost.pop(key, None)
                self.down = False
                return True
            except Exception as e:
                if delay is None:
                    error = f"{type(e).__name__}: {first_line(e)}"
                    if key not in self.lost:
                        who = f"trial {key}" if key else "the launch's parent run"
                        print(f"sweeplab: MLflow did not take {who} ({error}); will retry", file=sys.stderr, flush=True)
                    self.lost[key] = error
                    self.down = True
                    return False
                time.sleep(delay)
        return False


def _outcome_of(tag: str, status: str) -> str | None:
    if status == "FAILED":
        return Outcome.FAILED
    if tag.startswith("stopped early"):
        return Outcome.STOPPED
    return Outcome.FINISHED if tag == "finished" else None


def open_launch(launch_dir: Path) -> tuple[Follower, int]:
    """A follower for a launch folder (its sweeplab.json and parent.json), the parent run opened."""
    from sweeplab.tracking.tracker import Tracker

    meta = json.loads((launch_dir / "sweeplab.json").read_text())
    parent = json.loads((launch_dir / PARENT).read_text())
    sweep = from_snapshot(meta["sweep"])
    tracker = Tracker(meta["tracking_uri"], sweep.name, meta["launch"], parent["tags"], source=sweep.path)
    follower = Follower(launch_dir, sweep, tracker)
    follower._try("", lambda: tracker.launch_settings(parent["params"], parent["files"]))
    return follower, int(parent.get("session", 0))


def main(argv: list[str]) -> int:
    """`python -m sweeplab.tracking.follow LAUNCH_DIR`: follow until the session stops or its driver dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it writes `stop`, then this ends
    # MLflow logs a failed write with its whole SQL traceback; this process says each loss in one line
    os.environ["MLFLOW_LOGGING_LEVEL"] = "CRITICAL"  # read when mlflow is imported, below
    launch_dir, driver = Path(argv[0]), os.getppid()
    stopping = False

    def on_term(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    follower, session = open_launch(launch_dir)
    while True:
        follower.poll()
        over = follower.record.sessions >= session and follower.record.stopped is not None
        if over or stopping or os.getppid() != driver:
            break
        time.sleep(POLL_S)
    follower.finish()
    try:
        print(json.dumps({"lost": sorted(follower.lost)}), flush=True)
    except BrokenPipeError:  # the driver died before reading it: the next `resume` fills what MLflow lacks
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
    return 1 if follower.lost else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
