"""Reference tables rebuilt from runs: each published row, with our measurement next to it.

A row's measurement is the median of `val/error` at the last epoch over seeds (the reference
reports "median of 3 runs"), with the spread, the number of seeds, the training time (sum of
`time/epoch_s`, printed like the reference's "26m") and the hardware. Trials a scheduler stopped
early never enter the median: their last epoch is not the table's epoch count.
"""

from __future__ import annotations

import csv
import html
import io
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sweeplab.analysis.runs import LoggedTrial, history
from sweeplab.core.fmt import number
from sweeplab.reference import Table, match_row

if TYPE_CHECKING:
    from mlflow import MlflowClient

METRIC = "val/error"
LEGEND = (
    "ours = median of val/error (%) at the last epoch over seeds (trials stopped early excluded); "
    "spread = min-max (sd); ours time = median over seeds of the summed epoch times"
)


@dataclass
class Built:
    """A rendered table: its header, its cells, and the trials behind each reference row."""

    id: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: str = ""
    trials: dict[int, list[LoggedTrial]] = field(default_factory=dict)
    legend: str = ""

    @property
    def has_runs(self) -> bool:
        return any(self.trials.values())


def duration(seconds: float) -> str:
    """Seconds as the reference prints training time: '42s', '3m05s', '26m', '3h06m'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m" if m >= 10 else f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _kind(column: str) -> str:
    low = column.lower()
    if "error" in low:
        return "error"
    if "accuracy" in low:
        return "accuracy"
    if low.startswith("training time"):
        return "time"
    if low in ("# of epochs", "epochs"):
        return "epochs"
    return "hardware" if low == "hardware" else "key"


def completed(trials: list[LoggedTrial]) -> list[LoggedTrial]:
    """One finished, full-length trial per seed (the latest run of a seed wins)."""
    by_seed: dict[str, LoggedTrial] = {}
    for t in sorted(trials, key=lambda t: t.start_time):
        if t.status == "FINISHED" and not t.stopped_early and METRIC in t.metrics:
            by_seed[t.seed] = t
    return list(by_seed.values())


def _state(trials: list[LoggedTrial]) -> str:
    """Why a row has no measurement."""
    if any(t.status == "RUNNING" for t in trials):
        return "running"
    stopped = [t.epochs for t in trials if t.stopped_early]
    if stopped:
        return f"stopped early (epoch {max(stopped)})"
    return "failed" if trials else "not run"


def measure(c: MlflowClient, trials: list[LoggedTrial]) -> dict[str, str]:
    """Our cells for one reference row: error, spread, seeds, epochs, time, hardware."""
    done = completed(trials)
    if not done:
        return {"error": _state(trials), "accuracy": _state(trials)}
    errors = [t.metrics[METRIC] for t in done]
    med = statistics.median(errors)
    spread = "-" if len(errors) < 2 else f"{min(errors):.2f}-{max(errors):.2f} (sd {statistics.stdev(errors):.2f})"
    times = [sum(v for _, v in history(c, t.run_id, "time/epoch_s")) for t in done]
    epochs = sorted({t.epochs for t in done})
    return {
        "error": f"{med:.2f}",
        "accuracy": f"{100 - med:.2f}",
        "spread": spread,
        "seeds": str(len(done)),
        "epochs": "/".join(map(str, epochs)),
        "time": duration(statistics.median(times)),
        "hardware": "; ".join(sorted({t.tags.get("sweeplab.hardware", "?") for t in done})),
    }


# our columns, placed right after the reference column of the same kind
OURS = {
    "error": [("ours", "error"), ("ours spread", "spread"), ("seeds", "seeds")],
    "accuracy": [("ours", "accuracy"), ("ours spread (error)", "spread"), ("seeds", "seeds")],
    "time": [("ours time", "time")],
    "epochs": [("ours epochs", "epochs")],
    "hardware": [("ours hardware", "hardware")],
}


def rows_of(table: Table, trials: list[LoggedTrial]) -> tuple[list[list[str]], dict[int, list[LoggedTrial]]]:
    """The table's rows and the trials of each: by the `sweeplab.row.<id>` tag for a published
    table; by params for sweeplab's own tables, which grow a row for any point not in them."""
    rows = [list(r) for r in table.rows]
    if not table.match:
        tag = f"sweeplab.row.{table.id}"
        return rows, {i: [t for t in trials if t.tags.get(tag) == str(i)] for i in range(len(rows))}
    by_row: dict[int, list[LoggedTrial]] = {i: [] for i in range(len(rows))}
    for t in trials:
        values = {key: t.value(key) for key in table.match.values()}
        i = match_row(Table(table.id, "", "", table.columns, rows), table.match, values)
        if i is None:
            i = len(rows)
            rows.append([number(values[table.match[c]]) if c in table.match else "" for c in table.columns])
            by_row[i] = []
        by_row[i].append(t)
    return rows, by_row


def build(c: MlflowClient | None, table: Table, trials: list[LoggedTrial]) -> Built:
    """The reference table with our columns interleaved; rows without trials say 'not run'."""
    kinds = [_kind(col) for col in table.columns]
    layout: list[tuple[str, int | None, str]] = []  # (header, reference column or None, measure key)
    for i, (col, kind) in enumerate(zip(table.columns, kinds)):
        first = kind not in kinds[:i]  # "Test Error (in paper)" follows ours, it gets no second copy
        layout += [(col, i, "")] + [(head, None, key) for head, key in OURS.get(kind, []) if first]
    layout += [(OURS[k][0][0], None, k) for k in ("time", "hardware") if k not in kinds]
    refs, by_row = rows_of(table, trials)
    rows = []
    for i, ref in enumerate(refs):
        cells = measure(c, by_row[i]) if c is not None and by_row[i] else {"error": "not run", "accuracy": "not run"}
        rows.append([ref[j] if j is not None else cells.get(key, "") for _, j, key in layout])
    return Built(
        table.id,
        table.title,
        [h for h, _, _ in layout],
        rows,
        f"Reference notes: {table.notes}" if table.notes else "",
        by_row,
        LEGEND,
    )


def render(built: Built, fmt: str = "md", level: int = 2) -> str:
    """The table as Markdown or an HTML fragment (both with title, notes and legend), or as CSV."""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(built.columns)
        writer.writerows(built.rows)
        return buf.getvalue()
    footer = [text for text in (built.notes, built.legend) if text]
    if fmt == "html":
        esc = html.escape
        head = "".join(f"<th>{esc(c)}</th>" for c in built.columns)
        body = "\n".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in built.rows)
        return (
            f'<h{level} id="{esc(built.id)}">{esc(built.id)}: {esc(built.title)}</h{level}>\n'
            f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
            + "".join(f"<p><small>{esc(text)}</small></p>\n" for text in footer)
        )
    if fmt != "md":
        raise ValueError(f"unknown format {fmt!r}")

    def cell(value: str) -> str:
        return str(value).replace("|", "\\|")  # a bare pipe would split the cell

    lines = [
        f"{'#' * level} {built.id}: {built.title}",
        "",
        "| " + " | ".join(map(cell, built.columns)) + " |",
        "|" + "|".join("---" for _ in built.columns) + "|",
    ]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in built.rows]
    for text in footer:
        lines += ["", text]
    return "\n".join(lines) + "\n"
