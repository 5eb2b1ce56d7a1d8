"""Figures from runs, for a paper: error against each varied key, a parallel-coordinates view, learning
curves, ASHA's stops. Each is written as a PNG (150 dpi) and an SVG beside it.

Every trial is named by its config label. Trials a scheduler stopped early are drawn where they
stopped (hollow markers, one shape per stopping epoch; dashed lines), never dropped: leaving them out
makes a sweep read "higher lr is always better" when the high-lr trials were simply the ones that
survived. A key is drawn on its sampler's scale (`scales.py`: log only for a log sampler); sampled
values get a few ticks and no line through them, a grid's values a tick each and a line through the
median. Each figure is built from a plain data function (`error_points`, `parallel_data`, `curve_data`)
that the tests check, then drawn on a `matplotlib.figure.Figure` (the Agg canvas, no pyplot state), so
it works headless and in threads.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.analysis import scales as S
from sweeplab.analysis.runs import LoggedTrial, history
from sweeplab.analysis.tables import METRIC, completed
from sweeplab.core.fmt import number

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

_MAX_LEGEND = 12  # beyond this a legend hides the curves: colour by the error instead
_MAX_GROUPS = 8  # a key with more values than this does not colour the points
_MAX_PANELS = 6  # error-vs-key panels in one figure
_MAX_AXES = 8  # axes of the parallel-coordinates view (the metric's included)
DPI = 150  # a 6.4-inch figure is 960 px wide
STOPPED_MARKERS = "osD^vP"  # one hollow shape per epoch a scheduler stopped trials at
ERROR = f"{METRIC} (%)"


@dataclass
class Point:
    """One trial in the error-vs-key figure: finished (filled) or stopped early (hollow, at its last epoch)."""

    x: float
    error: float  # its last logged val/error
    label: str
    epoch: int
    stopped: bool
    group: str  # "weight_decay=0.0005": the value of the key that colours it, "" when none does


def figure(width: float = 6.4, height: float = 4.2) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save(fig: Figure, path: Path) -> Path:
    """The PNG at `path` and an SVG beside it: its text kept as text (a journal's font, an edit in
    Inkscape), no date in it (the same figure, the same file)."""
    import matplotlib as mpl

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    with mpl.rc_context({"svg.fonttype": "none"}):
        fig.savefig(path.with_suffix(".svg"), format="svg", metadata={"Date": None})
    return path


def _number(trial: LoggedTrial, key: str) -> float | None:
    value = trial.value(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def completed_all(trials: list[LoggedTrial]) -> list[LoggedTrial]:
    """Finished full-length trials, one per (config, seed): `completed` applied per distinct config."""
    groups: dict[tuple, list[LoggedTrial]] = {}
    for t in trials:
        key = tuple(sorted((k, v) for k, v in t.params.items() if k != "train.seed"))
        groups.setdefault(key, []).append(t)
    return [t for g in groups.values() for t in completed(g)]


def shown(trials: list[LoggedTrial]) -> list[LoggedTrial]:
    """The trials a figure of final errors draws: the finished ones (as tables count them) and those a
    scheduler stopped, at their last logged val/error; failed and unfinished ones are left out."""
    stopped = [t for t in trials if t.stopped_early and t.status != "FAILED" and METRIC in t.metrics]
    return completed_all(trials) + stopped


def numeric_keys(trials: list[LoggedTrial], keys: list[str]) -> list[str]:
    """The keys whose values are numbers in every trial that has them."""
    return [k for k in keys if k != "variant" and all(_number(t, k) is not None for t in trials if k in t.params)]


def scale_of(trials: list[LoggedTrial], key: str, known: dict[str, S.Scale]) -> S.Scale:
    """The key's scale: its sampler's (`known`), else guessed from its values."""
    return known.get(key) or S.guess([v for t in trials if (v := _number(t, key)) is not None])


def _colour_key(trials: list[LoggedTrial], key: str, keys: list[str]) -> str:
    """The first other varied key with a few values, which colours the points ('' when none fits)."""
    for other in keys:
        if other != key and 2 <= len({str(t.value(other)) for t in trials}) <= _MAX_GROUPS:
            return other
    return ""


def _group(trial: LoggedTrial, key: str) -> str:
    if not key:
        return ""
    value = trial.value(key)
    return f"{_short(key)}={number(value, 4) if isinstance(value, (int, float)) else value}"


def error_points(trials: list[LoggedTrial], key: str, keys: list[str] | None = None) -> list[Point]:
    """The points of val/error against `key`: every finished or stopped trial with a number there,
    coloured by another of `keys` (the varied keys) when one has a few values."""
    drawn = [t for t in shown(trials) if _number(t, key) is not None]
    colour = _colour_key(drawn, key, keys or [])
    return [
        Point(_number(t, key) or 0.0, t.metrics[METRIC], t.label, t.epochs, t.stopped_early, _group(t, colour))
        for t in drawn
    ]


def _x_axis(ax: Axes, key: str, xs: list[float], scale: S.Scale) -> None:
    """The key's axis on its scale: a grid's values ticked one by one (as plain numbers), sampled values
    a few round ticks."""
    from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

    values = sorted(set(xs))
    if S.is_log(scale, values):
        ax.set_xscale("log")
    if scale == "values" and len(values) <= 10:
        ax.set_xticks(values, [number(x, 4) for x in values])
        ax.xaxis.set_minor_formatter(NullFormatter())
    elif ax.get_xscale() == "linear":
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.xaxis.set_major_formatter(ScalarFormatter(useMathText=True))
    ax.set_xlabel(f"{key} ({'log' if ax.get_xscale() == 'log' else 'linear'} scale)" if scale != "values" else key)


def _panel(ax: Axes, key: str, points: list[Point], scale: S.Scale, colours: dict[str, str]) -> None:
    """One key's panel: per colour group, filled finished points (joined by their median per value for a
    grid), hollow stopped points, one shape per epoch they stopped at."""
    stops = sorted({p.epoch for p in points if p.stopped})
    for group, colour in colours.items():
        done = [p for p in points if p.group == group and not p.stopped]
        xs = sorted({p.x for p in done})
        if xs and scale == "values":
            med = [statistics.median(p.error for p in done if p.x == x) for x in xs]
            ax.plot(xs, med, color=colour, alpha=0.6, zorder=2)
        ax.scatter([p.x for p in done], [p.error for p in done], color=colour, s=22, zorder=3)
        for epoch, marker in zip(stops, STOPPED_MARKERS * 4):
            at = [p for p in points if p.group == group and p.stopped and p.epoch == epoch]
            ax.scatter(
                [p.x for p in at], [p.error for p in at], marker=marker, facecolors="none", edgecolors=colour, s=26
            )
    _x_axis(ax, key, [p.x for p in points], scale)
    ax.set_ylabel(f"{ERROR} at its last epoch")
    ax.grid(alpha=0.25)


def _mark(marker: str, colour: str = "0.2", filled: bool = True) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], marker=marker, linestyle="", color=colour, markerfacecolor=colour if filled else "none")


def _legends(fig: Figure, ax: Axes, points: list[Point], colours: dict[str, str]) -> None:
    """The panel's colour groups beside it; below the figure (once), what filled and each hollow shape mean."""
    if any(colours):
        key = next(g for g in colours if g).split("=")[0]
        ax.legend(
            [_mark("o", c) for c in colours.values()],
            [g.split("=", 1)[1] for g in colours],
            title=key,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            fontsize="x-small",
            title_fontsize="small",
        )
    if ax is not fig.axes[0]:
        return
    stops = sorted({p.epoch for p in points if p.stopped})
    handles = [(_mark("o"), "ran to the end")]
    handles += [(_mark(m, filled=False), f"stopped early at epoch {e}") for e, m in zip(stops, STOPPED_MARKERS * 4)]
    fig.legend([h for h, _ in handles], [t for _, t in handles], loc="outside lower center", ncols=4)


def _sort_value(group: str) -> tuple[int, float, str]:
    """Colour groups in the order of their values: 'lr=0.05' before 'lr=0.1' before 'lr=0.4'."""
    text = group.split("=", 1)[-1]
    try:
        return 0, float(text), ""
    except ValueError:
        return 1, 0.0, text


def error_vs_keys(
    trials: list[LoggedTrial], keys: list[str], path: Path, title: str = "", known: dict[str, S.Scale] | None = None
) -> Path | None:
    """val/error against each varied numeric key, one panel per key, on its sampler's scale (`known`):
    filled = ran to the end, hollow = stopped early, at the epoch it stopped; None without one."""
    panels = [(k, error_points(trials, k, keys)) for k in numeric_keys(trials, keys)[:_MAX_PANELS]]
    panels = [(k, p) for k, p in panels if len({q.x for q in p}) > 1]
    if not panels:
        return None
    import matplotlib as mpl

    cycle = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    cols = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / cols)
    fig = figure(7.2 if cols == 1 else 12.0, 3.6 * rows + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    every = [q for _, points in panels for q in points]
    for ax, (key, points) in zip(axes, panels):
        groups = sorted({q.group for q in points}, key=lambda g: (g.split("=")[0], _sort_value(g)))
        colours = {g: cycle[i % len(cycle)] for i, g in enumerate(groups)}
        _panel(ax, key, points, scale_of(trials, key, known or {}), colours)
        _legends(fig, ax, every, colours)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title or "error vs each varied key")
    return save(fig, path)


@dataclass
class Axis:
    """One vertical axis of the parallel-coordinates view: its key and tick (position, text) pairs."""

    key: str
    ticks: list[tuple[float, str]]


def _scale(values: list[Any], scale: S.Scale | None = None) -> tuple[Any, list[tuple[float, str]]]:
    """A function placing a value on [0, 1] (on the key's scale; categories evenly spaced) and its ticks:
    each value of a short grid, else a few round numbers inside the range."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) == len(values):
        distinct = sorted(set(nums))
        scale = scale or S.guess(nums)
        log = S.is_log(scale, distinct)
        f = math.log if log else float
        lo, hi = f(min(nums)), f(max(nums))

        def place(v: Any) -> float:
            return 0.5 if hi == lo else (f(v) - lo) / (hi - lo)

        marks = distinct if scale == "values" and len(distinct) <= 8 else _round_ticks(min(nums), max(nums), log)
        return place, [(place(m), number(float(m), 3)) for m in marks]
    cats = sorted({str(v) for v in values})
    spots = {c: (0.5 if len(cats) == 1 else i / (len(cats) - 1)) for i, c in enumerate(cats)}
    return (lambda v: spots[str(v)]), [(spots[c], c) for c in cats]


def _round_ticks(lo: float, hi: float, log: bool) -> list[float]:
    """A few round numbers across [lo, hi] (a little beyond its ends allowed): 1-2-5 per decade on a
    log axis, thinned to the decades when that is too many; MaxNLocator's on a linear one."""
    if hi <= lo:
        return [lo]
    if not log:
        from matplotlib.ticker import MaxNLocator

        slack = (hi - lo) * 0.05
        return [float(m) for m in MaxNLocator(5).tick_values(lo, hi) if lo - slack <= m <= hi + slack]
    slack = (math.log10(hi) - math.log10(lo)) * 0.05
    inside = [
        m * 10.0**e
        for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
        for m in (1, 2, 5)
        if math.log10(lo) - slack <= math.log10(m) + e <= math.log10(hi) + slack
    ]
    decades = [m for m in inside if f"{m:e}".startswith("1.")]
    if len(inside) < 2:  # less than a decade: round numbers of a linear axis, placed on the log one
        return _round_ticks(lo, hi, False)
    return inside if len(inside) <= 6 or len(decades) < 2 else decades


def parallel_data(
    trials: list[LoggedTrial], keys: list[str], known: dict[str, S.Scale] | None = None
) -> tuple[list[Axis], list[tuple[LoggedTrial, list[float]]]]:
    """The axes (the varied keys, then val/error) and each shown trial's positions on them, in [0, 1]."""
    drawn = [t for t in shown(trials) if all(k == "variant" or k in t.params for k in keys)]
    if not drawn:
        return [], []
    columns = [*keys[: _MAX_AXES - 1], METRIC]
    values = {k: [t.metrics[METRIC] if k == METRIC else t.value(k) for t in drawn] for k in columns}
    known = {**(known or {}), METRIC: "linear"}
    placed = {k: _scale(values[k], known.get(k)) for k in columns}
    axes = [Axis(k, placed[k][1]) for k in columns]
    lines = [(t, [placed[k][0](values[k][i]) for k in columns]) for i, t in enumerate(drawn)]
    return axes, lines


def parallel(
    trials: list[LoggedTrial], keys: list[str], path: Path, title: str = "", known: dict[str, S.Scale] | None = None
) -> Path | None:
    """A parallel-coordinates view: one line per trial across the varied keys to val/error, coloured by
    the error (dashed: stopped early); None with fewer than two varied keys or two trials."""
    if len(keys) < 2:
        return None
    axes, lines = parallel_data(trials, keys, known)
    if len(lines) < 2:
        return None
    import matplotlib as mpl

    errors = [t.metrics[METRIC] for t, _ in lines]
    norm = mpl.colors.Normalize(min(errors), max(errors))
    cmap = mpl.colormaps["viridis_r"]  # bright yellow = low error, the trials to look at
    fig = figure(max(6.4, 1.9 * len(axes) + 1.5), 4.6)
    ax = fig.subplots()
    xs = list(range(len(axes)))
    for t, ys in sorted(lines, key=lambda line: -line[0].metrics[METRIC]):  # best drawn last, on top
        ax.plot(
            xs,
            ys,
            color=cmap(norm(t.metrics[METRIC])),
            linestyle="--" if t.stopped_early else "-",
            alpha=0.45 if t.stopped_early else 0.9,
            linewidth=1.1,
        )
    box = {"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 0.6}
    for x, axis in enumerate(axes):
        ax.axvline(x, color="0.5", linewidth=0.8)
        for y, text in axis.ticks:
            ax.plot([x - 0.03, x], [y, y], color="0.5", linewidth=0.8)
            ax.text(x - 0.04, y, text, fontsize=8, va="center", ha="right", color="0.2", bbox=box, zorder=5)
    # the key's section above its name: two short lines never run into the next axis's label
    ax.set_xticks(xs, [a.key.replace(".", ".\n", 1) for a in axes], fontsize="small")
    ax.set_yticks([])
    ax.set_xlim(-0.45, len(axes) - 0.8)
    ax.set_ylim(-0.04, 1.04)
    ax.spines[:].set_visible(False)
    ax.tick_params(axis="x", length=0)
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"{ERROR} at its last epoch")
    ax.set_title(f"{title or 'varied keys against the error'}\n(dashed: stopped early, at its last epoch)")
    return save(fig, path)


def curve_data(c: MlflowClient | None, trials: list[LoggedTrial]) -> list[tuple[str, list[tuple[int, float]], bool]]:
    """(legend label, val/error per epoch, dashed) of every trial with a history, sorted by label: the
    config label, with "(stopped)" or "(failed)" after it; dashed = a scheduler stopped it early."""
    out = []
    for t in trials if c is not None else []:
        points = history(c, t.run_id, METRIC)
        if points:
            end = " (stopped)" if t.stopped_early else " (failed)" if t.status == "FAILED" else ""
            out.append((t.label + end, points, t.stopped_early))
    return sorted(out, key=lambda curve: curve[0])
