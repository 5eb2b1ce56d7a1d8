"""PNG figures from runs: error against each varied key, a parallel-coordinates view, learning curves,
ASHA's stops.

Every trial is named by its config label. Trials a scheduler stopped early are drawn where they
stopped (hollow markers, dashed lines), never dropped: leaving them out makes a sweep read "higher lr is
always better" when the high-lr trials were simply the ones that survived. Each figure is built from a
plain data function (`error_points`, `parallel_data`) that the tests check, then drawn on a
`matplotlib.figure.Figure` (the Agg canvas, no pyplot state), so it works headless and in threads.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.analysis.runs import LoggedTrial, history
from sweeplab.analysis.tables import METRIC, completed
from sweeplab.core.fmt import number

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

_MAX_LEGEND = 12  # beyond this a legend hides the curves
_MAX_GROUPS = 8  # a key with more values than this does not colour the points
_MAX_PANELS = 6  # error-vs-key panels in one figure
_MAX_AXES = 8  # axes of the parallel-coordinates view (the metric's included)


@dataclass
class Point:
    """One trial in the error-vs-key figure: finished (filled) or stopped early (hollow, at its last epoch)."""

    x: float
    error: float  # its last logged val/error
    label: str
    epoch: int
    stopped: bool
    group: str  # "weight_decay=0.0005": the value of the key that colours it, "" when none does


def _figure(width: float = 6.4, height: float = 4.2) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
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


def _geometric(values: list[float]) -> bool:
    """A grid to read on a log axis: all positive, spanning a factor of 8 or more."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 8


def _panel(ax: Axes, key: str, points: list[Point]) -> None:
    """One key's panel: per colour group, filled finished points joined by their median per value,
    hollow stopped points marked with the epoch they stopped at."""
    import matplotlib as mpl

    colours = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, group in enumerate(sorted({p.group for p in points})):
        colour = colours[i % len(colours)]
        done = [p for p in points if p.group == group and not p.stopped]
        stopped = [p for p in points if p.group == group and p.stopped]
        xs = sorted({p.x for p in done})
        if xs:
            med = [statistics.median(p.error for p in done if p.x == x) for x in xs]
            ax.plot(xs, med, color=colour, alpha=0.6, label=group or None)
            ax.scatter([p.x for p in done], [p.error for p in done], color=colour, zorder=3)
        if stopped:
            ax.scatter(
                [p.x for p in stopped],
                [p.error for p in stopped],
                facecolors="none",
                edgecolors=colour,
                linewidths=1.5,
                zorder=3,
                label=None if xs else group or None,
            )
            for p in stopped:
                ax.annotate(f"ep {p.epoch}", (p.x, p.error), xytext=(4, 3), textcoords="offset points", fontsize=7)
    xs = sorted({p.x for p in points})
    if _geometric(xs):
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")  # lr-like grids are geometric; tick the values that were run, as plain numbers
        if len(xs) <= 10:
            ax.set_xticks(xs)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
    elif len(xs) <= 10:
        ax.set_xticks(xs, [number(x, 4) for x in xs])
    ax.set(xlabel=key, ylabel=f"{METRIC} (%) at its last epoch")


def error_vs_keys(trials: list[LoggedTrial], keys: list[str], path: Path, title: str = "") -> Path | None:
    """val/error against each varied numeric key, one panel per key: filled = ran to the end (a line
    through the median over seeds), hollow = stopped early, at the epoch it stopped; None without one."""
    panels = [(k, error_points(trials, k, keys)) for k in numeric_keys(trials, keys)[:_MAX_PANELS]]
    panels = [(k, p) for k, p in panels if len({q.x for q in p}) > 1]
    if not panels:
        return None
    cols = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / cols)
    fig = _figure(6.4 * cols, 3.8 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (key, points) in zip(axes, panels):
        _panel(ax, key, points)
        if any(p.group for p in points):
            ax.legend(fontsize="x-small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    stopped = any(q.stopped for _, points in panels for q in points)
    how = "filled: ran to the end" + ("; hollow: stopped early, at the epoch it stopped" if stopped else "")
    fig.suptitle(f"{title or 'error vs each varied key'}\n({how})", fontsize="medium")
    return _save(fig, path)


@dataclass
class Axis:
    """One vertical axis of the parallel-coordinates view: its key and tick (position, text) pairs."""

    key: str
    ticks: list[tuple[float, str]]


def _scale(values: list[Any]) -> tuple[Any, list[tuple[float, str]]]:
    """A function placing a value on [0, 1] (log for geometric grids, evenly spaced categories) and its ticks."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) == len(values):
        log = _geometric(nums)
        f = math.log if log else float
        lo, hi = f(min(nums)), f(max(nums))

        def place(v: Any) -> float:
            return 0.5 if hi == lo else (f(v) - lo) / (hi - lo)

        distinct = sorted(set(nums))
        marks = distinct if len(distinct) <= 8 else [min(nums) + (max(nums) - min(nums)) * i / 4 for i in range(5)]
        if log and len(distinct) > 8:
            marks = [math.exp(lo + (hi - lo) * i / 4) for i in range(5)]
        return place, [(place(m), number(m, 4)) for m in marks]
    cats = sorted({str(v) for v in values})
    spots = {c: (0.5 if len(cats) == 1 else i / (len(cats) - 1)) for i, c in enumerate(cats)}
    return (lambda v: spots[str(v)]), [(spots[c], c) for c in cats]


def parallel_data(
    trials: list[LoggedTrial], keys: list[str]
) -> tuple[list[Axis], list[tuple[LoggedTrial, list[float]]]]:
    """The axes (the varied keys, then val/error) and each shown trial's positions on them, in [0, 1]."""
    drawn = [t for t in shown(trials) if all(k == "variant" or k in t.params for k in keys)]
    if not drawn:
        return [], []
    columns = [*keys[: _MAX_AXES - 1], METRIC]
    values = {k: [t.metrics[METRIC] if k == METRIC else t.value(k) for t in drawn] for k in columns}
    scales = {k: _scale(values[k]) for k in columns}
    axes = [Axis(k, scales[k][1]) for k in columns]
    lines = [(t, [scales[k][0](values[k][i]) for k in columns]) for i, t in enumerate(drawn)]
    return axes, lines


def parallel(trials: list[LoggedTrial], keys: list[str], path: Path, title: str = "") -> Path | None:
    """A parallel-coordinates view: one line per trial across the varied keys to val/error, coloured by
    the error (dashed: stopped early); None with fewer than two varied keys or two trials."""
    if len(keys) < 2:
        return None
    axes, lines = parallel_data(trials, keys)
    if len(lines) < 2:
        return None
    import matplotlib as mpl

    errors = [t.metrics[METRIC] for t, _ in lines]
    norm = mpl.colors.Normalize(min(errors), max(errors))
    cmap = mpl.colormaps["viridis_r"]  # bright yellow = low error, the trials to look at
    fig = _figure(max(6.4, 1.6 * len(axes) + 1.5), 4.6)
    ax = fig.subplots()
    xs = list(range(len(axes)))
    for t, ys in sorted(lines, key=lambda line: -line[0].metrics[METRIC]):  # best drawn last, on top
        ax.plot(
            xs,
            ys,
            color=cmap(norm(t.metrics[METRIC])),
            linestyle="--" if t.stopped_early else "-",
            alpha=0.5 if t.stopped_early else 0.9,
            linewidth=1.2,
        )
    for x, axis in enumerate(axes):
        ax.axvline(x, color="0.6", linewidth=0.8)
        for y, text in axis.ticks:
            ax.text(x, y, f" {text}", fontsize=7, va="center", ha="left", color="0.25")
    ax.set_xticks(xs, [a.key for a in axes], fontsize="small", rotation=15)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(axes) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"{METRIC} (%)")
    ax.set_title(f"{title or 'varied keys against the error'}\n(dashed: stopped early, at its last epoch)")
    return _save(fig, path)


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


def learning_curves(c: MlflowClient | None, trials: list[LoggedTrial], path: Path, title: str = "") -> Path | None:
    """val/error per epoch of every trial, named by its config label; dashed lines are trials a scheduler
    stopped early."""
    curves = curve_data(c, trials)
    if not curves:
        return None
    fig = _figure()
    ax = fig.subplots()
    for label, points, dashed in curves:
        ax.plot(
            [s for s, _ in points],
            [v for _, v in points],
            linestyle="--" if dashed else "-",
            marker="." if len(points) < 20 else None,
            label=label,
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="val/error (%)", title=title or "learning curves")
    if len(curves) <= _MAX_LEGEND:
        ax.legend(fontsize="x-small")
    return _save(fig, path)


def scheduler_stops(trials: list[LoggedTrial], path: Path, title: str = "") -> Path | None:
    """Epochs each trial ran, sorted by final error: red bars are trials stopped early (ASHA), None if none were."""
    ran = [t for t in trials if t.epochs > 0]
    if not any(t.stopped_early for t in ran):
        return None
    ran.sort(key=lambda t: (-t.epochs, t.metrics.get(METRIC, float("inf"))))
    colors = {True: "tab:red", False: "tab:green"}
    fig = _figure(height=max(2.5, 0.25 * len(ran) + 1.2))
    ax = fig.subplots()
    ax.barh(
        range(len(ran)),
        [t.epochs for t in ran],
        color=[("tab:gray" if t.status == "FAILED" else colors[t.stopped_early]) for t in ran],
    )
    for y, t in enumerate(ran):
        if METRIC in t.metrics:
            ax.text(t.epochs, y, f" {t.metrics[METRIC]:.2f}%", va="center", fontsize="x-small")
    ax.set_yticks(range(len(ran)), [t.label for t in ran], fontsize="x-small")
    ax.invert_yaxis()
    ax.set(
        xlabel="epochs run (red: stopped early, green: ran to the end, gray: failed)",
        title=title or "which trials the scheduler stopped, and when",
    )
    return _save(fig, path)
