"""Tune's trial states become sweeplab's outcomes in the runner, once; the commands count and print outcomes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from sweeplab.commands import listing
from sweeplab.runner import trials
from sweeplab.runner.outcome import Outcome, ended_as
from sweeplab.search_spaces import load

ROOT = Path(__file__).resolve().parents[1]
SWEEP = load(ROOT / "sweeps" / "quickstart.yaml", smoke=True)  # 3 epochs a trial
POINT = SWEEP.points()[0]


def test_a_trial_that_reached_its_last_epoch_finished_else_it_was_stopped() -> None:
    assert ended_as(3, 3) is Outcome.FINISHED and ended_as(4, 3) is Outcome.FINISHED
    assert ended_as(1, 3) is Outcome.STOPPED
    assert ended_as(3, 3, failed=True) is Outcome.FAILED
    assert [o for o in Outcome if o.ended] == [Outcome.FINISHED, Outcome.STOPPED, Outcome.FAILED]


@pytest.mark.parametrize(
    "status, epoch, want",
    [
        ("TERMINATED", 3, Outcome.FINISHED),
        ("TERMINATED", 1, Outcome.STOPPED),
        ("ERROR", 3, Outcome.FAILED),
        ("RUNNING", 1, Outcome.RUNNING),
        ("PAUSED", 1, Outcome.PAUSED),
        ("PENDING", 0, Outcome.PENDING),
    ],
)
def test_tune_states_map_to_outcomes(status: str, epoch: int, want: Outcome) -> None:
    assert trials.outcome_of(status, POINT, {"epoch": epoch}, SWEEP) is want


def test_without_the_sweep_an_ended_trial_counts_as_finished() -> None:
    assert trials.outcome_of("TERMINATED", POINT, {"epoch": 1}, None) is Outcome.FINISHED


def _trial(tid: str, status: str, epoch: int) -> SimpleNamespace:
    return SimpleNamespace(
        trial_id=tid,
        status=status,
        config={"point": POINT},
        last_result={"epoch": epoch, "val/error": 10.0 + epoch},
        get_error=lambda: "Traceback ...\nRuntimeError: boom\n",
        path="/nonexistent/trial",
    )


def test_summaries_carry_the_outcome_and_a_failed_trials_error() -> None:
    got = trials.from_tune([_trial("a", "TERMINATED", 3), _trial("b", "TERMINATED", 1), _trial("c", "ERROR", 2)], SWEEP)
    assert [(s.trial_id, s.outcome, s.error, s.path) for s in got] == [
        ("a", Outcome.FINISHED, None, None),
        ("b", Outcome.STOPPED, None, None),
        ("c", Outcome.FAILED, "RuntimeError: boom", None),
    ]


def test_results_of_fit_are_the_fallback(tmp_path: Path) -> None:
    """A Result has no status: one with an error failed, one that never reported is left out."""

    def result(tid: str | None, epoch: int, error: Exception | None = None) -> SimpleNamespace:
        metrics = {"trial_id": tid, "epoch": epoch, "config": {"point": POINT}} if tid else {}
        return SimpleNamespace(metrics=metrics, config=metrics.get("config"), error=error, path=str(tmp_path))

    got = trials.from_results(
        [result("a", 3), result("b", 2), result("c", 1, RuntimeError("x\nValueError: bad")), result(None, 0)], SWEEP
    )
    assert [(s.trial_id, s.outcome, s.error) for s in got] == [
        ("a", Outcome.FINISHED, None),
        ("b", Outcome.STOPPED, None),
        ("c", Outcome.FAILED, "ValueError: bad"),
    ]
    assert got[0].path == str(tmp_path) and got[0].point == POINT


def _summary(tid: str, outcome: Outcome, epoch: int, error: str | None = None) -> trials.TrialSummary:
    return trials.TrialSummary(tid, outcome, dict(POINT), {"epoch": epoch, SWEEP.metric: 20.0 - epoch}, error)


SUMMARIES = [
    _summary("t1", Outcome.FINISHED, 3),
    _summary("t2", Outcome.STOPPED, 1),
    _summary("t3", Outcome.FAILED, 2, "RuntimeError: boom"),
    _summary("t4", Outcome.RUNNING, 1),
    _summary("t5", Outcome.PENDING, 0),
]


def test_summary_line_counts_outcomes_and_names_the_best_finished_trial(capsys: pytest.CaptureFixture) -> None:
    listing.print_summary(SWEEP, SUMMARIES)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sweeplab: 5 trials: 1 finished, 1 stopped early, 1 failed"
    assert out[1].startswith(f"best: t1  {SWEEP.metric} 17")


def test_status_prints_outcomes(capsys: pytest.CaptureFixture) -> None:
    listing.print_status("qs", {"sweep": {"path": "sweeps/quickstart.yaml"}}, SUMMARIES, detail=True)
    head, *rows = capsys.readouterr().out.splitlines()
    assert head == "qs  sweeps/quickstart.yaml  5 trials: 1 failed, 1 finished, 1 pending, 1 running, 1 stopped"
    assert [r.split()[:2] for r in rows] == [
        ["t1", "FINISHED"],
        ["t2", "STOPPED"],
        ["t3", "FAILED"],
        ["t4", "RUNNING"],
        ["t5", "PENDING"],
    ]
    assert rows[2].endswith("RuntimeError: boom")
