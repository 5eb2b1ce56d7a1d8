"""The ledger: sweeplab's own record of a launch, one JSON object per line in `STORAGE/LAUNCH/ledger.jsonl`.

Ray Tune runs the trials; the ledger says what ran. It is the authority for `resume` (which trials
are not over, where each one's checkpoint is), `status`, the MLflow runs (a copy of it) and the
Optuna study (told each outcome after the ledger has it). Its rules, after Optuna's journal storage:

- **One writer.** Only the launch's driver (`sweeplab run` or `resume`) appends, holding an exclusive
  lock on the file while it runs (`flock`, which NFS v4 honours); a second driver of the launch is
  refused. Trial workers never write it: their results reach it through the driver.
- **Append only, in batches.** A line is never rewritten. The writer buffers lines and writes each
  batch with one `write`, then flushes and fsyncs it, before anything that follows from it happens:
  MLflow, the study and a trial started from a ledger entry only ever see what the ledger holds.
- **Readers read while it is written** (`status`, the MLflow follower): they see whole lines only. A
  last line without its newline (a write cut short by a kill or a full disk) is not there yet; the
  next writer cuts such a torn tail off before appending. A line that does not parse, or an event a
  reader does not know, is skipped and counted, never fatal.
- **Nothing is pickled.** Every line is JSON; the ledger holds no code and reads none.
- **A trial's key is stable** across every driver of a launch: the compiled trial's index (grid and
  random search) or the Optuna study's trial number, as a decimal string.

Events, in the order a trial makes them: `trial` (its point, label and seed, when it is first
planned or asked), `start` (a driver's executor started it), `result` (one per epoch: metrics,
the checkpoint it wrote, and on its first report the hardware and dataset; a PBT trial's report says
which checkpoint it continued from), `retry` (it failed and the executor runs it again), `end`
(FINISHED, STOPPED or FAILED). A driver writes `session` when it starts and `stop` when it ends.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

FILE = "ledger.jsonl"


class Outcome(StrEnum):
    """Where a trial stands: waiting, running, paused (PBT), or how it ended."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    FINISHED = "FINISHED"  # ran all its epochs
    STOPPED = "STOPPED"  # stopped early by the scheduler (ASHA, HyperBand, median)
    FAILED = "FAILED"

    @property
    def ended(self) -> bool:
        """True once the trial will not run again unless resumed after a failure."""
        return self in (Outcome.FINISHED, Outcome.STOPPED, Outcome.FAILED)


def ended_as(epoch: int, epochs: int, failed: bool = False) -> Outcome:
    """How a trial that ended at `epoch` of its `epochs` did: FAILED, FINISHED (reached its last
    epoch) or STOPPED (ended earlier without an error: its scheduler stopped it)."""
    if failed:
        return Outcome.FAILED
    return Outcome.FINISHED if epoch >= epochs else Outcome.STOPPED


def key_of(number: int) -> str:
    """A trial's key from its index or study trial number: '0', '17' (compared as numbers)."""
    return str(int(number))


@dataclass
class TrialRecord:
    """One trial as the ledger has it."""

    key: str
    point: dict[str, Any]
    label: str = ""
    seed: int = 0
    status: Outcome = Outcome.PENDING
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch -> its first report's metrics
    reported_at: dict[int, float] = field(default_factory=dict)  # epoch -> when the trial measured it
    checkpoint: str | None = None  # the newest checkpoint it wrote (relative to the launch folder)
    error: str | None = None
    log: str | None = None  # where the failure's whole traceback is
    starts: int = 0
    retries: int = 0
    hardware: str | None = None
    dataset: dict[str, Any] | None = None
    origins: list[dict[str, Any]] = field(default_factory=list)  # PBT: the checkpoints it continued from

    @property
    def epoch(self) -> int:
        """The last epoch it reported (0 before its first)."""
        return max(self.results, default=0)

    @property
    def last(self) -> dict[str, Any]:
        """Its last epoch's metrics ({} before its first)."""
        return self.results.get(self.epoch, {})


@dataclass
class Record:
    """What a ledger holds: its trials by key, the drivers that wrote it, and what was skipped."""

    trials: dict[str, TrialRecord] = field(default_factory=dict)
    sessions: int = 0
    stopped: str | None = None  # the last driver's end status (FINISHED, KILLED, FAILED), None if it died
    best: dict[str, Any] | None = None  # the last driver's best trial: key, label, value (of the sweep's metric)
    skipped: int = 0  # lines that did not parse or name an unknown event
    size: int = 0  # bytes of whole lines read

    def ordered(self) -> list[TrialRecord]:
        """The trials by key, as numbers."""
        return sorted(self.trials.values(), key=lambda t: int(t.key) if t.key.isdigit() else -1)

    def ended(self) -> list[TrialRecord]:
        """The trials that have ended (finished, stopped early or failed), by key."""
        return [t for t in self.ordered() if t.status.ended]

    def apply(self, event: dict[str, Any]) -> bool:
        """Fold one event into the record; False (and counted) when it is not one this reader knows."""
        kind, key = event.get("ev"), str(event.get("key", ""))
        if kind == "session":
            self.sessions, self.stopped = self.sessions + 1, None
            return True
        if kind == "stop":
            self.stopped = str(event.get("status", "FINISHED"))
            self.best = event.get("best") or self.best
            return True
        if kind == "trial":
            t = self.trials.get(key) or TrialRecord(key, dict(event.get("point") or {}))
            t.point, t.label, t.seed = dict(event.get("point") or {}), str(event.get("label", "")), event.get("seed", 0)
            self.trials[key] = t
            return True
        found = self.trials.get(key)
        if found is None or kind not in _TRIAL_EVENTS:
            self.skipped += 1
            return False
        _TRIAL_EVENTS[kind](found, event)
        return True


def _start(t: TrialRecord, e: dict[str, Any]) -> None:
    t.status, t.starts, t.error, t.log = Outcome.RUNNING, t.starts + 1, None, None


def _result(t: TrialRecord, e: dict[str, Any]) -> None:
    epoch = int(e.get("epoch", 0))
    if epoch not in t.results:  # an epoch trained again (after a resume from an older checkpoint): first kept
        t.results[epoch] = dict(e.get("metrics") or {})
        if isinstance(e.get("at"), (int, float)):
            t.reported_at[epoch] = float(e["at"])
    if t.status is not Outcome.RUNNING and not t.status.ended:
        t.status = Outcome.RUNNING
    t.checkpoint = e.get("checkpoint") or t.checkpoint
    t.hardware = e.get("hardware") or t.hardware
    t.dataset = e.get("dataset") or t.dataset
    if e.get("origin"):  # PBT: from here on it trains another trial's weights, with a perturbed point
        t.origins.append(dict(e["origin"]))
        t.point = dict(e.get("point") or t.point)
        t.label = str(e.get("label") or t.label)


def _retry(t: TrialRecord, e: dict[str, Any]) -> None:
    t.retries += 1
    t.error = e.get("error")


def _end(t: TrialRecord, e: dict[str, Any]) -> None:
    t.status = Outcome(e.get("outcome", "FINISHED"))
    t.error, t.log = e.get("error"), e.get("log")


def _pause(t: TrialRecord, e: dict[str, Any]) -> None:
    t.status = Outcome.PAUSED


_TRIAL_EVENTS = {"start": _start, "result": _result, "retry": _retry, "end": _end, "pause": _pause}


def path_of(launch_dir: str | Path) -> Path:
    return Path(launch_dir) / FILE


def read(
    launch_dir: str | Path, record: Record | None = None, offset: int = 0, touched: set[str] | None = None
) -> tuple[Record, int]:
    """The record of a launch folder's ledger (empty when it has none), read from byte `offset` on into
    `record`; returns it and the offset after its last whole line, for the next read of a growing file.
    `touched` collects the keys of the trials the lines read name."""
    record = record or Record()
    try:
        with open(path_of(launch_dir), "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return record, offset
    end = data.rfind(b"\n") + 1  # a torn last line (no newline yet) is left for the next read
    for line in data[:end].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            record.skipped += 1
            continue
        if isinstance(event, dict):
            if record.apply(event) and touched is not None and "key" in event:
                touched.add(str(event["key"]))
        else:
            record.skipped += 1
    record.size = offset + end
    return record, offset + end


def held(launch_dir: str | Path) -> bool:
    """Whether a driver holds the launch's ledger right now (its session is running)."""
    try:
        fd = os.open(path_of(launch_dir), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class LedgerBusy(RuntimeError):
    """Another driver holds the launch's ledger."""


class Writer:
    """The launch's one writer: `append` buffers an event, `sync` writes the batch, flushes and fsyncs it."""

    def __init__(self, launch_dir: str | Path) -> None:
        path = path_of(launch_dir)
        self.folder = Path(launch_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise LedgerBusy(f"{path} is held by another driver of this launch") from None
        self._cut_torn_tail()
        os.lseek(self.fd, 0, os.SEEK_END)
        self.buffer: list[bytes] = []
        self.synced = 0  # events written and fsynced so far

    def _cut_torn_tail(self) -> None:
        """Drop a last line without its newline (a write cut short): it never happened."""
        size = os.lseek(self.fd, 0, os.SEEK_END)
        if size == 0:
            return
        start = max(0, size - (1 << 16))
        while True:
            os.lseek(self.fd, start, os.SEEK_SET)
            chunk = os.read(self.fd, size - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0 or start == 0:
                end = start + cut + 1
                break
            start = max(0, start - (1 << 16))
        if end < size:
            os.ftruncate(self.fd, end)
            os.fsync(self.fd)

    def append(self, event: dict[str, Any]) -> None:
        """Buffer one event (a dict of JSON values; `t` added); nothing is written before `sync`."""
        line = json.dumps({**event, "t": round(time.time(), 3)}, separators=(",", ":"), allow_nan=True)
        self.buffer.append(line.encode() + b"\n")

    def sync(self) -> int:
        """Write the buffered events in one write, then fsync: after this they survive any kill.
        Returns how many were written."""
        if not self.buffer:
            return 0
        data = b"".join(self.buffer)
        n = data.count(b"\n")  # events: after a failed write the buffer is one chunk of the rest
        while data:  # a short write is continued; an OSError (full disk) keeps what is unwritten for the next try
            data = data[os.write(self.fd, data) :]
            self.buffer = [data] if data else []
        os.fsync(self.fd)
        self.synced += n
        return n

    def close(self) -> None:
        """Sync what is buffered and let the next driver in."""
        try:
            self.sync()
        finally:
            os.close(self.fd)
