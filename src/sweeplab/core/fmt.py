"""How sweeplab prints a value, in tables, trial labels and command lines alike."""

from __future__ import annotations

from typing import Any


def number(value: Any, digits: int = 6) -> str:
    """`value` as text: floats to `digits` significant digits (0.1, 0.0005, 1e-05), lists as [a,b], None as ''."""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, list):
        return "[" + ",".join(number(x, digits) for x in value) + "]"
    return "" if value is None else str(value)
