"""Keys of other tools' sweep files (W&B Sweeps, Ray Tune, Optuna) -> what sweeplab calls them.

A file written for another tool fails at its first foreign key; instead of a "did you mean" guess the
error names sweeplab's equivalent, with the file's own values filled in. docs/sweeps.md, "Coming from
W&B Sweeps / Ray Tune / Optuna", is the same table for people. W&B's format:
https://docs.wandb.ai/guides/sweeps/define-sweep-configuration
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

WANDB, TUNE, OPTUNA = "W&B Sweeps", "Ray Tune", "Optuna"

# W&B's `method` and Tune's / Optuna's searcher names -> sweeplab's `search.name`.
SEARCHERS = {"bayes": "optuna", "tpe": "optuna", "tpesampler": "optuna", "optuna": "optuna", "optunasearch": "optuna"}
SEARCHERS |= {"random": "random", "randomsampler": "random", "grid": "grid", "gridsampler": "grid"}
GOALS = {"minimize": "min", "maximize": "max", "min": "min", "max": "max"}
# Optuna's pruners -> sweeplab's schedulers (the nearest Tune scheduler of each).
PRUNERS = {"medianpruner": "median", "successivehalvingpruner": "asha", "hyperbandpruner": "hyperband"}
SAMPLERS = "{choice: [...]}, {grid: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}, ..."
NO_SCRIPT = (
    "sweeplab runs no script: a trial trains `config:` (a base config file) with its values, like `sweeplab train`"
)
TRACKING = "`--tracking-uri` (default sqlite:///mlflow.db)"
CONFIG_KEYS = "dotted config keys (the keys of `sweeplab train`, e.g. optim.lr, data.batch_size)"


def flow(value: Any) -> str:
    """`value` as YAML flow text: [16, 32], {grid: [...]}, 0.001, sgd."""
    if isinstance(value, list):
        return f"[{', '.join(flow(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value if re.fullmatch(r"[A-Za-z_][\w./-]*", value) else json.dumps(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return repr(value)


def _get(value: Any, key: str, default: Any) -> Any:
    return value.get(key, default) if isinstance(value, dict) else default


def _search(value: Any) -> str:
    name = SEARCHERS.get(str(value).lower().replace("_", ""))
    why = " (TPE, Optuna's Bayesian optimisation)" if name == "optuna" and value != "optuna" else ""
    return f"use search: {{name: {name}}}{why}" if name else "use search: {name: optuna|random|grid}"


def _mode(value: Any) -> str:
    mode = GOALS.get(str(value).lower())
    return f"use mode: {mode}" if mode else "use mode: min|max"


def _samples(value: Any) -> str:
    return f"use search: {{num_samples: {flow(value)}}} (the number of trials of a random or optuna search)"


def _early_terminate(value: Any) -> str:
    """W&B's hyperband early stopping -> ASHA, its asynchronous form, with the file's own numbers."""
    options = {"name": "asha", "grace_period": _get(value, "min_iter", "MIN_ITER")}
    options["reduction_factor"] = _get(value, "eta", 3)  # W&B's default eta
    if isinstance(value, dict) and "max_iter" in value:
        options["max_t"] = value["max_iter"]
    return f"use scheduler: {flow(options)} (W&B's min_iter -> grace_period, eta -> reduction_factor, in epochs)"


def _pruner(value: Any) -> str:
    name = PRUNERS.get(str(value).lower().replace("_", ""))
    return f"use scheduler: {{name: {name}}}" if name else "use scheduler: {name: median|asha|hyperband}"


def _tune_config(value: Any) -> str:
    return "its keys are top-level here: metric, mode, search: {name, num_samples}, scheduler, max_concurrent"


# Top-level keys: key -> (the tool it comes from, the hint for its value).
TOP: dict[str, tuple[str, Callable[[Any], str]]] = {
    "method": (WANDB, _search),
    "parameters": (WANDB, lambda v: f"use space: with {CONFIG_KEYS}, each one sampler: {SAMPLERS}"),
    "goal": (WANDB, _mode),
    "run_cap": (WANDB, _samples),
    "early_terminate": (WANDB, _early_terminate),
    "program": (WANDB, lambda v: f"{NO_SCRIPT}; name it with config: configs/....yaml"),
    "command": (WANDB, lambda v: NO_SCRIPT),
    "project": (WANDB, lambda v: f"use name: {flow(v)} (the MLflow experiment; default: the file's stem)"),
    "entity": (WANDB, lambda v: f"leave it out: trials are logged to the MLflow store of {TRACKING}"),
    "description": (WANDB, lambda v: "leave it out, or make it a YAML comment (# ...)"),
    "param_space": (TUNE, lambda v: f"use space: with {CONFIG_KEYS}, each one sampler: {SAMPLERS}"),
    "num_samples": (TUNE, _samples),
    "search_alg": (TUNE, _search),
    "max_concurrent_trials": (TUNE, lambda v: f"use max_concurrent: {flow(v)}"),
    "tune_config": (TUNE, _tune_config),
    "resources_per_trial": (TUNE, lambda v: "use resources: {workers: 1, cpus_per_worker: C, gpus_per_worker: G}"),
    "direction": (OPTUNA, _mode),
    "n_trials": (OPTUNA, _samples),
    "sampler": (OPTUNA, _search),
    "pruner": (OPTUNA, _pruner),
    "study_name": (OPTUNA, lambda v: f"use name: {flow(v)}"),
}
# Keys inside sweeplab's sections that other tools spell differently: (section, key) -> sweeplab's key.
RENAMED = {
    ("search.", "method"): "name",
    ("search.", "type"): "name",
    ("search.", "run_cap"): "num_samples",
    ("search.", "n_trials"): "num_samples",
    ("scheduler.", "type"): "name",
    ("scheduler.", "min_iter"): "grace_period",
    ("scheduler.", "eta"): "reduction_factor",
    ("scheduler.", "max_iter"): "max_t",
    ("scheduler.", "s"): "brackets",
}


def key_hint(where: str, key: object, value: Any) -> str | None:
    """ "'method' is a W&B Sweeps key: use search: {name: optuna}" for a foreign key, else None."""
    if not isinstance(key, str):
        return None
    if where == "" and key in TOP:
        tool, hint = TOP[key]
        return f"'{key}' is {'an' if tool == OPTUNA else 'a'} {tool} key: {hint(value)}"
    if (where, key) in RENAMED:
        return f"'{where}{key}' is called '{where}{RENAMED[where, key]}' in sweeplab"
    return None


def metric_hint(value: Any) -> str | None:
    """W&B's nested `metric: {name, goal}` -> sweeplab's two top-level keys."""
    if not isinstance(value, dict):
        return None
    mode = GOALS.get(str(value.get("goal")).lower(), "min|max")
    return (
        f"'metric' is one name here, its direction beside it: metric: {flow(value.get('name', 'NAME'))}, mode: {mode}"
    )


# W&B's distributions without a sweeplab sampler.
_NO_SAMPLER = (
    "sweeplab has no {0} distribution; use {{uniform: [lo, hi]}}, {{loguniform: [lo, hi]}} or {{choice: [...]}}"
)


def distribution(kind: str, spec: dict[str, Any]) -> str:
    lo, hi = spec.get("min", "MIN"), spec.get("max", "MAX")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi))
    if kind == "constant":
        return f"a fixed value goes under overrides: {{KEY: {flow(spec.get('value', 'VALUE'))}}}"
    if kind == "categorical":
        return _values(spec.get("values", []))
    if kind == "int_uniform":
        top = hi + 1 if isinstance(hi, int) and not isinstance(hi, bool) else "MAX + 1"
        return f"{{randint: [{flow(lo)}, {flow(top)}]}} (randint's upper bound is exclusive, as in Tune)"
    if kind == "uniform":
        return f"{{uniform: [{flow(lo)}, {flow(hi)}]}}"
    if kind == "q_uniform":
        return f"{{quniform: [{flow(lo)}, {flow(hi)}, {flow(spec.get('q', 1))}]}}"
    if kind == "log_uniform_values":
        return f"{{loguniform: [{flow(lo)}, {flow(hi)}]}}"
    if kind == "log_uniform":  # W&B's min and max are natural logs here
        if numbers and max(abs(lo), abs(hi)) < 700:
            lo, hi = float(f"{math.exp(lo):.6g}"), float(f"{math.exp(hi):.6g}")
            return f"{{loguniform: [{flow(lo)}, {flow(hi)}]}} (W&B's log_uniform takes the bounds' natural logs)"
        return "{loguniform: [e^MIN, e^MAX]} (W&B's log_uniform takes the bounds' natural logs)"
    if kind in ("q_log_uniform_values", "q_log_uniform"):
        return "sweeplab has no quantised log-uniform; use {loguniform: [lo, hi]} or {choice: [...]}"
    return _NO_SAMPLER.format(kind)


def _values(values: Any) -> str:
    v = flow(values)
    return f"{{choice: {v}}} (sampled, what W&B's random and bayes do) or {{grid: {v}}} (every value)"


def entry_hint(spec: Any) -> str | None:
    """The sweeplab sampler for a `space` entry written the W&B way ({values: [...]}, {min, max},
    {distribution: ...}) or the Ray Tune way ({grid_search: [...]}, "tune.loguniform(1e-4, 1e-1)"), else None."""
    if isinstance(spec, str):
        call = re.fullmatch(r"\s*(?:tune\.)?(\w+)\((.*)\)\s*", spec)
        if call and call[1] in ("uniform", "loguniform", "quniform", "randint", "choice", "grid_search"):
            kind = "grid" if call[1] == "grid_search" else call[1]
            args = call[2] if kind in ("choice", "grid") else f"[{call[2]}]"
            return f"written the {TUNE} way; here: {{{kind}: {args}}}"
        return None
    if not isinstance(spec, dict):
        return None
    if "grid_search" in spec:
        return f"written the {TUNE} way; here: {{grid: {flow(spec['grid_search'])}}}"
    if "distribution" in spec:
        return f"written the {WANDB} way; here: {distribution(str(spec['distribution']), spec)}"
    if "values" in spec:
        return f"written the {WANDB} way; here: {_values(spec['values'])}"
    if "value" in spec:
        return f"written the {WANDB} way; a fixed value goes under overrides: {{KEY: {flow(spec['value'])}}}"
    if "min" in spec or "max" in spec:  # W&B picks int_uniform for two ints, else uniform
        ints = all(isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) for k in ("min", "max"))
        return f"written the {WANDB} way; here: {distribution('int_uniform' if ints else 'uniform', spec)}"
    return None
