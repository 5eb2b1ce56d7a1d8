"""Every bad input gets exit 2 and one line naming the culprit, before Ray starts and before anything is written.

A table of bad config files, `key=value` overrides, sweep files and command-line flags. Each case runs
the real `sweeplab` command in its own empty working folder and asserts: exit code 2, stderr is exactly
one line starting "sweeplab: error:" that names the key or the file, no traceback, and no new file or
folder (the run folder, `--storage`, the MLflow store and `runs/` would all land in that folder).
Each case is a `python -m sweeplab.cli` forked from a server that imported sweeplab once
(tests/forked_cli.py); validation never imports torch.
"""

from __future__ import annotations

import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from forked_cli import Server

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/fashion_mnist/resnet_preact20.yaml"
# A config that trains in a second, so a case the validator lets through fails fast (it writes `out`).
TINY = f"base: {CONFIG}\ndata: {{name: synthetic, synthetic_train: 64, synthetic_test: 32}}\ntrain: {{epochs: 1}}\n"
MODEL = "model: {name: resnet_preact, depth: 8}\n"
OVR = "data.name: synthetic, data.synthetic_train: 64, data.synthetic_test: 32, model.depth: 8, train.epochs: 3"
OK_SPACE = "space: {optim.lr: {grid: [0.1]}}\n"
DIR, FIFO = object(), object()  # file contents that make a directory or a named pipe instead
STORE = object()  # an empty, migrated MLflow store (mlflow.db and the lock file any used store has beside it)
BUSY = "{busy}"  # a port held open on 127.0.0.1 while the table runs: `ui` never starts a server in a case
DRY = ["--dry-run", "--storage", "st", "--tracking-uri", "sqlite:///mlflow.db"]
# A real launch; the address leads nowhere, so a case that got past validation fails at Ray, not in it.
REAL = ["--storage", "st", "--tracking-uri", "sqlite:///mlflow.db", "--address", "127.0.0.1:9"]


@dataclass
class Case:
    id: str
    argv: list[str]
    culprit: tuple[str, ...]  # every one of these must be in the error line
    files: dict[str, object] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # never printed (a password given in a URI)


CASES: list[Case] = []


def case(
    id: str,
    argv: list[str],
    culprit: str | tuple[str, ...],
    env: dict[str, str] | None = None,
    absent: tuple[str, ...] = (),
    **files: object,
) -> None:
    assert id not in {c.id for c in CASES}, id
    CASES.append(
        Case(
            id,
            argv,
            (culprit,) if isinstance(culprit, str) else culprit,
            {k.replace("__", "/"): v for k, v in files.items()},
            env or {},
            absent,
        )
    )


def sweep(body: str, overrides: str = "", config: str = str(CONFIG)) -> str:
    """A sweep file's text: the tiny base, `overrides` added, then `body`."""
    return f"config: {config}\noverrides: {{{OVR}{', ' + overrides if overrides else ''}}}\n{body}"


def train(id: str, *overrides: str, culprit: str | None = None, model: str = MODEL) -> None:
    """`sweeplab train c.yaml OVERRIDES`; the culprit defaults to the first override's key."""
    case(
        id,
        ["train", "c.yaml", *overrides, "--output", "out"],
        culprit or overrides[0].split("=")[0],
        **{"c.yaml": TINY + model},
    )


def train_file(id: str, text: object, culprit: str | tuple[str, ...], **files: object) -> None:
    case(id, ["train", "c.yaml", "--output", "out"], culprit, **{"c.yaml": text, **files})


def dry(id: str, text: object, culprit: str | tuple[str, ...], *flags: str, **files: object) -> None:
    """`sweeplab run s.yaml --dry-run`: the sweep file is checked whole at the dry-run."""
    case(id, ["run", "s.yaml", *DRY, *flags], culprit, **{"s.yaml": text, **files})


def real(id: str, text: object, culprit: str | tuple[str, ...], *flags: str) -> None:
    """`sweeplab run s.yaml`, a real launch: it must fail before Ray starts and before it writes."""
    case(id, ["run", "s.yaml", *REAL, *flags], culprit, **{"s.yaml": text})


# ---- non-finite and out-of-range numbers in `key=value` overrides ------------------------------------
for key in (
    "optim.lr",
    "optim.weight_decay",
    "optim.momentum",
    "optim.grad_clip",
    "optim.lars_eps",
    "augment.mixup",
    "augment.cutmix",
    "augment.ricap",
    "augment.label_smoothing",
    "augment.cutout_prob",
    "sched.warmup_epochs",
    "sched.gamma",
    "sched.sgdr_t0",
    "sched.sgdr_t_mult",
    "sched.min_lr_factor",
    "sched.onecycle_peak",
    "sched.warmup_start_factor",
):
    train(f"override-{key}-nan", f"{key}=.nan")
for key, value in [
    ("optim.lr", ".inf"),
    ("optim.lr", "-.inf"),
    ("optim.lr", "1e999"),
    ("optim.lr", "nan"),
    ("optim.lr", "inf"),
    ("optim.lr", "1.0e+999"),
    ("optim.weight_decay", ".inf"),
    ("optim.grad_clip", "1e999"),
    ("augment.mixup", ".inf"),
    ("augment.cutmix", "1e999"),
    ("augment.dual_cutout", ".inf"),
    ("sched.sgdr_t0", ".inf"),
    ("sched.sgdr_t_mult", ".inf"),
    ("optim.lars_trust_coefficient", ".inf"),
    ("optim.lars_eps", "-1.0"),
]:
    train(f"override-{key}={value}", f"{key}={value}")
train("override-betas-nan", "optim.betas=[.nan,0.999]")
train("override-betas-range", "optim.betas=[0.9,1.5]")
train("override-milestones-inf", "sched.milestones=[0.5,.inf]")
train("override-erasing-area-nan", "augment.random_erasing_area=[0.02,.nan]")
train("override-erasing-ratio-inf", "augment.random_erasing_ratio=[.inf,3.3]")
train("override-erasing-area-order", "augment.random_erasing_area=[0.5,0.1]")
train("override-huge-int", "data.batch_size=99999999999999999999999")
train("override-newline-in-key", "optim.l\nr=0.1", culprit="optim.l")
train("override-empty-key", "=0.1", culprit="=0.1")

# ---- model options, checked against the model's own rules before anything starts --------------------
train("model-depth-21", "model.depth=21")
train("model-depth-abc", "model.depth=abc")
train("model-depth-float", "model.depth=20.5")
train("model-depth-bool", "model.depth=true")
train("model-depth-negative", "model.depth=-4")
train("model-block-type", "model.block_type=wide")
train("model-preact-stage-short", "model.preact_stage=[true,true]")
train("model-preact-stage-ints", "model.preact_stage=[1,2,3]")
train("model-initial-channels-0", "model.initial_channels=0")
train("model-remove-first-relu-str", "model.remove_first_relu=maybe")
for name, opts, culprit in [
    ("vgg", "n_layers: 7", "model.n_layers"),
    ("vgg", "n_channels: 0", "model.n_channels"),
    ("vgg", "use_bn: maybe", "model.use_bn"),
    ("densenet", "compression_rate: 0", "model.compression_rate"),
    ("densenet", "compression_rate: 1.5", "model.compression_rate"),
    ("densenet", "compression_rate: .nan", "model.compression_rate"),
    ("densenet", "growth_rate: 0", "model.growth_rate"),
    ("densenet", "depth: 101", "model.depth"),
    ("densenet", "drop_rate: 1.5", "model.drop_rate"),
    ("pyramidnet", "shakedrop: 1.0", "model.shakedrop"),
    ("pyramidnet", "shakedrop: .nan", "model.shakedrop"),
    ("pyramidnet", "depth: 273", "model.depth"),
    ("pyramidnet", "alpha: -1", "model.alpha"),
    ("se_resnet_preact", "se_reduction: 0", "model.se_reduction"),
    ("resnet9", "celu_alpha: -1", "model.celu_alpha"),
    ("resnet9", "celu_alpha: .inf", "model.celu_alpha"),
    ("resnet9", "channels: 0", "model.channels"),
    ("wrn", "depth: 15", "model.depth"),
    ("wrn", "drop_rate: .nan", "model.drop_rate"),
    ("wrn", "widening_factor: 0", "model.widening_factor"),
    ("resnext", "depth: 30", "model.depth"),
    ("resnext", "cardinality: 0", "model.cardinality"),
    ("shake_shake", "depth: 27", "model.depth"),
    ("shake_shake", "initial_channels: -2", "model.initial_channels"),
    ("resnet", "depth: 21", "model.depth"),
    ("resnet", "block_type: bottle", "model.block_type"),
]:
    train_file(f"model-{name}-{opts.replace(' ', '')}", TINY + f"model: {{name: {name}, {opts}}}\n", culprit)

# ---- config files: non-finite values, unreadable, binary, self-including, duplicate keys -------------
train_file("file-lr-nan", TINY + MODEL + "optim: {lr: .nan}\n", "optim.lr")
train_file("file-wd-inf", TINY + MODEL + "optim: {weight_decay: .inf}\n", "optim.weight_decay")
train_file("file-mixup-1e999", TINY + MODEL + "augment: {mixup: 1.0e+999}\n", "augment.mixup")
train_file("file-model-depth-21", TINY + "model: {name: resnet_preact, depth: 21}\n", "model.depth")
train_file("file-binary", bytes(range(256)) * 4, "c.yaml")
train_file("file-invalid-utf8", b"optim:\n  lr: \xff\xfe\x80\n", "c.yaml")
train_file("file-nul-bytes", b"optim: {lr: 0.1}\n\x00\x00\x00", "c.yaml")
train_file("file-is-a-directory", DIR, "c.yaml")
train_file("file-is-a-fifo", FIFO, "c.yaml")
case("file-proc-self-mem", ["train", "/proc/self/mem", "--output", "out"], "/proc/self/mem")
train_file("file-dangling-symlink", ("symlink", "nowhere.yaml"), "c.yaml")
train_file("file-symlink-loop", ("symlink", "c.yaml"), "c.yaml")
train_file("file-base-self", "base: c.yaml\n" + MODEL, "c.yaml")
train_file("file-base-cycle", "base: b.yaml\n" + MODEL, ("b.yaml", "c.yaml"), **{"b.yaml": "base: c.yaml\n"})
train_file("file-base-missing", "base: missing.yaml\n" + MODEL, "missing.yaml")
train_file("file-base-number", "base: 5\n" + MODEL, ("c.yaml", "base"))
train_file("file-base-list", "base: [a.yaml]\n" + MODEL, ("c.yaml", "base"))
train_file("file-base-binary", "base: b.yaml\n" + MODEL, "b.yaml", **{"b.yaml": b"\x89PNG\r\n\x1a\n\xff\xff"})
train_file("file-base-directory", "base: b.yaml\n" + MODEL, "b.yaml", **{"b.yaml": DIR})
train_file("file-duplicate-section", TINY + MODEL + "optim: {lr: 0.1}\noptim: {lr: 0.2}\n", ("optim", "line"))
train_file("file-duplicate-key", TINY + MODEL + "optim:\n  lr: 0.1\n  lr: 0.2\n", ("lr", "line"))
train_file("file-duplicate-flow-key", TINY + "model: {name: resnet_preact, depth: 8, depth: 20}\n", ("depth", "line"))
train_file(
    "file-duplicate-in-base",
    "base: b.yaml\n" + MODEL,
    "b.yaml",
    **{"b.yaml": f"base: {CONFIG}\ntrain: {{epochs: 1, epochs: 2}}\n"},
)
train_file("file-int-section", TINY + MODEL + "1: {lr: 0.1}\n", "'1'")
train_file(
    "file-billion-laughs",
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
    "c.yaml",
)
train_file("file-recursive-alias", "&a {optim: *a}\n", "c.yaml")
train_file("file-python-tag", TINY + MODEL + "optim: {lr: !!python/object/apply:os.getcwd []}\n", "c.yaml")

# ---- `sweeplab train` flags ------------------------------------------------------------------------
for value in ("0", "-1", "abc"):
    case(
        f"train-stop-after-{value}",
        ["train", "c.yaml", "--output", "out", "--stop-after", value],
        "--stop-after",
        **{"c.yaml": TINY + MODEL},
    )
case(
    "train-output-is-a-file",
    ["train", "c.yaml", "--output", "out"],
    "--output",
    **{"c.yaml": TINY + MODEL, "out": "a file\n"},
)
case(
    "train-output-under-a-file",
    ["train", "c.yaml", "--output", "f/out"],
    "--output",
    **{"c.yaml": TINY + MODEL, "f": "a file\n"},
)

# ---- sweep files: non-finite numbers in overrides, space bounds, grids, search, scheduler, resources --
dry("sweep-override-lr-nan", sweep(OK_SPACE, "optim.lr: .nan"), "optim.lr")
dry("sweep-override-mixup-inf", sweep(OK_SPACE, "augment.mixup: .inf"), "augment.mixup")
dry(
    "sweep-override-model-depth-nan",
    sweep(OK_SPACE, "model.depth: .nan").replace("model.depth: 8, ", ""),
    "overrides.model.depth",
)
dry("sweep-uniform-inf", sweep("space: {optim.lr: {uniform: [0.1, .inf]}}\n"), "space.optim.lr")
dry("sweep-uniform-nan", sweep("space: {optim.lr: {uniform: [.nan, 0.1]}}\n"), "space.optim.lr")
dry("sweep-uniform-overflow", sweep("space: {optim.lr: {uniform: [-1.0e+308, 1.0e+308]}}\n"), "space.optim.lr")
dry("sweep-loguniform-inf", sweep("space: {optim.lr: {loguniform: [1.0e-4, .inf]}}\n"), "space.optim.lr")
dry(
    "sweep-quniform-q-nan",
    sweep("space: {optim.weight_decay: {quniform: [0, 1.0e-3, .nan]}}\n"),
    "space.optim.weight_decay",
)
dry("sweep-grid-nan", sweep("space: {optim.lr: {grid: [0.1, .nan]}}\n"), "optim.lr")
dry(
    "sweep-choice-inf",
    sweep(
        "space: {optim.lr: {choice: [.inf]}}\n",
    )
    + "search: {name: random}\n",
    "optim.lr",
)
dry("sweep-grid-nested-nan", sweep("space: {optim.betas: {grid: [[0.9, .nan]]}}\n"), "optim.betas")
dry("sweep-variant-set-nan", sweep("space: {variant: {grid: [{label: a, set: {optim.lr: .nan}}]}}\n"), "optim.lr")
dry("sweep-num-samples-inf", sweep(OK_SPACE + "search: {name: random, num_samples: .inf}\n"), "search.num_samples")
dry("sweep-search-seed-huge", sweep(OK_SPACE + "search: {name: random, seed: 99999999999}\n"), "search.seed")
for opts, culprit in [
    ("name: asha, reduction_factor: .inf", "scheduler.reduction_factor"),
    ("name: asha, reduction_factor: .nan", "scheduler.reduction_factor"),
    ("name: hyperband, reduction_factor: .nan", "scheduler.reduction_factor"),
    ("name: asha, grace_period: 10, max_t: 5", "scheduler.grace_period"),
    ("name: asha, grace_period: 50", "scheduler.grace_period"),
    ("name: asha, brackets: 1000000000", "scheduler.brackets"),
    ("name: median, grace_period: 50", "scheduler.grace_period"),
    ("name: pbt, quantile_fraction: .nan", "scheduler.quantile_fraction"),
    ("name: pbt, quantile_fraction: 0.9", "scheduler.quantile_fraction"),
    ("name: pbt, resample_probability: 1.5", "scheduler.resample_probability"),
    ("name: pbt, resample_probability: .nan", "scheduler.resample_probability"),
    ("name: pbt, mutate: [{}]", "scheduler.mutate"),
    ("name: pbt, mutate: [5]", "scheduler.mutate"),
    ("name: pbt, perturbation_interval: .inf", "scheduler.perturbation_interval"),
]:
    dry(
        f"sweep-scheduler-{opts.replace(' ', '')}",
        sweep("space: {optim.lr: {uniform: [0.05, 0.2]}}\n" + f"scheduler: {{{opts}}}\n"),
        culprit,
    )
for opts, culprit in [
    ("cpus_per_worker: .nan", "resources.cpus_per_worker"),
    ("cpus_per_worker: .inf", "resources.cpus_per_worker"),
    ("cpus_per_worker: 0", "resources.cpus_per_worker"),
    ("gpus_per_worker: .nan", "resources.gpus_per_worker"),
    ("gpus_per_worker: .inf", "resources.gpus_per_worker"),
    ("gpus_per_worker: -1", "resources.gpus_per_worker"),
    ("workers: 1.5", "resources.workers"),
    ("workers: 0", "resources.workers"),
]:
    dry(f"sweep-resources-{opts.replace(' ', '')}", sweep(OK_SPACE + f"resources: {{{opts}}}\n"), culprit)
dry(
    "sweep-smoke-resources-nan",
    sweep(OK_SPACE + "smoke: {resources: {cpus_per_worker: .nan}}\n"),
    "smoke.resources.cpus_per_worker",
)
dry("sweep-max-concurrent-nan", sweep(OK_SPACE + "max_concurrent: .nan\n"), "max_concurrent")

# ---- model options in sweeps ---------------------------------------------------------------------
dry("sweep-model-depth-grid", sweep("space: {model.depth: {grid: [8, 9]}}\n"), "model.depth")
dry("sweep-model-depth-abc", sweep("space: {model.depth: {grid: [abc]}}\n"), "model.depth")
dry(
    "sweep-model-variant-depth",
    sweep("space: {variant: {grid: [{label: a, set: {model.depth: 21}}]}}\n"),
    "model.depth",
)
dry(
    "sweep-model-name-vgg-layers",
    sweep(OK_SPACE, "model.name: vgg, model.n_layers: 8").replace("model.depth: 8, ", ""),
    "model.n_layers",
)

# ---- the number of trials is capped before the points are enumerated ---------------------------------
dry("cap-billion-seeds", sweep(OK_SPACE + "seeds: 1000000000\n"), "--max-trials")
dry(
    "cap-billion-samples",
    sweep("space: {optim.lr: {uniform: [0.05, 0.2]}}\nsearch: {name: random, num_samples: 1000000000}\n"),
    "--max-trials",
)
dry(
    "cap-million-grid",
    sweep(
        "space:\n"
        + "".join(
            f"  {k}: {{grid: [{', '.join(str(round(0.01 * (i + 1), 2)) for i in range(32))}]}}\n"
            for k in ("optim.lr", "optim.weight_decay", "sched.min_lr_factor", "sched.gamma")
        )
    ),
    "--max-trials",
)
dry(
    "cap-grid-times-seeds",
    sweep("space: {optim.lr: {grid: [" + ", ".join(f"0.{i:03d}1" for i in range(101)) + "]}}\nseeds: 100\n"),
    "--max-trials",
)
dry(
    "cap-flag-lowers-it",
    sweep("space: {optim.lr: {grid: [0.1, 0.2, 0.3]}}\nseeds: 2\n"),
    ("--max-trials", "6"),
    "--max-trials",
    "5",
)
real("cap-real-run", sweep(OK_SPACE + "seeds: 1000000000\n"), "--max-trials")

# ---- expr evaluation cost ---------------------------------------------------------------------------
for i, expr in enumerate(
    [
        "9**9**9",
        "10**10**10",
        "pow(9, 9**9)",
        "2**(2**40)",
        "1 << 10**9",
        "10**400",
        "1e308 * 10",
        "float('nan')",
        "float('inf')",
        "'a' * 10**9",
        "exp(10**6)",
        "max(1, 99**99**99)",
        "(" * 300 + "1" + ")" * 300,
        "1" + "0" * 400,
        "-(10**10**10)",
        "sqrt(-1)",
    ]
):
    dry(f"expr-{i}", sweep(f'space: {{optim.lr: {{expr: "{expr}"}}}}\n'), "space.optim.lr.expr")
dry("expr-huge-int-key", sweep('space: {data.batch_size: {expr: "10**30"}}\n'), "data.batch_size")
real("expr-real-run", sweep('space: {optim.lr: {expr: "9**9**9"}}\n'), "space.optim.lr.expr")

# ---- sweep files themselves ---------------------------------------------------------------------------
dry("sweep-binary", bytes(range(256)) * 4, "s.yaml")
dry("sweep-invalid-utf8", b"name: \xff\xfe\n", "s.yaml")
dry("sweep-directory", DIR, "s.yaml")
dry("sweep-fifo", FIFO, "s.yaml")
dry("sweep-duplicate-top", sweep(OK_SPACE + OK_SPACE), ("space", "line"))
dry(
    "sweep-duplicate-space-key",
    sweep("space:\n  optim.lr: {grid: [0.1]}\n  optim.lr: {grid: [0.2]}\n"),
    ("optim.lr", "line"),
)
dry(
    "sweep-duplicate-flow-key",
    sweep("space: {optim.lr: {grid: [0.1]}, optim.lr: {grid: [0.2]}}\n"),
    ("optim.lr", "line"),
)
dry("sweep-config-binary", sweep(OK_SPACE, config="c.yaml"), "c.yaml", **{"c.yaml": b"\xff\xfe\x00\x01"})
dry("sweep-config-self-base", sweep(OK_SPACE, config="c.yaml"), "c.yaml", **{"c.yaml": "base: c.yaml\n"})
dry(
    "sweep-config-duplicate",
    sweep(OK_SPACE, config="c.yaml"),
    ("c.yaml", "line"),
    **{"c.yaml": f"base: {CONFIG}\noptim: {{lr: 0.1, lr: 0.2}}\n"},
)
dry("sweep-config-directory", sweep(OK_SPACE, config="c.yaml"), "c.yaml", **{"c.yaml": DIR})
dry(
    "sweep-billion-laughs",
    sweep(OK_SPACE)
    + "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
    "s.yaml",
)
dry("sweep-recursive-alias", sweep(OK_SPACE) + "tables: &t {quickstart: {match: *t}}\n", "s.yaml")
real("sweep-real-cpus-nan", sweep(OK_SPACE + "resources: {cpus_per_worker: .nan}\n"), "resources.cpus_per_worker")
real(
    "sweep-real-quantile",
    sweep("space: {optim.lr: {uniform: [0.05, 0.2]}}\nscheduler: {name: pbt, quantile_fraction: 0.9}\n"),
    "scheduler.quantile_fraction",
)
real("sweep-real-model-depth", sweep("space: {model.depth: {grid: [8, 21]}}\n"), "model.depth")

# ---- sweep files written for other tools: exit 2 naming sweeplab's equivalent ---------------------------
WANDB_FILE = (
    "program: train.py\nmethod: bayes\nmetric: {goal: minimize, name: validation_loss}\n"
    "parameters:\n  learning_rate: {min: 0.0001, max: 0.1}\n  batch_size: {values: [16, 32, 64]}\n"
    "early_terminate: {type: hyperband, min_iter: 3}\nrun_cap: 20\n"
)
dry("sweep-wandb-file", WANDB_FILE, ("s.yaml", "a W&B Sweeps file", "sweeplab convert s.yaml --config CONFIG"))
dry("sweep-wandb-method", sweep(OK_SPACE + "method: bayes\n"), ("'method'", "search: {name: optuna}"))
dry("sweep-wandb-parameters", sweep("parameters: {lr: {values: [0.1]}}\n"), ("'parameters'", "space:"))
dry("sweep-wandb-values", sweep("space: {optim.lr: {values: [0.1, 0.2]}}\n"), ("space.optim.lr", "{grid: [0.1, 0.2]}"))
dry(
    "sweep-wandb-distribution",
    sweep("space: {optim.lr: {distribution: log_uniform_values, min: 1e-4, max: 1e-1}}\n"),
    ("space.optim.lr", "{loguniform: [0.0001, 0.1]}"),
)
dry("sweep-wandb-metric", sweep(OK_SPACE + "metric: {name: val/error, goal: minimize}\n"), "mode: min")
dry("sweep-wandb-goal", sweep(OK_SPACE + "goal: maximize\n"), ("'goal'", "mode: max"))
dry("sweep-wandb-run-cap", sweep(OK_SPACE + "run_cap: 5\n"), ("'run_cap'", "search: {num_samples: 5}"))
dry("sweep-quoted-bounds", sweep("space: {optim.lr: {loguniform: ['1e-3', 4e-1]}}\n"), ("space.optim.lr", "quotes"))
dry("sweep-seed-1e3", sweep(OK_SPACE + "search: {name: random, seed: 1e3}\n"), ("search.seed", "1000"))
dry("sweep-metric-typo", sweep(OK_SPACE + "metric: val/accuarcy\n"), ("'metric'", "val/accuracy"))

# ---- command-line numbers and paths ----------------------------------------------------------------
OK_SWEEP = sweep(OK_SPACE)
for flag, value in [
    ("--max-concurrent", "0"),
    ("--max-concurrent", "-1"),
    ("--num-cpus", "0"),
    ("--num-cpus", "-3"),
    ("--max-trials", "0"),
    ("--max-trials", "-5"),
    ("--max-trials", "abc"),
]:
    real(f"run{flag}={value}", OK_SWEEP, flag, flag, value)
case(
    "run-storage-is-a-file",
    ["run", "s.yaml", "--storage", "f", "--tracking-uri", "sqlite:///mlflow.db", "--address", "127.0.0.1:9"],
    "--storage",
    **{"s.yaml": OK_SWEEP, "f": "x\n"},
)
case(
    "run-storage-under-a-file",
    ["run", "s.yaml", "--storage", "f/st", "--tracking-uri", "sqlite:///mlflow.db", "--address", "127.0.0.1:9"],
    "--storage",
    **{"s.yaml": OK_SWEEP, "f": "x\n"},
)
case("resume-num-cpus-0", ["resume", "x", "--storage", "st", "--num-cpus", "0"], "--num-cpus")
# ---- names: a launch or sweep name is one folder name inside --storage, never a path out of it ----
for i, name in enumerate(["..", "../escaped", "a/b", "a\\b", ".hidden", "a\nb", " ", "x" * 200]):
    real(f"run-name-{i}", OK_SWEEP, "--name", "--name", name)
    case(f"resume-name-{i}", ["resume", name, "--storage", "st"], "launch name")
for i, name in enumerate(["../up", "a/b", "'.x'", '"a\\nb"']):
    real(f"sweep-name-{i}", sweep(OK_SPACE + f"name: {name}\n"), ("s.yaml", "'name'"))
case("status-name-dotdot", ["status", "..", "--storage", "st"], "launch name")
case("status-storage-is-a-file", ["status", "--storage", "f"], "--storage", f="x\n")
for value in ("0", "-1"):
    case(f"best-top-{value}", ["best", "quickstart", "--top", value, "--tracking-uri", "sqlite:///mlflow.db"], "--top")
for value in ("0", "99999", "-1", "65536", "abc"):
    case(f"ui-port-{value}", ["ui", "--port", value, "--tracking-uri", "sqlite:///mlflow.db"], "--port")


# ==== checked at the door (core/inputs.py, cli.door): every flag, URI and path, before anything starts ====
SECRET = "s3cret"  # a password given in a URI: refused, and never printed back
RUN_ID = "0123456789abcdef0123456789abcdef"  # a well-formed run id that no store holds
# Every command that takes --tracking-uri, up to the flag; the URI follows.
TRACKERS: dict[str, tuple[list[str], dict[str, object]]] = {
    "run": (["run", "s.yaml", "--storage", "st", "--address", "127.0.0.1:9", "--tracking-uri"], {"s.yaml": OK_SWEEP}),
    "resume": (["resume", "x", "--storage", "st", "--tracking-uri"], {}),
    "best": (["best", "quickstart", "--tracking-uri"], {}),
    "table": (["table", "quickstart", "--tracking-uri"], {}),
    "report": (["report", "--tracking-uri"], {}),
    "export": (["export", "quickstart", "--out", "q.parquet", "--tracking-uri"], {}),
    "ui": (["ui", "--no-browser", "--port", BUSY, "--tracking-uri"], {}),
    "train": (["train", "--from-run", RUN_ID, "--output", "out", "--tracking-uri"], {}),
}


def tracking(id: str, uri: str, commands: tuple[str, ...] = tuple(TRACKERS), **files: object) -> None:
    """The same bad tracking URI through each command that takes one: refused naming --tracking-uri."""
    for cmd in commands:
        argv, needs = TRACKERS[cmd]
        case(f"uri-{id}-{cmd}", [*argv, uri], "--tracking-uri", absent=(SECRET,), **{**needs, **files})


# ---- tracking URIs: host, port, an SQLite path that can be a file, no credentials, no control characters
tracking("ipv6-unclosed", "http://[::1")
tracking("sqlite-no-path", "sqlite:///")
tracking("port-out-of-range", "http://127.0.0.1:99999")
tracking("query-password", f"postgresql://u@127.0.0.1:5432/mlflow?password={SECRET}")
tracking("empty", "")
tracking("sqlite-directory", "sqlite:///d", d=DIR)
tracking("sqlite-proc", "sqlite:////proc/self/mlflow.db", ("run", "best", "report"))
tracking("userinfo-password", f"https://me:{SECRET}@127.0.0.1:5443", ("run", "best"))
tracking("query-token", f"http://127.0.0.1:5000/?token={SECRET}", ("run", "ui"))
tracking("mysql-password", f"mysql://u:{SECRET}@127.0.0.1/mlflow", ("run",))
tracking("sqlite-newline", "sqlite:///m\n.db", ("run", "table"))
tracking("sqlite-under-a-file", "sqlite:///f/mlflow.db", ("run", "export"), f="x\n")
tracking("sqlite-not-a-database", "sqlite:///notes.txt", ("run", "best"), **{"notes.txt": "my notes\n"})
tracking("sqlite-memory", "sqlite://", ("run",))
tracking("sqlite-query", "sqlite:///mlflow.db?mode=ro", ("run",))
tracking("http-no-host", "http://:5000", ("run", "report"))
tracking("port-0", "http://127.0.0.1:0", ("run",))
tracking("port-not-a-number", "http://127.0.0.1:50x0", ("run",))
tracking("fragment", "http://127.0.0.1:5000#x", ("run",))
tracking("trailing-space", "http://127.0.0.1:5000 ", ("run",))
tracking("file-store", "file:///tmp/mlruns", ("run", "best"))
for cmd in ("run", "best", "table"):  # $MLFLOW_TRACKING_URI is checked as the flag is, named as itself
    argv, needs = TRACKERS[cmd]
    case(
        f"uri-env-password-{cmd}",
        argv[:-1],
        "$MLFLOW_TRACKING_URI",
        env={"MLFLOW_TRACKING_URI": f"postgresql://u:{SECRET}@127.0.0.1/mlflow"},
        absent=(SECRET,),
        **needs,
    )
case("uri-env-ipv6-report", ["report"], "$MLFLOW_TRACKING_URI", env={"MLFLOW_TRACKING_URI": "http://[::1"})

# ---- a store that does not exist: one exit code and one hint for every command that reads one ----------
for cmd in ("best", "table", "report", "export", "ui", "train"):
    argv, _ = TRACKERS[cmd]
    case(f"no-store-{cmd}", [*argv, "sqlite:///mlflow.db"], "no MLflow store")

# ---- storage: a folder that can exist and be written, or a URI of a file system Ray Tune can use --------
STORERS = {
    "run": ["run", "s.yaml", "--tracking-uri", "sqlite:///mlflow.db", "--address", "127.0.0.1:9", "--storage"],
    "resume": ["resume", "x", "--storage"],
    "status": ["status", "--storage"],
}


def storage(id: str, value: str, commands: tuple[str, ...] = tuple(STORERS), **files: object) -> None:
    for cmd in commands:
        case(
            f"storage-{id}-{cmd}",
            [*STORERS[cmd], value],
            "--storage",
            absent=(SECRET,),
            **{"s.yaml": OK_SWEEP, **files},
        )


storage("empty", "")
storage("unknown-scheme", "foo://bar")
storage("newline", "st\nx")
storage("proc", "/proc/sweeplab")
storage("mock-scheme", "mock://x", ("run",))
storage("credentials", f"s3://KEY:{SECRET}@bucket/x", ("run", "resume"))
storage("query-secret", f"s3://bucket/x?secret_key={SECRET}", ("run",))
storage("no-bucket", "s3://", ("run",))
storage("file-uri-relative", "file://st", ("run",))
storage("name-too-long", "x" * 300, ("run", "resume"))
storage("under-a-file", "f/st", ("resume", "status"), f="x\n")
storage("is-a-file", "f", ("resume",), f="x\n")

# ---- --address: auto, HOST:PORT or ray://HOST:PORT --------------------------------------------------------
for i, address in enumerate(["not an address", "", "local", "127.0.0.1:99999", "http://127.0.0.1:8265", "127.0.0.1"]):
    real(f"address-{i}", OK_SWEEP, "--address", "--address", address)
    case(f"resume-address-{i}", ["resume", "x", "--storage", "st", "--address", address], "--address")

# ---- output paths: never a folder of the wrong kind, never the working folder by accident, never over a file
for i, out in enumerate(["", "o\nx", "/proc/sweeplab", "x" * 300]):
    case(f"train-output-{i}", ["train", "c.yaml", "--output", out], "--output", **{"c.yaml": TINY + MODEL})
    case(f"report-out-{i}", ["report", "--out", out, "--tracking-uri", "sqlite:///mlflow.db"], "--out")
    case(f"table-out-{i}", ["table", "quickstart", "--out", out, "--tracking-uri", "sqlite:///mlflow.db"], "--out")
case("report-out-is-a-file", ["report", "--out", "f"], "--out", f="x\n")
case("report-out-under-a-file", ["report", "--out", "f/r"], "--out", f="x\n")
case(
    "report-out-holds-other-files",
    ["report", "--out", "r", "--tracking-uri", "sqlite:///mlflow.db"],
    ("--out", "--force"),
    **{"mlflow.db": STORE, "r/notes.txt": "mine\n"},
)
case("table-out-is-a-file", ["table", "quickstart", "--out", "f"], "--out", f="x\n")
case("table-out-under-a-file", ["table", "quickstart", "--out", "f/t"], "--out", f="x\n")
case(
    "table-out-holds-its-files",
    ["table", "quickstart", "--out", "t", "--tracking-uri", "sqlite:///mlflow.db"],
    ("--out", "quickstart.md", "--force"),
    **{"mlflow.db": STORE, "t/quickstart.md": "# mine\n"},
)
for id, out, files in [
    ("empty", "", {}),
    ("is-a-folder", "d.parquet", {"d.parquet": DIR}),
    ("exists", "q.parquet", {"q.parquet": "PAR1"}),
    ("under-a-file", "f/q.parquet", {"f": "x\n"}),
    ("proc", "/proc/q.parquet", {}),
    ("not-parquet", "q.csv", {}),
]:
    case(
        f"export-out-{id}",
        ["export", "quickstart", "--out", out, "--tracking-uri", "sqlite:///mlflow.db"],
        "--out",
        **files,
    )
for i, url in enumerate(["", "javascript:alert(1)", f"http://me:{SECRET}@127.0.0.1:5000", "http://", "127.0.0.1:5000"]):
    case(f"report-ui-url-{i}", ["report", "--ui-url", url], "--ui-url", absent=(SECRET,))

# ---- names, ids and targets: an empty one never falls back to a default or to "all" -------------------------
real("run-name-empty", OK_SWEEP, "--name", "--name", "")
case("resume-name-empty", ["resume", "", "--storage", "st"], "launch name")
case("status-name-empty", ["status", "", "--storage", "st"], "launch name")
for i, target in enumerate(["", "a\nb"]):
    case(f"best-target-{i}", ["best", target, "--tracking-uri", "sqlite:///mlflow.db"], "SWEEP_OR_LAUNCH")
    case(f"export-target-{i}", ["export", target, "--out", "q.parquet"], "SWEEP_OR_LAUNCH")
    case(f"ui-experiment-{i}", ["ui", "--port", BUSY, "--experiment", target], "--experiment")
case("table-id-empty", ["table", "", "--tracking-uri", "sqlite:///mlflow.db"], "TABLE_ID")
for i, run_id in enumerate(["", "a/b", "../x", "x y"]):
    case(f"train-from-run-{i}", ["train", "--from-run", run_id, "--output", "out"], "--from-run")

# ---- resource and thread numbers: bounded by what a machine can have --------------------------------------
for value in ("100000", "1025", "-1"):
    train(f"override-threads-{value}", f"train.threads={value}")
real("run-num-cpus-huge", OK_SWEEP, "--num-cpus", "--num-cpus", "100000")
case("resume-num-cpus-huge", ["resume", "x", "--storage", "st", "--num-cpus", "100000"], "--num-cpus")
for opts, culprit in [
    ("cpus_per_worker: 100000", "resources.cpus_per_worker"),
    ("gpus_per_worker: 1000", "resources.gpus_per_worker"),
    ("workers: 100000", "resources.workers"),
]:
    dry(f"sweep-resources-huge-{opts.split(':')[0]}", sweep(OK_SPACE + f"resources: {{{opts}}}\n"), culprit)
dry("sweep-smoke-gpus-huge", sweep(OK_SPACE + "smoke: {resources: {gpus_per_worker: 1000}}\n"), "smoke.resources")

# ---- a key set by two axes of a sweep file, and exprs that read each other ----------------------------------
VARIANT_LR = "variant: {grid: [{label: a, set: {optim.lr: 0.5}}]}"
for id, body, culprit in [
    ("variant-vs-grid", f"space: {{optim.lr: {{grid: [0.1, 0.2]}}, {VARIANT_LR}}}\n", ("'space.variant'", "optim.lr")),
    ("variant-vs-sampler", f"space: {{optim.lr: {{uniform: [0.1, 0.2]}}, {VARIANT_LR}}}\n", "optim.lr"),
    ("variant-vs-expr", f'space: {{optim.lr: {{expr: "0.1"}}, {VARIANT_LR}}}\n', "optim.lr"),
    (
        "variant-vs-smoke-space",
        f"space: {{{VARIANT_LR}}}\nsmoke: {{space: {{optim.lr: {{grid: [0.1]}}}}}}\n",
        "smoke.space.optim.lr",
    ),
    (
        "smoke-variant-vs-space",
        f"space: {{optim.lr: {{grid: [0.1]}}}}\nsmoke: {{space: {{{VARIANT_LR}}}}}\n",
        "smoke.space.variant",
    ),
    (
        "variant-vs-seeds",
        "space: {variant: {grid: [{label: a, set: {train.seed: 5}}]}}\nseeds: 2\n",
        ("train.seed", "seeds"),
    ),
    (
        "expr-cycle-2",
        'space: {optim.lr: {expr: "optim.weight_decay * 2"}, optim.weight_decay: {expr: "optim.lr / 2"}}\n',
        ("cycle", "optim.lr -> optim.weight_decay -> optim.lr"),
    ),
    (
        "expr-cycle-3",
        'space: {optim.lr: {expr: "optim.momentum / 9"}, optim.momentum: {expr: "optim.weight_decay * 1000"}, '
        'optim.weight_decay: {expr: "optim.lr / 100"}}\n',
        "cycle",
    ),
    (
        "expr-cycle-smoke",
        'space: {optim.lr: {expr: "optim.weight_decay * 2"}}\n'
        'smoke: {space: {optim.weight_decay: {expr: "optim.lr / 2"}}}\n',
        ("cycle", "smoke.space"),
    ),
]:
    dry(f"sweep-axes-{id}", sweep(body), culprit)
real("sweep-axes-real-run", sweep(f"space: {{optim.lr: {{grid: [0.1]}}, {VARIANT_LR}}}\n"), "optim.lr")

# ---- refusals that come after the store is opened: library warnings stay out of the one line -----------
for id, argv, culprit in [
    ("best", ["best", "nosuch"], "'nosuch'"),
    ("best-smoke", ["best", "nosuch", "--smoke", "--json"], "'nosuch'"),
    ("export", ["export", "nosuch", "--out", "q.parquet"], "'nosuch'"),
    ("ui", ["ui", "--no-browser", "--port", BUSY, "--experiment", "nosuch"], "'nosuch'"),
    ("train-from-run", ["train", "--from-run", RUN_ID, "--output", "out"], RUN_ID),
]:
    case(f"store-{id}", [*argv, "--tracking-uri", "sqlite:///mlflow.db"], culprit, **{"mlflow.db": STORE})

# ---- large inputs: refused by their size before a byte is parsed ------------------------------------------
BIG = "optim: {lr: [" + ", ".join(["1.5"] * 70_000) + "]}\n"  # 350 KB
train_file("file-too-large", BIG, ("c.yaml", "larger than"))
dry("sweep-too-large", OK_SWEEP + "# " + "x" * 300_000 + "\n", ("s.yaml", "larger than"))


def _listing(folder: Path) -> list[str]:
    return sorted(str(Path(d, n).relative_to(folder)) for d, dirs, files in os.walk(folder) for n in dirs + files)


MEMORY = 4 << 30  # a case that enumerates a billion trials fails instead of eating the machine


def _run(c: Case, folder: Path, store: Path | None, busy: int, server: Server) -> dict[str, object]:
    folder.mkdir()
    for name, content in c.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is STORE:
            assert store is not None
            shutil.copy(store, path)
            Path(f"{path}.lock").touch()  # beside any store that was ever opened
        elif content is DIR:
            path.mkdir()
        elif content is FIFO:
            os.mkfifo(path)
        elif isinstance(content, tuple):
            path.symlink_to(content[1])
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(str(content))
    before = _listing(folder)
    argv = [a.replace(BUSY, str(busy)) for a in c.argv]
    r = server.run(argv, folder, {**_env(), **c.env}, MEMORY, timeout=60)
    return {**r, "before": before, "after": _listing(folder)}


def _env() -> dict[str, str]:
    """A case's environment: a warning printed on bad input breaks the one line; $MLFLOW_TRACKING_URI
    only where a case sets it."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONWARNINGS": "default"}


@pytest.fixture(scope="module")
def results(request, tmp_path_factory) -> dict[str, dict[str, object]]:
    """Run the selected cases, 2 at a time, each a `python -m sweeplab.cli` forked from a server that
    imported sweeplab once (tests/forked_cli.py: start-up was most of a case's time)."""
    selected = {
        item.callspec.params["c"].id
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_bad_input"
    }
    base = tmp_path_factory.mktemp("bad_input")
    todo = [c for c in CASES if c.id in selected]
    store = None
    if any(STORE in c.files.values() for c in todo):
        from mlflow_store import fresh_uri

        store = Path(fresh_uri(base / "store", tmp_path_factory)[len("sqlite:///") :])
    servers = [Server(_env(), base / f"server{i}") for i in range(2)]
    try:
        with socket.socket() as taken, ThreadPoolExecutor(max_workers=len(servers)) as pool:
            taken.bind(("127.0.0.1", 0))  # a port in use: a `ui` case that got through would not start a server
            taken.listen()
            busy = taken.getsockname()[1]
            halves = [list(enumerate(todo))[i :: len(servers)] for i in range(len(servers))]

            def run_half(half: list[tuple[int, Case]], server: Server) -> dict[str, dict[str, object]]:
                return {c.id: _run(c, base / f"case{i}", store, busy, server) for i, c in half}

            done = pool.map(run_half, halves, servers)
            return {k: v for part in done for k, v in part.items()}
    finally:
        for s in servers:
            s.close()


def test_the_table_holds_at_least_100_cases():
    assert len(CASES) >= 100
    kinds = {c.argv[0] for c in CASES}
    assert {"train", "run", "resume", "best", "ui", "status"} <= kinds


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c: Case, results):
    r = results[c.id]
    err = str(r["stderr"])
    lines = err.splitlines()
    assert "Traceback" not in err, err[-3000:]
    assert r["code"] == 2, f"exit {r['code']}: {err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("sweeplab: error: "), err
    for culprit in c.culprit:
        assert culprit in lines[0], f"{culprit!r} not named in: {lines[0]}"
    for secret in c.absent:
        assert secret not in err and secret not in str(r["stdout"]), f"{secret!r} printed: {err}"
    assert r["after"] == r["before"], f"wrote {sorted(set(r['after']) - set(r['before']))}"
    assert r["stdout"] == "", r["stdout"]


# ---- in-process checks of the two caps -----------------------------------------------------------------


def _sweep_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(sweep(body))
    return path


def test_trial_cap_counts_before_enumerating(tmp_path):
    import time
    import tracemalloc

    from sweeplab.core.errors import SweepError
    from sweeplab.search_spaces import load

    path = _sweep_file(tmp_path, "space: {optim.lr: {grid: [0.1, 0.2, 0.3]}}\nseeds: 4\n")
    assert len(load(path).trials()) == 12 and len(load(path, max_trials=12).trials()) == 12
    with pytest.raises(SweepError, match=r"12 trials \(grid 3 x num_samples 1 x seeds 4\).*--max-trials 12"):
        load(path, max_trials=11)
    huge = _sweep_file(tmp_path, OK_SPACE + "seeds: 1000000000000\n")
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(SweepError, match="--max-trials"):
        load(huge)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - start < 5 and peak < 20_000_000


@pytest.mark.parametrize(
    "expr",
    [
        "0.1 * data.batch_size / 128",
        "max(1, train.epochs / 100)",
        "2 ** 10",
        "2 ** -2",
        "pow(2, 0.5)",
        "10 ** 300",
        "-3 // 2",
        "7 % 3",
        "1 << 8",
        "0.1 if data.batch_size > 100 else 0.2",
        "1 < data.batch_size <= 128",
        "not train.epochs",
        "train.epochs and 0.5",
        "0 or 3",
        "round(sqrt(data.batch_size) * 10) / 10",
        "abs(-2) + floor(2.5) + ceil(2.5)",
        "log(exp(1.5))",
        "int(float('3.5'))",
        "min(data.batch_size, 64) * 1e-3",
        "model.name == 'resnet_preact' and 0.1 or 0.2",
    ],
)
def test_expr_interpreter_agrees_with_python(expr):
    from types import SimpleNamespace

    from sweeplab.search_spaces.expr import FUNCTIONS, evaluate

    tree = {"data": {"batch_size": 128}, "train": {"epochs": 200}, "model": {"name": "resnet_preact"}}
    names = {k: SimpleNamespace(**v) for k, v in tree.items()}
    assert evaluate(expr, tree) == eval(expr, {"__builtins__": {}, **FUNCTIONS}, names)


# ---- in-process checks of the door itself ---------------------------------------------------------------


def test_a_large_file_is_refused_by_its_size_before_it_is_parsed(tmp_path):
    import time

    from sweeplab.config import read_yaml
    from sweeplab.core.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: [" + ", ".join(["1.5"] * 2_250_000) + "]}\n")  # 9 MB: 85 s of CPU to refuse before
    start = time.process_time()
    with pytest.raises(ConfigError, match=r"c\.yaml is larger than 256 KB"):
        read_yaml(path, "config")
    assert time.process_time() - start < 0.5


@pytest.mark.parametrize(
    "uri, kept",
    [
        (f"postgresql://u:{SECRET}@127.0.0.1:5432/db", "postgresql://u:***@127.0.0.1:5432/db"),
        (f"postgresql://u@h/db?sslmode=require&password={SECRET}", "postgresql://u@h/db?sslmode=require&password=***"),
        (f"https://me:{SECRET}@host:5000/path?x=1", "https://me:***@host:5000/path?x=1"),
        (f"http://host?api_key={SECRET};token={SECRET}2", "http://host?api_key=***;token=***"),
        (f"mysql://u:{SECRET}/x@h/db", "mysql://u:***@h/db"),  # SQLAlchemy reads a password up to the '@'
        (f"http://h#{SECRET}", "http://h#***"),
        ("sqlite:////a/b.db", "sqlite:////a/b.db"),
    ],
)
def test_secrets_are_masked_wherever_they_sit(uri, kept):
    from sweeplab.core.inputs import shown

    assert shown(uri) == kept


def test_storage_uris_are_refused_naming_the_way_out():
    """The ledger is appended to and checkpoints renamed into place: --storage is a folder, never a URI."""
    from sweeplab.core import inputs
    from sweeplab.core.errors import ConfigError

    for uri in ("s3://bucket/x", "file:///tmp/x", "gs://b/x"):
        with pytest.raises(ConfigError, match="keeps each launch's ledger and checkpoints in a folder"):
            inputs.storage(uri)


def test_library_warnings_are_held_until_the_command_ends_and_dropped_on_a_refusal():
    import warnings

    from sweeplab.core import quiet

    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        with quiet.held():
            warnings.warn("from a library", DeprecationWarning, stacklevel=1)
            assert log == []
        assert [str(w.message) for w in log] == ["from a library"]  # shown at the end
        with quiet.held():
            warnings.warn("dropped", DeprecationWarning, stacklevel=1)
            quiet.drop()  # the command ended as bad input: its one line is the answer
        with quiet.held():
            quiet.release()  # the input is checked: from here on a warning shows as it comes
            warnings.warn("at once", UserWarning, stacklevel=1)
            assert [str(w.message) for w in log] == ["from a library", "at once"]
    assert [str(w.message) for w in log] == ["from a library", "at once"]
