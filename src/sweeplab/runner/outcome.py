"""A trial's outcome in sweeplab's words. The runner maps Tune's trial states onto it (runner.trials,
the one place that reads them); the commands count, print and track outcomes, never Tune's states.

No Ray here: the commands import this module without starting or importing Ray.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """Where a trial stands: waiting, running, paused (PBT), or how it ended."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    FINISHED = "FINISHED"  # ran all its epochs
    STOPPED = "STOPPED"  # stopped early by the scheduler (ASHA, HyperBand, median)
    FAILED = "FAILED"

    @property
    def ended(self) -> bool:
        """True once the trial will not run again unless resumed after a failure."""
        return self in (Outcome.FINISHED, Outcome.STOPPED, Outcome.FAILED)


def ended_as(epoch: int, epochs: int, failed: bool = False) -> Outcome:
    """How a trial that ended at `epoch` of its `epochs` did: FAILED, FINISHED (reached its last
    epoch) or STOPPED (ended earlier without an error: its scheduler stopped it)."""
    if failed:
        return Outcome.FAILED
    return Outcome.FINISHED if epoch >= epochs else Outcome.STOPPED
