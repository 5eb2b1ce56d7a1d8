"""Reference tables a sweep fills, and how a trial finds its row (`tables.<id>.match`)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

# The package's own copy of the reference tables (shipped as package data).
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "analysis" / "reference"

# `quickstart` is sweeplab's own table (no reference numbers): its rows are the sweep's own
# distinct points, in sorted order.
QUICKSTART = {"id": "quickstart", "title": "Quickstart: learning rate x weight decay, ResNet-preact-20, "
              "Fashion-MNIST", "dataset": "Fashion-MNIST",
              "columns": ["initial lr", "weight decay", "Test Error"], "rows": []}


@lru_cache(maxsize=1)
def reference() -> dict[str, dict[str, Any]]:
    """Every reference table by id, plus `quickstart`."""
    tables: dict[str, dict[str, Any]] = {}
    for path in sorted(PACKAGE_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        for table in data if isinstance(data, list) else data.get("tables", [data]):
            if isinstance(table, dict) and "id" in table:
                tables[table["id"]] = table
    tables.setdefault("quickstart", QUICKSTART)
    return tables


def same(cell: Any, value: Any) -> bool:
    """A reference cell equals a trial's value: numbers compare as floats, the rest as trimmed text."""
    text = str(cell).strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return abs(float(text) - float(value)) <= 1e-9 * max(1.0, abs(float(value)))
        except ValueError:
            return False
    return text == str(value).strip()


def find_row(table: dict[str, Any], match: dict[str, str], values: dict[str, Any]) -> int | None:
    """Index of the first reference row whose match columns equal the trial's values, else None."""
    columns = table["columns"]
    for i, row in enumerate(table["rows"]):
        if all(same(row[columns.index(col)], values.get(key)) for col, key in match.items()):
            return i
    return None
