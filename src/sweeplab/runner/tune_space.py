"""A compiled Sweep in Tune's terms: the param_space, the searcher and the trial scheduler."""

from __future__ import annotations

import importlib
from typing import Any

from sweeplab.search_spaces import Choice, Domain, Grid, LogUniform, QUniform, RandInt, Sweep, Uniform


def tune_domain(dom: Domain) -> Any:
    """The Tune search-space object of a sampled or grid entry (a variant's values are its labels)."""
    from ray import tune

    if isinstance(dom, Grid):
        return tune.grid_search(list(dom.values))
    if isinstance(dom, Choice):
        return tune.choice(list(dom.values))
    if isinstance(dom, Uniform):
        return tune.uniform(dom.low, dom.high)
    if isinstance(dom, LogUniform):
        return tune.loguniform(dom.low, dom.high)
    if isinstance(dom, QUniform):
        return tune.quniform(dom.low, dom.high, dom.q)
    if isinstance(dom, RandInt):
        return tune.randint(dom.low, dom.high)
    raise TypeError(f"{type(dom).__name__} has no Tune search-space object")  # Expr: computed in the trial


def param_space(sweep: Sweep) -> dict[str, Any]:
    """Tune's param_space: grid and random search run the compiled points (so the dry-run is what
    runs); optuna's searcher holds the distributions itself (optuna_study.space) and suggests each
    trial's whole point. Exprs are computed inside the trial from its point."""
    from ray import tune

    if sweep.search.name == "optuna":
        return {}
    return {"point": tune.grid_search(sweep.points())}


def searcher(sweep: Sweep, launch: str) -> Any:
    """Optuna over the launch's study for `search: {name: optuna}` (runner/optuna_study.py), else None:
    Tune's variant generator walks the compiled points."""
    if sweep.search.name != "optuna":
        return None
    from sweeplab.runner import optuna_study

    return optuna_study.searcher(sweep, launch)


def scheduler(sweep: Sweep) -> Any:
    """The Tune scheduler named in search_spaces.SCHEDULERS, with that table's defaults."""
    s = sweep.scheduler
    module, name = s.kind.tune_class.split(":")
    cls = getattr(importlib.import_module(module), name)
    kwargs = s.tune_kwargs(sweep.max_epochs())
    if s.mutate is not None:  # PBT perturbs the point's keys: a grid as its list, a sampler as its Tune domain
        doms = {k: sweep.space[k] for k in s.mutate}
        mutations = {k: list(d.values) if isinstance(d, Grid) else tune_domain(d) for k, d in doms.items()}
        kwargs["hyperparam_mutations"] = {"point": mutations}
    return cls(**kwargs)
