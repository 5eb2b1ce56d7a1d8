"""Friendly sweep files: `1e-3` is a number everywhere, another tool's keys get sweeplab's equivalent, and
`metric` may name any metric a trial reports (docs/sweeps.md, "Coming from W&B Sweeps / Ray Tune / Optuna").

Nothing here starts Ray but the one slow test, which runs a tiny real sweep ranked by val/accuracy.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sweeplab import config
from sweeplab.core.errors import SweepError
from sweeplab.core.names import METRICS, default_mode
from sweeplab.core.yamlio import load_text
from sweeplab.search_spaces import LogUniform, QUniform, Uniform, load

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs/fashion_mnist/resnet_preact20.yaml"
HEAD = (
    f"config: {BASE}\n"
    "overrides: {data.name: synthetic, data.synthetic_train: 64, data.synthetic_test: 32, model.depth: 8}\n"
)


def compile_text(tmp_path: Path, text: str, smoke: bool = False):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load(path, smoke=smoke)


def error(tmp_path: Path, text: str) -> str:
    """The SweepError a sweep file's text gets; it always names the file."""
    with pytest.raises(SweepError) as e:
        compile_text(tmp_path, text)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 's.yaml'}: "), message
    return message


# ---- scientific notation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("1e-3", 0.001),
        ("4E-1", 0.4),
        ("1e3", 1000.0),
        ("-2.5e-4", -0.00025),
        ("+1e2", 100.0),
        (".5e-3", 0.0005),
        ("1.5e4", 15000.0),  # YAML 1.1 wants a signed exponent: 1.5e+4
        ("1.0e-4", 0.0001),  # what YAML 1.1 already read
        ("12", 12),
        ("1_000", 1000),
        ("0x10", 16),
        ("'1e-3'", "1e-3"),  # quoted: a string, as YAML says
        ('"4E-1"', "4E-1"),
        ("1e", "1e"),
        ("e3", "e3"),
        ("1e-3x", "1e-3x"),
    ],
)
def test_yaml_reads_scientific_notation_as_floats_and_quoted_text_as_strings(text, value):
    got = load_text(f"k: {text}")["k"]
    assert got == value and type(got) is type(value)


def test_scientific_notation_in_space_entries(tmp_path):
    sweep = compile_text(
        tmp_path,
        HEAD
        + "space:\n"
        + "  optim.lr: {loguniform: [1e-3, 4E-1]}\n"
        + "  optim.momentum: {uniform: [8e-1, 9.9e-1]}\n"
        + "  optim.weight_decay: {quniform: [0, 1e-3, 1e-4]}\n"
        + "  optim.nesterov: {choice: [true, false]}\n"
        + "search: {name: random, num_samples: 2, seed: 42}\n",
    )
    assert sweep.space["optim.lr"] == LogUniform(0.001, 0.4)
    assert sweep.space["optim.momentum"] == Uniform(0.8, 0.99)
    assert sweep.space["optim.weight_decay"] == QUniform(0, 0.001, 0.0001)
    assert sweep.search.seed == 42 and isinstance(sweep.search.seed, int)
    grid = compile_text(tmp_path, HEAD + "space: {optim.weight_decay: {grid: [1e-4, 5E-4, -0e0]}}\n")
    assert [t.config.optim.weight_decay for t in grid.trials()] == [0.0001, 0.0005, 0.0]


def test_scientific_notation_in_overrides_scheduler_resources_and_smoke(tmp_path):
    text = (
        HEAD.replace("model.depth: 8}", "model.depth: 8, optim.weight_decay: 5e-4, train.epochs: 4}")
        + "space: {optim.lr: {grid: [1e-1, 2e-1]}}\n"
        + "scheduler: {name: asha, grace_period: 1, reduction_factor: 3e0}\n"
        + "resources: {cpus_per_worker: 5e-1}\n"
        + "smoke:\n"
        + "  overrides: {optim.momentum: 8.5e-1}\n"
        + "  space: {optim.lr: {grid: [5e-2]}}\n"
        + "  scheduler: {reduction_factor: 2e0}\n"
        + "  resources: {cpus_per_worker: 2.5e-1}\n"
    )
    full = compile_text(tmp_path, text)
    assert full.spec["overrides"]["optim.weight_decay"] == 5e-4  # a number in the file, not the string '5e-4'
    assert {t.config.optim.weight_decay for t in full.trials()} == {0.0005}
    assert [t.config.optim.lr for t in full.trials()] == [0.1, 0.2]
    assert full.scheduler.options["reduction_factor"] == 3.0 and full.resources.cpus_per_worker == 0.5
    smoke = compile_text(tmp_path, text, smoke=True)
    assert [t.config.optim.lr for t in smoke.trials()] == [0.05]
    assert smoke.trials()[0].config.optim.momentum == 0.85
    assert smoke.scheduler.options["reduction_factor"] == 2.0 and smoke.resources.cpus_per_worker == 0.25


def test_config_files_and_command_line_overrides_read_the_same_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"base: {BASE}\noptim: {{lr: 4E-1, weight_decay: 5e-4}}\n")
    c = config.load(path, ["optim.momentum=8e-1"])
    assert (c.optim.lr, c.optim.weight_decay, c.optim.momentum) == (0.4, 0.0005, 0.8)
    assert config.parse_value("-2.5e-4") == -0.00025 and config.parse_value("'1e-3'") == "1e-3"


def test_an_integer_key_written_1e3_is_a_float_and_the_error_says_how_to_write_it(tmp_path):
    msg = error(tmp_path, HEAD + "space: {optim.lr: {grid: [0.1]}}\nsearch: {name: random, seed: 4.2e1}\n")
    assert "'search.seed'" in msg and "write it as the integer 42" in msg
    with pytest.raises(config.ConfigError, match="'train.epochs'.*write it as the integer 100"):
        config.load(BASE, ["train.epochs=1e2"])


def test_quoted_numbers_stay_strings(tmp_path):
    """A sampler's bounds refuse a quoted number (naming the fix); a float config key reads one as the float
    it spells, as config files always have."""
    msg = error(tmp_path, HEAD + "space: {optim.lr: {loguniform: ['1e-3', 4e-1]}}\n")
    assert "'space.optim.lr.loguniform'" in msg and "without quotes" in msg
    msg = error(tmp_path, HEAD + "space: {optim.lr: {grid: [0.1]}}\nscheduler: {name: asha, reduction_factor: '2'}\n")
    assert "'scheduler.reduction_factor'" in msg and "without quotes" in msg
    grid = compile_text(tmp_path, HEAD + "space: {optim.lr: {grid: ['1e-3']}}\n")
    assert grid.space["optim.lr"].values == ("1e-3",) and grid.trials()[0].config.optim.lr == 0.001
    named = compile_text(tmp_path, HEAD + "space: {optim.lr: {grid: [0.1]}}\nname: '1e3'\n")
    assert named.name == "1e3"


# ---- a sweep file written the W&B way ---------------------------------------------------------------

# W&B's own example (https://docs.wandb.ai/guides/sweeps/define-sweep-configuration), with early
# termination and a run cap.
WANDB = """\
program: train.py
name: sweepdemo
method: bayes
metric:
  goal: minimize
  name: validation_loss
parameters:
  learning_rate:
    min: 0.0001
    max: 0.1
  batch_size:
    values: [16, 32, 64]
  epochs:
    values: [5, 10, 15]
  optimizer:
    values: ["adam", "sgd"]
early_terminate:
  type: hyperband
  min_iter: 3
run_cap: 20
"""


def test_a_wandb_sweep_file_is_refused_once_naming_the_converter(tmp_path):
    """`sweeplab run` of a W&B file: one error, the command that converts it (not one key per run)."""
    msg = error(tmp_path, WANDB)
    assert f"a W&B Sweeps file: `sweeplab convert {tmp_path / 's.yaml'} --config CONFIG`" in msg
    assert "fix first" not in msg  # W&B's own example converts as it is
    # what the converter cannot map is listed in the same one error, every item at once
    bad = WANDB.replace("parameters:\n", "parameters:\n  dropout: {values: [0.1]}\n  wd: {distribution: normal}\n")
    msg = error(tmp_path, bad)
    assert "fix first: 'parameters.dropout' names no config key" in msg
    assert "| 'parameters.wd': sweeplab has no normal distribution" in msg


def convert(tmp_path: Path, text: str, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "wandb.yaml").write_text(text)
    argv = [sys.executable, "-m", "sweeplab.cli", "convert", "wandb.yaml", *extra]
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_convert_writes_a_sweep_that_runs_as_the_wandb_one(tmp_path):
    proc = convert(tmp_path, WANDB, "--config", str(BASE), "--out", "sweep.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "wrote sweep.yaml: 20 trials" in proc.stdout
    sweep = load(tmp_path / "sweep.yaml")
    assert (sweep.name, sweep.search.name, sweep.search.num_samples) == ("sweepdemo", "optuna", 20)
    assert (sweep.metric, sweep.mode) == ("val/loss", "min")  # W&B's validation_loss
    assert sweep.scheduler.name == "asha" and sweep.scheduler.options == {"grace_period": 3, "reduction_factor": 3}
    assert sweep.space["optim.lr"] == Uniform(0.0001, 0.1)  # W&B infers uniform for float bounds
    assert sweep.space["data.batch_size"].values == (16, 32, 64)  # bayes samples values: a choice, not a grid
    assert sweep.space["optim.name"].values == ("adam", "sgd") and "train.epochs" in sweep.space
    assert "# W&B ran train.py" in (tmp_path / "sweep.yaml").read_text()
    smoke = load(tmp_path / "sweep.yaml", smoke=True)  # a smoke block comes with it: small and short
    assert len(smoke.trials()) == 2 and {t.config.train.epochs for t in smoke.trials()} == {1}
    assert convert(tmp_path, WANDB, "--config", str(BASE), "--out", "sweep.yaml").returncode == 2  # never overwrites


def test_convert_lists_every_problem_at_once_and_writes_nothing(tmp_path):
    text = WANDB.replace("program: train.py\n", "program: train.py\nretries: 3\n").replace("run_cap: 20\n", "")
    more = "  depth: {values: [20, 56]}\n  momentum: {distribution: q_log_uniform_values, min: 0.5, max: 0.9}\n"
    text = text.replace("parameters:\n", "parameters:\n" + more + "  hidden: {values: [64]}\n")
    proc = convert(tmp_path, text, "--out", "sweep.yaml")
    assert proc.returncode == 2 and proc.stdout == "" and not (tmp_path / "sweep.yaml").exists()
    (line,) = proc.stderr.splitlines()
    assert line.startswith("sweeplab: error: wandb.yaml: cannot convert (4 problems): "), line
    for part in (
        "unknown key 'retries'",
        "give --config CONFIG",
        "'parameters.momentum': sweeplab has no quantised log-uniform",
        "'parameters.hidden' names no config key",
    ):
        assert part in line, line
    assert "depth" not in line  # a model option: model.depth


def test_convert_maps_nested_parameters_and_grid_values(tmp_path):
    text = (
        "method: grid\nmetric: {name: val_acc, goal: maximize}\n"
        "parameters:\n  optim:\n    parameters:\n      lr: {values: [0.1, 0.2]}\n  wd: {value: 0.0005}\n"
    )
    proc = convert(tmp_path, text, "--config", str(BASE))
    assert proc.returncode == 0, proc.stderr
    tree = load_text(proc.stdout)
    assert tree["space"] == {"optim.lr": {"grid": [0.1, 0.2]}} and tree["overrides"] == {"optim.weight_decay": 0.0005}
    assert (tree["metric"], tree["mode"], tree["search"]) == ("val/accuracy", "max", {"name": "grid"})


@pytest.mark.parametrize(
    "body, said",
    [
        ("method: random\n", ["'method'", "use search: {name: random}"]),
        ("method: grid\n", ["use search: {name: grid}"]),
        ("method: annealing\n", ["use search: {name: optuna|random|grid}"]),
        ("goal: maximize\n", ["'goal' is a W&B Sweeps key", "use mode: max"]),
        ("run_cap: 7\n", ["search: {num_samples: 7}"]),
        (
            "early_terminate: {type: hyperband, min_iter: 2, eta: 2, max_iter: 9}\n",
            ["scheduler: {name: asha, grace_period: 2, reduction_factor: 2, max_t: 9}"],
        ),
        ("command: [python, train.py]\n", ["'command'", "config:"]),
        ("project: demo\n", ["'project'", "use name: demo"]),
        ("entity: me\n", ["'entity'", "--tracking-uri"]),
        ("description: a sweep\n", ["'description'", "YAML comment"]),
        ("num_samples: 8\n", ["'num_samples' is a Ray Tune key", "search: {num_samples: 8}"]),
        ("search_alg: optuna\n", ["Ray Tune", "search: {name: optuna}"]),
        ("max_concurrent_trials: 2\n", ["max_concurrent: 2"]),
        ("resources_per_trial: {cpu: 2}\n", ["Ray Tune", "resources: {workers: 1, cpus_per_worker"]),
        ("param_space: {}\n", ["Ray Tune", "use space:"]),
        ("n_trials: 30\n", ["'n_trials' is an Optuna key", "search: {num_samples: 30}"]),
        ("direction: minimize\n", ["Optuna", "use mode: min"]),
        ("sampler: TPESampler\n", ["search: {name: optuna}"]),
        ("pruner: MedianPruner\n", ["scheduler: {name: median}"]),
        ("search: {method: random}\n", ["'search.method' is called 'search.name'"]),
        ("search: {name: random, run_cap: 5}\n", ["'search.run_cap' is called 'search.num_samples'"]),
        ("scheduler: {name: asha, min_iter: 1}\n", ["'scheduler.min_iter' is called 'scheduler.grace_period'"]),
        ("scheduler: {name: asha, eta: 3}\n", ["'scheduler.eta' is called 'scheduler.reduction_factor'"]),
        ("metric: {name: val/accuracy, goal: maximize}\n", ["metric: val/accuracy, mode: max"]),
        ("mode: minimize\n", ["'mode' must be min or max", "use mode: min"]),
        ("metric: val/accuarcy\n", ["did you mean 'val/accuracy'?"]),
    ],
)
def test_keys_of_other_tools_get_sweeplab_s_equivalent(tmp_path, body, said):
    msg = error(tmp_path, HEAD + "space: {optim.lr: {grid: [0.1]}}\n" + body)
    for part in said:
        assert part in msg, msg
    assert "did you mean 'mode'" not in msg


@pytest.mark.parametrize(
    "entry, said",
    [
        ("{values: [0.1, 0.2]}", ["W&B Sweeps way", "{choice: [0.1, 0.2]}", "{grid: [0.1, 0.2]}"]),
        ("{value: 0.1}", ["overrides: {KEY: 0.1}"]),
        ("{distribution: constant, value: 0.1}", ["overrides: {KEY: 0.1}"]),
        ("{distribution: categorical, values: [0.1, 0.2]}", ["{choice: [0.1, 0.2]}"]),
        ("{distribution: log_uniform_values, min: 1e-4, max: 1e-1}", ["{loguniform: [0.0001, 0.1]}"]),
        ("{distribution: log_uniform, min: -6.907755, max: 0}", ["{loguniform: [0.001, 1.0]}", "natural logs"]),
        ("{distribution: uniform, min: 0.01, max: 0.5}", ["{uniform: [0.01, 0.5]}"]),
        ("{distribution: int_uniform, min: 8, max: 16}", ["{randint: [8, 17]}", "exclusive"]),
        ("{distribution: q_uniform, min: 0, max: 1, q: 0.25}", ["{quniform: [0, 1, 0.25]}"]),
        ("{distribution: q_log_uniform_values, min: 1, max: 100}", ["no quantised log-uniform"]),
        ("{distribution: normal, mu: 0, sigma: 1}", ["no normal distribution"]),
        ("{min: 0.001, max: 0.1}", ["{uniform: [0.001, 0.1]}"]),  # W&B infers uniform for floats
        ("{min: 1, max: 4}", ["{randint: [1, 5]}"]),  # and int_uniform for ints
        ("{grid_search: [0.1, 0.2]}", ["Ray Tune way", "{grid: [0.1, 0.2]}"]),
        ('"tune.loguniform(1e-4, 1e-1)"', ["Ray Tune way", "{loguniform: [1e-4, 1e-1]}"]),
        ('"tune.choice([0.1, 0.2])"', ["{choice: [0.1, 0.2]}"]),
    ],
)
def test_space_entries_written_for_other_tools_get_the_sampler(tmp_path, entry, said):
    msg = error(tmp_path, HEAD + f"space: {{optim.lr: {entry}}}\n")
    assert "'space.optim.lr'" in msg
    for part in said:
        assert part in msg, msg


def test_a_wandb_file_fails_on_the_command_line_with_one_line(tmp_path):
    (tmp_path / "s.yaml").write_text(WANDB)
    proc = subprocess.run(
        [sys.executable, "-m", "sweeplab.cli", "run", "s.yaml", "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("sweeplab: error: s.yaml: a W&B Sweeps file: `sweeplab convert s.yaml --config"), line


# ---- any metric the trial reports ---------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_every_reported_metric_may_rank_a_sweep_in_its_own_direction(tmp_path, metric):
    sweep = compile_text(tmp_path, HEAD + f"space: {{optim.lr: {{grid: [0.1]}}}}\nmetric: {metric}\n")
    assert sweep.metric == metric
    assert sweep.mode == ("max" if metric in ("val/accuracy", "train/accuracy", "time/images_per_s") else "min")


def test_mode_given_is_obeyed_even_against_the_metric_s_direction(tmp_path):
    body = HEAD + "space: {optim.lr: {grid: [0.1]}}\n"
    assert compile_text(tmp_path, body + "metric: val/accuracy\nmode: min\n").mode == "min"
    assert compile_text(tmp_path, body + "metric: val/error\nmode: max\n").mode == "max"
    assert compile_text(tmp_path, body).metric == "val/error" and compile_text(tmp_path, body).mode == "min"
    assert "valid (what a trial reports each epoch)" in error(tmp_path, body + "metric: f1\n")
    assert "'mode' must be min or max" in error(tmp_path, body + "mode: best\n")


def test_the_optuna_study_takes_val_accuracy_to_maximise(tmp_path):
    from sweeplab.runner.study import Study

    sweep = compile_text(
        tmp_path,
        HEAD + "space: {optim.lr: {loguniform: [1e-3, 1e0]}}\n"
        f"search: {{name: optuna, num_samples: 3, storage: 'sqlite:///{tmp_path}/optuna.db'}}\n"
        "metric: val/accuracy\n",
    )
    assert (sweep.metric, sweep.mode) == ("val/accuracy", "max")
    study = Study(sweep, "launch-1").study
    assert study.direction.name == "MAXIMIZE" and study.metric_names == ["val/accuracy"]


def test_analysis_ranks_accuracy_highest_first():
    from sweeplab.analysis import runs

    assert runs.order("val/accuracy").endswith("DESC") and runs.order("val/error").endswith("ASC")
    assert runs.order("time/images_per_s").endswith("DESC") and default_mode("val/loss") == "min"


def test_the_engine_reports_accuracy_as_100_minus_the_error():
    from sweeplab import engine

    history: list[dict[str, float]] = []
    c = config.load(
        None,
        [
            "data.name=synthetic",
            "data.synthetic_shape=[1,8,8]",
            "data.synthetic_train=128",
            "data.synthetic_test=64",
            "data.batch_size=32",
            "data.device=cpu",
            "model.name=resnet_preact",
            "model.depth=8",
            "model.initial_channels=4",
            "train.epochs=4",
            "train.eval_every=3",
        ],
    )
    engine.fit(c, lambda m, _: history.append(m))
    # evaluated at epoch 1 (a scheduler needs a metric from the first report), 3 (every 3rd) and 4 (the last)
    assert ["val/error" in m for m in history] == [True, False, True, True]
    last = history[-1]
    assert "val/accuracy" not in history[1]  # not evaluated that epoch, like val/error
    assert last["val/accuracy"] == pytest.approx(100.0 - last["val/error"])
    for m in history:
        assert m["train/accuracy"] == pytest.approx(100.0 - m["train/error"]) and 0 <= m["train/accuracy"] <= 100


def test_a_trial_carries_val_accuracy_forward_for_the_scheduler(tmp_path):
    from sweeplab.runner import worker

    reports: list[dict] = []
    job = worker.TrialJob("0", {}, tmp_path / "trials" / "0", rank=1)  # a DDP rank: reports only, writes nothing
    r = worker.Reporter(job, lambda m, folder: reports.append(m), worker.Engine(), {})
    r({"epoch": 1, "val/error": 30.0, "val/accuracy": 70.0, "val/loss": 1.0}, dict)
    r({"epoch": 2, "train/error": 20.0}, dict)  # eval_every 2: no evaluation this epoch
    assert reports[1]["val/accuracy"] == 70.0 and reports[1]["val_stale"] is True
    assert "val_stale" not in reports[0]
