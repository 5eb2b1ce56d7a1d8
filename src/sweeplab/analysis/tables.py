"""Reference tables rebuilt from runs: each published row, with our measurement next to it.

A row's measurement is the median of `val/error` at the last epoch over seeds (the reference
reports "median of 3 runs"), with the spread, the number of seeds, the training time (sum of
`time/epoch_s`, printed like the reference's "26m") and the hardware. Trials a scheduler stopped
early never enter the median: their last epoch is not the table's epoch count. Each measured row
gets a verdict against its published value with the band it was judged by, and the table a summary
line of them: the rule is `verdicts.py`'s; this module reads what it weighs from the table and the
runs (the published value and its number of runs, the seeds' errors, the store's related trials).
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeplab.analysis.runs import SEED_KEY, LoggedTrial, history, ui_link
from sweeplab.analysis.verdicts import PRIOR, VERDICT_RULE, noise_legend, row_noise, summary, verdict
from sweeplab.core.fmt import number
from sweeplab.core.names import HARDWARE, VARIANT, row_tag
from sweeplab.reference import Table, match_row

if TYPE_CHECKING:
    from mlflow import MlflowClient

METRIC = "val/error"
LEGEND = (
    "ours = median of val/error (%) at the last epoch over seeds (trials stopped early excluded); "
    "spread = min-max (sd); ours time = median over seeds of the summed epoch times"
)
SMOKE_TITLE = " (smoke run)"


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
    summary: str = ""  # "14 of 20 rows consistent, 3 better, 2 worse, 1 needs more seeds"
    caveats: str = ""  # trials compared here with a published value that differs from another table's
    smoke: bool = False  # built from smoke runs only (the title says so)

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
        "hardware": "; ".join(sorted({t.tags.get(HARDWARE, "?") for t in done})),
    }


def published_error(cell: str, kind: str) -> float | None:
    """A published cell as a test error in %: its first number ("10.57 (1 run)", "4.45%", "about 93%"),
    100 minus it for an accuracy column; None for a blank or text cell."""
    found = re.search(r"\d+(?:\.\d+)?", str(cell))
    if found is None:
        return None
    value = float(found.group())
    return 100 - value if kind == "accuracy" else value


def related_groups(trials: list[LoggedTrial]) -> dict[tuple[str, str], list[list[float]]]:
    """(dataset, model) -> the seed errors of each config (trials equal in every param but the seed, and in
    variant) among `trials`: the store's evidence of seed noise for a table none of whose rows has seeds."""
    configs: dict[tuple[Any, ...], list[LoggedTrial]] = {}
    for t in trials:
        key = (t.tags.get(VARIANT, ""), *sorted((k, v) for k, v in t.params.items() if k != SEED_KEY))
        configs.setdefault(key, []).append(t)
    out: dict[tuple[str, str], list[list[float]]] = {}
    for found in configs.values():
        done = completed(found)
        if len(done) >= 2:
            out.setdefault(_family(done[0]), []).append([t.metrics[METRIC] for t in done])
    return out


def _family(trial: LoggedTrial) -> tuple[str, str]:
    """A trial's (dataset, model): the trials whose seed spread may stand in for a row's."""
    return trial.params.get("data.name", ""), trial.params.get("model.name", "")


def published_runs(table: Table, row: int) -> int:
    """How many runs a row's published value is the median of: the column's "median of k runs", 1 for a
    "(1 run)" cell or a column that names no count."""
    where = _published_column(table)
    if where is None or not 0 <= row < len(table.rows):
        return 1
    if re.search(r"\(1 run\)", str(table.rows[row][where[0]])):
        return 1
    found = re.search(r"median of (\d+)", table.columns[where[0]])
    return int(found.group(1)) if found else 1


# our columns, placed right after the reference column of the same kind
OURS = {
    "error": [
        ("ours", "error"),
        ("ours spread", "spread"),
        ("seeds", "seeds"),
        ("verdict", "verdict"),
        ("band", "band"),
    ],
    "accuracy": [
        ("ours", "accuracy"),
        ("ours spread (error)", "spread"),
        ("seeds", "seeds"),
        ("verdict", "verdict"),
        ("band", "band"),
    ],
    "time": [("ours time", "time")],
    "epochs": [("ours epochs", "epochs")],
    "hardware": [("ours hardware", "hardware")],
}


def rows_of(table: Table, trials: list[LoggedTrial]) -> tuple[list[list[str]], dict[int, list[LoggedTrial]]]:
    """The table's rows and the trials of each: by the `sweeplab.row.<id>` tag for a published
    table; by params for sweeplab's own tables, which grow a row for any point not in them."""
    rows = [list(r) for r in table.rows]
    if not table.match:
        tag = row_tag(table.id)
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


def _published_column(table: Table) -> tuple[int, str] | None:
    """(index, kind) of the table's first error or accuracy column, the one ours is compared with."""
    for i, col in enumerate(table.columns):
        if _kind(col) in ("error", "accuracy"):
            return i, _kind(col)
    return None


def published(table: Table, row: int) -> float | None:
    """The published test error (%) of a row; None when the table has none there."""
    where = _published_column(table)
    if where is None or not 0 <= row < len(table.rows):
        return None
    return published_error(table.rows[row][where[0]], where[1])


def _cell(table: Table, row: int) -> str:
    """A row's published cell as printed ('blank' when empty)."""
    where = _published_column(table)
    text = table.rows[row][where[0]].strip() if where is not None and 0 <= row < len(table.rows) else ""
    return text or "blank"


def _label(table: Table, row: list[str]) -> str:
    """A row named by its key cells ("ResNet-preact-20 / 2048 / 1.6")."""
    return " / ".join(cell for col, cell in zip(table.columns, row) if _kind(col) == "key" and cell)


def _differs(a: float | None, b: float | None) -> bool:
    return (a is None) != (b is None) or (a is not None and b is not None and not math.isclose(a, b, abs_tol=1e-9))


def caveats(table: Table, refs: list[list[str]], by_row: dict[int, list[LoggedTrial]]) -> str:
    """Rows whose finished trials also fill a row of another table with a different published value
    (read from each trial's `sweeplab.tables` and `sweeplab.row.<id>` tags)."""
    from sweeplab.analysis.runs import tables_of
    from sweeplab.reference import tables as all_tables

    known = all_tables()
    found: dict[int, set[str]] = {}
    for i, trials in by_row.items():
        for t in completed(trials):
            for other in tables_of(t):
                row = t.tags.get(row_tag(other), "")
                if other == table.id or other not in known or not row.isdigit():
                    continue
                if _differs(published(table, i), published(known[other], int(row))):
                    found.setdefault(i, set()).add(f"{other} row {int(row) + 1} ({_cell(known[other], int(row))})")
    parts = [
        f"row {i + 1} ({_label(table, refs[i])}; {_cell(table, i)} here) also fills {', '.join(sorted(others))}"
        for i, others in sorted(found.items())
    ]
    if not parts:
        return ""
    return "Trials compared with two different published values (rows numbered from 1): " + "; ".join(parts)


def build(
    c: MlflowClient | None,
    table: Table,
    trials: list[LoggedTrial],
    smoke: bool = False,
    related: Callable[[], list[LoggedTrial]] | None = None,
) -> Built:
    """The reference table with our columns interleaved; rows without trials say 'not run'. Reference
    columns with no value in any row (sweeplab's own tables' error and time) are left out, and so are the
    verdict columns of a table with no published value.

    `smoke` only labels the title: the caller passes the smoke runs' trials (runs.kept) and, for
    sweeplab's own tables, the table of the smoke grid (reference.get(id, smoke=True)). `related` gives
    the store's trials of the same kind, for the seed noise of a table none of whose rows has seeds; it
    is called only then.
    """
    kinds = [_kind(col) for col in table.columns]
    refs, by_row = rows_of(table, trials)
    blank = {j for j in range(len(table.columns)) if not any(str(r[j]).strip() for r in refs)}
    # without a published value anywhere (sweeplab's own tables) there is nothing to judge: no verdict columns
    judging = any(published(table, i) is not None for i in range(len(table.rows)))
    skip = set() if judging else {"verdict", "band"}
    layout: list[tuple[str, int | None, str]] = []  # (header, reference column or None, measure key)
    for i, (col, kind) in enumerate(zip(table.columns, kinds)):
        first = kind not in kinds[:i]  # "Test Error (in paper)" follows ours, it gets no second copy
        if i not in blank:
            layout.append((col, i, ""))
        layout += [(head, None, key) for head, key in OURS.get(kind, []) if first and key not in skip]
    layout += [(OURS[k][0][0], None, k) for k in ("time", "hardware") if k not in kinds]
    errors = {i: [t.metrics[METRIC] for t in completed(by_row[i])] if c is not None else [] for i in by_row}
    families = {i: _family(completed(by_row[i])[0]) for i, found in errors.items() if found}
    used = row_noise(errors, families, lambda: related_groups(related()) if related is not None else {})
    verdicts, rows = [], []
    for i, ref in enumerate(refs):
        cells = measure(c, by_row[i]) if c is not None and by_row[i] else {"error": "not run", "accuracy": "not run"}
        value = published(table, i) if i < len(table.rows) else None
        word, band = verdict(errors[i], value, published_runs(table, i), used.get(i, PRIOR))
        cells["verdict"], cells["band"] = word, "" if band is None else f"±{band:.2f}"
        verdicts.append(word)
        rows.append([ref[j] if j is not None else cells.get(key, "") for _, j, key in layout])
    legend = f"{LEGEND}; {VERDICT_RULE}" if judging else LEGEND
    judged = {i: used[i] for i, word in enumerate(verdicts) if word != "-"}
    if judged:
        legend += f". {noise_legend(judged)}"
    return Built(
        table.id,
        table.title + (SMOKE_TITLE if smoke else ""),
        [h for h, _, _ in layout],
        rows,
        f"Reference notes: {table.notes}" if table.notes else "",
        by_row,
        legend,
        summary(verdicts, sum(bool(e) for e in errors.values()), len(refs)),
        caveats(table, refs, by_row) if c is not None else "",
        smoke,
    )


def render(built: Built, fmt: str = "md", level: int = 2, ui_url: str | None = None) -> str:
    """The table as Markdown or an HTML fragment (both with title, notes and legend), or as CSV; with
    `ui_url` each HTML row ends in a link to its runs in the MLflow UI served there."""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(built.columns)
        writer.writerows(built.rows)
        return buf.getvalue()
    verdicts = f"Verdicts: {built.summary}" if built.summary else ""  # heads the table: what a reader scans for
    footer = [text for text in (built.notes, built.caveats, built.legend) if text]
    if fmt == "html":
        esc = html.escape
        head = "".join(f"<th>{esc(c)}</th>" for c in built.columns) + ("<th>MLflow</th>" if ui_url else "")

        def link(i: int) -> str:
            behind = built.trials.get(i, [])
            if not ui_url:
                return ""
            if not behind:
                return "<td></td>"
            runs = f"{len(behind)} run{'s' if len(behind) > 1 else ''}"
            return f"<td><a href='{esc(ui_link(behind, ui_url))}'>{runs}</a></td>"

        body = "\n".join(
            "<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + link(i) + "</tr>" for i, r in enumerate(built.rows)
        )
        return (
            f'<h{level} id="{esc(built.id)}">{esc(built.id)}: {esc(built.title)}</h{level}>\n'
            + (f"<p><strong>{esc(verdicts)}</strong></p>\n" if verdicts else "")
            + f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
            + "".join(f"<p><small>{esc(text)}</small></p>\n" for text in footer)
        )
    if fmt != "md":
        raise ValueError(f"unknown format {fmt!r}")

    def cell(value: str) -> str:
        return str(value).replace("|", "\\|")  # a bare pipe would split the cell

    lines = [f"{'#' * level} {built.id}: {built.title}", ""] + ([verdicts, ""] if verdicts else [])
    lines += [
        "| " + " | ".join(map(cell, built.columns)) + " |",
        "|" + "|".join("---" for _ in built.columns) + "|",
    ]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in built.rows]
    for text in footer:
        lines += ["", text]
    return "\n".join(lines) + "\n"
