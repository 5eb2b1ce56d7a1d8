"""Every trial of a sweep as one Arrow table, written to Parquet for pandas, Polars or DuckDB.

One row per trial: its identity (run and trial ids, config label, outcome), `params.*` (typed back
from MLflow's strings when a whole column parses), `metrics.*` (last values), `tags.*`, and the
per-epoch histories as list columns aligned on `history.step` (`history.val/error`[i] was logged
at epoch `history.step`[i]).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.analysis.runs import LoggedTrial, history
from sweeplab.core.names import METRICS

if TYPE_CHECKING:
    import pyarrow as pa
    from mlflow import MlflowClient


def _typed(texts: list[str | None]) -> pa.Array:
    """A param column as bool, int64, float64 or string: the narrowest type every value parses as."""
    import pyarrow as pa

    present = [t for t in texts if t is not None]
    if present and all(t in ("True", "False") for t in present):
        return pa.array([None if t is None else t == "True" for t in texts], pa.bool_())
    for kind, cast in ((pa.int64(), int), (pa.float64(), float)):
        try:
            return pa.array([None if t is None else cast(t) for t in texts], kind)
        except ValueError:
            continue
    return pa.array(texts, pa.string())


def _histories(c: MlflowClient, trial: LoggedTrial) -> tuple[list[int], dict[str, list[float | None]]]:
    """The union of logged steps and, per metric, its value at each step (None where not logged)."""
    per_key = {k: dict(history(c, trial.run_id, k)) for k in METRICS if k != "epoch" and k in trial.metrics}
    steps = sorted({s for h in per_key.values() for s in h})
    return steps, {k: [h.get(s) for s in steps] for k, h in per_key.items()}


def arrow_table(c: MlflowClient, trials: list[LoggedTrial]) -> pa.Table:
    """One row per trial with params, final metrics, tags and per-epoch histories."""
    import pyarrow as pa

    cols: dict[str, Any] = {
        "run_id": pa.array([t.run_id for t in trials], pa.string()),
        "experiment": pa.array([t.experiment for t in trials], pa.string()),
        "launch": pa.array([t.launch for t in trials], pa.string()),
        "trial_id": pa.array([t.trial_id for t in trials], pa.string()),
        "label": pa.array([t.label for t in trials], pa.string()),
        "status": pa.array([t.status for t in trials], pa.string()),
        "outcome": pa.array([t.outcome for t in trials], pa.string()),
        "stopped_early": pa.array([t.stopped_early for t in trials], pa.bool_()),
        "start_time": pa.array([t.start_time for t in trials], pa.timestamp("ms", tz="UTC")),
    }
    for key in sorted({k for t in trials for k in t.params}):
        cols[f"params.{key}"] = _typed([t.params.get(key) for t in trials])
    for key in sorted({k for t in trials for k in t.metrics}):
        cols[f"metrics.{key}"] = pa.array([t.metrics.get(key) for t in trials], pa.float64())
    for key in sorted({k for t in trials for k in t.tags}):
        cols[f"tags.{key}"] = pa.array([t.tags.get(key) for t in trials], pa.string())
    hists = [_histories(c, t) for t in trials]
    cols["history.step"] = pa.array([steps for steps, _ in hists], pa.list_(pa.int64()))
    for key in [k for k in METRICS if k != "epoch" and any(k in h for _, h in hists)]:
        cols[f"history.{key}"] = pa.array(
            [h.get(key, [None] * len(steps)) for steps, h in hists], pa.list_(pa.float64())
        )
    return pa.table(cols)


def write_parquet(c: MlflowClient, trials: list[LoggedTrial], path: str | Path) -> Path:
    """Write the trials' Arrow table to `path` (parent folders are created)."""
    import pyarrow.parquet as pq

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(arrow_table(c, trials), out)
    return out
