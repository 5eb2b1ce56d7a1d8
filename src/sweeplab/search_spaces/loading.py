"""A sweep file (or dict, or a launch's snapshot) -> a checked, compiled Sweep.

`load` reads the file (`spec.read`; a dict through `spec.checked`), `build` checks the sections against
each other (smoke block, seeds, search and scheduler, resources, tables) and makes the Sweep, and `load`
then refuses more than MAX_TRIALS trials before enumerating any and checks every trial (`Sweep.check`).
`from_snapshot` rebuilds the Sweep a launch was started with, for `resume` and the MLflow follower.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from sweeplab.config import merge
from sweeplab.core.errors import ConfigError, SweepError
from sweeplab.core.names import check_name
from sweeplab.search_spaces import spec as S
from sweeplab.search_spaces.domains import Choice, Domain, Expr, Grid
from sweeplab.search_spaces.settings import Search
from sweeplab.search_spaces.sweep import SEED, Sweep, nested

MAX_TRIALS = 10_000  # a sweep above this needs `--max-trials`: the dry-run alone would take minutes and GBs


def build(spec: dict[str, Any], config_tree: dict[str, Any], path: str, smoke: bool) -> Sweep:
    """Check every section of a sweep file's mapping and compile it into a Sweep."""
    smoke_block = S.mapping(spec, "smoke", path)
    S.unknown(smoke_block, S.SMOKE, "smoke.", path)
    if smoke and not smoke_block:  # else --smoke would run the whole sweep, titled "(smoke)"
        raise SweepError(f"{path}: --smoke needs a 'smoke:' block in the file, e.g. smoke: {S.SMOKE_EXAMPLE}")
    base = merge(config_tree, nested(S.overrides(S.mapping(spec, "overrides", path), "overrides.", path)))
    space = S.space(S.mapping(spec, "space", path), "space.", path)
    smoke_over = S.overrides(S.mapping(smoke_block, "overrides", path), "smoke.overrides.", path)
    smoke_space = S.space(S.mapping(smoke_block, "space", path), "smoke.space.", path)
    search_spec = {**S.mapping(spec, "search", path)}
    scheduler_spec = {**S.mapping(spec, "scheduler", path)}
    seeds = spec.get("seeds", 1)
    plain = dict(space)
    if smoke:
        base = merge(base, nested(smoke_over))
        space.update(smoke_space)
        seeds = smoke_block.get("seeds", seeds)
        search_spec.update(S.mapping(smoke_block, "search", path))
        scheduler_spec.update(S.mapping(smoke_block, "scheduler", path))
    # smoke.mlflow is merged into mlflow and checked even without --smoke, like smoke.resources
    base_mlflow = S.mapping(spec, "mlflow", path)
    tracking = S.mlflow(base_mlflow, path)
    smoke_tracking = S.mlflow({**base_mlflow, **S.mapping(smoke_block, "mlflow", path)}, path, "smoke.mlflow.")
    if smoke:
        tracking = smoke_tracking
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise SweepError(f"{path}: 'seeds' must be an integer >= 1, got {seeds!r}")
    if seeds > 1 and SEED in space:
        raise SweepError(f"{path}: 'space.{SEED}' conflicts with 'seeds: {seeds}' (seeds sets train.seed)")
    # both the space of a full run and its smoke run's, whichever runs now (as smoke.resources is)
    S.check_axes(plain, spec.get("seeds", 1), path, set())
    S.check_axes({**plain, **smoke_space}, smoke_block.get("seeds", spec.get("seeds", 1)), path, set(smoke_space))
    search, scheduler = S.search(search_spec, path), S.scheduler(scheduler_spec, path)
    # smoke.resources is merged into resources and checked even without --smoke, like smoke.overrides
    base_resources = S.mapping(spec, "resources", path)
    resources = S.resources(base_resources, path)
    smoke_resources = S.resources(
        {**base_resources, **S.mapping(smoke_block, "resources", path)}, path, "smoke.resources."
    )
    if smoke:
        resources = smoke_resources
    if search.name == "optuna":
        check_optuna_space(space, search, path)
        if search.sampler == "grid" and "num_samples" not in search_spec:  # one trial per grid point
            grid = [len(d.values) for d in space.values() if isinstance(d, (Grid, Choice))]
            search = replace(search, num_samples=math.prod(grid))
        if seeds > 1:
            raise SweepError(f"{path}: 'seeds: {seeds}' needs search grid or random (TPE draws each point once)")
    if scheduler.name == "pbt":
        if resources.workers > 1 or search.name == "optuna":
            raise SweepError(f"{path}: 'scheduler.name' pbt needs one worker per trial and search grid or random")
        if "mutate" not in scheduler.options:  # default: every key of the space but the variant and the exprs
            mutate = [k for k, d in space.items() if k != "variant" and not isinstance(d, Expr)]
            scheduler = replace(scheduler, options={**scheduler.options, "mutate": mutate})
        for key in scheduler.options["mutate"]:
            if key not in space or key == "variant" or isinstance(space[key], Expr):
                raise SweepError(f"{path}: 'scheduler.mutate' names {key!r}, which is not a sampled key of the space")
    max_concurrent = spec.get("max_concurrent")
    if max_concurrent is not None and (
        isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1
    ):
        raise SweepError(f"{path}: 'max_concurrent' must be an integer >= 1, got {max_concurrent!r}")
    name = spec.get("name", Path(path).stem)
    try:  # it names the MLflow experiment and, with a timestamp, the launch's folder
        check_name(name, "'name'")
    except ConfigError as e:
        raise SweepError(f"{path}: {e}") from None
    metric, mode = S.metric(spec, path)
    matches = S.table_matches(S.mapping(spec, "tables", path), "variant" in space, path)
    return Sweep(
        path,
        name,
        smoke,
        spec,
        config_tree,
        base,
        space,
        seeds,
        search,
        scheduler,
        metric,
        mode,
        resources,
        max_concurrent,
        matches,
        tracking["log_checkpoints"],
        tracking["log_models"],
    )


def check_optuna_space(space: dict[str, Domain], search: Search, path: str) -> None:
    """Optuna's samplers and the space: TPE, CMA-ES and random sample distributions and refuse a grid;
    the grid sampler (optuna.samplers.GridSampler) walks grids and choices, never a continuous range."""
    if search.sampler == "grid":
        ranges = [k for k, d in space.items() if d.sampled and not isinstance(d, (Grid, Choice))]
        if ranges:
            raise SweepError(
                f"{path}: 'space.{ranges[0]}' is a continuous range, which optuna's grid sampler cannot walk; "
                "give it as {grid: [...]} or use sampler: tpe"
            )
        return
    grids = [k for k, d in space.items() if isinstance(d, Grid)]
    if grids:
        raise SweepError(
            f"{path}: 'space.{grids[0]}' is a grid, which optuna's {search.sampler} sampler does not walk: "
            "use {choice: [...]} to let it choose among the values, or search: {name: optuna, sampler: grid} "
            "(or search: {name: grid}) to run every one"
        )


def load(path: str | Path | dict[str, Any], smoke: bool = False, max_trials: int | None = None) -> Sweep:
    """Read, check and compile a sweep file (or a sweep given as a dict, whose `config` is found from the
    working folder); every trial config is validated. Raises SweepError. More than `max_trials` trials
    (default MAX_TRIALS) is refused before any is enumerated."""
    if isinstance(path, dict):  # the Python API's sweep: checked as a file's would be, named by its `name`
        import copy

        where = Path.cwd() / f"{path.get('name', 'sweep')}.yaml (a dict)"
        spec, config_tree = S.checked(copy.deepcopy(path), where)
        path = where
    else:
        spec, config_tree = S.read(path)
    sweep = build(spec, config_tree, str(path), smoke)
    cap = MAX_TRIALS if max_trials is None else max_trials
    n, parts = sweep.size()
    if n > cap:
        raise SweepError(
            f"{path}: {n} trials ({parts}) is more than the cap of {cap}; run it with --max-trials {n} if you mean it"
        )
    sweep.check()
    return sweep


def from_snapshot(snap: dict[str, Any]) -> Sweep:
    """The sweep a launch was started with (see Sweep.snapshot)."""
    return build(snap["spec"], snap["config_tree"], snap["path"], snap["smoke"])
