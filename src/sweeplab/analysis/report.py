"""`sweeplab report`: every table and figure with runs behind it, in one folder with an index page."""

from __future__ import annotations

import html
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sweeplab import reference
from sweeplab.analysis import figures, runs, tables
from sweeplab.analysis.runs import AXES
from sweeplab.analysis.tables import METRIC, Built

if TYPE_CHECKING:
    from mlflow import MlflowClient

CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
    "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
)


def slug(name: str) -> str:
    """A file-name-safe version of a table or sweep name."""
    return re.sub(r"[^\w.-]+", "_", name)


def write_table(
    c: MlflowClient | None, built: Built, out: Path, formats: tuple[str, ...] = ("md", "csv", "html")
) -> list[Path]:
    """The table in each format plus its figures under `out`; returns the figures written."""
    out.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        (out / f"{slug(built.id)}.{fmt}").write_text(tables.render(built, fmt))
    behind = [t for row in built.trials.values() for t in row]
    name, label = slug(built.id), built.id + (tables.SMOKE_TITLE if built.smoke else "")
    figs = [
        figures.learning_curves(c, behind, out / f"{name}_curves.png", f"{label}: learning curves"),
        figures.scheduler_stops(behind, out / f"{name}_stops.png", f"{label}: early stops"),
    ]
    if "initial lr" in built.columns:  # the bs_lr tables and the quickstart
        figs.insert(0, figures.error_vs_lr(behind, out / f"{name}_lr.png", f"{label}: error vs lr"))
    return [f for f in figs if f is not None]


def _sweep_summary(trials: list[runs.LoggedTrial], top: int = 5, smoke: bool = False) -> Built:
    """A sweep's best trials (finished or not) as a small table."""
    scored = [t for t in trials if METRIC in t.metrics and not math.isnan(t.metrics[METRIC])]
    ranked = sorted(scored, key=lambda t: t.metrics[METRIC])[:top]
    columns = ["trial", METRIC, "epochs", "status", "stopped early", *AXES]
    rows = [
        [
            t.trial_id,
            f"{t.metrics[METRIC]:.2f}",
            str(t.epochs),
            t.status,
            str(t.stopped_early).lower(),
            *(t.params.get(a, "") for a in AXES),
        ]
        for t in ranked
    ]
    states = {s: sum(t.status == s for t in trials) for s in sorted({t.status for t in trials})}
    note = (
        f"{len(trials)} trials ({', '.join(f'{n} {s}' for s, n in states.items())}), "
        f"{len({t.launch for t in trials})} launch(es); best {len(rows)} by {METRIC}"
    )
    return Built(trials[0].experiment, "best trials" + (tables.SMOKE_TITLE if smoke else ""), columns, rows, note)


def report(c: MlflowClient | None, out: Path, uri: str, smoke: bool = False) -> Path:
    """Write every table with runs, per-sweep summaries and figures, and index.md / index.html: of the
    full runs only, or with `smoke` of the smoke runs only (every title says so)."""
    out.mkdir(parents=True, exist_ok=True)
    everything = runs.kept(runs.all_trials(c), smoke) if c is not None else []
    label = tables.SMOKE_TITLE if smoke else ""
    sections: list[tuple[Built, list[Path]]] = []
    for tid, table in reference.tables(smoke).items():
        mine = [t for t in everything if tid in runs.tables_of(t)]
        if mine:
            built = tables.build(c, table, mine, smoke=smoke)
            sections.append((built, write_table(c, built, out)))
    sweeps: list[tuple[Built, list[Path]]] = []
    for name in sorted({t.experiment for t in everything}):
        mine = [t for t in everything if t.experiment == name]
        base = out / f"sweep_{slug(name)}"
        figs = [
            figures.learning_curves(
                c, mine, base.with_name(base.name + "_curves.png"), f"{name}{label}: learning curves"
            ),
            figures.scheduler_stops(mine, base.with_name(base.name + "_stops.png"), f"{name}{label}: early stops"),
        ]
        sweeps.append((_sweep_summary(mine, smoke=smoke), [f for f in figs if f is not None]))
    _index(out, uri, sections, sweeps, label)
    return out


def _index(
    out: Path,
    uri: str,
    sections: list[tuple[Built, list[Path]]],
    sweeps: list[tuple[Built, list[Path]]],
    label: str = "",
) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    title = f"sweeplab report{label}"
    md = [f"# {title}", "", f"Generated {stamp} from `{uri}`.", "", f"## Tables{label}", ""]
    page = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>Generated {stamp} from <code>{html.escape(uri)}</code>.</p><h2>Tables{html.escape(label)}</h2>",
    ]
    if not sections:
        md.append("No table has runs behind it yet.")
        page.append("<p>No table has runs behind it yet.</p>")
    else:  # the verdict line of every table first, then the tables
        md += [f"- {b.id}: {b.summary}" for b, _ in sections] + [""]
        page.append(
            "<ul>"
            + "".join(
                f"<li><a href='#{html.escape(b.id)}'>{html.escape(b.id)}</a>: {html.escape(b.summary)}</li>"
                for b, _ in sections
            )
            + "</ul>"
        )
    for built, figs in sections:
        name = slug(built.id)
        md += (
            [
                tables.render(built, "md", level=3),
                f"Files: [{name}.md]({name}.md), [{name}.csv]({name}.csv), [{name}.html]({name}.html)",
                "",
            ]
            + [f"![{f.stem}]({f.name})" for f in figs]
            + [""]
        )
        page += [tables.render(built, "html", level=3)] + [f"<img src='{f.name}' alt='{f.stem}'>" for f in figs]
    md += [f"## Sweeps{label}", ""]
    page.append(f"<h2>Sweeps{html.escape(label)}</h2>")
    for built, figs in sweeps:
        md += [tables.render(built, "md", level=3)] + [f"![{f.stem}]({f.name})" for f in figs] + [""]
        page += [tables.render(built, "html", level=3)] + [f"<img src='{f.name}' alt='{f.stem}'>" for f in figs]
    (out / "index.md").write_text("\n".join(md) + "\n")
    (out / "index.html").write_text("\n".join(page) + "\n</body></html>\n")
