"""Sweep files (docs/sweeps.md) -> validated, compiled trials. No Ray here: `runner.tune_space`
turns a Sweep into Tune's param_space, searcher and scheduler."""

from sweeplab.search_spaces.domains import (
    Choice,
    ChoiceVariant,
    Domain,
    Expr,
    Grid,
    GridVariant,
    LogUniform,
    QUniform,
    RandInt,
    Uniform,
    Variant,
)
from sweeplab.search_spaces.loading import from_snapshot, load
from sweeplab.search_spaces.schedulers import SCHEDULERS, Scheduler, SchedulerKind
from sweeplab.search_spaces.settings import Resources, Search
from sweeplab.search_spaces.sweep import Sweep, Trial, label

__all__ = [
    "SCHEDULERS",
    "Choice",
    "ChoiceVariant",
    "Domain",
    "Expr",
    "Grid",
    "GridVariant",
    "LogUniform",
    "QUniform",
    "RandInt",
    "Resources",
    "Scheduler",
    "SchedulerKind",
    "Search",
    "Sweep",
    "Trial",
    "Uniform",
    "Variant",
    "from_snapshot",
    "label",
    "load",
]
