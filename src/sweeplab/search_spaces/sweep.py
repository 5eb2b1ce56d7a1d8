"""A compiled sweep: base config, space, searcher, scheduler, resources; trials resolved to Configs.

A trial's config is `config` + `overrides` (+ `smoke.overrides`) + the variant's `set` + the
sampled point + `train.seed`, then the `expr` values computed from it. The same `resolve` runs in
the dry-run, in the driver (tags, table rows) and in the trainable, so all three agree. A Sweep is
made from a file, a dict or a launch's snapshot by `loading.py`.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sweeplab import reference
from sweeplab.config import from_dict, merge, set_dotted
from sweeplab.core.errors import ConfigError, SweepError
from sweeplab.core.fmt import number
from sweeplab.schema import Config, flatten
from sweeplab.search_spaces import spec as S
from sweeplab.search_spaces.domains import ChoiceVariant, Domain, Expr, Grid, GridVariant
from sweeplab.search_spaces.schedulers import Scheduler
from sweeplab.search_spaces.settings import Resources, Search

SEED = S.SEED
MAX_RUNGS = 100  # ASHA / HyperBand rungs: a reduction_factor of 1.0001 would make tens of thousands


@dataclass
class Trial:
    """One compiled trial: `point` is what the searcher chose (Tune's config), `derived` the exprs."""

    index: int
    point: dict[str, Any]
    derived: dict[str, Any]
    config: Config
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, Any]:
        """The trial's space values (point and exprs), by dotted key."""
        return {**self.point, **self.derived}


@dataclass
class Sweep:
    """A validated sweep file (see docs/sweeps.md); `smoke` says whether its smoke block is applied."""

    path: str
    name: str
    smoke: bool
    spec: dict[str, Any]  # the file as read, kept for `resume`
    config_tree: dict[str, Any]  # the base config file's tree, kept for `resume`
    base: dict[str, Any]  # config + overrides (+ smoke overrides)
    space: dict[str, Domain]
    seeds: int
    search: Search
    scheduler: Scheduler
    metric: str
    mode: str
    resources: Resources
    max_concurrent: int | None
    tables: dict[str, dict[str, str]]
    log_checkpoints: bool = True  # `mlflow.log_checkpoints`: each trial's final checkpoint uploaded to MLflow
    log_models: bool = True  # `mlflow.log_models`: each finished trial's model exported and logged to MLflow

    def resolve(self, point: dict[str, Any]) -> Config:
        """The validated Config of a point (a trial's Tune config)."""
        return self._resolve(point)[0]

    def _resolve(self, point: dict[str, Any], where: str = "") -> tuple[Config, dict[str, Any]]:
        tree = self.base  # merge and from_dict leave it as it is
        if "variant" in point:
            variant = self.space["variant"]
            assert isinstance(variant, (GridVariant, ChoiceVariant))
            tree = merge(tree, nested(variant.sets[point["variant"]]))
        tree = merge(tree, nested({k: v for k, v in point.items() if k != "variant"}))
        derived: dict[str, Any] = {}
        defaults = Config().to_dict()
        for key in S.expr_order(self.space, self.path):  # an expr reading another sees its computed value
            dom = self.space[key]
            assert isinstance(dom, Expr)
            try:  # names see the whole trial config, defaults included
                value = dom.evaluate(merge(defaults, tree))
            except Exception as e:
                raise SweepError(f"{self.path}: 'space.{key}.expr' failed{where}: {type(e).__name__}: {e}") from None
            if isinstance(flatten(defaults).get(key), int) and isinstance(value, float) and value.is_integer():
                value = int(value)  # e.g. data.batch_size: {expr: "2 * 64.0"} is still an int key
            derived[key] = value
            tree = merge(tree, nested({key: value}))
        derived = {k: derived[k] for k in self.space if k in derived}  # shown in the file's order
        try:
            return from_dict(tree, f" in {self.path}{where}"), derived
        except SweepError:
            raise
        except ConfigError as e:
            raise SweepError(str(e)) from None

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to every trial: leave the compiled trials behind, a trial needs only `resolve`.
        return {k: v for k, v in self.__dict__.items() if k not in ("_trials", "_published")}

    def trial(self, point: dict[str, Any]) -> Trial:
        """The Trial of a point a searcher chose (rows of sweeplab's own tables included)."""
        trial = self.make_trial(point)
        trial.rows.update(self.own_row(trial))
        return trial

    def make_trial(self, point: dict[str, Any], index: int = -1) -> Trial:
        """Resolve a point into a Trial, with the reference rows it fills."""
        where = (
            f" (trial {index}{': ' + label(point) if point else ''})"
            if index >= 0
            else f" ({label(point)})"
            if point
            else ""
        )
        config, derived = self._resolve(point, where)
        trial = Trial(index, dict(point), derived, config)
        trial.rows = self._rows(trial)
        return trial

    def size(self) -> tuple[int, str]:
        """(the number of trials, how it is made up), computed without enumerating them."""
        grids = [len(d.values) for d in self.space.values() if isinstance(d, Grid)]
        if self.search.name == "optuna":  # the sampler picks num_samples points, a grid sampler's among its grid
            grids = []
        n = math.prod(grids) * self.search.num_samples * self.seeds
        parts = f"grid {' x '.join(map(str, grids)) or 1} x num_samples {self.search.num_samples} x seeds {self.seeds}"
        cap = self.search.trial_cap
        if cap is not None and cap < n:
            return cap, f"{parts} = {n}, capped by search.trial_cap {cap}"
        return n, parts

    def points(self) -> list[dict[str, Any]]:
        """The points to run: grid x num_samples x seeds (grid and random search); for optuna, the
        dry-run's draws from the prior (TPE picks the real ones as results come in)."""
        rng = random.Random(self.search.seed)
        grid = {k: d for k, d in self.space.items() if isinstance(d, Grid)}
        if self.search.name == "optuna":  # optuna's grid sampler draws from the grid: the dry-run does too
            grid = {}
        cap = self.search.trial_cap
        out: list[dict[str, Any]] = []
        for _ in range(self.search.num_samples):
            for combo in itertools.product(*(d.values for d in grid.values())):
                chosen = dict(zip(grid, combo))
                point: dict[str, Any] = {}
                for key, dom in self.space.items():
                    if isinstance(dom, Expr):
                        continue
                    point[key] = chosen[key] if key in grid else dom.sample(rng)  # a variant's values are labels
                for seed in range(self.seeds):
                    out.append({**point, SEED: seed} if self.seeds > 1 else dict(point))
        return out if cap is None else out[:cap]  # search.trial_cap: the first points, in the dry-run's order

    @cached_property
    def _trials(self) -> list[Trial]:
        compiled = [self.make_trial(p, i) for i, p in enumerate(self.points())]
        for trial in compiled:  # sweeplab's own tables (no reference rows) number the sweep's own points
            trial.rows.update(self._own_rows(trial, compiled))
        return compiled

    def trials(self) -> list[Trial]:
        """Every compiled trial, each validated like a `sweeplab train` config."""
        return list(self._trials)

    def epoch_budget(self) -> int:
        """Epochs if no trial were stopped early (the most a sweep can cost)."""
        return sum(t.config.train.epochs for t in self._trials)

    def max_epochs(self) -> int:
        """The longest trial, in epochs: the schedulers' max_t unless the sweep sets one."""
        return max(t.config.train.epochs for t in self._trials)

    def check(self) -> None:
        """Validate every trial config, and the edges of every sampled range, before Ray starts."""
        workers = self.resources.workers
        for t in self._trials:  # DDP splits the global batch: it must split evenly, ghost batches per rank
            batch, ghost = t.config.data.batch_size, t.config.train.ghost_batch_size
            if batch % workers or (ghost and (batch // workers) % ghost):
                raise SweepError(
                    f"{self.path}: 'data.batch_size' {batch} (trial {t.index}) must split into "
                    f"{workers} equal per-worker batches{' of whole ghost batches of ' + str(ghost) if ghost else ''}"
                )
        first = self._trials[0].point
        for key, dom in self.space.items():
            if dom.sampled:
                for value in dom.extremes():
                    self.make_trial({**first, key: value})
        self._check_scheduler()

    def _check_scheduler(self) -> None:
        """Scheduler options against the trials' length: a grace period no trial reaches never stops one,
        and ASHA or HyperBand with more rungs than this build them all in the driver."""
        s = self.scheduler
        max_t = s.options.get("max_t", self.max_epochs())
        if s.name in ("asha", "median") and s.get("grace_period") > max_t:
            raise SweepError(
                f"{self.path}: 'scheduler.grace_period' ({s.get('grace_period')}) is longer than the "
                f"longest trial ({max_t} epochs{'' if 'max_t' in s.options else ', train.epochs'})"
            )
        if s.name in ("asha", "hyperband"):
            rf = s.get("reduction_factor")
            rungs = int(math.log(max_t / s.get("grace_period", 1)) / math.log(rf)) + 1
            if rungs > MAX_RUNGS:
                raise SweepError(
                    f"{self.path}: 'scheduler.reduction_factor' {rf} makes {rungs} rungs over "
                    f"{max_t} epochs (at most {MAX_RUNGS}); use 2 or more"
                )
            if s.get("brackets", 1) > rungs:
                raise SweepError(
                    f"{self.path}: 'scheduler.brackets' ({s.get('brackets')}) must be at most the "
                    f"number of rungs ({rungs}: grace_period x reduction_factor^k up to {max_t})"
                )

    def snapshot(self) -> dict[str, Any]:
        """What `resume` needs to rebuild this sweep, unaffected by later edits of its files."""
        return {"path": self.path, "smoke": self.smoke, "spec": self.spec, "config_tree": self.config_tree}

    @cached_property
    def _published(self) -> dict[str, reference.Table]:
        """The published tables this sweep fills (sweeplab's own ones, which match by params, left out)."""
        known = reference.tables()
        return {tid: known[tid] for tid in self.tables if not known[tid].match}

    def _rows(self, trial: Trial) -> dict[str, int]:
        values = {**flatten(trial.config.to_dict()), **trial.point}
        rows = {}
        for tid, table in self._published.items():
            row = reference.match_row(table, self.tables[tid], values)
            if row is not None:
                rows[tid] = row
        return rows

    def _own_rows(self, trial: Trial, compiled: list[Trial]) -> dict[str, int]:
        rows = {}
        for tid, match in self.tables.items():
            if tid in self._published or not match:
                continue
            keys = list(match.values())
            distinct = sorted({_key(t, keys) for t in compiled}, key=_order)
            rows[tid] = distinct.index(_key(trial, keys))
        return rows

    def own_row(self, trial: Trial) -> dict[str, int]:
        """Rows of sweeplab's own tables for a trial built outside `trials()` (e.g. by the driver)."""
        own = {}
        for tid, match in self.tables.items():
            if tid in self._published or not match:
                continue
            keys = list(match.values())
            for t in self._trials:
                if _key(t, keys) == _key(trial, keys):
                    own[tid] = t.rows[tid]
                    break
        return own


def _key(trial: Trial, keys: list[str]) -> tuple[Any, ...]:
    values = {**flatten(trial.config.to_dict()), **trial.point}
    return tuple(values.get(k) for k in keys)


def _order(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v)) for v in values)


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """{'optim.lr': 0.1} -> {'optim': {'lr': 0.1}}."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(tree, key, value)
    return tree


def label(point: dict[str, Any]) -> str:
    """A short human label of a point: 'lr=0.1 weight_decay=0.0005 seed=1'."""
    return " ".join(f"{k.rsplit('.', 1)[-1]}={number(v, 4)}" for k, v in point.items())
