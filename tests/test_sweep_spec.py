"""Sweep files -> compiled trials (grids, seeds, exprs, variants, samplers) and their strict validation.

Nothing here starts Ray: every check of a sweep file happens before it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweeplab.core.errors import SweepError
from sweeplab.schema import ModelConfig
from sweeplab.search_spaces import (
    SCHEDULERS,
    Choice,
    ChoiceVariant,
    Expr,
    Grid,
    GridVariant,
    LogUniform,
    QUniform,
    RandInt,
    Resources,
    Scheduler,
    Search,
    Uniform,
    from_snapshot,
    load,
)

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "configs/fashion_mnist/resnet_preact20.yaml")
TINY = {"data.name": "synthetic", "data.synthetic_train": 64, "data.synthetic_test": 32, "model.depth": 8}


def write(tmp_path: Path, name: str = "sweep.yaml", **spec) -> Path:
    spec = {"config": BASE, "overrides": dict(TINY), **spec}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_times_seeds(tmp_path):
    sweep = load(
        write(
            tmp_path,
            space={"optim.lr": {"grid": [0.05, 0.1]}, "optim.weight_decay": {"grid": [1e-4, 5e-4, 1e-3]}},
            seeds=3,
        )
    )
    trials = sweep.trials()
    assert len(trials) == 2 * 3 * 3
    combos = {(t.config.optim.lr, t.config.optim.weight_decay, t.config.train.seed) for t in trials}
    assert len(combos) == 18 and {s for *_, s in combos} == {0, 1, 2}
    # base config and overrides underneath every trial
    assert all(t.config.model.options["depth"] == 8 and t.config.data.name == "synthetic" for t in trials)
    assert sweep.epoch_budget() == 18 * 200 and sweep.max_epochs() == 200


def test_one_seed_keeps_the_configs_seed(tmp_path):
    sweep = load(write(tmp_path, space={"optim.lr": {"grid": [0.1]}}, overrides={**TINY, "train.seed": 7}))
    (trial,) = sweep.trials()
    assert trial.config.train.seed == 7 and "train.seed" not in trial.point


def test_expr_depends_on_the_trials_own_values(tmp_path):
    sweep = load(
        write(
            tmp_path,
            space={
                "data.batch_size": {"grid": [64, 256]},
                "optim.lr": {"expr": "0.1 * data.batch_size / 128"},
                "sched.warmup_epochs": {"expr": "max(1, train.epochs / 100)"},
            },
        )
    )
    got = {t.config.data.batch_size: (t.config.optim.lr, t.derived["optim.lr"]) for t in sweep.trials()}
    assert got == {64: (0.05, 0.05), 256: (0.2, 0.2)}
    assert all(t.config.sched.warmup_epochs == 2.0 for t in sweep.trials())  # 200 epochs / 100


def test_an_expr_reading_another_sees_its_value_whatever_the_order_of_the_file(tmp_path):
    space = {
        "optim.lr": {"expr": "optim.weight_decay * 2"},  # reads the expr below, not the config's 5e-4
        "optim.weight_decay": {"expr": "data.batch_size / 1000"},
        "optim.momentum": {"expr": "optim.momentum / 2"},  # its own key: the value before the expr
        "data.batch_size": {"grid": [100]},
    }
    (trial,) = load(write(tmp_path, space=space, overrides={**TINY, "optim.momentum": 0.9})).trials()
    assert trial.derived == {"optim.lr": 0.2, "optim.weight_decay": 0.1, "optim.momentum": 0.45}
    assert list(trial.derived) == ["optim.lr", "optim.weight_decay", "optim.momentum"]  # shown in the file's order


def test_variants_bundle_overrides_and_find_their_reference_row(tmp_path):
    variants = [
        {"label": "ResNet-110", "set": {"model.name": "resnet", "model.depth": 110}},
        {"label": "ResNet-preact-110", "set": {"model.depth": 110}},
    ]
    sweep = load(
        write(
            tmp_path,
            space={"variant": {"grid": variants}},
            tables={"cifar10_paper_settings": {"match": {"Model": "variant"}}},
        )
    )
    a, b = sweep.trials()
    assert a.point == {"variant": "ResNet-110"} and b.point == {"variant": "ResNet-preact-110"}
    # a changed model.name drops the base model's options (resnet has no initial_channels option)
    assert a.config.model == ModelConfig("resnet", {"depth": 110})
    assert b.config.model.name == "resnet_preact" and b.config.model.options["depth"] == 110
    assert (a.rows, b.rows) == ({"cifar10_paper_settings": 1}, {"cifar10_paper_settings": 2})


def test_numeric_match_compares_as_floats(tmp_path):
    sweep = load(
        write(
            tmp_path,
            space={"data.batch_size": {"grid": [2048, 1024, 999]}, "optim.lr": {"expr": "0.1 * data.batch_size / 128"}},
            tables={
                "bs_lr_linear_scaling_cosine_200": {
                    "match": {"batch size": "data.batch_size", "initial lr": "optim.lr"}
                }
            },
        )
    )
    rows = [t.rows.get("bs_lr_linear_scaling_cosine_200") for t in sweep.trials()]
    assert rows == [1, 2, None]  # 1.6 == "1.6", 0.8 == "0.8"; 999 is in no row


def test_quickstart_table_numbers_the_sweeps_own_points(tmp_path):
    sweep = load(
        write(
            tmp_path,
            space={"optim.lr": {"grid": [0.4, 0.1]}, "optim.weight_decay": {"grid": [5e-4]}},
            tables={"quickstart": {"match": {"initial lr": "optim.lr", "weight decay": "optim.weight_decay"}}},
        )
    )
    assert [t.rows["quickstart"] for t in sweep.trials()] == [1, 0]  # rows sorted by value
    assert sweep.trial({"optim.lr": 0.4, "optim.weight_decay": 5e-4}).rows == {"quickstart": 1}


def test_random_search_is_seeded_and_samples_in_range(tmp_path):
    space = {
        "optim.lr": {"loguniform": [1e-3, 1.0]},
        "optim.momentum": {"uniform": [0.8, 0.99]},
        "data.batch_size": {"choice": [32, 64]},
        "train.epochs": {"randint": [1, 4]},
        "optim.weight_decay": {"quniform": [0.0, 1e-3, 1e-4]},
    }
    a = load(write(tmp_path, space=space, search={"name": "random", "num_samples": 12, "seed": 3}))
    b = load(write(tmp_path, "b.yaml", space=space, search={"name": "random", "num_samples": 12, "seed": 3}))
    c = load(write(tmp_path, "c.yaml", space=space, search={"name": "random", "num_samples": 12, "seed": 4}))
    pa = [t.point for t in a.trials()]
    assert len(pa) == 12 and pa == [t.point for t in b.trials()] and pa != [t.point for t in c.trials()]
    for p in pa:
        assert 1e-3 <= p["optim.lr"] <= 1.0 and 0.8 <= p["optim.momentum"] <= 0.99
        assert p["data.batch_size"] in (32, 64) and p["train.epochs"] in (1, 2, 3)
        assert abs(p["optim.weight_decay"] / 1e-4 - round(p["optim.weight_decay"] / 1e-4)) < 1e-9
    assert a.epoch_budget() == sum(p["train.epochs"] for p in pa)


def test_optuna_space_becomes_optuna_distributions(tmp_path):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from sweeplab.runner import study

    sweep = load(
        write(
            tmp_path,
            space={
                "optim.lr": {"loguniform": [1e-3, 1.0]},
                "optim.name": {"choice": ["sgd", "adam"]},
                "train.epochs": {"randint": [1, 4]},
            },
            search={"name": "optuna", "num_samples": 5, "seed": 1, "storage": f"sqlite:///{tmp_path / 'o.db'}"},
        )
    )
    assert len(sweep.trials()) == 5 and sweep.size()[0] == 5
    space = study.space(sweep)
    assert space["optim.lr"] == FloatDistribution(1e-3, 1.0, log=True)
    assert isinstance(space["optim.name"], CategoricalDistribution)
    assert space["train.epochs"] == IntDistribution(1, 3)  # sweeplab's high is exclusive, Optuna's inclusive
    key, point = study.Study(sweep, "launch").ask()  # the study suggests each trial's whole point
    assert key == "0" and set(point) == {"optim.lr", "optim.name", "train.epochs"} and 1e-3 <= point["optim.lr"] <= 1.0


def test_a_grid_session_runs_every_compiled_trial_keyed_by_its_index(tmp_path):
    from sweeplab import ledger
    from sweeplab.runner.driver import Driver, Plan

    grid = load(write(tmp_path, "g.yaml", space={"optim.lr": {"grid": [0.1, 0.2]}}, seeds=2))
    writer = ledger.Writer(tmp_path / "launch")
    try:
        plan = Plan(grid, Driver(grid, writer, ledger.Record()))
        assert plan.grid() == [(str(t.index), t.point) for t in grid.trials()]
        assert plan.total == plan.remaining() == len(grid.trials()) == 4
    finally:
        writer.close()


def test_smoke_block_shrinks_the_sweep(tmp_path):
    path = write(
        tmp_path,
        space={"optim.lr": {"grid": [0.05, 0.1, 0.2]}},
        seeds=3,
        scheduler={"name": "asha", "grace_period": 5},
        smoke={
            "overrides": {"train.epochs": 2},
            "space": {"optim.lr": {"grid": [0.1]}},
            "seeds": 1,
            "scheduler": {"grace_period": 1},
        },
    )
    full, smoke = load(path), load(path, smoke=True)
    assert (len(full.trials()), len(smoke.trials())) == (9, 1)
    assert smoke.trials()[0].config.train.epochs == 2 and smoke.scheduler.options["grace_period"] == 1
    assert full.scheduler == Scheduler("asha", {"grace_period": 5})


def test_smoke_resources_merge_into_resources(tmp_path):
    path = write(
        tmp_path,
        space={"optim.lr": {"grid": [0.1]}},
        resources={"workers": 2, "cpus_per_worker": 2, "gpus_per_worker": 1},
        smoke={"resources": {"cpus_per_worker": 1, "gpus_per_worker": 0}},
    )
    full, smoke = load(path), load(path, smoke=True)
    assert full.resources == Resources(workers=2, cpus_per_worker=2, gpus_per_worker=1)
    assert smoke.resources == Resources(workers=2, cpus_per_worker=1, gpus_per_worker=0)  # workers kept
    for bad, culprit in [
        ({"gpus": 0}, "smoke.resources.gpus"),
        ({"workers": 0}, "smoke.resources.workers"),
        ({"gpus_per_worker": 1.5}, "smoke.resources.gpus_per_worker"),
        ({"cpus_per_worker": "one"}, "smoke.resources.cpus_per_worker"),
    ]:
        bad_path = write(tmp_path, "bad.yaml", resources={"workers": 2}, smoke={"resources": bad})
        for smoke_mode in (False, True):  # checked even when --smoke is not given, like smoke.overrides
            with pytest.raises(SweepError, match=culprit.replace(".", r"\.")):
                load(bad_path, smoke=smoke_mode)


def test_gpu_less_cluster_runs_gpu_trials_on_cpu(tmp_path, monkeypatch):
    import ray

    from sweeplab.runner import cluster

    sweep = load(
        write(
            tmp_path,
            space={"optim.lr": {"grid": [0.1]}},
            resources={"workers": 8, "cpus_per_worker": 2, "gpus_per_worker": 1},
        )
    )
    monkeypatch.setattr(
        ray,
        "nodes",
        lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}],
    )
    fitted, note = cluster.fit_resources(sweep, local=True)
    assert fitted.resources == Resources(workers=8, cpus_per_worker=0.25, gpus_per_worker=0)  # DDP kept, on gloo
    assert "gloo" in note and sweep.resources.gpus_per_worker == 1  # the loaded sweep is left as it was
    assert cluster.fit_resources(sweep, local=False) == (sweep, None)  # a joined cluster may autoscale GPUs
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 64.0, "GPU": 8.0}}])
    assert cluster.fit_resources(sweep, local=True) == (sweep, None)


@pytest.mark.parametrize(
    "spec, culprit",
    [
        ({"schedular": {"name": "asha"}}, "did you mean 'scheduler'"),
        ({"space": {"optim.lrr": {"grid": [0.1]}}}, "did you mean 'optim.lr'"),
        ({"overrides": {"train.epoch": 3}}, "did you mean 'train.epochs'"),
        ({"space": {"optim.lr": {"grid": [0.1, -0.1]}}}, "optim.lr"),  # impossible value in one trial
        ({"space": {"optim.lr": {"uniform": [-1.0, 1.0]}}}, "optim.lr"),  # impossible at the range's edge
        ({"space": {"optim.lr": {"uniform": [0.5, 0.1]}}}, "space.optim.lr"),
        ({"space": {"optim.lr": {"gird": [0.1]}}}, "did you mean 'grid'"),
        ({"space": {"optim.lr": 0.1}}, "space.optim.lr"),
        ({"space": {"optim.lr": {"expr": "0.1 * data.batch_sise"}}}, "did you mean 'data.batch_size'"),
        ({"space": {"optim.lr": {"expr": "__import__('os')"}}}, "space.optim.lr.expr"),
        ({"space": {"optim.lr": {"grid": [0.1]}}, "search": {"name": "optuna"}}, "optuna"),
        ({"search": {"name": "bayes"}}, "search.name"),
        ({"scheduler": {"name": "asha", "grace": 1}}, "scheduler.grace"),
        (
            {"tables": {"cifar10_paper_setings": {"match": {"Model": "variant"}}}},
            "did you mean 'cifar10_paper_settings'",
        ),
        ({"tables": {"quickstart": {"match": {"lr": "optim.lr"}}}}, "tables.quickstart.match"),
        ({"metric": "val/acc"}, "metric"),
        ({"resources": {"gpus": 1}}, "resources.gpus"),
        ({"smoke": {"epochs": 1}}, "smoke.epochs"),
        ({"smoke": {"overrides": {"model.depht": 8}}}, "model.depth"),
        ({"config": "configs/nope.yaml"}, "configs/nope.yaml"),
    ],
)
def test_bad_sweeps_name_the_file_and_key(tmp_path, spec, culprit):
    path = write(tmp_path, **spec)
    with pytest.raises(SweepError) as e:
        load(path, smoke="smoke" in spec)
    assert culprit in str(e.value) and str(path) in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SweepError, match="nope.yaml"):
        load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("space:\n  optim.lr: {grid: [0.1\n")
    with pytest.raises(SweepError, match="malformed YAML in .*bad.yaml"):
        load(bad)


def sweeplab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sweeplab.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


@pytest.mark.parametrize(
    "kind, culprit", [("unknown", "schedular"), ("malformed", "malformed YAML"), ("impossible", "optim.lr")]
)
def test_cli_rejects_bad_sweeps_before_ray_starts(tmp_path, kind, culprit):
    path = {
        "unknown": lambda: write(tmp_path, schedular={"name": "asha"}),
        "impossible": lambda: write(tmp_path, space={"optim.lr": {"grid": [0.1, 0.0]}}),
        "malformed": lambda: Path(tmp_path / "bad.yaml"),
    }[kind]()
    if kind == "malformed":
        path.write_text("name: x\nspace: {optim.lr: [\n")
    storage = tmp_path / "storage"
    r = sweeplab("run", str(path), "--storage", str(storage), "--num-cpus", "1", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert culprit in r.stderr and path.name in r.stderr and "Traceback" not in r.stderr
    assert not storage.exists()  # Ray would have put its token and the launch folder there


def test_dry_run_prints_trials_count_and_budget(tmp_path):
    path = write(tmp_path, space={"optim.lr": {"grid": [0.05, 0.1]}}, seeds=2, overrides={**TINY, "train.epochs": 3})
    start = time.perf_counter()
    r = sweeplab("run", str(path), "--dry-run", "--storage", str(tmp_path / "storage"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert time.perf_counter() - start < 30  # no Ray: torch's import is most of it
    lines = r.stdout.splitlines()
    assert sum(1 for ln in lines if ln.split()[:1] in (["0"], ["1"], ["2"], ["3"])) == 4
    assert "4 trials, epoch budget 12" in r.stdout
    assert not (tmp_path / "storage").exists()


@pytest.mark.parametrize(
    "scheduler, cls",
    [
        ({"name": "fifo"}, "FIFOScheduler"),
        ({"name": "asha", "grace_period": 2}, "AsyncHyperBandScheduler"),
        ({"name": "hyperband"}, "HyperBandScheduler"),
        ({"name": "median"}, "MedianStoppingRule"),
        ({"name": "pbt", "perturbation_interval": 2}, "PopulationBasedTraining"),
    ],
)
def test_schedulers_count_time_in_epochs(tmp_path, scheduler, cls):
    from sweeplab.runner import tune_space

    prefix = ("trial", "point")  # where a trial's Tune config holds its point (runner/tune_exec.py)

    sweep = load(
        write(
            tmp_path,
            space={"optim.lr": {"grid": [0.1, 0.2]}, "optim.weight_decay": {"uniform": [0, 1e-3]}},
            overrides={**TINY, "train.epochs": 6},
            scheduler=scheduler,
        )
    )
    s = tune_space.scheduler(sweep, tune_space.mutations(sweep, prefix))
    assert type(s).__name__ == cls
    if cls != "FIFOScheduler":
        assert s._time_attr == "epoch"
    if cls == "AsyncHyperBandScheduler":
        assert s._max_t == 6 and s._brackets[0]._rungs[-1][0] == 2  # max_t = train.epochs, first rung = grace
    if cls == "PopulationBasedTraining":
        assert set(s._hyperparam_mutations["trial"]["point"]) == {"optim.lr", "optim.weight_decay"}
    else:
        assert tune_space.mutations(sweep, prefix) is None


def test_pbt_rejects_ddp_trials(tmp_path):
    with pytest.raises(SweepError, match="pbt"):
        load(write(tmp_path, space={"optim.lr": {"grid": [0.1]}}, scheduler={"name": "pbt"}, resources={"workers": 2}))


def test_ddp_batch_must_split_evenly_across_workers(tmp_path):
    with pytest.raises(SweepError, match="data.batch_size"):
        load(write(tmp_path, space={"data.batch_size": {"grid": [128, 127]}}, resources={"workers": 2}))
    with pytest.raises(SweepError, match="ghost"):  # 240 / 4 workers = 60 per rank: not whole ghost batches of 48
        load(
            write(
                tmp_path,
                overrides={**TINY, "data.batch_size": 240, "train.ghost_batch_size": 48},
                resources={"workers": 4},
            )
        )
    assert (
        len(load(write(tmp_path, space={"data.batch_size": {"grid": [128, 256]}}, resources={"workers": 2})).trials())
        == 2
    )


def test_space_entries_are_typed_domains(tmp_path):
    sweep = load(
        write(
            tmp_path,
            space={
                "optim.lr": {"loguniform": [1e-3, 1.0]},
                "optim.momentum": {"uniform": [0.8, 0.99]},
                "optim.weight_decay": {"quniform": [0.0, 1e-3, 1e-4]},
                "data.batch_size": {"choice": [32, 64]},
                "train.epochs": {"randint": [1, 4]},
                "optim.nesterov": {"grid": [True, False]},
                "train.seed": {"expr": "int(optim.lr * 1000) % 7"},
                "variant": {"choice": [{"label": "a", "set": {"model.depth": 8}}, {"label": "b", "set": {}}]},
            },
            search={"name": "random", "num_samples": 2},
        )
    )
    assert sweep.space == {
        "optim.lr": LogUniform(1e-3, 1.0),
        "optim.momentum": Uniform(0.8, 0.99),
        "optim.weight_decay": QUniform(0.0, 1e-3, 1e-4),
        "data.batch_size": Choice((32, 64)),
        "train.epochs": RandInt(1, 4),
        "optim.nesterov": Grid((True, False)),
        "train.seed": Expr("int(optim.lr * 1000) % 7"),
        "variant": ChoiceVariant(("a", "b"), {"a": {"model.depth": 8}, "b": {}}),
    }
    assert [k for k, d in sweep.space.items() if not d.sampled] == ["optim.nesterov", "train.seed"]
    assert sweep.space["train.epochs"].extremes() == [1, 3] and sweep.space["variant"].extremes() == ["a", "b"]
    assert {t.point["variant"] for t in sweep.trials()} <= {"a", "b"}  # a variant's point is its label
    assert sweep.search == Search("random", 2, 0)
    assert sweep.scheduler == Scheduler("fifo", {}) and sweep.resources == Resources(1, 1, 0)


def test_snapshot_of_an_older_launch_still_loads(tmp_path):
    """`sweeplab.json` of a launch keeps the sweep file as read: this is its shape, as older launches
    stored it; `resume` and `status` rebuild the typed sweep from it."""
    config_tree = yaml.safe_load(Path(BASE).read_text())
    snap = {
        "path": "sweeps/old.yaml",
        "smoke": True,
        "spec": {
            "config": BASE,
            "overrides": dict(TINY),
            "space": {
                "optim.lr": {"grid": [0.05, 0.1]},
                "variant": {"grid": [{"label": "d8", "set": {"model.depth": 8}}]},
            },
            "scheduler": {"name": "asha", "grace_period": 2, "max_t": 8},
            "resources": {"workers": 2, "gpus_per_worker": 1},
            "smoke": {"scheduler": {"grace_period": 1}, "resources": {"gpus_per_worker": 0}},
        },
        "config_tree": config_tree,
    }
    sweep = from_snapshot(json.loads(json.dumps(snap)))
    assert sweep.space["variant"] == GridVariant(("d8",), {"d8": {"model.depth": 8}})
    assert sweep.scheduler == Scheduler("asha", {"grace_period": 1, "max_t": 8})
    assert sweep.resources == Resources(workers=2, cpus_per_worker=1, gpus_per_worker=0)
    assert sweep.search == Search("grid", 1, 0) and len(sweep.trials()) == 2
    assert from_snapshot(json.loads(json.dumps(sweep.snapshot()))) == sweep


def test_scheduler_table_names_tune_classes_and_their_arguments():
    pytest.importorskip("ray.tune")
    import importlib
    import inspect

    for name, kind in SCHEDULERS.items():
        module, cls_name = kind.tune_class.split(":")
        params = inspect.signature(getattr(importlib.import_module(module), cls_name)).parameters
        passed = {*kind.defaults, *kind.types, *(["max_t"] if kind.takes_max_t else [])} - {"mutate"}
        assert passed <= set(params), (name, passed - set(params))
        assert set(kind.defaults) - {"time_attr"} <= set(kind.types), name  # a default is for a settable option
