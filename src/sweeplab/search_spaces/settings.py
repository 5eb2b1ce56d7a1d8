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


@dataclass(frozen=True)
class Search:
    """The searcher: grid, random or optuna (TPE), how many samples, and its seed."""

    name: str
    num_samples: int
    seed: int = 0
