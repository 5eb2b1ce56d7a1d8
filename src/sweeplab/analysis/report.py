"""`sweeplab report`: every table and figure with runs behind it, in one folder with an index page."""

from __future__ import annotations

import html
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sweeplab import reference
from sweeplab.analysis import curves, figures, runs, scales, tables
from sweeplab.analysis.tables import METRIC, Built
from sweeplab.core.fmt import number

if TYPE_CHECKING:
    from mlflow import MlflowClient

CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
    "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%;height:auto}"
)


def slug(name: str) -> str:
    """A file-name-safe version of a table or sweep name."""
    return re.sub(r"[^\w.-]+", "_", name)


Drawn = dict[tuple[str, frozenset[str]], Path]  # (figure kind, run ids) -> the file already drawn of them


def figures_of(
    c: MlflowClient | None,
    trials: list[runs.LoggedTrial],
    folder: Path,
    prefix: str,
    title: str,
    drawn: Drawn | None = None,
) -> list[Path]:
    """The figures of these trials in `folder`, "<prefix>_<kind>.png" ("<kind>.png" without a prefix),
    each with its SVG beside it: error vs each varied key, the varied keys in parallel
    coordinates, learning curves, early stops. Keys are drawn on the scales of their launches' samplers.
    A figure of the same trials already in `drawn` is reused, not drawn again (a sweep that is exactly
    one table's trials gets no copies)."""
    keys = runs.varied_keys(trials)
    known = scales.logged(c, trials)
    makers = {
        "error": lambda p: figures.error_vs_keys(trials, keys, p, f"{title}: error vs each varied key", known),
        "parallel": lambda p: figures.parallel(trials, keys, p, f"{title}: varied keys against {METRIC}", known),
        "curves": lambda p: curves.learning_curves(c, trials, p, f"{title}: learning curves"),
        "stops": lambda p: curves.scheduler_stops(trials, p, f"{title}: early stops"),
    }
    drawn = {} if drawn is None else drawn
    ids = frozenset(t.run_id for t in trials)
    out = []
    for kind, make in makers.items():
        if (kind, ids) not in drawn:
            path = make(folder / (f"{prefix}_{kind}.png" if prefix else f"{kind}.png"))
            if path is None:
                continue
            drawn[(kind, ids)] = path
        out.append(drawn[(kind, ids)])
    return out


def write_table(
    c: MlflowClient | None,
    built: Built,
    out: Path,
    formats: tuple[str, ...] = ("md", "csv", "html"),
    ui_url: str = runs.UI_URL,
    drawn: Drawn | None = None,
) -> list[Path]:
    """The table in each format (HTML rows linking to their runs in the MLflow UI at `ui_url`) plus its
    figures under `out`; returns the figures."""
    out.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        (out / f"{slug(built.id)}.{fmt}").write_text(tables.render(built, fmt, ui_url=ui_url))
    behind = [t for row in built.trials.values() for t in row]
    title = built.id + (tables.SMOKE_TITLE if built.smoke else "")
    return figures_of(c, behind, out, slug(built.id), title, drawn)


def _sweep_summary(trials: list[runs.LoggedTrial], top: int = 5, smoke: bool = False) -> Built:
    """A sweep's best trials (finished or not) as a small table: label, error, outcome, the keys it varies."""
    scored = [t for t in trials if METRIC in t.metrics and not math.isnan(t.metrics[METRIC])]
    ranked = sorted(scored, key=lambda t: t.metrics[METRIC])[:top]
    keys = runs.varied_keys(trials)
    columns = ["trial", METRIC, "epochs", "outcome", *keys]
    rows = [
        [t.label, f"{t.metrics[METRIC]:.2f}", str(t.epochs), t.outcome, *(_cell(t, k) for k in keys)] for t in ranked
    ]
    states = {s: sum(t.status == s for t in trials) for s in sorted({t.status for t in trials})}
    note = (
        f"{len(trials)} trials ({', '.join(f'{n} {s}' for s, n in states.items())}), "
        f"{len({t.launch for t in trials})} launch(es); best {len(rows)} by {METRIC}"
    )
    title = "best trials" + (tables.SMOKE_TITLE if smoke else "")
    return Built(trials[0].experiment, title, columns, rows, note, {i: [t] for i, t in enumerate(ranked)})


def _cell(trial: runs.LoggedTrial, key: str) -> str:
    """A key's value in a summary row: a sampled float to 4 significant digits (0.08288), others as logged."""
    value, text = trial.value(key), trial.cell(key)
    return number(value, 4) if isinstance(value, float) and len(text) > 8 else text


def launch_report(c: MlflowClient, launch: str, out: Path, ui_url: str = runs.UI_URL) -> list[Path]:
    """One launch's best-trials table (md, html) and figures under `out`, for its parent run; [] without trials."""
    mine = runs.trials(c, launch)
    if not mine:
        return []
    built = _sweep_summary(mine, smoke=all(t.smoke for t in mine))
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for fmt in ("md", "html"):
        files.append(out / f"best_trials.{fmt}")
        files[-1].write_text(tables.render(built, fmt, ui_url=ui_url))
    # short names (MLflow's artifact tree cuts long ones) and the sweep's name in titles, not the launch's stamp
    figs = figures_of(c, mine, out, "", f"{mine[0].experiment}{tables.SMOKE_TITLE if built.smoke else ''}")
    return files + [f for p in figs for f in (p, p.with_suffix(".svg"))]


def report(c: MlflowClient | None, out: Path, uri: str, smoke: bool = False, ui_url: str = runs.UI_URL) -> Path:
    """Write every table with runs, per-sweep summaries and figures, and index.md / index.html (whose
    rows link to their runs in the MLflow UI at `ui_url`): of the full runs only, or with `smoke` of
    the smoke runs only (every title says so)."""
    out.mkdir(parents=True, exist_ok=True)
    if ui_url == runs.UI_URL and uri.startswith(("http://", "https://")):  # a tracking server serves its own UI
        ui_url = uri
    everything = runs.kept(runs.all_trials(c), smoke) if c is not None else []
    label = tables.SMOKE_TITLE if smoke else ""
    drawn: Drawn = {}
    sections: list[tuple[Built, list[Path]]] = []
    for tid, table in reference.tables(smoke).items():
        mine = [t for t in everything if tid in runs.tables_of(t)]
        if mine:
            built = tables.build(c, table, mine, smoke=smoke, related=lambda: everything)
            sections.append((built, write_table(c, built, out, ui_url=ui_url, drawn=drawn)))
    sweeps: list[tuple[Built, list[Path]]] = []
    for name in sorted({t.experiment for t in everything}):
        mine = [t for t in everything if t.experiment == name]
        figs = figures_of(c, mine, out, f"sweep_{slug(name)}", f"{name}{label}", drawn)
        sweeps.append((_sweep_summary(mine, smoke=smoke), figs))
    _index(out, uri, sections, sweeps, label, ui_url)
    return out


def _index(
    out: Path,
    uri: str,
    sections: list[tuple[Built, list[Path]]],
    sweeps: list[tuple[Built, list[Path]]],
    label: str = "",
    ui_url: str = runs.UI_URL,
) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    title = f"sweeplab report{label}"
    md = [f"# {title}", "", f"Generated {stamp} from `{uri}`.", "", f"## Tables{label}", ""]
    page = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>Generated {stamp} from <code>{html.escape(uri)}</code>; each row's MLflow link opens its runs in the "
        f"MLflow UI at <code>{html.escape(ui_url)}</code> (<code>sweeplab ui</code>).</p>"
        f"<h2>Tables{html.escape(label)}</h2>",
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
            + [_md_figure(f) for f in figs]
            + [""]
        )
        page += [tables.render(built, "html", level=3, ui_url=ui_url)] + [_html_figure(f) for f in figs]
    md += [f"## Sweeps{label}", ""]
    page.append(f"<h2>Sweeps{html.escape(label)}</h2>")
    for built, figs in sweeps:
        md += [tables.render(built, "md", level=3)] + [_md_figure(f) for f in figs] + [""]
        page += [tables.render(built, "html", level=3, ui_url=ui_url)] + [_html_figure(f) for f in figs]
    (out / "index.md").write_text("\n".join(md) + "\n")
    (out / "index.html").write_text("\n".join(page) + "\n</body></html>\n")


def _md_figure(png: Path) -> str:
    return f"[![{png.stem}]({png.name})]({png.with_suffix('.svg').name})"


def _html_figure(png: Path) -> str:
    """The PNG on the page at 100 px per inch (every figure's text the same size), a click away from its
    SVG (the one to put in a paper)."""
    svg, name, alt = (html.escape(x) for x in (png.with_suffix(".svg").name, png.name, png.stem))
    width = int.from_bytes(png.read_bytes()[16:20], "big") * 100 // figures.DPI  # the PNG header's width
    return f"<a href='{svg}'><img src='{name}' alt='{alt}' width='{width}'></a>"
