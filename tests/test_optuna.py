"""`search: {name: optuna}` keeps a real Optuna study (docs/sweeps.md "Optuna studies"), and the sweep
limits `search.trial_cap` and `search.time_budget_s`.

The fast tests check the sweep file's keys and drive the searcher by hand against an SQLite study;
the slow ones run the `sweeplab` CLI on a real local Ray with tiny synthetic data.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweep_cli import child_runs, cli, descendants, write_sweep
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
    from sweeplab.runner import optuna_study

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    assert optuna_study.default_storage(f"sqlite:///{store}/mlflow.db", "runs") == f"sqlite:///{store}/optuna.db"
    assert optuna_study.default_storage("http://127.0.0.1:5000", str(tmp_path / "ray")) == (
        f"sqlite:///{tmp_path}/ray/optuna.db"
    )
    assert optuna_study.absolute("sqlite:///o.db") == f"sqlite:///{tmp_path}/o.db"
    assert optuna_study.absolute("postgresql://u:pw@h/db") == "postgresql://u:pw@h/db"
    assert optuna_study.shown("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


# ---- the study, driven by hand ---------------------------------------------------------------------


def test_each_tune_trial_is_one_study_trial_in_its_state(tmp_path):
    from optuna.trial import TrialState

    from sweeplab.runner import tune_space

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = load(sweep_file(tmp_path, search={"name": "optuna", "num_samples": 4, "storage": url, "study": "s"}))
    searcher = tune_space.searcher(sweep, "L")
    points = {tid: searcher.suggest(tid)["point"] for tid in ("a", "b", "c")}
    assert searcher.suggest("a")["point"] == points["a"]  # asked again (Tune restores): the same trial
    for tid in "ac":
        searcher.on_trial_result(tid, {"val/error": 50.0, "epoch": 1})
    searcher.on_trial_complete("a", {"val/error": 40.0, "epoch": 3})  # ran its 3 epochs
    searcher.on_trial_complete("b", {"val/error": 60.0, "epoch": 1})  # a scheduler stopped it
    searcher.on_trial_complete("c", None, error=True)
    searcher.on_trial_complete("a", {"val/error": 40.0, "epoch": 3})  # told twice (a resume): once in the study
    trials = {t.user_attrs["tune_trial_id"]: t for t in study(url, "s").trials}
    assert set(trials) == {"a", "b", "c"}
    assert [trials[t].state for t in "abc"] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert trials["a"].value == 40.0 and trials["a"].intermediate_values == {1: 50.0, 3: 40.0}
    assert trials["b"].intermediate_values == {1: 60.0}  # the result the scheduler stopped it on
    assert trials["a"].params == points["a"] and set(points["a"]) == {"optim.lr", "optim.weight_decay"}
    assert trials["a"].user_attrs["launch"] == "L" and trials["a"].user_attrs["label"].startswith("lr=")


def test_a_trial_asked_before_the_driver_died_is_taken_over_not_repeated(tmp_path):
    from sweeplab.runner import tune_space

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = load(sweep_file(tmp_path, search={"name": "optuna", "num_samples": 4, "storage": url, "study": "s"}))
    searcher = tune_space.searcher(sweep, "L")
    searcher.suggest("a")
    searcher.save(str(tmp_path / "state.pkl"))  # Tune's last saved state...
    lost = searcher.suggest("b")["point"]  # ...then one more trial asked, and the driver killed
    again = tune_space.searcher(sweep, "L")
    with open(tmp_path / "state.pkl", "rb") as f:  # what Tune's restore does (the file is signed: launch_state)
        again.__dict__.update(pickle.load(f))
    assert again.suggest("c")["point"] == lost
    again.suggest("d")  # a new trial: the sampler's seeded state is the saved one, so it may draw `lost` again
    found = study(url, "s").trials
    assert [t.user_attrs["tune_trial_id"] for t in found] == ["a", "c", "d"]  # trial 1 is c's, none left RUNNING


def test_trials_the_study_has_ended_are_ended_by_resume_as_it_has_them(tmp_path):
    """The study is told at once, Tune's state up to a second or two later: on resume, the trials the
    study holds as COMPLETE or PRUNED (of this launch, none of another) end with the study's epoch and
    value instead of being trained again; a RUNNING or FAILED one runs on."""
    from sweeplab.runner import optuna_study, tune_space

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = load(sweep_file(tmp_path, search={"name": "optuna", "num_samples": 4, "storage": url, "study": "s"}))
    assert optuna_study.finished_trials(sweep, "L") == {}  # no study yet
    searcher = tune_space.searcher(sweep, "L")
    for tid in "abcd":
        searcher.suggest(tid)
    searcher.on_trial_result("b", {"val/error": 50.0, "epoch": 1})
    searcher.on_trial_complete("a", {"val/error": 60.0, "epoch": 1})  # a scheduler stopped it
    searcher.on_trial_complete("b", {"val/error": 40.0, "epoch": 3})  # ran its 3 epochs
    searcher.on_trial_complete("c", None, error=True)  # failed: `resume` retries it
    other = tune_space.searcher(sweep, "M")  # another launch sharing the study
    other.suggest("x")
    other.on_trial_complete("x", {"val/error": 70.0, "epoch": 1})
    assert optuna_study.finished_trials(sweep, "L") == {
        "a": {"epoch": 1, "val/error": 60.0},
        "b": {"epoch": 3, "val/error": 40.0},
    }
    assert optuna_study.finished_trials(sweep, "M") == {"x": {"epoch": 1, "val/error": 70.0}}


def test_outcomes_wait_for_a_kept_tune_state_that_has_the_trial_ended(tmp_path, monkeypatch):
    """With signed state copies (a local launch), the study learns an outcome only once a kept copy of
    Tune's state has that trial ended; one saved in the searcher's state is told when it is restored."""
    from optuna.trial import TrialState

    from sweeplab.runner import optuna_study, tune_space

    monkeypatch.setattr(optuna_study, "DEFER", True)
    monkeypatch.setattr(optuna_study, "ACTIVE", [])
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = load(sweep_file(tmp_path, search={"name": "optuna", "num_samples": 4, "storage": url, "study": "s"}))
    searcher = tune_space.searcher(sweep, "L")
    for tid in "ab":
        searcher.suggest(tid)
        searcher.on_trial_complete(tid, {"val/error": 40.0, "epoch": 3})

    def states() -> dict[str, TrialState]:
        return {t.user_attrs["tune_trial_id"]: t.state for t in study(url, "s").trials}

    assert states() == {"a": TrialState.RUNNING, "b": TrialState.RUNNING}  # no kept state has them ended yet
    kept = tmp_path / "copy"
    kept.mkdir()
    ended = (("a", "TERMINATED"), ("b", "RUNNING"))
    trial_data = [[json.dumps({"trial_id": t, "status": st}), "{}"] for t, st in ended]
    (kept / "experiment_state-1.json").write_text(json.dumps({"trial_data": trial_data}))
    optuna_study.tell_kept(kept)
    assert states() == {"a": TrialState.COMPLETE, "b": TrialState.RUNNING}
    searcher.save(str(tmp_path / "searcher-state-1.pkl"))  # b's outcome waits in the saved searcher...
    again = tune_space.searcher(sweep, "L")
    trial_data[1][0] = json.dumps({"trial_id": "b", "status": "TERMINATED"})
    (tmp_path / "experiment_state-1.json").write_text(json.dumps({"trial_data": trial_data}))
    again.restore_from_dir(str(tmp_path))  # ...and a restored state that has b ended tells it
    assert states() == {"a": TrialState.COMPLETE, "b": TrialState.COMPLETE}


def test_the_study_draws_in_optuna_visualization(tmp_path):
    from sweeplab.runner import tune_space

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = load(sweep_file(tmp_path, search={"name": "optuna", "num_samples": 3, "storage": url, "study": "s"}))
    searcher = tune_space.searcher(sweep, "L")
    for i, tid in enumerate("abc"):
        searcher.suggest(tid)
        searcher.on_trial_complete(tid, {"val/error": 50.0 - i, "epoch": 3})
    loaded = study(url, "s")
    assert loaded.metric_names == ["val/error"]  # optuna-dashboard labels its axes with it
    frame = loaded.trials_dataframe()
    assert list(frame["value_val/error"]) == [50.0, 49.0, 48.0] and "params_optim.lr" in frame
    import optuna.visualization  # plotly comes with the `test` extra

    figure = optuna.visualization.plot_optimization_history(loaded)
    assert list(figure.data[0].y) == [50.0, 49.0, 48.0]


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "random"])
def test_every_sampler_suggests_points_in_the_space(tmp_path, sampler):
    from sweeplab.runner import tune_space

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = {"name": "optuna", "sampler": sampler, "num_samples": 4, "storage": url, "seed": 3}
    searcher = tune_space.searcher(load(sweep_file(tmp_path, search=search)), "L")
    for tid in "abcd":
        p = searcher.suggest(tid)["point"]
        assert 1e-3 <= p["optim.lr"] <= 1.0 and p["optim.weight_decay"] in (0.0, 5e-4)
        searcher.on_trial_complete(tid, {"val/error": p["optim.lr"], "epoch": 3})


def test_the_grid_sampler_runs_each_point_once(tmp_path):
    from sweeplab.runner import tune_space

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = {"optim.lr": {"grid": [0.1, 0.2, 0.4]}, "optim.weight_decay": {"choice": [0.0, 5e-4]}}
    sweep = load(sweep_file(tmp_path, space=space, search={"name": "optuna", "sampler": "grid", "storage": url}))
    searcher = tune_space.searcher(sweep, "L")
    seen = []
    for i in range(sweep.search.num_samples):
        p = searcher.suggest(str(i))["point"]
        searcher.on_trial_complete(str(i), {"val/error": 1.0, "epoch": 3})  # the last: no study.stop() error
        seen.append((p["optim.lr"], p["optim.weight_decay"]))
    assert sorted(seen) == sorted((lr, wd) for lr in (0.1, 0.2, 0.4) for wd in (0.0, 5e-4))


# ---- real sweeps ---------------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SWEEPLAB_KEY_FILE": str(tmp_path / "keys" / "state.key")}


def _kill_tree(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    doomed = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in doomed - {proc.pid}:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_killed_optuna_sweep_resumes_the_same_study(tmp_path):
    path = write_sweep(
        tmp_path,
        name="opt",
        overrides={"train.epochs": 3, "data.synthetic_shape": [1, 32, 32], "data.synthetic_train": 1024},
        space={"optim.lr": {"loguniform": [1e-3, 0.5]}, "optim.weight_decay": {"choice": [0.0, 5e-4]}},
        search={"name": "optuna", "num_samples": 5, "seed": 1},
        scheduler={"name": "asha", "grace_period": 1},
        max_concurrent=2,
    )
    env = _env(tmp_path)
    argv = cli(tmp_path, "run", str(path), "--name", "opt", "--num-cpus", "2")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # kill the driver once a trial ended and another is under way
            lines.append(line)
            if re.search(r"  (done|stopped early at epoch \d+/\d+)  ", line):
                break
        # killed at once: the study was told of the stop, Tune's saved state (up to a second older) may
        # not know it yet, and `resume` must end that trial where the study has it (not run it on)
        time.sleep(0.2)
    finally:
        _kill_tree(proc)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"  # beside mlflow.db, named after the launch
    before = study(url, "opt").trials
    assert before, "".join(lines)
    r = subprocess.run(cli(tmp_path, "resume", "opt", "--num-cpus", "2"), capture_output=True, text=True,
                       env=env, timeout=600)  # fmt: skip
    assert r.returncode == 0, "".join(lines) + r.stdout + r.stderr
    assert "5 trials:" in r.stdout and "optuna-dashboard --host 127.0.0.1" in r.stdout, r.stdout
    after = study(url, "opt").trials
    ids = [t.user_attrs["tune_trial_id"] for t in after]
    tune = saved_trials(tmp_path / "ray" / "opt")
    assert len(ids) == len(set(ids)) == len(tune) == 5, (ids, tune)  # every Tune trial once, none twice
    assert set(ids) == set(tune)
    assert {t.number for t in before} <= {t.number for t in after}  # the same study, continued
    full = {tid for tid, epoch in tune.items() if epoch == 3}
    states = {t.user_attrs["tune_trial_id"]: (t.state.name, tune[t.user_attrs["tune_trial_id"]]) for t in after}
    assert {t.user_attrs["tune_trial_id"] for t in after if t.state.name == "COMPLETE"} == full, states
    assert {t.user_attrs["tune_trial_id"] for t in after if t.state.name == "PRUNED"} == set(tune) - full
    _, runs = child_runs(tmp_path, "opt")
    assert set(ids) <= {r.data.tags["sweeplab.trial_id"] for r in runs}


def saved_trials(launch_dir: Path) -> dict[str, int]:
    """Tune trial id -> its last epoch, in the newest signed copy of the launch's Tune state."""
    newest = sorted((launch_dir / ".sweeplab-state").glob("[0-9]*"))[-1]
    state = sorted(newest.glob("experiment_state-*.json"))[-1]  # a resumed launch's, by its timestamp
    out = {}
    for trial, meta in json.loads(state.read_text())["trial_data"]:
        trial, meta = json.loads(trial), json.loads(meta)
        out[trial["trial_id"]] = meta["last_result"].get("epoch", 0)
    return out


@pytest.mark.slow
def test_the_time_budget_ends_the_sweep_and_the_summary_says_so(tmp_path):
    path = write_sweep(
        tmp_path,
        name="budget",
        overrides={"train.epochs": 50, "data.synthetic_shape": [1, 32, 32], "data.synthetic_train": 1024},
        space={"optim.lr": {"loguniform": [0.01, 0.1]}},
        search={"name": "optuna", "num_samples": 6, "time_budget_s": 20},
        max_concurrent=2,
    )
    started = time.monotonic()
    r = subprocess.run(cli(tmp_path, "run", str(path), "--name", "budget", "--num-cpus", "2"), capture_output=True,
                       text=True, env=_env(tmp_path), timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - started < 150, r.stdout
    assert "the time budget (search.time_budget_s 20 s) ran out" in r.stdout, r.stdout + r.stderr
    assert "unfinished" not in r.stderr, r.stderr
    meta = json.loads((tmp_path / "ray" / "budget" / "sweeplab.json").read_text())
    assert meta["sweep"]["spec"]["search"]["time_budget_s"] == 20
    states = [t.state.name for t in study(f"sqlite:///{tmp_path / 'optuna.db'}", "budget").trials]
    assert states and "PRUNED" in states and "RUNNING" not in states, states  # the cut trials end in the study
