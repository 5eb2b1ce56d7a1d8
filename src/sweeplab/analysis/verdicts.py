"""The verdict rule: a row's seed errors against its published value, with the band it is judged by.

d = median(ours) - published, and Var(d) = m(n) sd(ours)^2 + m(k) sd(published)^2 for n our seeds and k
published runs, m(n) the variance of a median of n draws in single-run units. The seed sd at an error of p% is
r x binomial_sd(p) (noise grows with the error as counting noise on a 10,000-image test set does), r pooled over
the table's rows with >= 2 seeds, else the store's other configs of the row's dataset and model, else the prior
alone, and always shrunk towards the prior r = 0.65 (4 pseudo degrees of freedom). band = t x sqrt(Var(d)), t
Student's two-sided 96% quantile. |d| <= band: consistent; beyond it, better or worse (ours lower or higher) once
r is measured, needs more seeds while it is the prior alone. docs/fidelity.md, "Verdicts", gives the reasons.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

# The seed sd of a test error of p% is modelled as r x binomial_sd(p), the sd of an error counted on a
# 10,000-image test set (the size of every reference dataset's): seed noise grows with the error level as
# counting noise does. r is pooled over seeds (`noise`), shrunk towards a prior with PRIOR_DOF pseudo degrees
# of freedom. The prior 0.65 is what CIFAR-10 measurements give: ResNet-110's paper +/-0.16 at 6.61% (0.64),
# the DAWNBench posts' "roughly 0.15%" at 94% accuracy (0.63), the reference's own reruns of one setting
# (8.87 / 8.73 and 8.40 / 8.08: sd 0.17 at 8.5%, 0.62).
TEST_IMAGES = 10_000
PRIOR_RATIO = 0.65
PRIOR_DOF = 4
LEVEL = 0.96  # a published value inside the band with this probability when ours and it share a distribution
# Var(median of n draws) / Var(one draw) for normal noise; beyond 10, pi / 2n (a little above the exact value)
MEDIAN_VARIANCE = {
    1: 1.0,
    2: 0.5,
    3: 0.4487,
    4: 0.2982,
    5: 0.2868,
    6: 0.2148,
    7: 0.2104,
    8: 0.1682,
    9: 0.1661,
    10: 0.1384,
}
VERDICTS = ("consistent", "better", "worse", "needs more seeds")
VERDICT_RULE = (
    "verdict = ours against the published value (the first error or accuracy column, as error), both with seed "
    "noise: band = t x sqrt(m(n) sd(ours)^2 + m(k) sd(published)^2), n our seeds, k the published runs (1, or the "
    "k of a column's 'median of k runs'; '(1 run)' cells 1), m(n) the variance of a median of n draws in "
    "single-run units (1, 0.5, 0.45, 0.30, 0.29 for n = 1..5), sd(p) = r x sqrt(p (100 - p) / 10000) at an "
    "error of p% (seed noise grows with the error as counting noise on a 10,000-image test set does), r pooled "
    "over this table's rows with >= 2 seeds, else over the store's other configs of the row's dataset and model "
    f"with >= 2 seeds, and shrunk towards the prior r = {PRIOR_RATIO} (CIFAR-10's measured seed noise) with "
    f"{PRIOR_DOF} pseudo degrees of freedom, t the two-sided {LEVEL:.0%} quantile of Student's t with the pooled "
    f"+ {PRIOR_DOF} degrees of freedom; 'consistent' = |ours - published| <= band, 'better' / 'worse' = beyond "
    "it, ours lower / higher, 'needs more seeds' = beyond it while r is the prior alone (no seed spread of the "
    "row's dataset and model measured yet), '-' = no published value or no finished run"
)


def binomial_sd(error: float) -> float:
    """The sd (points) of a test error of `error`% counted on TEST_IMAGES images, sqrt(p (100 - p) / N);
    p is kept within one image of 0 and 100, where the count has no spread left to scale."""
    p = min(max(error, 100 / TEST_IMAGES), 100 - 100 / TEST_IMAGES)
    return math.sqrt(p * (100 - p) / TEST_IMAGES)


def median_variance(n: int) -> float:
    """Var(median of n normal draws) / Var(one draw)."""
    return MEDIAN_VARIANCE.get(n, math.pi / (2 * n))


def t_coverage(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with an integer number of degrees of freedom (closed form, Abramowitz &
    Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(dof))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if dof % 2:  # odd: 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2.4/3.5 cos^4 + ...)) up to cos^(dof-2)
        term, total = 1.0, 1.0 if dof > 1 else 0.0
        for k in range(3, dof - 1, 2):
            term *= (k - 1) / k * c2
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term = total = 1.0  # even: sin (1 + 1/2 cos^2 + 1.3/2.4 cos^4 + ...) up to cos^(dof-2)
    for k in range(2, dof - 1, 2):
        term *= (k - 1) / k * c2
        total += term
    return s * total


@functools.lru_cache(maxsize=256)
def t_quantile(level: float, dof: int) -> float:
    """The t with P(|T| <= t) = level (two-sided), by bisection."""
    lo, hi = 0.0, 1.0
    while t_coverage(hi, dof) < level:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_coverage(mid, dof) < level else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Noise:
    """The seed sd behind a row's verdict: sd at an error of p% = `ratio` x binomial_sd(p).

    `dof` counts the measured degrees of freedom (0: the prior alone); the prior adds PRIOR_DOF to them.
    """

    ratio: float = PRIOR_RATIO
    dof: int = 0
    source: str = "the prior alone"

    def sd(self, error: float) -> float:
        return self.ratio * binomial_sd(error)

    @property
    def measured(self) -> bool:
        return self.dof > 0

    def describe(self) -> str:
        if not self.measured:
            return f"r = {self.ratio:.2f}, the prior alone (no seed spread measured)"
        return f"r = {self.ratio:.2f} from {self.source} ({self.dof} degrees of freedom) and the prior"


PRIOR = Noise()


def noise(groups: list[list[float]], source: str = "") -> Noise:
    """The sd ratio r pooled over the groups (one config's seed errors each) with >= 2 values: each group's
    variance in units of binomial_sd(its mean)^2, weighted by its n - 1, and the prior's PRIOR_RATIO^2 with
    weight PRIOR_DOF (a scaled inverse-chi-squared prior): a handful of seeds cannot make r implausibly small."""
    several = [g for g in groups if len(g) >= 2]
    dof = sum(len(g) - 1 for g in several)
    if not dof:
        return PRIOR
    ss = sum((len(g) - 1) * statistics.variance(g) / binomial_sd(statistics.fmean(g)) ** 2 for g in several)
    return Noise(math.sqrt((ss + PRIOR_DOF * PRIOR_RATIO**2) / (dof + PRIOR_DOF)), dof, source)


def verdict(
    errors: list[float], published: float | None, runs: int = 1, noise: Noise = PRIOR
) -> tuple[str, float | None]:
    """(verdict, band): 'consistent', 'better' or 'worse' (lower error is better), or 'needs more seeds'
    for a row's seed errors against a published value of `runs` runs (a median of them); ('-', None)
    without both. The band is the largest |median(errors) - published| still 'consistent'."""
    if not errors or published is None:
        return "-", None
    ours = statistics.median(errors)
    spread = median_variance(len(errors)) * noise.sd(ours) ** 2 + median_variance(runs) * noise.sd(published) ** 2
    band = t_quantile(LEVEL, noise.dof + PRIOR_DOF) * math.sqrt(spread)
    diff = ours - published
    if abs(diff) <= band + 1e-9:
        return "consistent", band
    if not noise.measured:
        return "needs more seeds", band
    return ("better" if diff < 0 else "worse"), band


def summary(verdicts: list[str], measured: int, total: int) -> str:
    """The table's verdicts in one line: "14 of 20 rows consistent, 3 better, 2 worse, 1 needs more seeds (...)"."""
    if not measured:
        return "no row has a finished run yet"
    n = {v: verdicts.count(v) for v in VERDICTS}
    compared = sum(n.values())
    if not compared:
        return f"no measured row has a published value ({measured} of {total} rows measured)"
    more = n["needs more seeds"]
    line = (
        f"{n['consistent']} of {compared} rows consistent, {n['better']} better, {n['worse']} worse, "
        f"{more} need{'s' if more == 1 else ''} more seeds"
    )
    extra = [f"{measured - compared} measured without a published value"] if measured > compared else []
    extra += [f"{total - measured} without a finished run"] if total > measured else []
    return line + (f" ({'; '.join(extra)})" if extra else "")


def row_noise(
    errors: dict[int, list[float]],
    families: dict[int, tuple[str, str]],
    related: Callable[[], dict[tuple[str, str], list[list[float]]]],
) -> dict[int, Noise]:
    """The Noise each measured row is judged with: the seed spread pooled over this table's rows (`errors`,
    row -> its seed errors), else over the store's other configs of the row's (dataset, model) (`families`;
    `related()`: the seed errors of the store's configs by (dataset, model), called only then), else the prior."""
    own = noise(list(errors.values()), "this table's rows with >= 2 seeds")
    if own.measured:
        return {i: own for i in errors}
    pools: dict[tuple[str, str], list[list[float]]] | None = None
    out: dict[int, Noise] = {}
    for i, found in errors.items():
        if not found:
            continue
        family = families[i]
        if pools is None:
            pools = related()
        groups = pools.get(family, [])
        configs = f"{len(groups)} config{'s' if len(groups) != 1 else ''}"
        where = f"{configs} of {family[0]} / {family[1]} elsewhere in the store"
        out[i] = noise(groups, where)
    return out


def noise_legend(used: dict[int, Noise]) -> str:
    """Which r judged which rows (rows numbered from 1)."""
    by: dict[Noise, list[int]] = {}
    for i, n in sorted(used.items()):
        by.setdefault(n, []).append(i + 1)
    if len(by) == 1:
        return f"This table's sd: {next(iter(by)).describe()}"
    return "This table's sd: " + "; ".join(
        f"rows {', '.join(map(str, rows))}: {n.describe()}" for n, rows in by.items()
    )
