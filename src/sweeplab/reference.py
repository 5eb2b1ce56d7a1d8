"""The reference tables sweeplab regenerates, and which sweep files fill them.

The package keeps its own copy of the 49 published tables (`reference_tables/*.json`), plus one table
of its own, `quickstart`, whose rows are the quickstart sweep's lr x weight-decay grid.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from sweeplab.core.errors import ConfigError, suggest
from sweeplab.core.fmt import number
from sweeplab.core.yamlio import load_text

HERE = Path(__file__).resolve().parent
FILES = ("hysts_tables.json", "other_tables.json")
QUICKSTART_COLUMNS = ["initial lr", "weight decay", "Test Error", "# of Epochs", "Training Time"]
# the grid of docs/sweeps.md, used until sweeps/quickstart.yaml exists
QUICKSTART_GRID = {"optim.lr": [0.05, 0.1, 0.2, 0.4], "optim.weight_decay": [1e-4, 5e-4]}


class UnknownTable(ConfigError):
    """A table id that is not in the reference (exit 2)."""


@dataclass
class Table:
    id: str
    title: str
    dataset: str
    columns: list[str]
    rows: list[list[str]]
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # sweeplab's own tables find a trial's row from its params (column -> dotted key), not from
    # its `sweeplab.row.<id>` tag: their rows are not fixed by a publication
    match: dict[str, str] = field(default_factory=dict)


def sweeps_dir() -> Path:
    """./sweeps when it exists, else the sweeps/ folder of the checkout this package lives in."""
    here = Path.cwd() / "sweeps"
    return here if here.is_dir() else HERE.parents[1] / "sweeps"


def quickstart_table(sweeps: Path | None = None, smoke: bool = False) -> Table:
    """The quickstart table: one row per (lr, weight decay) of sweeps/quickstart.yaml's grid, or of its
    smoke grid (`smoke`): a table shows the grid that ran, never the union of both."""
    path = (sweeps or sweeps_dir()) / "quickstart.yaml"
    doc = (load_text(path.read_text()) or {}) if path.is_file() else {}  # the YAML `sweeplab run` reads
    space, smoke_space = doc.get("space") or {}, (doc.get("smoke") or {}).get("space") or {}
    grid = {k: _values(space.get(k)) or v for k, v in QUICKSTART_GRID.items()}
    if smoke:  # the smoke block overrides the keys it names; the others keep the full grid's values
        grid = {k: _values(smoke_space.get(k)) or v for k, v in grid.items()}
    rows = [
        [number(lr), number(wd), "", "", ""]
        for lr in sorted(set(grid["optim.lr"]))
        for wd in sorted(set(grid["optim.weight_decay"]))
    ]
    which = "smoke grid (`--smoke`)" if smoke else "grid"
    return Table(
        "quickstart",
        "Quickstart: ResNet-preact-20 on Fashion-MNIST, lr x weight decay",
        "FashionMNIST",
        list(QUICKSTART_COLUMNS),
        rows,
        notes=f"sweeplab's own table: rows are sweeps/quickstart.yaml's {which}; no published values",
        match={"initial lr": "optim.lr", "weight decay": "optim.weight_decay"},
    )


def _values(spec: Any) -> list[float]:
    """The values of a `{grid: [...]}` or `{choice: [...]}` search-space entry, else []."""
    if not isinstance(spec, dict):
        return []
    return [float(v) for v in spec.get("grid") or spec.get("choice") or []]


@lru_cache(maxsize=1)
def _published() -> dict[str, Table]:
    out: dict[str, Table] = {}
    for name in FILES:
        for t in json.loads((HERE / "reference_tables" / name).read_text()):
            known = {"id", "title", "dataset", "columns", "rows", "notes"}
            out[t["id"]] = Table(
                t["id"],
                t.get("title", ""),
                t.get("dataset", ""),
                list(t["columns"]),
                [list(r) for r in t["rows"]],
                t.get("notes", ""),
                {k: v for k, v in t.items() if k not in known},
            )
    return out


def tables(smoke: bool = False) -> dict[str, Table]:
    """Every table id -> Table: the 49 published ones, then `quickstart` (its smoke grid's rows if `smoke`)."""
    return {**_published(), "quickstart": quickstart_table(smoke=smoke)}


def get(table_id: str, smoke: bool = False) -> Table:
    """One table (`quickstart`: its smoke grid if `smoke`); UnknownTable (exit 2) naming the nearest ids."""
    found = tables(smoke)
    if table_id not in found:
        hint = suggest(table_id, found, n=3, cutoff=0.4) or "; see `sweeplab table --list`"
        raise UnknownTable(f"unknown table id '{table_id}'{hint}")
    return found[table_id]


def sweeps_by_table(sweeps: Path | None = None) -> dict[str, list[str]]:
    """Table id -> the sweep files (relative names) whose `tables:` block names it."""
    folder = sweeps or sweeps_dir()
    out: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            doc = load_text(path.read_text()) or {}  # the YAML `sweeplab run` reads
        except yaml.YAMLError:
            continue  # a broken sweep file is `sweeplab run`'s error to report, not the listing's
        names = doc.get("tables") if isinstance(doc, dict) else None
        for tid in names or {}:
            out.setdefault(str(tid), []).append(f"sweeps/{path.name}")
    return out


def same(cell: str, value: Any) -> bool:
    """A reference cell equals a trial's value: numbers as floats, yes/no as bools, else text."""
    text = str(cell).strip().lower()
    if isinstance(value, bool):
        return text in ("yes", "true") if value else text in ("no", "false")
    try:  # 0.1 in a table equals 0.1 computed as 0.05 * 2
        return math.isclose(float(text), float(value), rel_tol=1e-9)
    except (TypeError, ValueError):
        return text == str(value).strip().lower()


def match_row(table: Table, match: dict[str, str], values: dict[str, Any]) -> int | None:
    """The index of the first row whose `match` columns equal the trial's values (dotted key -> value)."""
    cols = [(table.columns.index(col), key) for col, key in match.items()]
    for i, row in enumerate(table.rows):
        if all(key in values and same(row[c], values[key]) for c, key in cols):
            return i
    return None
