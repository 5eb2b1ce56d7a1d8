"""PNG figures from runs: error against lr per batch size, learning curves, ASHA's stops.

Figures are drawn on `matplotlib.figure.Figure` objects (the Agg canvas, no pyplot state), so
they work headless and in threads.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from sweeplab.analysis.runs import LoggedTrial, history
from sweeplab.analysis.tables import METRIC, completed

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

_MAX_LEGEND = 12  # beyond this a legend hides the curves


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


def completed_all(trials: list[LoggedTrial]) -> list[LoggedTrial]:
    """Finished full-length trials, one per (config, seed): `completed` applied per distinct config."""
    groups: dict[tuple, list[LoggedTrial]] = {}
    for t in trials:
        key = tuple(sorted((k, v) for k, v in t.params.items() if k != "train.seed"))
        groups.setdefault(key, []).append(t)
    return [t for g in groups.values() for t in completed(g)]


def error_vs_lr(trials: list[LoggedTrial], path: Path, title: str = "") -> Path | None:
    """Final val/error against initial lr (log axis), one line per batch size (and weight decay if it varies)."""
    lr_of = {t.run_id: lr for t in completed_all(trials) if (lr := _number(t, "optim.lr")) is not None}
    done = [t for t in completed_all(trials) if t.run_id in lr_of]
    if not done:
        return None
    wds = {t.params.get("optim.weight_decay") for t in done}
    series: dict[str, dict[float, list[float]]] = {}
    for t in done:
        label = f"batch {t.params.get('data.batch_size', '?')}"
        if len(wds) > 1:
            label += f", wd {t.params.get('optim.weight_decay')}"
        series.setdefault(label, {}).setdefault(lr_of[t.run_id], []).append(t.metrics[METRIC])
    fig = _figure()
    ax = fig.subplots()
    for label, points in sorted(series.items()):
        lrs = sorted(points)
        med = [statistics.median(points[x]) for x in lrs]
        lo = [m - min(points[x]) for m, x in zip(med, lrs)]
        hi = [max(points[x]) - m for m, x in zip(med, lrs)]
        ax.errorbar(lrs, med, yerr=[lo, hi], marker="o", capsize=3, label=label)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")  # lr grids are geometric; tick the lrs that were run, as plain numbers
    ax.set_xticks(sorted({x for points in series.values() for x in points}))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="initial lr", ylabel="test error (%) at last epoch, median over seeds", title=title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def learning_curves(c: MlflowClient | None, trials: list[LoggedTrial], path: Path, title: str = "") -> Path | None:
    """val/error per epoch of every trial; dashed lines are trials a scheduler stopped early."""
    curves = [(t, history(c, t.run_id, METRIC)) for t in trials] if c is not None else []
    curves = [(t, h) for t, h in curves if h]
    if not curves:
        return None
    fig = _figure()
    ax = fig.subplots()
    for t, points in curves:
        ax.plot(
            [s for s, _ in points],
            [v for _, v in points],
            linestyle="--" if t.stopped_early else "-",
            marker="." if len(points) < 20 else None,
            label=t.trial_id,
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
    ax.set_yticks(range(len(ran)), [t.trial_id for t in ran], fontsize="x-small")
    ax.invert_yaxis()
    ax.set(
        xlabel="epochs run (red: stopped early, green: ran to the end, gray: failed)",
        title=title or "which trials the scheduler stopped, and when",
    )
    return _save(fig, path)
