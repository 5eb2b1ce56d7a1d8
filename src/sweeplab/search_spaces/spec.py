"""Reading a sweep file: every section checked strictly, before anything is compiled or started.

The format is docs/sweeps.md. Each check raises SweepError naming the file and the dotted key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sweeplab import reference
from sweeplab.config import integral_hint, load_yaml, read_yaml
from sweeplab.core.errors import ConfigError, SweepError, suggest
from sweeplab.core.inputs import MAX_CPUS, MAX_GPUS, MAX_WORKERS
from sweeplab.core.names import METRICS, check_name, default_mode
from sweeplab.core.yamlio import quoted_number
from sweeplab.search_spaces import convert, foreign
from sweeplab.search_spaces.domains import ChoiceVariant, Domain, Expr, GridVariant, check_key, parse, parse_variants
from sweeplab.search_spaces.expr import names as expr_names
from sweeplab.search_spaces.schedulers import SCHEDULERS, Scheduler
from sweeplab.search_spaces.settings import SAMPLERS, Resources, Search

TOP = (
    "name",
    "config",
    "overrides",
    "space",
    "seeds",
    "search",
    "scheduler",
    "metric",
    "mode",
    "resources",
    "max_concurrent",
    "tables",
    "smoke",
    "mlflow",
)
SEED = "train.seed"  # set per trial by `seeds`
SMOKE = ("overrides", "space", "seeds", "search", "scheduler", "resources", "mlflow")
# a smoke block that fits any sweep: one short epoch on a slice of the data (docs/sweeps.md)
SMOKE_EXAMPLE = (
    "{overrides: {train.epochs: 1, data.train_subset: 2000, data.test_subset: 1000}} "
    "(smoke.space or smoke.search: {num_samples: N} runs fewer trials; docs/sweeps.md)"
)
MLFLOW = {"log_checkpoints": bool, "log_models": bool}
SEARCH = {
    "name": str,
    "num_samples": int,
    "seed": int,
    "sampler": str,
    "storage": str,
    "study": str,
    "trial_cap": int,
    "time_budget_s": float,
}
OPTUNA_ONLY = ("sampler", "storage", "study")
SEARCHES = ("grid", "random", "optuna")
RESOURCES = {"workers": int, "cpus_per_worker": (int, float), "gpus_per_worker": (int, float)}


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the sweep file's mapping, the base config file's tree); missing or malformed files raise."""
    path = Path(path)
    try:  # missing, unreadable, binary, malformed, duplicate keys, non-finite numbers
        spec = read_yaml(path, "sweep")
    except ConfigError as e:
        raise SweepError(str(e)) from None
    return checked(spec, path)


def checked(spec: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sweep's mapping (read from `path`, or given as a dict: `path` then names where it would be, for
    messages and for finding its config file) with its top level checked, and its base config's tree."""
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: a sweep file is a mapping of {', '.join(TOP)}")
    if convert.is_wandb(spec):
        raise SweepError(f"{path}: {convert.refusal(spec, str(path))}")
    unknown(spec, TOP, "", path)
    if not isinstance(spec.get("config"), str):
        raise SweepError(f"{path}: 'config' must name the base config file, e.g. configs/cifar10/resnet_preact20.yaml")
    try:
        return spec, load_yaml(find_config(spec["config"], path))
    except SweepError:
        raise
    except ConfigError as e:
        raise SweepError(f"{path}: 'config': {e}") from None


def find_config(name: str, sweep_path: Path) -> Path:
    """The base config, relative to the sweep file, the working directory or a folder above the sweep."""
    p = Path(name)
    here = sweep_path.resolve().parent
    for cand in [p] if p.is_absolute() else [here / p, Path.cwd() / p, *(d / p for d in here.parents)]:
        if cand.is_file():
            return cand
    raise SweepError(f"{sweep_path}: 'config' file not found: {name}")


def unknown(section: dict[str, Any], allowed: tuple[str, ...] | dict[str, Any], where: str, path: Any) -> None:
    """Raise on keys of `section` not in `allowed`: other tools' keys (W&B's `method`, ...) all at once, each
    with sweeplab's equivalent (`foreign.py`); else the first unknown key, with the nearest valid one."""
    hints = [h for k in section if k not in allowed for h in [foreign.key_hint(where, k, section[k])] if h]
    if where == "" and hints and foreign.metric_hint(section.get("metric")):
        hints.append(str(foreign.metric_hint(section.get("metric"))))
    if hints:
        raise SweepError(f"{path}: {' | '.join(hints)}")
    for key in section:
        if key not in allowed:
            full = [f"{where}{k}" for k in allowed]
            raise SweepError(
                f"{path}: unknown key '{where}{key}'{suggest(f'{where}{key}', full)}; "
                f"valid: {', '.join(allowed) or '(none)'}"
            )


def mapping(spec: dict[str, Any], key: str, path: Any) -> dict[str, Any]:
    """spec[key] as a mapping ({} when absent)."""
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepError(f"{path}: '{key}' must be a mapping, got {value!r}")
    return value


def typed(section: dict[str, Any], types: dict[str, Any], where: str, path: Any) -> None:
    """Check each value of `section` against its type (ints accepted for floats; no bools)."""
    for key, value in section.items():
        want = types[key]
        want = (int, float) if want is float else want
        if isinstance(value, bool) or not isinstance(value, want):
            raise SweepError(f"{path}: '{where}{key}' has the wrong type: {value!r}{number_hint(value, want)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SweepError(f"{path}: '{where}{key}' must be a finite number, got {value!r}")
        if isinstance(value, (int, float)) and value < 0:
            raise SweepError(f"{path}: '{where}{key}' must be >= 0, got {value!r}")


def number_hint(value: Any, want: Any) -> str:
    """Why a number was not one: `1e3` for an integer is a float, `'1e-3'` in quotes is a string."""
    if quoted_number(value):
        return " (a string: write the number without quotes)"
    return integral_hint(value, int) if want is int else ""


def overrides(section: dict[str, Any], where: str, path: Any) -> dict[str, Any]:
    """Dotted config keys -> fixed values."""
    for key in section:
        check_key(key, where, path)
    return section


def space(section: dict[str, Any], where: str, path: Any) -> dict[str, Domain]:
    """Dotted config keys (or `variant`) -> Domain."""
    out: dict[str, Domain] = {}
    for key, value in section.items():
        if key == "variant":
            out[key] = parse_variants(value, path, where)
        else:
            check_key(key, where, path)
            out[key] = parse(key, value, path, where)
    return out


def search(section: dict[str, Any], path: Any) -> Search:
    """The Search, with defaults (one pass of a grid; 10 samples for random and TPE)."""
    unknown(section, SEARCH, "search.", path)
    typed(section, SEARCH, "search.", path)
    name = section.get("name", "grid")
    if name not in SEARCHES:
        raise SweepError(
            f"{path}: 'search.name' is {name!r}{suggest(str(name), list(SEARCHES))}; valid: {', '.join(SEARCHES)}"
        )
    if name != "optuna":
        for key in OPTUNA_ONLY:
            if key in section:
                raise SweepError(f"{path}: 'search.{key}' is an optuna setting; it needs search: {{name: optuna}}")
    sampler = section.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise SweepError(
            f"{path}: 'search.sampler' is {sampler!r}{suggest(str(sampler), list(SAMPLERS))}; "
            f"valid: {', '.join(SAMPLERS)}"
        )
    if "storage" in section and "://" not in section["storage"]:
        raise SweepError(
            f"{path}: 'search.storage' must be an SQLAlchemy URL such as sqlite:///optuna.db, "
            f"got {section['storage']!r}"
        )
    if "study" in section:
        try:  # a study name is shown in optuna-dashboard's URLs and may name a folder: one plain name
            check_name(section["study"], "'search.study'")
        except ConfigError as e:
            raise SweepError(f"{path}: {e}") from None
    out = Search(**{"name": name, "num_samples": 1 if name == "grid" else 10, **section})
    if out.num_samples < 1:
        raise SweepError(f"{path}: 'search.num_samples' must be >= 1")
    if out.trial_cap is not None and out.trial_cap < 1:
        raise SweepError(f"{path}: 'search.trial_cap' must be >= 1, got {out.trial_cap}")
    if out.time_budget_s is not None and out.time_budget_s <= 0:
        raise SweepError(f"{path}: 'search.time_budget_s' must be > 0, got {out.time_budget_s}")
    if out.seed > MAX_SEED:  # numpy's and optuna's seeds are 32-bit
        raise SweepError(f"{path}: 'search.seed' must be at most {MAX_SEED}, got {out.seed}")
    return out


MAX_SEED = 2**32 - 1


def scheduler(section: dict[str, Any], path: Any) -> Scheduler:
    """The Scheduler and its options; unknown options of the chosen scheduler are rejected."""
    name = section.get("name", "fifo")
    if name not in SCHEDULERS:
        raise SweepError(
            f"{path}: 'scheduler.name' is {name!r}{suggest(str(name), list(SCHEDULERS))}; "
            f"valid: {', '.join(SCHEDULERS)}"
        )
    options = {k: v for k, v in section.items() if k != "name"}
    unknown(options, SCHEDULERS[name].types, "scheduler.", path)
    typed(options, SCHEDULERS[name].types, "scheduler.", path)
    for key in ("grace_period", "max_t", "perturbation_interval", "brackets", "min_samples_required"):
        if key in options and options[key] < 1:
            raise SweepError(f"{path}: 'scheduler.{key}' must be >= 1")
    if "reduction_factor" in options and options["reduction_factor"] <= 1:
        raise SweepError(f"{path}: 'scheduler.reduction_factor' must be > 1")
    # Tune's PBT refuses a quantile above 0.5 (the top and bottom quantiles would overlap)
    for key, top in (("quantile_fraction", 0.5), ("resample_probability", 1.0)):
        if key in options and not 0 <= options[key] <= top:
            raise SweepError(f"{path}: 'scheduler.{key}' must be in [0, {top:g}], got {options[key]!r}")
    if not all(isinstance(k, str) for k in options.get("mutate", [])):
        raise SweepError(f"{path}: 'scheduler.mutate' must list dotted keys of the space, got {options['mutate']!r}")
    if options.get("grace_period", 1) > options.get("max_t", math.inf):
        raise SweepError(
            f"{path}: 'scheduler.grace_period' ({options['grace_period']}) must be <= "
            f"'scheduler.max_t' ({options['max_t']})"
        )
    return Scheduler(name, options)


def resources(section: dict[str, Any], path: Any, where: str = "resources.") -> Resources:
    """The Resources of a trial; fractional GPUs let small trials share one.
    `where` names the section in errors (`smoke.resources.` for the smoke block's merged one)."""
    unknown(section, RESOURCES, where, path)
    typed(section, RESOURCES, where, path)
    out = Resources(**section)
    # bounded by what a machine (a cluster, for workers) can have: Ray would wait forever for more
    if not 1 <= out.workers <= MAX_WORKERS:
        raise SweepError(f"{path}: '{where}workers' must be an integer in [1, {MAX_WORKERS}], got {out.workers!r}")
    if not 0 < out.cpus_per_worker <= MAX_CPUS:
        raise SweepError(f"{path}: '{where}cpus_per_worker' must be in (0, {MAX_CPUS}], got {out.cpus_per_worker!r}")
    if out.gpus_per_worker > MAX_GPUS:
        raise SweepError(f"{path}: '{where}gpus_per_worker' must be at most {MAX_GPUS}, got {out.gpus_per_worker!r}")
    if out.gpus_per_worker > 1 and out.gpus_per_worker != int(out.gpus_per_worker):
        raise SweepError(f"{path}: '{where}gpus_per_worker' above 1 must be a whole number")
    return out


def mlflow(section: dict[str, Any], path: Any, where: str = "mlflow.") -> dict[str, Any]:
    """What MLflow keeps of each trial: `log_checkpoints` (default true) uploads its final checkpoint,
    `log_models` (default true) a finished trial's weights as an MLflow PyTorch model."""
    unknown(section, MLFLOW, where, path)
    for key, value in section.items():
        if not isinstance(value, MLFLOW[key]):
            raise SweepError(f"{path}: '{where}{key}' must be true or false, got {value!r}")
    return {"log_checkpoints": True, "log_models": True, **section}


def metric(spec: dict[str, Any], path: Any) -> tuple[str, str]:
    """(metric, mode): any metric a trial reports each epoch (`names.METRICS`); `mode` defaults to the
    metric's own direction (max for accuracy and throughput, min otherwise). An explicit `mode: min` on
    an accuracy is obeyed: it is how to find the configs that fail, and the dry-run prints the pair."""
    name = spec.get("metric", "val/error")
    hint = foreign.metric_hint(name)
    if hint:
        raise SweepError(f"{path}: {hint}")
    if name not in METRICS:
        raise SweepError(
            f"{path}: 'metric' is {name!r}{suggest(str(name), list(METRICS))}; "
            f"valid (what a trial reports each epoch): {', '.join(METRICS)}"
        )
    mode = spec.get("mode", default_mode(name))
    if mode not in ("min", "max"):
        other = foreign.GOALS.get(str(mode).lower())
        raise SweepError(f"{path}: 'mode' must be min or max, got {mode!r}" + (f"; use mode: {other}" if other else ""))
    return name, mode


def table_matches(section: dict[str, Any], has_variant: bool, path: Any) -> dict[str, dict[str, str]]:
    """Table id -> {column: dotted key or 'variant'}; ids and columns must exist in the reference."""
    known = reference.tables()
    out: dict[str, dict[str, str]] = {}
    for tid, entry in section.items():
        if tid not in known:
            raise SweepError(
                f"{path}: unknown table id 'tables.{tid}'{suggest(str(tid), list(known))} (see `sweeplab table --list`)"
            )
        if not isinstance(entry, dict) or set(entry) - {"match"}:
            raise SweepError(f"{path}: 'tables.{tid}' must be {{match: {{column: dotted key}}}}")
        match = entry.get("match") or {}
        if not isinstance(match, dict):
            raise SweepError(f"{path}: 'tables.{tid}.match' must map column names to dotted keys")
        columns = known[tid].columns
        for col, key in match.items():
            if col not in columns:
                raise SweepError(
                    f"{path}: 'tables.{tid}.match' column {col!r} is not in that table"
                    f"{suggest(str(col), columns)}; columns: {', '.join(columns)}"
                )
            if key == "variant":
                if not has_variant:
                    raise SweepError(f"{path}: 'tables.{tid}.match.{col}' is variant, but the space has no variant")
            else:
                check_key(key, f"tables.{tid}.match.{col} -> ", path)
        out[tid] = dict(match)
    return out


def check_axes(space: dict[str, Domain], seeds: Any, path: str, smoke_keys: set[str]) -> None:
    """Refuse a key that two axes set: a variant's `set:` and the space (whose value would silently
    win), or a variant and `seeds` (train.seed); and `expr`s that read each other in a cycle."""
    variant = space.get("variant")
    if isinstance(variant, (GridVariant, ChoiceVariant)):
        at = "smoke.space." if "variant" in smoke_keys else "space."
        for name, sets in variant.sets.items():
            for key in sets:
                if key in space:
                    other = f"{'smoke.space.' if key in smoke_keys else 'space.'}{key}"
                    raise SweepError(
                        f"{path}: '{at}variant' {name!r} sets '{key}', which '{other}' sets too (the space's "
                        "value would silently win); set it in one of the two"
                    )
                if key == SEED and isinstance(seeds, int) and seeds > 1:
                    raise SweepError(
                        f"{path}: '{at}variant' {name!r} sets '{SEED}', which 'seeds: {seeds}' sets for each "
                        "trial; set it in one of the two"
                    )
    expr_order(space, path, smoke_keys)


def expr_order(space: dict[str, Domain], path: str, smoke_keys: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The space's `expr` keys, each after the exprs it reads; SweepError naming a cycle, whose values
    would depend on the order of the file. An expr that reads its own key reads the value before it."""
    reads = {k: expr_names(d.text) - {k} for k, d in space.items() if isinstance(d, Expr)}
    order: list[str] = []

    def visit(key: str, trail: tuple[str, ...]) -> None:
        if key in order:
            return
        if key in trail:
            loop = (*trail[trail.index(key) :], key)
            named = next((k for k in loop if k in smoke_keys), None)
            at = f"smoke.space.{named}" if named else f"space.{key}"
            raise SweepError(f"{path}: '{at}.expr' is part of a cycle of exprs ({' -> '.join(loop)}); break it")
        for other in sorted(reads[key] & reads.keys()):
            visit(other, (*trail, key))
        order.append(key)

    for key in reads:
        visit(key, ())
    return order
