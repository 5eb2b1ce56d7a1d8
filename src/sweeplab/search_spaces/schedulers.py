"""The one table of trial schedulers, and the typed `scheduler` section of a sweep file.

For each scheduler a sweep file may name: the Tune class as an import path (resolved by
`runner.tune_space`, so no Ray here), the options a sweep file may set with their types, and the
keyword arguments sweeplab passes for the options it leaves out. `spec` checks a section against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OptionType = type | tuple[type, ...]


@dataclass(frozen=True)
class SchedulerKind:
    """A scheduler of the sweep-file format. Time is always counted in epochs."""

    tune_class: str  # "module:Class" import path
    types: dict[str, OptionType]  # the options a sweep file may set
    defaults: dict[str, Any]  # Tune keyword arguments passed unless the sweep file sets them

    @property
    def takes_max_t(self) -> bool:
        """Whether the scheduler has a horizon (default: the longest trial's epochs)."""
        return "max_t" in self.types


EPOCH = {"time_attr": "epoch"}  # not an option: every scheduler that counts time counts epochs
SCHEDULERS: dict[str, SchedulerKind] = {
    "fifo": SchedulerKind("ray.tune.schedulers:FIFOScheduler", {}, {}),
    "asha": SchedulerKind(
        "ray.tune.schedulers:ASHAScheduler",
        {"grace_period": int, "reduction_factor": (int, float), "max_t": int, "brackets": int},
        {**EPOCH, "grace_period": 1, "reduction_factor": 4, "brackets": 1},
    ),
    "hyperband": SchedulerKind(
        "ray.tune.schedulers:HyperBandScheduler",
        {"reduction_factor": (int, float), "max_t": int},
        {**EPOCH, "reduction_factor": 3},
    ),
    "median": SchedulerKind(
        "ray.tune.schedulers:MedianStoppingRule",
        {"grace_period": int, "min_samples_required": int},
        {**EPOCH, "grace_period": 1, "min_samples_required": 3},
    ),
    # `mutate` (the space keys PBT perturbs) becomes Tune's hyperparam_mutations in runner.tune_space
    "pbt": SchedulerKind(
        "ray.tune.schedulers:PopulationBasedTraining",
        {"perturbation_interval": int, "mutate": list, "quantile_fraction": float, "resample_probability": float},
        {**EPOCH, "perturbation_interval": 1, "quantile_fraction": 0.25, "resample_probability": 0.25},
    ),
}


@dataclass(frozen=True)
class Scheduler:
    """A trial scheduler: its name in SCHEDULERS and the options the sweep file set (pbt's
    `mutate` filled in with its default), in the file's order."""

    name: str = "fifo"
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def kind(self) -> SchedulerKind:
        """This scheduler's row of SCHEDULERS."""
        return SCHEDULERS[self.name]

    def get(self, key: str, default: Any = None) -> Any:
        """An option as set, else the value sweeplab passes to Tune, else `default`."""
        return self.options.get(key, self.kind.defaults.get(key, default))

    @property
    def mutate(self) -> list[str] | None:
        """The space keys PBT perturbs; None for the schedulers that perturb nothing."""
        return self.options.get("mutate") if "mutate" in self.kind.types else None

    def tune_kwargs(self, max_epochs: int) -> dict[str, Any]:
        """The Tune class's keyword arguments (all but `mutate`); max_t defaults to `max_epochs`."""
        kwargs = {**self.kind.defaults, **{k: v for k, v in self.options.items() if k != "mutate"}}
        if self.kind.takes_max_t:
            kwargs.setdefault("max_t", max_epochs)
        return kwargs
