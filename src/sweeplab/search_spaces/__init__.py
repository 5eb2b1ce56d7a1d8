"""Sweep files (docs/sweeps.md) -> validated, compiled trials. No Ray here: `trainables.ray_backend`
turns a Sweep into Tune's param_space, searcher and scheduler."""

from sweeplab.search_spaces.domains import Domain, SweepError
from sweeplab.search_spaces.sweep import Sweep, Trial, from_snapshot, label, load

__all__ = ["Domain", "Sweep", "SweepError", "Trial", "from_snapshot", "label", "load"]
