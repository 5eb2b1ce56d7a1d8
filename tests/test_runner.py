"""The runner without Ray: a launch driven by the fake executor, killed after every event, then resumed.

Whatever the moment of the kill (with the killing event synced to the ledger or lost with the
process), `resume` ends with every trial once in the ledger and in MLflow, every epoch it trained
once in MLflow (the same epochs the ledger has, from 1 up), and, for an Optuna sweep, each trial's
outcome told to the study once, as the ledger has it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fake_executor import FakeExecutor, Killed, metrics_of
from mlflow_store import fresh_uri
from sweep_cli import BASE
from sweeplab import ledger
from sweeplab.commands import wrapup
from sweeplab.ledger import Outcome
from sweeplab.runner import launch as L
from sweeplab.runner.study import with_study
from sweeplab.search_spaces import load

GRID = {"optim.lr": {"grid": [0.1, 0.2, 0.3]}}
STOP = {"1": 2}  # the scheduler stops trial 1 at its epoch 2
# events of a whole launch: 3 starts, 3 + 2 + 3 results, 3 ends
EVENTS = 14


def make_launch(
    tmp_path: Path, factory, space=None, search=None, name: str = "fake", follow: str = "inline", **more
) -> tuple:
    """A compiled 3-trial sweep of 3 epochs, its launch folder written as `sweeplab run` does, and the
    `session(executor)` that runs (or resumes) it with the MLflow follower inline."""
    spec = {"config": BASE, "name": name, "overrides": {"train.epochs": 3}, "space": space or GRID, **more}
    if search:
        spec["search"] = search
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    uri = fresh_uri(tmp_path / "store", factory)
    sweep = load(path)
    launch_dir = tmp_path / "ray" / name
    meta = {"sweep": sweep.snapshot(), "tracking_uri": uri, "launch": name, "command": "test"}
    if sweep.search.name == "optuna":
        sweep = with_study(sweep, uri, tmp_path / "ray", name)
        meta["optuna"] = {"storage": sweep.search.storage, "study": sweep.search.study}
    L.write_meta(launch_dir, meta)
    parent = wrapup.parent(sweep, meta, None)

    def session(executor: FakeExecutor) -> L.Result:
        return L.session(sweep, launch_dir, parent, executor, follow=follow)

    return sweep, launch_dir, uri, session


def child_runs(uri: str, launch: str) -> dict[str, object]:
    """key -> the child run of that trial; fails on a key with two runs."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exps = [e.experiment_id for e in c.search_experiments()]
    runs = [
        r for r in c.search_runs(exps, f"tags.`sweeplab.launch` = '{launch}'") if "mlflow.parentRunId" in r.data.tags
    ]
    keys = [r.data.tags["sweeplab.trial_id"] for r in runs]
    assert len(keys) == len(set(keys)), f"a trial has two MLflow runs: {sorted(keys)}"
    return {r.data.tags["sweeplab.trial_id"]: r for r in runs}


def assert_once(uri: str, launch_dir: Path) -> ledger.Record:
    """Every trial once, ended, and in MLflow with exactly the epochs the ledger has, each once, as measured."""
    from mlflow import MlflowClient

    record = ledger.read(launch_dir)[0]
    runs = child_runs(uri, launch_dir.name)
    assert sorted(runs) == sorted(record.trials), (sorted(runs), sorted(record.trials))
    c = MlflowClient(uri)
    for key, t in record.trials.items():
        assert t.status.ended, (key, t.status)
        assert sorted(t.results) == list(range(1, t.epoch + 1)), (key, sorted(t.results))
        run = runs[key]
        assert run.info.status == ("FAILED" if t.status is Outcome.FAILED else "FINISHED"), (key, run.info.status)
        history = c.get_metric_history(run.info.run_id, "val/error")
        assert sorted(m.step for m in history) == list(range(1, t.epoch + 1)), (key, [m.step for m in history])
        for m in history:  # the values measured, whichever attempt trained that epoch
            assert m.value == pytest.approx(metrics_of(t.point, m.step)["val/error"]), (key, m.step)
    return record


def test_a_whole_launch_records_every_trial_and_epoch(tmp_path, tmp_path_factory):
    sweep, launch_dir, uri, session = make_launch(tmp_path, tmp_path_factory)
    ex = FakeExecutor(stop=STOP)
    result = session(ex)
    assert ex.events == EVENTS
    assert result.status == "FINISHED" and result.owed == 0 and result.lost == []
    record = assert_once(uri, launch_dir)
    assert {k: t.status for k, t in record.trials.items()} == {
        "0": Outcome.FINISHED,
        "1": Outcome.STOPPED,
        "2": Outcome.FINISHED,
    }
    best = metrics_of({"optim.lr": 0.3}, 3)["val/error"]
    assert record.stopped == "FINISHED" and record.best == {"key": "2", "label": "lr=0.3", "value": pytest.approx(best)}
    # each trial's folder is a `sweeplab train` run folder: config, metrics per epoch, two checkpoints
    folder = launch_dir / "trials" / "0"
    assert {p.name for p in folder.iterdir()} >= {"config.yaml", "metrics.jsonl", "checkpoint.pt", "checkpoint.prev.pt"}


def test_resuming_a_launch_with_nothing_left_starts_no_executor(tmp_path, tmp_path_factory):
    """`sweeplab resume` of a finished launch starts no Ray: the ledger says nothing is owed."""
    sweep, launch_dir, uri, session = make_launch(tmp_path, tmp_path_factory)
    session(FakeExecutor(stop=STOP))

    def refuse(*_: object) -> None:
        raise AssertionError("the executor was started for a launch with nothing left to run")

    result = session(refuse)  # type: ignore[arg-type]
    assert result.status == "FINISHED" and result.owed == 0 and result.lost == []
    record = assert_once(uri, launch_dir)
    assert record.sessions == 2 and record.stopped == "FINISHED"


@pytest.mark.parametrize("synced", [True, False], ids=["synced", "unsynced"])
@pytest.mark.parametrize("n", range(1, EVENTS + 1))
def test_a_driver_killed_after_any_event_resumes_with_every_trial_and_epoch_once(tmp_path, tmp_path_factory, n, synced):
    sweep, launch_dir, uri, session = make_launch(tmp_path, tmp_path_factory)
    with pytest.raises(Killed):
        session(FakeExecutor(stop=STOP, kill_after=n, synced=synced))
    assert not ledger.held(launch_dir)  # a dead driver's lock goes with it
    result = session(FakeExecutor(stop=STOP))
    assert result.status == "FINISHED" and result.owed == 0 and result.lost == [], result
    record = assert_once(uri, launch_dir)
    assert sorted(record.trials) == ["0", "1", "2"]
    assert record.trials["0"].status is Outcome.FINISHED and record.trials["2"].status is Outcome.FINISHED


def test_a_ledger_cut_after_any_line_or_mid_line_resumes(tmp_path, tmp_path_factory):
    """The ledger's file cut anywhere (a crash mid-write, a disk that filled): resume reads the whole lines
    before the cut, cuts the torn tail off and finishes the launch, each trial and epoch once. (MLflow is
    left out here: it only copies the ledger, which the kill test above checks.)"""
    import shutil

    sweep, launch_dir, uri, session = make_launch(tmp_path, tmp_path_factory, follow="none")
    with pytest.raises(Killed):  # at its very last event: the ledger has it all but the last end and `stop`
        session(FakeExecutor(stop=STOP, kill_after=EVENTS, synced=False))
    whole = ledger.path_of(launch_dir).read_bytes()
    cuts = sorted({i + 1 for i, b in enumerate(whole) if b == ord("\n")} | {len(whole) // 3, len(whole) // 2 + 7})
    for cut in cuts:
        ledger.path_of(launch_dir).write_bytes(whole[:cut])
        shutil.rmtree(launch_dir / "trials", ignore_errors=True)  # trials start over: nothing of them survived
        before = ledger.read(launch_dir)[0]
        assert before.skipped == 0
        result = session(FakeExecutor(stop=STOP))
        assert result.owed == 0, cut
        record = ledger.read(launch_dir)[0]
        assert sorted(record.trials) == ["0", "1", "2"], cut
        for key, t in record.trials.items():
            assert t.status.ended and sorted(t.results) == list(range(1, t.epoch + 1)), (cut, key)
            kept = before.trials.get(key)
            if kept is not None:  # what the ledger had stays as it was
                assert {e: t.results[e] for e in kept.results} == kept.results, (cut, key)
        data = ledger.path_of(launch_dir).read_bytes()
        assert data.endswith(b"\n") and all(json.loads(line) for line in data.splitlines()), cut


def test_a_failed_trial_is_one_line_with_its_log_and_resume_retries_it(tmp_path, tmp_path_factory):
    sweep, launch_dir, uri, session = make_launch(tmp_path, tmp_path_factory)
    result = session(FakeExecutor(fail={"1": 2}))
    assert result.status == "FAILED" and result.owed == 0
    t = result.record.trials["1"]
    assert t.status is Outcome.FAILED and t.epoch == 1
    assert t.error == "ValueError: loss is nan at epoch 2"
    assert t.log == str(launch_dir / "trials" / "1" / "error.log")
    assert "Traceback" in Path(t.log).read_text()
    result = session(FakeExecutor())  # the cause went away: resume runs the failed trial on from epoch 1
    assert result.status == "FINISHED"
    record = assert_once(uri, launch_dir)
    assert record.trials["1"].status is Outcome.FINISHED and record.trials["1"].starts == 2


def test_a_second_driver_of_a_running_launch_is_refused(tmp_path, tmp_path_factory):
    from sweeplab.core.errors import SweepError

    sweep, launch_dir, uri, session = make_launch(tmp_path, tmp_path_factory)
    holder = ledger.Writer(launch_dir)
    try:
        assert ledger.held(launch_dir)
        with pytest.raises(SweepError, match="being run by another sweeplab process"):
            session(FakeExecutor())
    finally:
        holder.close()
    assert not ledger.held(launch_dir)


# ---- Optuna: the study follows the ledger ---------------------------------------------------------

SAMPLED = {"optim.lr": {"loguniform": [0.01, 1.0]}}


def study_trials(sweep) -> dict[str, object]:
    import optuna

    study = optuna.load_study(study_name=sweep.search.study, storage=sweep.search.storage)
    return {str(t.number): t for t in study.get_trials(deepcopy=False)}


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 11, 13])
def test_a_killed_optuna_launch_tells_the_study_each_outcome_once_as_the_ledger_has_it(tmp_path, tmp_path_factory, n):
    from optuna.trial import TrialState

    search = {"name": "optuna", "num_samples": 3, "seed": 0}
    sweep, launch_dir, uri, session = make_launch(tmp_path, tmp_path_factory, SAMPLED, search, name="opt")
    with pytest.raises(Killed):
        session(FakeExecutor(stop=STOP, kill_after=n, synced=False))
    # what the study knows is never ahead of the ledger
    record = ledger.read(launch_dir)[0]
    for key, t in study_trials(sweep).items():
        if t.state.is_finished():
            assert key in record.trials and record.trials[key].status.ended, (key, t.state)
    session(FakeExecutor(stop=STOP))
    record = assert_once(uri, launch_dir)
    found = study_trials(sweep)
    assert sorted(found) == sorted(record.trials) and len(found) == 3
    want = {Outcome.FINISHED: TrialState.COMPLETE, Outcome.STOPPED: TrialState.PRUNED, Outcome.FAILED: TrialState.FAIL}
    for key, t in record.trials.items():
        assert found[key].state is want[t.status], (key, found[key].state, t.status)
        if t.status is Outcome.FINISHED:
            assert found[key].value == pytest.approx(t.last["val/error"])
        assert found[key].params == t.point


def test_a_sweep_ranked_by_val_accuracy_maximises_it(tmp_path, tmp_path_factory, capsys):
    """`metric: val/accuracy`: mode max by default; the ledger's best, the summary and the parent run pick the
    highest accuracy; `sweeplab best` ranks by val/error (lowest first) unless told the metric."""
    from sweeplab.cli import main

    sweep, launch_dir, uri, session = make_launch(tmp_path, tmp_path_factory, metric="val/accuracy")
    assert sweep.mode == "max"
    result = session(FakeExecutor(stop=STOP))
    accuracy = {k: t.last["val/accuracy"] for k, t in result.record.trials.items() if t.status is Outcome.FINISHED}
    top = max(accuracy, key=accuracy.get)
    assert result.record.best == {"key": top, "label": result.record.trials[top].label, "value": accuracy[top]}
    runs = child_runs(uri, "fake")
    from mlflow import MlflowClient

    parent = MlflowClient(uri).get_run(next(iter(runs.values())).data.tags["mlflow.parentRunId"])
    assert parent.data.params["metric"] == "val/accuracy" and parent.data.params["mode"] == "max"
    assert parent.data.metrics["best/val/accuracy"] == accuracy[top]
    capsys.readouterr()
    assert main(["best", "fake", "--metric", "val/accuracy", "--json", "--top", "3", "--tracking-uri", uri]) == 0
    values = [row["value"] for row in json.loads(capsys.readouterr().out)]
    assert values == sorted(values, reverse=True) and values[0] == max(accuracy.values())
    assert main(["best", "fake", "--json", "--top", "3", "--tracking-uri", uri]) == 0
    errors = [row["value"] for row in json.loads(capsys.readouterr().out)]
    assert errors == sorted(errors)  # `best` alone ranks by val/error, whatever the sweep ranked by
