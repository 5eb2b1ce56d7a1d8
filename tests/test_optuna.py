"""`search: {name: optuna}` keeps a real Optuna study (docs/sweeps.md "Optuna studies"), and the sweep
limits `search.trial_cap` and `search.time_budget_s`.

The fast tests check the sweep file's keys, drive the launch's study (runner/study.py) by hand against an
SQLite study, and the runner's Plan of an Optuna session over a real ledger; the slow ones run the
`sweeplab` CLI on a real local Ray with tiny synthetic data.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlflow_store import fresh_uri
from sweep_cli import cli, write_sweep
from sweeplab import ledger
from sweeplab.core.errors import SweepError
from sweeplab.search_spaces import load

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "configs/fashion_mnist/resnet_preact20.yaml")
TINY = {"data.name": "synthetic", "data.synthetic_train": 64, "data.synthetic_test": 32, "model.depth": 8}
SPACE = {"optim.lr": {"loguniform": [1e-3, 1.0]}, "optim.weight_decay": {"choice": [0.0, 5e-4]}}
STARTED = r"  start  \(trial (\S+)\)"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def sweep_file(tmp_path: Path, file: str = "sweep.yaml", **spec: object) -> Path:
    path = tmp_path / file
    spec = {"config": BASE, "overrides": {**TINY, "train.epochs": 3}, "space": SPACE, **spec}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def study(url: str, name: str):  # type: ignore[no-untyped-def]
    import optuna

    return optuna.load_study(study_name=name, storage=url)


# ---- the sweep file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"space": {"optim.lr": {"grid": [0.1, 0.2]}}, "search": {"name": "optuna"}},
            "'space.optim.lr' is a grid, which optuna's tpe sampler does not walk: use {choice: [...]}",
        ),
        (
            {"space": {"optim.lr": {"grid": [0.1, 0.2]}}, "search": {"name": "optuna", "sampler": "cmaes"}},
            "sampler: grid",
        ),
        ({"search": {"name": "optuna", "sampler": "tpee"}}, "'search.sampler' is 'tpee'; did you mean 'tpe'"),
        ({"search": {"name": "optuna", "sampler": "grid"}}, "'space.optim.lr' is a continuous range"),
        ({"search": {"name": "grid", "study": "x"}}, "'search.study' is an optuna setting"),
        ({"search": {"name": "optuna", "storage": "optuna.db"}}, "'search.storage' must be an SQLAlchemy URL"),
        ({"search": {"name": "optuna", "study": "a/b"}}, "'search.study'"),
        ({"search": {"name": "grid", "trial_cap": 0}}, "'search.trial_cap' must be >= 1"),
        ({"search": {"name": "grid", "time_budget_s": 0}}, "'search.time_budget_s' must be > 0"),
        ({"search": {"name": "grid", "time_budget": 60}}, "did you mean 'search.time_budget_s'"),
    ],
)
def test_bad_optuna_and_limit_keys_name_the_key(tmp_path, spec, message):
    with pytest.raises(SweepError) as e:
        load(sweep_file(tmp_path, **spec))
    assert message in str(e.value)


def test_grid_sampler_walks_the_grid_once_by_default(tmp_path):
    space = {"optim.lr": {"grid": [0.1, 0.2, 0.4]}, "optim.weight_decay": {"choice": [0.0, 5e-4]}}
    sweep = load(sweep_file(tmp_path, space=space, search={"name": "optuna", "sampler": "grid"}))
    assert sweep.search.num_samples == 6 and len(sweep.trials()) == 6


def test_trial_cap_runs_the_first_points_and_the_dry_run_says_so(tmp_path):
    space = {"optim.lr": {"grid": [0.1, 0.2, 0.4]}, "optim.weight_decay": {"grid": [0.0, 5e-4]}}
    path = sweep_file(tmp_path, space=space, search={"name": "grid", "trial_cap": 4})
    full = load(sweep_file(tmp_path, "full.yaml", space=space)).trials()
    capped = load(path)
    assert [t.point for t in capped.trials()] == [t.point for t in full[:4]]
    assert capped.epoch_budget() == 4 * 3
    out = subprocess.run(
        [sys.executable, "-m", "sweeplab.cli", "run", str(path), "--dry-run"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "capped by search.trial_cap 4" in out.stdout and "4 trials," in out.stdout, out.stdout
    optuna = load(sweep_file(tmp_path, search={"name": "optuna", "num_samples": 10, "trial_cap": 3}))
    assert len(optuna.trials()) == 3


def test_the_study_database_defaults_beside_the_mlflow_file(tmp_path, monkeypatch):
    from sweeplab.runner import study as st

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    assert st.default_storage(f"sqlite:///{store}/mlflow.db", "runs") == f"sqlite:///{store}/optuna.db"
    assert st.default_storage("http://127.0.0.1:5000", str(tmp_path / "ray")) == f"sqlite:///{tmp_path}/ray/optuna.db"
    assert st.absolute("sqlite:///o.db") == f"sqlite:///{tmp_path}/o.db"
    assert st.absolute("sqlite:///:memory:") == "sqlite:///:memory:"
    assert st.absolute("postgresql://u:pw@h/db") == "postgresql://u:pw@h/db"
    assert st.shown("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert "optuna-dashboard --host 127.0.0.1" in st.dashboard_hint("postgresql://u:pw@h/db")
    assert "pw" not in st.dashboard_hint("postgresql://u:pw@h/db")


# ---- the study, driven by hand ---------------------------------------------------------------------


def optuna_sweep(tmp_path: Path, url: str, num_samples: int = 4, **search: object):  # type: ignore[no-untyped-def]
    spec = {"name": "optuna", "num_samples": num_samples, "storage": url, "study": "s", **search}
    return load(sweep_file(tmp_path, search=spec))


def by_key(url: str) -> dict[str, object]:
    return {str(t.number): t for t in study(url, "s").trials}


def test_ask_is_a_new_study_trial_keyed_by_its_number_with_its_label_and_launch(tmp_path):
    from optuna.trial import TrialState

    from sweeplab.runner.study import Study
    from sweeplab.search_spaces import label

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = Study(optuna_sweep(tmp_path, url), "L")
    asked = [s.ask() for _ in range(3)]
    assert [k for k, _ in asked] == ["0", "1", "2"]
    found = by_key(url)
    for key, point in asked:
        t = found[key]
        assert t.state is TrialState.RUNNING and t.params == point
        assert set(point) == {"optim.lr", "optim.weight_decay"} and 1e-3 <= point["optim.lr"] <= 1.0
        assert t.user_attrs == {"label": label(point), "launch": "L"}
    assert study(url, "s").metric_names == ["val/error"]  # optuna-dashboard labels its axes with it


def test_tell_maps_each_outcome_once_and_report_gives_intermediate_values(tmp_path):
    from optuna.trial import TrialState

    from sweeplab.ledger import Outcome
    from sweeplab.runner.study import Study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = optuna_sweep(tmp_path, url, num_samples=5)
    s = Study(sweep, "L")
    keys = [s.ask()[0] for _ in range(5)]
    s.report("0", 1, 50.0)
    s.report("0", 1, 99.0)  # an epoch reported again (a resumed trial): its first value stays
    s.report("0", 3, 40.0)
    s.report("1", 1, 60.0)
    s.report("1", 2, "nan?")  # not a number: not a value
    s.tell("0", Outcome.FINISHED, 40.0)  # ran its 3 epochs
    s.tell("1", Outcome.STOPPED, 60.0)  # a scheduler stopped it
    s.tell("2", Outcome.FAILED, None)
    s.tell("3", Outcome.FINISHED, None)  # finished without the sweep's metric: nothing to rank it by
    for key, outcome, value in (
        ("0", Outcome.FINISHED, 40.0),
        ("1", Outcome.STOPPED, 60.0),
        ("2", Outcome.FAILED, None),
    ):
        s.tell(key, outcome, value)  # told again (a resume tells every ended trial): nothing changes
    again = Study(sweep, "L")  # a resumed driver's study
    again.tell("0", Outcome.FAILED, None)
    again.report("4", 1, 10.0)  # asked by an earlier driver: Optuna's public API takes no value for it
    found = by_key(url)
    assert [found[k].state for k in keys] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.RUNNING,
    ]
    assert found["0"].value == 40.0 and found["0"].intermediate_values == {1: 50.0, 3: 40.0}
    assert found["1"].intermediate_values == {1: 60.0} and found["4"].intermediate_values == {}
    again.tell("4", Outcome.FINISHED, 30.0)  # ...but is told its outcome by number
    assert by_key(url)["4"].state is TrialState.COMPLETE and by_key(url)["4"].value == 30.0


def test_orphans_are_this_launchs_running_trials_the_ledger_never_got(tmp_path):
    from sweeplab.ledger import Outcome
    from sweeplab.runner.study import Study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = optuna_sweep(tmp_path, url, num_samples=6)
    s = Study(sweep, "L")
    asked = dict(s.ask() for _ in range(4))
    s.tell("1", Outcome.FINISHED, 1.0)
    other = Study(sweep, "M")  # another launch sharing the study
    other.ask()
    # the ledger has trials 0 and 3; 2 was asked just before the driver died; 1 has ended; 4 is M's
    assert Study(sweep, "L").orphans({"0", "3"}) == [("2", asked["2"])]
    assert Study(sweep, "L").orphans(set(asked)) == []


def _plan(sweep, launch_dir: Path, launch: str = "L"):  # type: ignore[no-untyped-def]
    """The Plan of a session of an Optuna launch over its ledger, as runner/launch.py builds it."""
    from sweeplab import ledger
    from sweeplab.runner.driver import Driver, Plan
    from sweeplab.runner.study import Study

    writer = ledger.Writer(launch_dir)
    driver = Driver(sweep, writer, ledger.read(launch_dir)[0], Study(sweep, launch))
    return Plan(sweep, driver), writer


def test_plan_asks_the_study_and_each_trial_is_in_the_ledger_before_it_runs(tmp_path):
    from sweeplab import ledger

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = optuna_sweep(tmp_path, url, num_samples=3)
    plan, writer = _plan(sweep, tmp_path / "L")
    try:
        assert plan.remaining() == plan.unfinished() == 3
        got = []
        for key, point in plan.asked():
            held = ledger.read(tmp_path / "L")[0].trials  # a reader of the file, not the driver's record
            assert key in held and held[key].point == point, key
            got.append((key, point))
    finally:
        writer.close()
    assert [k for k, _ in got] == ["0", "1", "2"]
    assert {k: t.params for k, t in by_key(url).items()} == dict(got)
    assert plan.remaining() == plan.unfinished() == 3  # planned, none started or ended


def test_plan_after_a_kill_tells_the_study_what_the_ledger_ended_and_runs_the_rest_once(tmp_path):
    """A driver died with trial 0 ended in the ledger but not yet told to the study, trial 1 failed, trial 2
    running, and trial 3 asked from the study just before the ledger got it. The next session tells the study
    each ended trial, runs 1 (failed: again), 2 and the orphan 3, then asks new trials up to num_samples."""
    from optuna.trial import TrialState

    from sweeplab import ledger
    from sweeplab.ledger import Outcome

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = optuna_sweep(tmp_path, url, num_samples=5)
    launch_dir = tmp_path / "L"
    plan, writer = _plan(sweep, launch_dir)
    d = plan.driver
    pairs = plan.asked()
    for _ in range(3):
        key, point = next(pairs)
        d.start(key, point)
    d.result("0", {"epoch": 3, "val/error": 30.0})
    d.end("0", {}, None)
    d.result("1", {"epoch": 1, "val/error": 50.0})
    d.end("1", {}, "ValueError: loss is nan")
    d.result("2", {"epoch": 1, "val/error": 45.0})
    d.writer.sync()  # the ledger has it all; the driver dies before `step` tells the study
    orphan = d.study.ask()  # and the study had just been asked a trial for the next run
    writer.close()
    assert {k: t.state for k, t in by_key(url).items()} == {str(i): TrialState.RUNNING for i in range(4)}

    plan, writer = _plan(sweep, launch_dir)
    try:
        got = list(plan.asked())
    finally:
        writer.close()
    assert got[:3] == [("1", got[0][1]), ("2", got[1][1]), orphan] and [k for k, _ in got] == ["1", "2", "3", "4"]
    record = ledger.read(launch_dir)[0]
    assert sorted(record.trials) == ["0", "1", "2", "3", "4"] and record.trials["3"].point == orphan[1]
    assert record.trials["0"].status is Outcome.FINISHED and record.trials["1"].status is Outcome.FAILED
    found = by_key(url)
    assert found["0"].state is TrialState.COMPLETE and found["0"].value == 30.0  # told, after the ledger had it
    assert found["1"].state is TrialState.FAIL  # told FAIL; the ledger runs it again all the same
    assert len(found) == 5 and all(found[k].state is TrialState.RUNNING for k in ("2", "3", "4"))


def test_the_study_draws_in_optuna_visualization(tmp_path):
    from sweeplab.ledger import Outcome
    from sweeplab.runner.study import Study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = Study(optuna_sweep(tmp_path, url, num_samples=3), "L")
    for i in range(3):
        key, _ = s.ask()
        s.tell(key, Outcome.FINISHED, 50.0 - i)
    loaded = study(url, "s")
    assert loaded.metric_names == ["val/error"]  # optuna-dashboard labels its axes with it
    frame = loaded.trials_dataframe()
    assert list(frame["value_val/error"]) == [50.0, 49.0, 48.0] and "params_optim.lr" in frame
    import optuna.visualization  # plotly comes with the `test` extra

    figure = optuna.visualization.plot_optimization_history(loaded)
    assert list(figure.data[0].y) == [50.0, 49.0, 48.0]


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "random"])
def test_every_sampler_suggests_points_in_the_space(tmp_path, sampler):
    from sweeplab.ledger import Outcome
    from sweeplab.runner.study import Study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = Study(optuna_sweep(tmp_path, url, sampler=sampler, seed=3), "L")
    for _ in range(4):
        key, p = s.ask()
        assert 1e-3 <= p["optim.lr"] <= 1.0 and p["optim.weight_decay"] in (0.0, 5e-4)
        s.tell(key, Outcome.FINISHED, p["optim.lr"])


def test_the_grid_sampler_runs_each_point_once(tmp_path):
    from sweeplab.ledger import Outcome
    from sweeplab.runner.study import Study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = {"optim.lr": {"grid": [0.1, 0.2, 0.4]}, "optim.weight_decay": {"choice": [0.0, 5e-4]}}
    sweep = load(sweep_file(tmp_path, space=space, search={"name": "optuna", "sampler": "grid", "storage": url}))
    s = Study(sweep, "L")
    seen = []
    for _ in range(sweep.search.num_samples):
        key, p = s.ask()
        s.tell(key, Outcome.FINISHED, 1.0)  # the last: no study.stop() error
        seen.append((p["optim.lr"], p["optim.weight_decay"]))
    assert sorted(seen) == sorted((lr, wd) for lr in (0.1, 0.2, 0.4) for wd in (0.0, 5e-4))


# ---- real sweeps ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_time_budget_ends_the_sweep_and_the_summary_says_so(tmp_path, tmp_path_factory):
    fresh_uri(tmp_path, tmp_path_factory)  # migrated already (a new store: test_faults' pair)
    path = write_sweep(
        tmp_path,
        name="budget",
        overrides={"train.epochs": 50, "data.synthetic_shape": [1, 32, 32], "data.synthetic_train": 1024},
        space={"optim.lr": {"loguniform": [0.01, 0.1]}},
        search={"name": "optuna", "num_samples": 6, "time_budget_s": 12},
        max_concurrent=2,
    )
    started = time.monotonic()
    r = subprocess.run(cli(tmp_path, "run", str(path), "--name", "budget", "--num-cpus", "2"), capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - started < 150, r.stdout
    assert "the time budget (search.time_budget_s 12 s) ran out" in r.stdout, r.stdout + r.stderr
    assert "unfinished" not in r.stderr, r.stderr
    meta = json.loads((tmp_path / "ray" / "budget" / "sweeplab.json").read_text())
    assert meta["sweep"]["spec"]["search"]["time_budget_s"] == 12
    found = {str(t.number): t.state.name for t in study(f"sqlite:///{tmp_path / 'optuna.db'}", "budget").trials}
    assert found and "PRUNED" in found.values() and "RUNNING" not in found.values(), found  # cut trials end
    record = ledger.read(tmp_path / "ray" / "budget")[0]
    assert sorted(found) == sorted(record.trials)  # one study trial per ledger trial, keyed by its number
    want = {"FINISHED": "COMPLETE", "STOPPED": "PRUNED", "FAILED": "FAIL"}
    assert {k: want[str(t.status)] for k, t in record.trials.items()} == found, (found, record.trials)
