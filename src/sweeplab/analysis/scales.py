"""How each varied key was searched, read back from the launch's sweep file: the axis a figure draws it on.

A sampler's scale is the scale to read its results on: `loguniform` on a log axis, `uniform`, `quniform`
and `randint` on a linear one (a uniformly sampled label smoothing on a log axis crowds half the trials
into the last decade). Grids and choices are the values that were run, ticked one by one. The sweep
file is the parent run's `sweep.yaml` artifact (docs/architecture.md, MLflow layout); runs logged
without one fall back to the values themselves (`guess`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sweeplab.analysis.runs import LoggedTrial
from sweeplab.core.names import PARENT
from sweeplab.core.yamlio import load_text
from sweeplab.search_spaces.domains import SAMPLERS, Choice, Grid, LogUniform

if TYPE_CHECKING:
    from mlflow import MlflowClient

Scale = Literal["log", "linear", "values"]  # values: the grid's or choice's own values, one tick each
_MAX_VALUES = 8  # more distinct values than this, and a key without a known sampler reads as sampled


def of_space(space: Any) -> dict[str, Scale]:
    """The scale of each key of a sweep file's `space` section (variants and expressions have none)."""
    out: dict[str, Scale] = {}
    for key, entry in (space or {}).items() if isinstance(space, dict) else []:
        if key == "variant" or not isinstance(entry, dict) or len(entry) != 1:
            continue
        kind = SAMPLERS.get(str(next(iter(entry))))
        if kind is None or not kind.sampled and not issubclass(kind, Grid):
            continue
        out[key] = "log" if kind is LogUniform else "values" if issubclass(kind, (Grid, Choice)) else "linear"
    return out


def of_sweep_file(text: str, smoke: bool) -> dict[str, Scale]:
    """The scales of a sweep file's text (with `smoke`, its smoke block's space over the main one)."""
    try:
        spec = load_text(text)
    except Exception:  # an unreadable snapshot: the values decide
        return {}
    if not isinstance(spec, dict):
        return {}
    smoke_space = spec.get("smoke", {}).get("space") if smoke and isinstance(spec.get("smoke"), dict) else None
    return {**of_space(spec.get("space")), **of_space(smoke_space)}


def logged(c: MlflowClient | None, trials: list[LoggedTrial]) -> dict[str, Scale]:
    """The scales the trials' launches were searched with (each launch's parent run's sweep.yaml, read once)."""
    out: dict[str, Scale] = {}
    if c is None:
        return out
    seen: set[tuple[str, bool]] = set()
    for t in trials:
        parent = t.tags.get(PARENT, "")
        if not parent or (parent, t.smoke) in seen:
            continue
        seen.add((parent, t.smoke))
        with tempfile.TemporaryDirectory(prefix="sweeplab-scales-") as tmp:
            try:
                text = Path(c.download_artifacts(parent, "sweep.yaml", tmp)).read_text()
            except Exception:  # a launch logged before the sweep file was, or a store that lost it
                continue
        for key, scale in of_sweep_file(text, t.smoke).items():
            out.setdefault(key, scale)  # launches of one sweep agree; the first one seen wins otherwise
    return out


def geometric(values: list[float]) -> bool:
    """Values to read on a log axis: all positive, spanning a factor of 8 or more."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 8


def guess(values: list[float]) -> Scale:
    """The scale of a key logged without its sampler: many distinct values were sampled (log when they
    span decades), a few were a grid."""
    if len(set(values)) <= _MAX_VALUES:
        return "values"
    return "log" if geometric(values) and max(values) / min(values) >= 100 else "linear"


def is_log(scale: Scale, values: list[float]) -> bool:
    """Whether to draw these values on a log axis: a log sampler's, or a grid's spanning a factor of 8."""
    return scale == "log" or (scale == "values" and geometric(values))
