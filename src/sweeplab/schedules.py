"""Learning-rate schedules as pure functions of the step: lr(step) = base_lr * warmup * shape.

A pure function needs no scheduler state in checkpoints, and `lr_at` can be plotted or tested
at any step without running training (nanoGPT's habit).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from sweeplab.schema import SchedConfig

# A shape maps (t in [0, 1] of the post-warmup phase, epoch, total epochs, cfg) to a factor.
Shape = Callable[[float, float, int, SchedConfig], float]
_SHAPES: dict[str, Shape] = {}


def register_schedule(fn: Shape) -> Shape:
    """Register a schedule shape under its function name."""
    _SHAPES[fn.__name__] = fn
    return fn


def names() -> list[str]:
    return sorted(_SHAPES)


@register_schedule
def constant(t: float, epoch: float, epochs: int, c: SchedConfig) -> float:
    """The base learning rate throughout."""
    return 1.0


@register_schedule
def cosine(t: float, epoch: float, epochs: int, c: SchedConfig) -> float:
    """Cosine annealing to min_lr_factor: https://arxiv.org/abs/1608.03983"""
    return c.min_lr_factor + (1 - c.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))


@register_schedule
def linear(t: float, epoch: float, epochs: int, c: SchedConfig) -> float:
    """Linear decay to min_lr_factor."""
    return c.min_lr_factor + (1 - c.min_lr_factor) * (1 - t)


def _milestone_epochs(c: SchedConfig, epochs: int) -> list[float]:
    # Milestones <= 1 are fractions of training, so one recipe serves any epoch count.
    return [m * epochs if m <= 1 else m for m in c.milestones]


@register_schedule
def multistep(t: float, epoch: float, epochs: int, c: SchedConfig) -> float:
    """Multiply by gamma at each milestone epoch: https://arxiv.org/abs/1512.03385"""
    return c.gamma ** sum(epoch >= m for m in _milestone_epochs(c, epochs))


@register_schedule
def piecewise(t: float, epoch: float, epochs: int, c: SchedConfig) -> float:
    """Piecewise-constant steps (the Flax CIFAR-10 example's schedule); same rule as multistep."""
    return multistep(t, epoch, epochs, c)


@register_schedule
def sgdr(t: float, epoch: float, epochs: int, c: SchedConfig) -> float:
    """Cosine with warm restarts, periods t0, t0*mult, ...: https://arxiv.org/abs/1608.03983"""
    # Restarts count from the end of warmup, as the main schedule starts there.
    period, start, epoch = c.sgdr_t0, 0.0, epoch - c.warmup_epochs
    while epoch >= start + period:
        start, period = start + period, period * c.sgdr_t_mult
    return c.min_lr_factor + (1 - c.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * (epoch - start) / period))


@register_schedule
def onecycle(t: float, epoch: float, epochs: int, c: SchedConfig) -> float:
    """One triangular cycle: 0 -> base lr at `onecycle_peak` -> 0 (https://arxiv.org/abs/1708.07120)."""
    p = c.onecycle_peak
    return t / p if t < p else max(0.0, (1 - t) / (1 - p))


def lr_at(step: int, base_lr: float, c: SchedConfig, steps_per_epoch: int, epochs: int) -> float:
    """The learning rate of optimiser step `step` (0-based)."""
    total = steps_per_epoch * epochs
    warmup = round(c.warmup_epochs * steps_per_epoch)
    if step < warmup:
        u = step / warmup
        if c.warmup_kind == "exponential":  # base lr applied once (the reference applied it twice)
            return base_lr * c.warmup_start_factor ** (1 - u)
        return base_lr * (c.warmup_start_factor + (1 - c.warmup_start_factor) * u)
    t = (step - warmup) / max(1, total - warmup)
    return base_lr * _SHAPES[c.name](t, step / steps_per_epoch, epochs, c)
