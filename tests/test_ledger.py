"""The ledger (sweeplab/ledger.py): its rules as one test class, after Optuna's storage tests; how its
events fold into a Record; and what `sweeplab status` and the end of a run print from a Record.

The rules, from the module's docstring: one writer; append only, in synced batches; readable while
written, whole lines only (a torn last line is invisible, and cut by the next writer); a line that does
not parse or names an unknown event is skipped and counted; nothing is pickled.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
from pathlib import Path

import pytest

from mlflow_store import append as write  # events as the launch's one driver writes them, synced
from sweeplab import ledger
from sweeplab.cli import main
from sweeplab.commands import listing
from sweeplab.ledger import LedgerBusy, Outcome, Record, TrialRecord, Writer, ended_as
from sweeplab.runner import launch
from sweeplab.search_spaces import label, load

ROOT = Path(__file__).resolve().parents[1]
SWEEP = load(ROOT / "sweeps" / "quickstart.yaml", smoke=True)  # 8 trials of 3 epochs, val/error min
POINTS = SWEEP.points()


def trial(key: str, i: int | None = None) -> dict:
    point = POINTS[int(key) if i is None else i]
    return {"ev": "trial", "key": key, "point": point, "label": label(point), "seed": 0}


def result(key: str, epoch: int, err: float, **extra: object) -> dict:
    return {"ev": "result", "key": key, "epoch": epoch, "metrics": {"epoch": epoch, "val/error": err}, **extra}


def lines(launch_dir: Path) -> list[dict]:
    return [json.loads(x) for x in ledger.path_of(launch_dir).read_bytes().splitlines()]


# ---- the rules ------------------------------------------------------------------------------------


class TestLedgerRules:
    """What every reader and writer of a launch's ledger may rely on."""

    def test_one_writer_a_second_is_refused_until_the_first_closes(self, tmp_path: Path) -> None:
        assert not ledger.held(tmp_path) and not ledger.path_of(tmp_path).exists()  # no ledger, no driver
        first = Writer(tmp_path)
        try:
            assert ledger.held(tmp_path)
            with pytest.raises(LedgerBusy, match="held by another driver"):
                Writer(tmp_path)
            assert ledger.held(tmp_path)  # the refused writer took nothing with it
        finally:
            first.close()
        assert not ledger.held(tmp_path)
        Writer(tmp_path).close()  # the next driver gets in

    def test_nothing_is_written_before_sync_and_a_sync_writes_the_whole_batch(self, tmp_path: Path) -> None:
        w = Writer(tmp_path)
        try:
            w.append(trial("0"))
            w.append({"ev": "start", "key": "0"})
            assert ledger.path_of(tmp_path).read_bytes() == b""  # buffered: a kill now loses both
            assert w.sync() == 2 and w.synced == 2 and w.sync() == 0
            got = lines(tmp_path)
            assert [e["ev"] for e in got] == ["trial", "start"] and all(isinstance(e["t"], float) for e in got)
        finally:
            w.close()

    def test_append_only_every_driver_adds_after_what_was_there(self, tmp_path: Path) -> None:
        write(tmp_path, {"ev": "session"}, trial("0"), {"ev": "start", "key": "0"})
        before = ledger.path_of(tmp_path).read_bytes()
        write(tmp_path, {"ev": "session"}, result("0", 1, 50.0))
        after = ledger.path_of(tmp_path).read_bytes()
        assert after.startswith(before) and len(after.splitlines()) == 5
        record = ledger.read(tmp_path)[0]
        assert record.sessions == 2 and record.trials["0"].results == {1: {"epoch": 1, "val/error": 50.0}}

    def test_readable_while_written_and_read_on_from_an_offset(self, tmp_path: Path) -> None:
        w = Writer(tmp_path)
        try:
            for e in (trial("0"), {"ev": "start", "key": "0"}, result("0", 1, 50.0)):
                w.append(e)
            w.sync()
            record, offset = ledger.read(tmp_path)  # a reader (`status`, the follower) beside the writer
            assert record.trials["0"].epoch == 1 and offset == record.size == ledger.path_of(tmp_path).stat().st_size
            for e in (result("0", 2, 40.0), trial("1"), {"ev": "start", "key": "1"}):
                w.append(e)
            w.sync()
            touched: set[str] = set()
            record, offset = ledger.read(tmp_path, record, offset, touched)
            assert touched == {"0", "1"}  # the keys the new lines name
            assert sorted(record.trials["0"].results) == [1, 2] and record.trials["1"].status is Outcome.RUNNING
            again, _ = ledger.read(tmp_path, record, offset, touched := set())  # nothing new
            assert touched == set() and again is record
        finally:
            w.close()
        whole = ledger.read(tmp_path)[0]  # read from the start: the same record
        assert {k: (t.status, t.results) for k, t in whole.trials.items()} == {
            k: (t.status, t.results) for k, t in record.trials.items()
        }

    def test_a_torn_last_line_is_invisible_to_readers_and_cut_by_the_next_writer(self, tmp_path: Path) -> None:
        write(tmp_path, trial("0"), {"ev": "start", "key": "0"})
        whole = ledger.path_of(tmp_path).read_bytes()
        with ledger.path_of(tmp_path).open("ab") as f:  # a write cut short by a kill or a full disk
            f.write(b'{"ev":"result","key":"0","epoch":1,"metr')
        record, offset = ledger.read(tmp_path)
        assert offset == len(whole) and record.skipped == 0 and record.trials["0"].epoch == 0  # not there yet
        write(tmp_path, result("0", 1, 50.0))  # the next writer cuts the tail off, then appends
        data = ledger.path_of(tmp_path).read_bytes()
        assert data.startswith(whole) and data.endswith(b"\n") and b"metr\n" not in data and b'"metr{' not in data
        assert [e["ev"] for e in lines(tmp_path)] == ["trial", "start", "result"]
        assert ledger.read(tmp_path)[0].trials["0"].results == {1: {"epoch": 1, "val/error": 50.0}}

    def test_a_ledger_of_one_torn_line_is_cut_to_nothing(self, tmp_path: Path) -> None:
        ledger.path_of(tmp_path).write_bytes(b'{"ev":"ses')
        assert ledger.read(tmp_path)[0].size == 0
        write(tmp_path, {"ev": "session"})
        assert [e["ev"] for e in lines(tmp_path)] == ["session"]

    def test_a_failed_write_keeps_what_is_unwritten_for_the_next_sync(self, tmp_path: Path, monkeypatch) -> None:
        w = Writer(tmp_path)
        real, calls = os.write, []

        def short_then_full_disk(fd: int, data: bytes) -> int:
            calls.append(len(data))
            if len(calls) == 1:
                return real(fd, data[:10])  # a short write: continued
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
            return real(fd, data)

        try:
            w.append(trial("0"))
            w.append({"ev": "start", "key": "0"})
            monkeypatch.setattr(ledger.os, "write", short_then_full_disk)
            with pytest.raises(OSError, match="No space"):
                w.sync()
            assert w.synced == 0
            w.sync()  # space again: the rest of the batch, once
            monkeypatch.undo()
            assert w.synced == 2 and [e["ev"] for e in lines(tmp_path)] == ["trial", "start"]
        finally:
            monkeypatch.undo()
            w.close()

    def test_lines_that_do_not_parse_or_are_unknown_are_skipped_and_counted(self, tmp_path: Path) -> None:
        write(tmp_path, trial("0"))
        with ledger.path_of(tmp_path).open("ab") as f:
            f.write(b"not json\n")
            f.write(b"[1, 2]\n")  # JSON, but not an event
            f.write(b'{"ev": "teleport", "key": "0"}\n')  # an event of a later sweeplab
            f.write(b'{"ev": "result", "key": "9", "epoch": 1}\n')  # a trial the ledger never planned
            f.write(b"\n")  # an empty line does not parse either
        write(tmp_path, result("0", 1, 50.0))  # a writer appends after them; the reader reads on past them
        record = ledger.read(tmp_path)[0]
        assert record.skipped == 5 and sorted(record.trials) == ["0"] and record.trials["0"].epoch == 1

    def test_nothing_is_pickled_a_planted_pickle_is_a_skipped_line(self, tmp_path: Path) -> None:
        marker = tmp_path / "MARKER"

        class Payload:
            def __reduce__(self):
                return os.system, (f"touch {shlex.quote(str(marker))}",)

        write(tmp_path, trial("0"), {"ev": "end", "key": "0", "outcome": "FINISHED", "epoch": 0})
        with ledger.path_of(tmp_path).open("ab") as f:
            f.write(pickle.dumps({"ev": "stop", "p": Payload()}, protocol=0).replace(b"\n", b" ") + b"\n")
        record = ledger.read(tmp_path)[0]
        assert not marker.exists() and record.skipped == 1 and record.stopped is None
        for line in ledger.path_of(tmp_path).read_bytes().splitlines()[:2]:  # what a writer wrote is JSON
            assert isinstance(json.loads(line), dict)

    def test_a_nan_metric_is_written_and_read_back(self, tmp_path: Path) -> None:
        write(tmp_path, trial("0"), result("0", 1, float("nan")))
        got = ledger.read(tmp_path)[0].trials["0"].last["val/error"]
        assert got != got  # NaN: a diverged trial's loss is a result too


# ---- events folded into a Record ------------------------------------------------------------------


def test_each_event_kind_folds_into_the_trials_record() -> None:
    r = Record()
    assert r.apply({"ev": "session", "pid": 1}) and r.sessions == 1
    r.apply(trial("1"))
    t = r.trials["1"]
    assert (t.key, t.point, t.label, t.seed, t.status, t.epoch, t.last) == (
        "1",
        POINTS[1],
        label(POINTS[1]),
        0,
        Outcome.PENDING,
        0,
        {},
    )
    r.apply({"ev": "start", "key": "1", "session": 1})
    assert t.status is Outcome.RUNNING and t.starts == 1
    r.apply(result("1", 1, 50.0, at=1_700_000_001.25, checkpoint="trials/1/checkpoint.pt", hardware="cpu x2"))
    r.apply(result("1", 2, 40.0, dataset={"name": "fashion_mnist", "digest": "abc"}))
    assert t.results == {1: {"epoch": 1, "val/error": 50.0}, 2: {"epoch": 2, "val/error": 40.0}}
    assert t.epoch == 2 and t.last == {"epoch": 2, "val/error": 40.0} and t.reported_at == {1: 1_700_000_001.25}
    assert t.checkpoint == "trials/1/checkpoint.pt" and t.hardware == "cpu x2" and t.dataset["digest"] == "abc"
    r.apply({"ev": "retry", "key": "1", "error": "RuntimeError: node lost"})
    assert t.retries == 1 and t.error == "RuntimeError: node lost" and t.status is Outcome.RUNNING
    r.apply({"ev": "start", "key": "1", "session": 1})  # the executor runs it again: the error is history
    assert t.starts == 2 and t.error is None
    r.apply({"ev": "pause", "key": "1"})  # PBT paused it
    assert t.status is Outcome.PAUSED
    r.apply(result("1", 3, 30.0))  # and it runs on
    assert t.status is Outcome.RUNNING
    r.apply({"ev": "end", "key": "1", "outcome": "FAILED", "epoch": 3, "error": "ValueError: nan", "log": "/x"})
    assert t.status is Outcome.FAILED and (t.error, t.log) == ("ValueError: nan", "/x") and t.status.ended
    r.apply({"ev": "stop", "status": "FAILED", "best": {"key": "0", "label": "a", "value": 1.0}})
    assert r.stopped == "FAILED" and r.best == {"key": "0", "label": "a", "value": 1.0}
    r.apply({"ev": "session"})  # a resume: the launch runs again, not stopped
    assert r.sessions == 2 and r.stopped is None and r.best is not None
    r.apply({"ev": "stop", "status": "KILLED", "best": None})  # a session with no finished trial keeps the best
    assert r.stopped == "KILLED" and r.best == {"key": "0", "label": "a", "value": 1.0}
    assert r.skipped == 0


def test_the_first_report_of_an_epoch_is_kept() -> None:
    """A trial resumed from an older checkpoint trains epochs again: the record keeps each as first measured."""
    r = Record()
    r.apply(trial("0"))
    for epoch, err, at in ((1, 50.0, 1.0), (2, 40.0, 2.0), (2, 99.0, 5.0), (3, 30.0, 6.0)):
        r.apply(result("0", epoch, err, at=at, checkpoint=f"c{epoch}-{err}"))
    t = r.trials["0"]
    assert {e: m["val/error"] for e, m in t.results.items()} == {1: 50.0, 2: 40.0, 3: 30.0}
    assert t.reported_at == {1: 1.0, 2: 2.0, 3: 6.0}
    assert t.checkpoint == "c3-30.0"  # the checkpoint is the newest written, whichever epoch


def test_a_result_after_the_end_leaves_the_trial_ended() -> None:
    r = Record()
    r.apply(trial("0"))
    r.apply({"ev": "end", "key": "0", "outcome": "STOPPED", "epoch": 1})
    r.apply(result("0", 2, 40.0))
    assert r.trials["0"].status is Outcome.STOPPED and r.trials["0"].epoch == 2


def test_a_trial_event_again_keeps_what_the_trial_reported() -> None:
    r = Record()
    r.apply(trial("0"))
    r.apply(result("0", 1, 50.0))
    r.apply(trial("0", 3))  # planned again with another point
    assert r.trials["0"].point == POINTS[3] and r.trials["0"].epoch == 1


def test_pbt_origin_moves_the_trial_to_its_perturbed_point() -> None:
    r = Record()
    r.apply(trial("0"))
    origin = {"key": "1", "epoch": 2, "checkpoint": "/launch/trials/1/checkpoint.pt"}
    new = {**POINTS[0], "optim.lr": 0.123}
    r.apply(result("0", 3, 30.0, origin=origin, point=new, label=label(new)))
    t = r.trials["0"]
    assert t.origins == [origin] and t.point == new and t.label == label(new) == "lr=0.123 weight_decay=0.0005"
    r.apply(result("0", 4, 20.0, point={"optim.lr": 9.0}))  # a point without an origin changes nothing
    assert t.point == new and len(t.origins) == 1


def test_the_record_orders_trials_by_key_as_numbers() -> None:
    r = Record()
    for key in ("10", "2", "0"):
        r.apply(trial(key, 0))
    r.apply({"ev": "end", "key": "10", "outcome": "FINISHED"})
    r.apply({"ev": "end", "key": "0", "outcome": "FAILED"})
    assert [t.key for t in r.ordered()] == ["0", "2", "10"]
    assert [t.key for t in r.ended()] == ["0", "10"]
    assert ledger.key_of(7) == "7"


def test_a_trial_that_reached_its_last_epoch_finished_else_it_was_stopped() -> None:
    assert ended_as(3, 3) is Outcome.FINISHED and ended_as(4, 3) is Outcome.FINISHED
    assert ended_as(1, 3) is Outcome.STOPPED and ended_as(0, 3) is Outcome.STOPPED
    assert ended_as(3, 3, failed=True) is Outcome.FAILED
    assert [o for o in Outcome if o.ended] == [Outcome.FINISHED, Outcome.STOPPED, Outcome.FAILED]


# ---- what is printed from a Record ----------------------------------------------------------------


def _five(launch_dir: Path) -> Record:
    """A ledger with a finished, a stopped, a failed, a running and a planned trial."""
    events = [{"ev": "session"}, *(trial(str(i)) for i in range(5))]
    for key, epochs in (("0", 3), ("1", 1), ("2", 2), ("3", 1)):
        events.append({"ev": "start", "key": key})
        events += [result(key, e, 20.0 - e + int(key)) for e in range(1, epochs + 1)]
    events += [
        {"ev": "end", "key": "0", "outcome": "FINISHED", "epoch": 3},
        {"ev": "end", "key": "1", "outcome": "STOPPED", "epoch": 1},
        {"ev": "end", "key": "2", "outcome": "FAILED", "epoch": 2, "error": "RuntimeError: boom", "log": "/e.log"},
    ]
    write(launch_dir, *events)
    return ledger.read(launch_dir)[0]


def test_summary_counts_outcomes_and_names_the_best_finished_trial(tmp_path: Path, capsys) -> None:
    listing.print_summary(SWEEP, _five(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sweeplab: 5 trials: 1 finished, 1 stopped early, 1 failed, 2 unfinished"
    assert out[1] == f"best: trial 0  val/error 17  {label(POINTS[0])}"  # the stopped trial's 19 is not a result
    assert out[2].startswith("best config: sweeplab train ") and "optim.lr=0.02" in out[2]


def test_summary_of_a_launch_with_no_finished_trial_has_no_best(capsys) -> None:
    r = Record()
    r.apply(trial("0"))
    r.apply({"ev": "end", "key": "0", "outcome": "STOPPED"})
    listing.print_summary(SWEEP, r)
    assert capsys.readouterr().out.splitlines() == ["sweeplab: 1 trials: 0 finished, 1 stopped early, 0 failed"]


def test_status_says_unfinished_for_a_running_trial_no_driver_holds(tmp_path: Path, capsys) -> None:
    record = _five(tmp_path)
    meta = {"sweep": {"path": "sweeps/quickstart.yaml", "smoke": True}}
    listing.print_status("qs", meta, record, detail=True, running=ledger.held(tmp_path))
    head, *rows = capsys.readouterr().out.splitlines()
    counts = "1 failed, 1 finished, 1 pending, 1 unfinished, 1 stopped"  # RUNNING, with no driver: unfinished
    assert head == f"qs  sweeps/quickstart.yaml (smoke)  5 trials: {counts}"
    assert [r.split()[:4] for r in rows] == [
        ["0", "FINISHED", "epoch", "3"],
        ["1", "STOPPED", "epoch", "1"],
        ["2", "FAILED", "epoch", "2"],
        ["3", "unfinished", "epoch", "1"],
        ["4", "PENDING", "epoch", "0"],
    ]
    assert "val/error 17" in rows[0] and rows[2].endswith(f"{label(POINTS[2])}  RuntimeError: boom")
    holder = Writer(tmp_path)  # a driver runs the launch right now
    try:
        listing.print_status("qs", meta, ledger.read(tmp_path)[0], detail=True, running=ledger.held(tmp_path))
    finally:
        holder.close()
    head, *rows = capsys.readouterr().out.splitlines()
    assert head.endswith("1 running, 1 stopped  (running now)") and rows[3].split()[:2] == ["3", "running"]


def test_status_of_a_launch_without_trials(capsys) -> None:
    listing.print_status("empty", {}, Record(), detail=False)
    assert capsys.readouterr().out == "empty  ?  0 trials: no trial started\n"


def test_sweeplab_status_reads_the_ledger_alone(tmp_path: Path, capsys) -> None:
    """No Ray, no MLflow: the launch folder's sweeplab.json and ledger.jsonl are all `status` reads."""
    storage = tmp_path / "ray"
    uri = f"sqlite:///{tmp_path / 'never-opened.db'}"
    for name in ("qs-1", "qs-2"):  # qs-2: not started yet
        launch.write_meta(storage / name, {"sweep": SWEEP.snapshot(), "launch": name, "tracking_uri": uri})
    _five(storage / "qs-1")
    assert main(["status", "--storage", str(storage)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("qs-1  ") and "5 trials: 1 failed" in out[0]
    assert out[1].endswith("0 trials: no trial started")
    assert main(["status", "qs-1", "--storage", str(storage)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6
    assert main(["status", "qs-3", "--storage", str(storage)]) == 2
    assert "no launch 'qs-3'" in capsys.readouterr().err
    assert not (tmp_path / "never-opened.db").exists()


def test_a_trial_record_before_its_first_report() -> None:
    t = TrialRecord("0", {})
    assert t.epoch == 0 and t.last == {} and t.status is Outcome.PENDING and not t.status.ended
