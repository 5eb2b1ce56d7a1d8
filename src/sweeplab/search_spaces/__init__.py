"""Sweep files (docs/sweeps.md) -> validated, compiled trials. No Ray here: `runner.ray_backend`
turns a Sweep into Tune's param_space, searcher and scheduler."""

from sweeplab.search_spaces.domains import Domain
from sweeplab.search_spaces.sweep import Sweep, Trial, from_snapshot, label, load

__all__ = ["Domain", "Sweep", "Trial", "from_snapshot", "label", "load"]
