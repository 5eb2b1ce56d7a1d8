"""A compiled Sweep in Tune's terms: search-space objects and the trial scheduler (PBT's mutations)."""

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


def mutations(sweep: Sweep, prefix: tuple[str, ...]) -> dict[str, Any] | None:
    """PBT's `hyperparam_mutations` for the point's keys, nested under `prefix` as the trial config holds
    the point: a grid entry as its list of values, a sampler as its Tune domain. None for other schedulers."""
    s = sweep.scheduler
    if s.mutate is None:
        return None
    doms = {k: sweep.space[k] for k in s.mutate}
    out: dict[str, Any] = {k: list(d.values) if isinstance(d, Grid) else tune_domain(d) for k, d in doms.items()}
    for part in reversed(prefix):
        out = {part: out}
    return out


def scheduler(sweep: Sweep, mutations: dict[str, Any] | None = None) -> Any:
    """The Tune scheduler named in search_spaces.SCHEDULERS, with that table's defaults (PBT: `mutations`)."""
    s = sweep.scheduler
    module, name = s.kind.tune_class.split(":")
    cls = getattr(importlib.import_module(module), name)
    kwargs = s.tune_kwargs(sweep.max_epochs())
    if mutations is not None:
        kwargs["hyperparam_mutations"] = mutations
    return cls(**kwargs)
