"""Reference tables rebuilt from runs: each published row, with our measurement next to it.

A row's measurement is the median of `val/error` at the last epoch over seeds (the reference
reports "median of 3 runs"), with the spread, the number of seeds, the training time (sum of
`time/epoch_s`, printed like the reference's "26m") and the hardware. Trials a scheduler stopped
early never enter the median: their last epoch is not the table's epoch count. Each measured row
gets a verdict against its published value (`verdict`) with the band it was judged by, and the table a
summary line of them. The verdict weighs both sides' noise: our seeds' median and the published run (or
median of runs), each with a seed sd that scales with the error level (`Noise`), estimated from this
table's seeds, else from the store's other trials of the same dataset and model, else a prior.
"""

from __future__ import annotations

import csv
import functools
import html
import io
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sweeplab.analysis.runs import SEED_KEY, LoggedTrial, history, ui_link
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
            family = (done[0].params.get("data.name", ""), done[0].params.get("model.name", ""))
            out.setdefault(family, []).append([t.metrics[METRIC] for t in done])
    return out


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


def _row_noise(
    errors: dict[int, list[float]],
    by_row: dict[int, list[LoggedTrial]],
    related: Callable[[], list[LoggedTrial]] | None,
) -> dict[int, Noise]:
    """The Noise each measured row is judged with: the seed spread pooled over this table's rows, else
    over the store's other configs of the row's dataset and model (`related()`: the trials to look in),
    else the prior."""
    own = noise(list(errors.values()), "this table's rows with >= 2 seeds")
    if own.measured:
        return {i: own for i in errors}
    pools: dict[tuple[str, str], list[list[float]]] | None = None
    out: dict[int, Noise] = {}
    for i, found in errors.items():
        if not found:
            continue
        done = completed(by_row[i])
        family = (done[0].params.get("data.name", ""), done[0].params.get("model.name", ""))
        if pools is None:
            pools = related_groups(related()) if related is not None else {}
        groups = pools.get(family, [])
        configs = f"{len(groups)} config{'s' if len(groups) != 1 else ''}"
        where = f"{configs} of {family[0]} / {family[1]} elsewhere in the store"
        out[i] = noise(groups, where)
    return out


def _noise_legend(used: dict[int, Noise]) -> str:
    """Which r judged which rows (rows numbered from 1)."""
    by: dict[Noise, list[int]] = {}
    for i, n in sorted(used.items()):
        by.setdefault(n, []).append(i + 1)
    if len(by) == 1:
        return f"This table's sd: {next(iter(by)).describe()}"
    return "This table's sd: " + "; ".join(
        f"rows {', '.join(map(str, rows))}: {n.describe()}" for n, rows in by.items()
    )


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
    used = _row_noise(errors, by_row, related)
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
        legend += f". {_noise_legend(judged)}"
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
