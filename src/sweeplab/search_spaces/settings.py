"""The typed `resources` and `search` sections of a sweep file (`spec` checks and builds them);
the scheduler's is in `schedulers`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resources:
    """What one trial asks of the cluster; workers > 1 runs it as DDP under Ray Train."""

    workers: int = 1
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0


SAMPLERS = ("tpe", "cmaes", "random", "grid")  # optuna's samplers a sweep file may name (docs/sweeps.md)


@dataclass(frozen=True)
class Search:
    """The searcher: grid, random or optuna, how many samples, its seed, and the sweep's limits:
    `trial_cap` runs at most that many trials (W&B's run_cap), `time_budget_s` ends the sweep after
    that many seconds (Tune's time_budget_s). For optuna: the sampler, and the study's SQLAlchemy
    `storage` URL and name (None: resolved at launch, beside the MLflow store and after the launch)."""

    name: str
    num_samples: int
    seed: int = 0
    sampler: str = "tpe"
    storage: str | None = None
    study: str | None = None
    trial_cap: int | None = None
    time_budget_s: float | None = None
