"""Figures over epochs: every trial's learning curve, and how long each trial ran before a scheduler
stopped it (PNG and SVG, like `figures.py`, whose helpers these share)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sweeplab.analysis.figures import _MAX_LEGEND, ERROR, curve_data, figure, save
from sweeplab.analysis.runs import LoggedTrial
from sweeplab.analysis.tables import METRIC

if TYPE_CHECKING:
    from mlflow import MlflowClient


def learning_curves(c: MlflowClient | None, trials: list[LoggedTrial], path: Path, title: str = "") -> Path | None:
    """val/error per epoch of every trial; dashed lines are trials a scheduler stopped early. A few
    trials are named in a legend; many (a sampled sweep) are coloured by their last error instead."""
    curves = curve_data(c, trials)
    if not curves:
        return None
    import matplotlib as mpl
    from matplotlib.ticker import MaxNLocator

    named = len(curves) <= _MAX_LEGEND
    fig = figure(6.4 if not named else 6.4 + 0.045 * max(len(label) for label, _, _ in curves), 4.2)
    ax = fig.subplots()
    last = [points[-1][1] for _, points, _ in curves]
    norm = mpl.colors.Normalize(min(last), max(last))
    cmap = mpl.colormaps["viridis_r"]  # as in the parallel view: yellow = low error
    for (label, points, dashed), end in sorted(zip(curves, last), key=lambda c: -c[1]):  # best drawn last
        ax.plot(
            [s for s, _ in points],
            [v for _, v in points],
            linestyle="--" if dashed else "-",
            marker="." if len(points) < 20 and named else None,
            color=None if named else cmap(norm(end)),
            alpha=1.0 if named else 0.8,
            linewidth=1.2,
            label=label,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    how = "" if named else f"\n({len(curves)} trials, coloured by their last error; dashed: stopped early)"
    ax.set(xlabel="epoch", ylabel=ERROR, title=(title or "learning curves") + how)
    ax.grid(alpha=0.25)
    if named:
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i])
        fig.legend(
            [handles[i] for i in order], [labels[i] for i in order], fontsize="x-small", loc="outside right upper"
        )
    else:
        fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"{ERROR} at its last epoch")
    return save(fig, path)


def scheduler_stops(trials: list[LoggedTrial], path: Path, title: str = "") -> Path | None:
    """Epochs each trial ran, sorted by final error: red bars are trials stopped early (ASHA), None if none were."""
    ran = [t for t in trials if t.epochs > 0]
    if not any(t.stopped_early for t in ran):
        return None
    from matplotlib.patches import Patch

    ran.sort(key=lambda t: (-t.epochs, t.metrics.get(METRIC, float("inf"))))
    colour = {"ran to the end": "tab:green", "stopped early": "tab:red", "failed": "tab:gray"}

    def kind(t: LoggedTrial) -> str:
        return "failed" if t.status == "FAILED" else "stopped early" if t.stopped_early else "ran to the end"

    longest = max(len(t.label) for t in ran)  # the labels get the room they need, the bars keep theirs
    fig = figure(4.5 + 0.065 * longest, max(2.5, 0.22 * len(ran) + 1.4))
    ax = fig.subplots()
    ax.barh(range(len(ran)), [t.epochs for t in ran], color=[colour[kind(t)] for t in ran])
    for y, t in enumerate(ran):
        if METRIC in t.metrics:
            ax.text(t.epochs, y, f" {t.metrics[METRIC]:.2f}%", va="center", fontsize=7.5)
    ax.set_yticks(range(len(ran)), [t.label for t in ran], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(t.epochs for t in ran) * 1.18)  # room for the error beside the longest bar
    ax.set(xlabel=f"epochs run (the number: {METRIC} at its last epoch)", title=title or "early stops")
    shown = [k for k in colour if any(kind(t) == k for t in ran)]
    fig.legend([Patch(color=colour[k]) for k in shown], shown, fontsize="small", loc="outside lower center", ncols=3)
    return save(fig, path)
