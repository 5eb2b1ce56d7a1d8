"""The live status of a sweep (commands/live.py): counts by state, best so far, epochs of the budget and
time left, as one plain line on a pipe and as a block redrawn in place on a terminal; and the view
(commands/progress.py) that the runner's Driver tells of each trial event, after the ledger has it:
an event line per start, epoch and end, with the status under them."""

from __future__ import annotations

import io
import re
from pathlib import Path

from sweep_cli import write_sweep
from sweeplab import ledger
from sweeplab.commands.live import Status, duration
from sweeplab.commands.progress import View, budget
from sweeplab.ledger import Outcome, Record, TrialRecord
from sweeplab.runner.driver import Driver
from sweeplab.search_spaces import label, load

ROOT = Path(__file__).resolve().parents[1]
SWEEP = load(ROOT / "sweeps" / "quickstart.yaml", smoke=True)  # 8 trials of 3 epochs, ASHA, val/error min
STARTED = r"  start  \(trial (\d+)\)"  # a trial's start line names its ledger key


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _status(
    mode: str = "min", tty: bool = False, total: int = 8, budget: int = 24
) -> tuple[Status, Clock, io.StringIO]:
    clock = Clock()
    out = Tty() if tty else io.StringIO()
    return Status(total, budget, "val/error", mode, out, clock=clock, width=200), clock, out


def test_counts_by_state_and_pending_is_total_less_started() -> None:
    s, _, _ = _status()
    assert s.counts() == {"running": 0, "done": 0, "stopped early": 0, "failed": 0, "pending": 8}
    for i in range(5):
        s.start(f"t{i}", f"lr={i}", 3)
    s.result("t0", "lr=0", 3, {"epoch": 3, "val/error": 20.0})
    s.end("t0", "lr=0", 3, Outcome.FINISHED, {"epoch": 3, "val/error": 20.0})
    s.end("t1", "lr=1", 3, Outcome.STOPPED, {"epoch": 1})
    s.end("t2", "lr=2", 3, Outcome.FAILED, {"epoch": 2})
    s.retry("t3")  # Tune runs it again: still running
    assert s.counts() == {"running": 2, "done": 1, "stopped early": 1, "failed": 1, "pending": 3}


def test_best_follows_the_metric_and_mode() -> None:
    for mode, want in (("min", (12.5, "lr=b")), ("max", (40.0, "lr=c"))):
        s, _, _ = _status(mode)
        assert s.best() is None
        s.result("a", "lr=a", 3, {"epoch": 1, "val/error": 30.0, "train/loss": 0.001})
        s.result("b", "lr=b", 3, {"epoch": 1, "val/error": 12.5})
        s.result("c", "lr=c", 3, {"epoch": 1, "val/error": 40.0})
        assert s.best() == want
    s, _, _ = _status("min")
    s.result("a", "lr=a", 3, {"epoch": 1, "val/error": 10.0})
    s.result("a", "lr=a", 3, {"epoch": 2, "val/error": 15.0})  # a trial counts by its latest value
    s.result("b", "lr=b", 3, {"epoch": 1, "val/error": 12.0})
    assert s.best() == (12.0, "lr=b")


def test_time_left_from_the_epoch_rate_and_a_budget_that_stopped_trials_shrink() -> None:
    s, clock, _ = _status(total=4, budget=12)  # 4 trials x 3 epochs
    assert s.left() is None and "left ?" in s.plain()  # no epoch yet: no rate
    for t in ("a", "b"):
        s.start(t, f"lr={t}", 3)
    clock.now += 30
    s.result("a", "lr=a", 3, {"epoch": 1, "val/error": 50.0})
    s.result("b", "lr=b", 3, {"epoch": 1, "val/error": 60.0})
    # 2 epochs in 30 s; 10 of 12 left: 10 * 30 / 2 = 150 s
    assert s.epochs() == (2, 12) and s.left() == 150.0
    s.end("b", "lr=b", 3, Outcome.STOPPED, {"epoch": 1, "val/error": 60.0})  # its 2 unrun epochs leave the budget
    clock.now += 10
    s.result("a", "lr=a", 3, {"epoch": 2, "val/error": 40.0})
    # 3 epochs in 40 s; budget 10, 3 done: 7 * 40 / 3
    assert s.epochs() == (3, 10) and abs(s.left() - 7 * 40 / 3) < 1e-9
    assert "epochs 3/10" in s.plain() and f"left ~{duration(7 * 40 / 3)}" in s.plain()
    s.result("a", "lr=a", 3, {"epoch": 2, "val/error": 40.0})  # a repeated report is no new epoch
    assert s.epochs() == (3, 10)


def test_a_resumed_driver_counts_earlier_epochs_as_done_but_not_in_its_rate() -> None:
    s, clock, _ = _status(total=2, budget=6)
    s.seed("a", "lr=a", 3, Outcome.FINISHED, {"epoch": 3, "val/error": 9.0})
    s.seed("b", "lr=b", 3, Outcome.RUNNING, {"epoch": 1})  # to be run again from its checkpoint
    assert s.counts()["done"] == 1 and s.counts()["pending"] == 1 and s.best() == (9.0, "lr=a")
    s.start("b", "lr=b", 3)
    clock.now += 20
    s.result("b", "lr=b", 3, {"epoch": 2})
    assert s.epochs() == (5, 6) and s.left() == 1 * 20 / 1


def test_a_pipe_gets_plain_status_lines_at_trial_ends_and_at_most_every_n_seconds() -> None:
    s, clock, out = _status()
    s.start("a", "lr=0.1", 3)
    s.line("[     1s] lr=0.1  start  (trial x_00000)")
    s.tick()
    assert out.getvalue() == "[     1s] lr=0.1  start  (trial x_00000)\n"  # no status line yet
    clock.now += 31
    s.tick()
    s.tick()  # again at once: nothing new
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("[    31s] status  1 running, 0 done")
    s.result("a", "lr=0.1", 3, {"epoch": 3, "val/error": 21.5})
    s.end("a", "lr=0.1", 3, Outcome.FINISHED, {"epoch": 3, "val/error": 21.5})
    s.line("[    40s] lr=0.1  done  val/error 21.5", ended=True)
    last = out.getvalue().splitlines()[-1]
    assert last == (
        "[    31s] status  0 running, 1 done, 0 stopped early, 0 failed, 7 pending (of 8)  |  "
        "best val/error 21.5 (lr=0.1)  |  epochs 3/24  |  left ~3m37s"
    )  # 21 epochs left at 3 per 31 s: 21 * 31 / 3 = 217 s
    s.close()
    assert "\x1b" not in out.getvalue()


def test_a_terminal_gets_a_block_redrawn_in_place_under_the_event_lines(monkeypatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    s, clock, out = _status(tty=True)
    s.start("a", "lr=0.1", 3)
    s.line("[     1s] lr=0.1  start  (trial x_00000)")
    first = out.getvalue()
    assert first.startswith("[     1s] lr=0.1  start  (trial x_00000)\n") and "\x1b[" not in first.splitlines()[0]
    block = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in first.splitlines()[1:]]
    assert len(block) == 4 and block[0].startswith("-- trials 8: 1 running, 0 done")
    assert "best   val/error -" in block[1] and "epochs 0/24" in block[2] and "left ?" in block[2]
    assert block[3] == "   > lr=0.1  epoch 0/3  val/error -  0s"  # the running trial, like Tune's table
    clock.now += 3
    s.tick()  # the timer: cursor up over the 4 lines, clear, draw again
    assert out.getvalue()[len(first) :].startswith("\x1b[4A\r\x1b[J")
    mark = len(out.getvalue())
    s.result("a", "lr=0.1", 3, {"epoch": 1, "val/error": 42.0})
    s.line("[     5s] lr=0.1  epoch 1/3")  # an event line replaces the block, which is drawn under it
    after = out.getvalue()[mark:]
    assert after.startswith("\x1b[4A\r\x1b[J[     5s] lr=0.1  epoch 1/3\n") and after.count("\n") == 5
    assert "   > lr=0.1  epoch 1/3  val/error 42  3s" in re.sub(r"\x1b\[[0-9;]*m", "", after)
    s.close()
    end = len(out.getvalue())
    s.tick()  # after close, what follows (the summary) prints under the block: nothing is cleared
    assert "\x1b[4A" not in out.getvalue()[end:]


def test_long_block_lines_are_cut_to_the_terminal_width(monkeypatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    s, _, out = _status(tty=True)
    s.width = 40
    s.result("a", "x" * 100, 3, {"epoch": 1, "val/error": 1.0})
    s.tick()
    rows = [re.sub(r"\x1b\[[0-9;]*m", "", r) for r in out.getvalue().splitlines()]
    assert len(rows) == 4 and all(len(r) <= 39 for r in rows)


def _view() -> tuple[View, io.StringIO]:
    out = io.StringIO()
    return View(SWEEP, out=out), out


def _trial(key: str) -> TrialRecord:
    point = SWEEP.points()[int(key)]
    return TrialRecord(key, point, label(point), status=Outcome.RUNNING)


def _report(v: View, t: TrialRecord, result: dict) -> None:
    """An epoch, as the Driver passes it: folded into the trial's record first, then shown."""
    t.results.setdefault(int(result["epoch"]), result)
    v.result(t, 3, result)


def _end(v: View, t: TrialRecord, outcome: Outcome, error: str | None = None, log: str | None = None) -> None:
    t.status, t.error, t.log = outcome, error, log
    v.end(t, 3)


def test_the_view_feeds_the_status_and_keeps_its_event_lines() -> None:
    assert SWEEP.size()[0] == 8 and budget(SWEEP) == SWEEP.epoch_budget() == 24
    v, out = _view()
    t0, t1 = _trial("0"), _trial("1")
    v.start(t0, 3)
    v.start(t1, 3)
    _report(v, t0, {"epoch": 1, "val/error": 40.0, "train/loss": 1.0})
    _report(v, t1, {"epoch": 1, "val/error": 55.0, "train/loss": 1.2})
    _end(v, t1, Outcome.STOPPED)  # stopped at 1 of 3
    lines = out.getvalue().splitlines()
    assert re.findall(STARTED, out.getvalue()) == ["0", "1"]
    assert lines[0] == f"[     0s] {t0.label}  start  (trial 0)"
    assert lines[2].endswith(f"{t0.label}  epoch 1/3  train/loss 1  val/error 40")
    assert lines[4].endswith(f"{t1.label}  stopped early at epoch 1/3  val/error 55")
    assert re.search(
        rf"status  1 running, 0 done, 1 stopped early, 0 failed, 6 pending \(of 8\)  \|  "
        rf"best val/error 40 \({re.escape(t0.label)}\)  \|  epochs 2/22  \|  left ",
        lines[5],
    ), lines


def test_the_view_says_how_each_trial_ended_and_each_retry() -> None:
    v, out = _view()
    done, failed, lost, early = (_trial(k) for k in "0123")
    for t in (done, failed, lost, early):
        v.start(t, 3)
    for e in (1, 2, 3):
        _report(v, done, {"epoch": e, "val/error": 40.0 - e})
    _end(v, done, Outcome.FINISHED)
    _report(v, failed, {"epoch": 1, "val/error": 50.0})
    v.retry(failed, 3, "RuntimeError: node lost")  # the executor runs it again from its checkpoint
    v.retry(early, 3, "RuntimeError: OOM")  # before its first epoch
    notice = "trials/1/checkpoint.pt: truncated; continuing from trials/1/checkpoint.prev.pt (epoch 1)"
    _report(v, failed, {"epoch": 2, "val/error": 45.0, "notice": notice})  # its newest checkpoint did not load
    _end(v, failed, Outcome.FAILED, "ValueError: loss is nan", "/launch/trials/1/error.log")
    _end(v, lost, Outcome.FAILED, "its worker process died")  # no traceback to point at
    text = out.getvalue()
    assert f"{done.label}  done  val/error 37\n" in text
    assert f"{failed.label}  failed at epoch 1/3: RuntimeError: node lost; retrying from its epoch 1 checkpoint" in text
    assert f"{early.label}  failed at epoch 0/3: RuntimeError: OOM; retrying from the start" in text
    assert f"{failed.label}  note: {notice}\n" in text and text.count("note: ") == 1
    assert (
        f"{failed.label}  FAILED at epoch 2/3: ValueError: loss is nan (traceback: /launch/trials/1/error.log)\n"
        in text
    )
    assert f"{lost.label}  FAILED at epoch 0/3: its worker process died\n" in text
    assert v.status.counts() == {"running": 1, "done": 1, "stopped early": 0, "failed": 2, "pending": 4}


def test_the_view_counts_a_capped_optuna_sweep_by_its_cap(tmp_path) -> None:
    """The status's total is Sweep.size(): an Optuna sweep's num_samples, capped by trial_cap."""
    path = write_sweep(
        tmp_path,
        overrides={"train.epochs": 2},
        space={"optim.lr": {"loguniform": [0.01, 0.1]}},
        search={"name": "optuna", "num_samples": 10, "trial_cap": 3},
    )
    sweep = load(path)
    v = View(sweep, out=io.StringIO())
    assert v.status.total == sweep.size()[0] == 3 and v.status.budget == budget(sweep) == 6


def test_the_driver_tells_the_view_after_the_ledger_has_the_event(tmp_path) -> None:
    """The runner's Driver writes each event into the ledger's record, then shows it."""
    seen: list[tuple[str, str, Outcome, int]] = []

    class Watch(View):
        def start(self, t: TrialRecord, epochs: int) -> None:
            seen.append(("start", t.key, t.status, t.epoch))
            super().start(t, epochs)

        def result(self, t: TrialRecord, epochs: int, result: dict) -> None:
            seen.append(("result", t.key, t.status, t.epoch))
            super().result(t, epochs, result)

        def end(self, t: TrialRecord, epochs: int) -> None:
            seen.append(("end", t.key, t.status, t.epoch))
            super().end(t, epochs)

    out = io.StringIO()
    writer = ledger.Writer(tmp_path)
    try:
        d = Driver(SWEEP, writer, Record(), view=Watch(SWEEP, out=out))
        point = SWEEP.points()[0]
        d.start("0", point)
        d.result("0", {"epoch": 1, "val/error": 40.0, "train/loss": 1.0})
        d.end("0", {"epoch": 2, "val/error": 35.0}, None)  # a scheduler's last word comes with its result
        d.step()
    finally:
        writer.close()
    assert seen == [
        ("start", "0", Outcome.RUNNING, 0),
        ("result", "0", Outcome.RUNNING, 1),
        ("result", "0", Outcome.RUNNING, 2),
        ("end", "0", Outcome.STOPPED, 2),
    ]
    assert out.getvalue().splitlines()[-2].endswith(f"{label(point)}  stopped early at epoch 2/3  val/error 35")
    assert ledger.read(tmp_path)[0].trials["0"].status is Outcome.STOPPED


def test_durations() -> None:
    assert [duration(x) for x in (0, 12.4, 73, 3600 * 2 + 600)] == ["0s", "12s", "1m13s", "2h10m"]


def test_a_resumed_view_starts_from_the_trials_the_earlier_driver_left() -> None:
    v, out = _view()
    p = SWEEP.points()
    record = Record()
    for i, (outcome, epoch, err) in enumerate(
        [(Outcome.FINISHED, 3, 30.0), (Outcome.STOPPED, 1, 60.0), (Outcome.RUNNING, 2, 45.0)]
    ):
        t = TrialRecord(str(i), p[i], label(p[i]), status=outcome)
        t.results = {e: {"epoch": e, "val/error": err} for e in range(1, epoch + 1)}
        record.trials[t.key] = t
    v.seen(record)
    assert v.status.counts() == {"running": 0, "done": 1, "stopped early": 1, "failed": 0, "pending": 6}
    assert v.status.epochs() == (6, 22) and v.status.best() == (30.0, label(p[0])) and v.status.left() is None
    t2 = record.trials["2"]
    v.start(t2, 3)  # run again from its epoch 2 checkpoint
    _report(v, t2, {"epoch": 3, "val/error": 25.0})
    assert v.status.epochs() == (7, 22) and v.status.run_epochs == 1 and v.status.best() == (25.0, label(p[2]))
    assert out.getvalue().splitlines()[0].endswith(f"{label(p[2])}  start  (trial 2)")


def test_a_dumb_terminal_gets_plain_lines_and_no_color_drops_the_dimming(monkeypatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    s, _, out = _status(tty=True)  # a tty-like stream, but TERM=dumb: no cursor movement
    s.line("x", ended=True)
    assert not s.tty and "\x1b" not in out.getvalue() and "] status  " in out.getvalue()
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("NO_COLOR", "1")
    s, _, out = _status(tty=True)
    s.tick()
    s.tick()
    assert s.tty and "\x1b[2m" not in out.getvalue() and "\x1b[3A" in out.getvalue()
