"""Learning-rate schedules against hand-computed values from their papers and posts.

Expected numbers are worked out from the published formulas (written as literals or as the
formula itself), never by calling the code under test. Unless a test says otherwise a run is
10 epochs of 10 steps (100 optimiser steps, 0-based) at base lr 0.1.
"""

from __future__ import annotations

import math

import pytest

from sweeplab import config, schedules
from sweeplab.core.errors import ConfigError
from sweeplab.schema import SchedConfig

BASE, SPE, EPOCHS = 0.1, 10, 10
LAST = SPE * EPOCHS - 1
# The schedules a config may name under `sched.name`: dropping one would break configs written for it.
PROMISED = {"constant", "cosine", "multistep", "linear", "sgdr", "onecycle", "piecewise"}


def lr(step: int, epochs: int = EPOCHS, spe: int = SPE, base: float = BASE, **sched) -> float:
    return schedules.lr_at(step, base, SchedConfig(**sched), spe, epochs)


def test_registry_has_every_promised_schedule():
    assert PROMISED <= set(schedules.names())


def test_constant():
    assert [lr(s, name="constant") for s in (0, 37, LAST)] == [BASE] * 3


def test_cosine_start_middle_end():
    # SGDR eq. 5 (https://arxiv.org/abs/1608.03983) with eta_min = 0: lr = base/2 * (1 + cos(pi t)).
    assert lr(0, name="cosine") == pytest.approx(0.1)
    assert lr(50, name="cosine") == pytest.approx(0.05)  # t = 1/2
    assert lr(25, name="cosine") == pytest.approx(0.0853553391)  # t = 1/4: 0.05 * (1 + sqrt(2)/2)
    # last step t = 99/100: 0.05 * (1 - cos(0.01 pi)) = 0.05 * 4.9344e-4
    assert lr(LAST, name="cosine") == pytest.approx(2.4671982e-5, rel=1e-6)


def test_cosine_with_min_lr_factor():
    # eta_min = 0.1 * base: the midpoint is halfway between eta_min and eta_max.
    assert lr(0, name="cosine", min_lr_factor=0.1) == pytest.approx(0.1)
    assert lr(50, name="cosine", min_lr_factor=0.1) == pytest.approx(0.055)
    assert lr(LAST, name="cosine", min_lr_factor=0.1) == pytest.approx(0.01 + 0.09 * 4.9343963e-4 / 2, rel=1e-6)


def test_cosine_after_warmup_spans_the_remaining_steps():
    # 2 warmup epochs = 20 steps; the half cosine covers steps 20..99, its midpoint is step 60.
    assert lr(20, name="cosine", warmup_epochs=2) == pytest.approx(0.1)
    assert lr(60, name="cosine", warmup_epochs=2) == pytest.approx(0.05)


def test_multistep_milestones_as_fractions():
    # [0.5, 0.75] of 10 epochs = epochs 5 and 7.5 = steps 50 and 75.
    kw = dict(name="multistep", milestones=[0.5, 0.75], gamma=0.1)
    got = [lr(s, **kw) for s in (0, 49, 50, 74, 75, LAST)]
    assert got == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_multistep_milestones_as_absolute_epochs():
    kw = dict(name="multistep", milestones=[3, 6], gamma=0.5)
    got = [lr(s, **kw) for s in (29, 30, 59, 60, LAST)]
    assert got == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025])


def test_linear_decays_to_zero():
    got = [lr(s, name="linear") for s in (0, 25, 50, LAST)]
    assert got == pytest.approx([0.1, 0.075, 0.05, 0.001])  # 0.1 * (1 - s/100)


def test_sgdr_restarts_with_growing_periods():
    # T_0 = 2 epochs, T_mult = 2: periods [0, 2), [2, 6), [6, 14) epochs; lr restarts to base at each.
    kw = dict(name="sgdr", sgdr_t0=2, sgdr_t_mult=2)
    epochs = 14
    at = {s: lr(s, epochs=epochs, **kw) for s in (0, 10, 19, 20, 40, 59, 60, 100)}
    assert at[0] == pytest.approx(0.1)
    assert at[10] == pytest.approx(0.05)  # T_cur = 1 of T_i = 2
    assert at[19] == pytest.approx(6.1558297e-4, rel=1e-6)  # 0.05 * (1 + cos(0.95 pi))
    assert at[20] == pytest.approx(0.1)  # first restart
    assert at[40] == pytest.approx(0.05)  # T_cur = 2 of T_i = 4
    assert at[59] == pytest.approx(0.05 * (1 + math.cos(math.pi * 3.9 / 4)))
    assert at[60] == pytest.approx(0.1)  # second restart
    assert at[100] == pytest.approx(0.05)  # T_cur = 4 of T_i = 8


def test_sgdr_with_constant_period():
    kw = dict(name="sgdr", sgdr_t0=3, sgdr_t_mult=1)
    assert [lr(s, **kw) for s in (15, 30, 45, 60, 75)] == pytest.approx([0.05, 0.1, 0.05, 0.1, 0.05])


def test_onecycle_is_one_triangle():
    # The fast-training posts: lr interpolated linearly 0 -> peak at 20% of training -> 0 at the end.
    kw = dict(name="onecycle", onecycle_peak=0.2)
    assert lr(0, **kw) == pytest.approx(0.0)
    assert lr(10, **kw) == pytest.approx(0.05)
    assert lr(20, **kw) == pytest.approx(0.1)  # the peak
    assert lr(60, **kw) == pytest.approx(0.05)  # halfway down: (1 - 0.6) / 0.8
    assert lr(LAST, **kw) == pytest.approx(0.00125)  # 0.1 * 0.01 / 0.8, ~0 at the end
    rise = [lr(s + 1, **kw) - lr(s, **kw) for s in range(0, 20)]
    fall = [lr(s + 1, **kw) - lr(s, **kw) for s in range(20, LAST)]
    assert rise == pytest.approx([0.005] * 20)  # linear up: 0.1 / 20 steps
    assert fall == pytest.approx([-0.00125] * 79)  # linear down: 0.1 / 80 steps


def test_piecewise_reproduces_the_flax_example():
    # Flax CIFAR-10 example, default `lr_sched_steps = [[60, 0.2], [120, 0.04], [160, 0.008]]`
    # over 200 epochs: lr = base * factor from that epoch on (factors are absolute, not cumulative).
    kw = dict(name="piecewise", milestones=[60, 120, 160], gamma=0.2)
    at = {e: lr(e * 2, epochs=200, spe=2, **kw) for e in (0, 59, 60, 119, 120, 159, 160, 199)}
    want = {0: 0.1, 59: 0.1, 60: 0.02, 119: 0.02, 120: 0.004, 159: 0.004, 160: 0.0008, 199: 0.0008}
    assert at == pytest.approx(want)
    # PyramidNet row: `--lr_sched_steps="[[150,0.1],[225,0.01]]" --num_epochs=300`.
    kw = dict(name="piecewise", milestones=[150, 225], gamma=0.1)
    got = [lr(e, epochs=300, spe=1, **kw) for e in (149, 150, 224, 225, 299)]
    assert got == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001])


def test_linear_warmup():
    # 1 warmup epoch = 10 steps from 0.1 * base up to base.
    kw = dict(name="constant", warmup_epochs=1, warmup_kind="linear", warmup_start_factor=0.1)
    got = [lr(s, **kw) for s in (0, 5, 9, 10, 50)]
    assert got == pytest.approx([0.01, 0.055, 0.091, 0.1, 0.1])


def test_exponential_warmup_applies_base_lr_once():
    # lr = base * f^(1 - s/W): geometric from f*base to base. The reference repo multiplied by the
    # base lr twice, which would give 1e-5 at step 0 here instead of 1e-4.
    kw = dict(name="constant", warmup_epochs=1, warmup_kind="exponential", warmup_start_factor=0.001)
    assert lr(0, **kw) == pytest.approx(1e-4)
    assert lr(5, **kw) == pytest.approx(3.16227766e-3)  # 0.1 * sqrt(0.001)
    assert lr(9, **kw) == pytest.approx(0.0501187234)  # 0.1 * 0.001 ** 0.1
    assert lr(10, **kw) == pytest.approx(0.1)
    # the same shape at another base lr: scales linearly with base
    assert lr(5, base=0.4, **kw) == pytest.approx(4 * 3.16227766e-3)


@pytest.mark.parametrize("name", schedules.names())
@pytest.mark.parametrize("warmup", [None, "linear", "exponential"])
def test_every_schedule_is_finite_and_non_negative(name, warmup):
    kw = dict(name=name, milestones=[0.3, 6], sgdr_t0=1.5)
    if warmup:
        kw.update(warmup_epochs=1.5, warmup_kind=warmup)
    values = [lr(s, epochs=12, spe=7, **kw) for s in range(12 * 7)]
    assert all(math.isfinite(v) and 0.0 <= v <= BASE * (1 + 1e-12) for v in values)
    assert max(values) > 0.5 * BASE  # and it is not stuck at zero


@pytest.mark.parametrize("name", sorted(set(schedules.names()) - {"onecycle"}))
def test_warmup_hands_over_to_the_schedule_at_base_lr(name):
    # At the first post-warmup step every schedule except the one-cycle triangle starts at base lr
    # (in the reference repo the main schedule, SGDR included, starts when the warmup ends).
    kw = dict(name=name, warmup_epochs=2, milestones=[0.5], sgdr_t0=3)
    assert lr(20, **kw) == pytest.approx(BASE)
    assert lr(19, **kw) < BASE


# These values would make `lr_at` loop forever (sgdr) or go negative (min_lr_factor).
def test_sgdr_t0_must_be_positive():
    with pytest.raises(ConfigError, match="sched.sgdr_t0"):
        config.load(None, ["sched.name=sgdr", "sched.sgdr_t0=0", "data.name=synthetic"])


def test_sgdr_t_mult_must_be_at_least_one():
    with pytest.raises(ConfigError, match="sched.sgdr_t_mult"):
        config.load(None, ["sched.name=sgdr", "sched.sgdr_t_mult=0.5", "data.name=synthetic"])


def test_min_lr_factor_must_be_in_unit_interval():
    with pytest.raises(ConfigError, match="sched.min_lr_factor"):
        config.load(None, ["sched.min_lr_factor=-0.5", "data.name=synthetic"])


def test_onecycle_rejects_a_separate_warmup():
    with pytest.raises(ConfigError, match="sched.warmup_epochs"):
        config.load(None, ["sched.name=onecycle", "sched.warmup_epochs=1", "data.name=synthetic"])
