"""A W&B sweep file as a sweeplab sweep file (`sweeplab convert`), or every reason it cannot be one.

W&B's format: https://docs.wandb.ai/guides/sweeps/define-sweep-configuration. W&B runs a script
(`program: train.py`) with its parameters as arguments; sweeplab trains a config file with dotted keys,
so the conversion needs that config (`--config`) and maps each parameter's name to a config key
(`learning_rate` -> `optim.lr`, nested `optim: {parameters: {lr: ...}}` -> `optim.lr`). Whatever cannot
be mapped is collected, and all of it is refused at once: a user fixes the file in one pass.
"""

from __future__ import annotations

import math
import re
from typing import Any

from sweeplab.core.errors import common_name
from sweeplab.core.names import METRICS
from sweeplab.models import catalog
from sweeplab.schema import valid_keys
from sweeplab.search_spaces import foreign
from sweeplab.search_spaces.domains import is_config_key

# What W&B users name their metric -> sweeplab's (the names their training scripts log most often).
METRIC_NAMES = {
    **dict.fromkeys(("val_loss", "validation_loss", "valid_loss", "eval_loss", "test_loss", "val/loss"), "val/loss"),
    **dict.fromkeys(("val_acc", "val_accuracy", "accuracy", "acc", "eval_accuracy", "test_acc"), "val/accuracy"),
    **dict.fromkeys(("test_accuracy", "valid_acc", "validation_accuracy"), "val/accuracy"),
    **dict.fromkeys(("val_error", "error", "test_error", "val_err", "top1_error"), "val/error"),
    **dict.fromkeys(("loss", "train_loss", "training_loss"), "train/loss"),
    **dict.fromkeys(("train_acc", "train_accuracy"), "train/accuracy"),
}
KNOWN = ("program", "command", "method", "metric", "parameters", "early_terminate", "run_cap", "name")
DROPPED = ("project", "entity", "description")  # said in the header comment, not needed to run


class Unconvertible(ValueError):
    """The file cannot be converted: `problems` lists every reason, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# Keys only a sweeplab file has: a file with one of them is a sweeplab file with foreign keys in it.
SWEEPLAB_ONLY = {"config", "overrides", "space", "search", "scheduler", "seeds", "tables", "smoke", "resources"}


def is_wandb(spec: Any) -> bool:
    """A mapping written for W&B Sweeps: W&B's `parameters` or `method`, and none of sweeplab's own keys."""
    return isinstance(spec, dict) and not SWEEPLAB_ONLY & set(spec) and ("parameters" in spec or "method" in spec)


def _keys() -> list[str]:
    """The dotted keys a parameter may name: the config's and every model option."""
    options = {f"model.{o}" for m in catalog.MODELS.values() for o in m.options}
    return valid_keys() + sorted(options)


def config_key(name: str) -> str | None:
    """The dotted config key a W&B parameter name stands for, or None."""
    if is_config_key(name):
        return name
    return common_name(name, _keys())


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def sampler(spec: dict[str, Any], grid: bool) -> tuple[str, Any]:
    """('space', {sampler: ...}) or ('overrides', value) for one W&B parameter; ValueError saying why not."""
    kind = spec.get("distribution")
    if "value" in spec or kind == "constant":
        return "overrides", spec.get("value")
    if "values" in spec or kind == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ValueError("needs a non-empty list of values")
        return "space", {"grid" if grid else "choice": values}
    if grid:
        raise ValueError("a grid sweep needs `values: [...]` (W&B refuses min/max in a grid too)")
    if kind not in (None, "uniform", "int_uniform", "q_uniform", "log_uniform_values", "log_uniform"):
        raise ValueError(foreign.distribution(str(kind), spec))  # W&B's normal, beta, q_log_uniform, ...
    lo: Any = spec.get("min")
    hi: Any = spec.get("max")
    if not (_number(lo) and _number(hi)):
        raise ValueError("needs numeric min and max")
    if kind is None:
        kind = "int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform"
    if kind == "uniform":
        return "space", {"uniform": [lo, hi]}
    if kind == "int_uniform":
        return "space", {"randint": [lo, hi + 1]}  # W&B's max is inclusive, Tune's randint's is not
    if kind == "q_uniform":
        return "space", {"quniform": [lo, hi, spec.get("q", 1)]}
    if kind == "log_uniform_values":
        return "space", {"loguniform": [lo, hi]}
    if max(abs(lo), abs(hi)) < 700:  # log_uniform: W&B's bounds are natural logs here
        return "space", {"loguniform": [float(f"{math.exp(lo):.6g}"), float(f"{math.exp(hi):.6g}")]}
    raise ValueError("log_uniform's min and max are natural logs: these are too large")


def _parameters(params: Any, grid: bool, prefix: str = "") -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(overrides, space, problems) of W&B's `parameters`, nested ones as dotted keys."""
    overrides: dict[str, Any] = {}
    space: dict[str, Any] = {}
    problems: list[str] = []
    if not isinstance(params, dict) or not params:
        return {}, {}, [f"'{prefix or 'parameters'}' must be a mapping of parameter names"]
    for name, spec in params.items():
        where = f"parameters.{prefix}{name}"
        if isinstance(spec, dict) and "parameters" in spec:
            o, s, p = _parameters(spec["parameters"], grid, f"{prefix}{name}.")
            overrides, space, problems = overrides | o, space | s, problems + p
            continue
        key = config_key(f"{prefix}{name}")
        if key is None:
            problems.append(f"'{where}' names no config key (rename it to a dotted key such as optim.lr)")
            continue
        if key in overrides or key in space:
            problems.append(f"'{where}' is {key}, which another parameter sets too")
            continue
        try:
            part, value = sampler(spec if isinstance(spec, dict) else {"value": spec}, grid)
        except ValueError as e:
            problems.append(f"'{where}': {e}")
            continue
        (overrides if part == "overrides" else space)[key] = value
    return overrides, space, problems


def _scheduler(value: Any) -> tuple[dict[str, Any] | None, str | None]:
    """W&B's hyperband early stopping as ASHA (its asynchronous form), in epochs; or the problem."""
    if not isinstance(value, dict) or value.get("type") != "hyperband":
        return None, "'early_terminate': only type hyperband is known (-> scheduler: {name: asha, ...})"
    eta = value.get("eta", 3)
    if "min_iter" in value:
        grace = value["min_iter"]
    elif "max_iter" in value:  # W&B derives the first bracket from max_iter / eta^s
        grace = max(1, int(value["max_iter"] / eta ** value.get("s", 0)))
    else:
        return None, "'early_terminate' needs min_iter or max_iter"
    out = {"name": "asha", "grace_period": grace, "reduction_factor": eta}
    if "max_iter" in value:
        out["max_t"] = value["max_iter"]
    return out, None


def _name(spec: dict[str, Any]) -> str | None:
    """The sweep's name (its MLflow experiment): W&B's name, else its project, as one plain word."""
    raw = spec.get("name") or spec.get("project")
    return re.sub(r"[^\w-]+", "_", str(raw)).strip("_") or None if raw else None


def refusal(spec: dict[str, Any], path: str) -> str:
    """What `sweeplab run` says of a W&B sweep file: the command that converts it, and what it could not."""
    try:
        convert(spec, "CONFIG")
        problems: list[str] = []
    except Unconvertible as e:
        problems = e.problems
    fix = f"; fix first: {' | '.join(problems)}" if problems else ""
    return f"a W&B Sweeps file: `sweeplab convert {path} --config CONFIG` writes it as a sweeplab sweep file{fix}"


def convert(spec: Any, config: str | None) -> dict[str, Any]:
    """The sweeplab sweep file (a mapping, in the format's order) for W&B sweep `spec` training `config`;
    raise Unconvertible listing every problem at once."""
    if not isinstance(spec, dict):
        raise Unconvertible(["a W&B sweep file is a mapping (method, metric, parameters, ...)"])
    problems = [
        f"unknown key '{k}' (not a W&B Sweeps key)" for k in spec if k not in KNOWN + DROPPED and isinstance(k, str)
    ]
    if config is None:
        problems.append(f"give --config CONFIG: {foreign.NO_SCRIPT}")
    method = str(spec.get("method", "random"))
    search = foreign.SEARCHERS.get(method.lower())
    if search is None:
        problems.append(f"'method' is {method!r}; W&B's methods are grid, random and bayes")
    overrides, space, found = _parameters(spec.get("parameters"), method == "grid")
    problems += found
    out: dict[str, Any] = {}
    if _name(spec):
        out["name"] = _name(spec)
    out["config"] = config
    if overrides:
        out["overrides"] = overrides
    if space:
        out["space"] = space
    out["search"] = {"name": search or "random"}
    cap = spec.get("run_cap")
    if cap is not None:
        out["search"]["trial_cap" if search == "grid" else "num_samples"] = cap
    metric = spec.get("metric")
    if metric is not None:
        name = metric.get("name") if isinstance(metric, dict) else metric
        ours = str(name) if str(name) in METRICS else METRIC_NAMES.get(str(name).lower())
        if ours is None:
            problems.append(f"'metric.name' is {name!r}, which no sweeplab trial logs; one of {', '.join(METRICS)}")
        else:
            out["metric"] = ours
            goal = metric.get("goal", "minimize") if isinstance(metric, dict) else "minimize"
            out["mode"] = foreign.GOALS.get(str(goal).lower(), "min")
    if "early_terminate" in spec:
        scheduler, problem = _scheduler(spec["early_terminate"])
        if problem:
            problems.append(problem)
        else:
            out["scheduler"] = scheduler
    # --smoke on the converted file: one short epoch on a slice of the data, two trials
    small = {"train.epochs": 1, "data.train_subset": 2000, "data.test_subset": 1000}
    smoke: dict[str, Any] = {"overrides": {k: v for k, v in small.items() if k not in space}}
    sampled = {k: {next(iter(space[k])): [v]} for k, v in small.items() if k in space}  # a space entry wins
    if sampled:
        smoke["space"] = sampled
    if search != "grid":
        smoke["search"] = {"num_samples": 2}
    if "scheduler" in out:
        smoke["scheduler"] = {"grace_period": 1}
    out["smoke"] = smoke
    if problems:
        raise Unconvertible(problems)
    return out


def render(sweep: dict[str, Any]) -> str:
    """A converted sweep as YAML in the style of sweeps/: one line per key, samplers in flow style."""
    lines = []
    for key, value in sweep.items():
        if key in ("overrides", "space", "smoke"):
            lines += [f"{key}:", *(f"  {k}: {foreign.flow(v)}" for k, v in value.items())]
        else:
            lines.append(f"{key}: {foreign.flow(value)}")
    return "\n".join(lines) + "\n"
