"""sweeplab: hyperparameter sweeps of image-classification training (the Python API; docs/api.md).

    import sweeplab
    trials = sweeplab.run("sweeps/quickstart.yaml", smoke=True)   # a pandas DataFrame, one row a trial
    best = sweeplab.best("quickstart", smoke=True)                 # [{run_id, label, value, config}, ...]
    model = sweeplab.load_model(best[0]["run_id"])                 # the trained nn.Module, in eval mode

The command line is a thin layer over the same functions (commands/sweep.py, commands/analysis.py).
`import sweeplab` stays light: no torch, Ray or MLflow until a function needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweeplab.core import env as _env

_env.no_telemetry()  # here, so it holds whichever sweeplab module is imported first

__all__ = ["best", "load_model", "resume", "run", "trials"]


def run(
    sweep: str | Path | dict[str, Any],
    *,
    smoke: bool = False,
    name: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    max_concurrent: int | None = None,
    max_trials: int | None = None,
    progress: str = "lines",
) -> Any:
    """Run a sweep file (or a sweep given as a dict, as a sweep file's YAML would read) to its end, as
    `sweeplab run` does, and return its trials as a pandas DataFrame (see `trials`). Bad input raises
    `sweeplab.core.errors.ConfigError`; a launch that stopped short says so in `.attrs["exit_code"]`
    (as the command's exit code) and `.attrs["status"]`. `progress`: "lines" (sweeplab's), "tune" (Tune's
    own table) or "none"."""
    from sweeplab.commands import sweep as cmd
    from sweeplab.core import inputs
    from sweeplab.search_spaces import load

    where = cmd.Where(storage, tracking_uri, address, num_cpus, _progress(progress))
    _door(where, inputs)
    compiled = load(sweep, smoke=smoke, max_trials=max_trials)
    return _frame(*cmd.start(compiled, where, name, max_concurrent))


def resume(
    name: str,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: str = "lines",
) -> Any:
    """Continue launch `name` (as `sweeplab resume`) and return its trials as a DataFrame (see `run`)."""
    from sweeplab.commands import sweep as cmd
    from sweeplab.core import inputs

    where = cmd.Where(storage, tracking_uri, address, num_cpus, _progress(progress))
    _door(where, inputs)
    return _frame(*cmd.proceed(name, where))


def trials(launch: str, *, storage: str | None = None, tracking_uri: str | None = None) -> Any:
    """A launch's trials as its ledger has them, at any moment (even while it runs), one row a trial:
    `key`, `label`, `status` (FINISHED, STOPPED, FAILED, RUNNING, PENDING), `epochs` (reported), the
    point's keys (`optim.lr`, ...), the last epoch's metrics (`val/error`, ...), `error`, and `run_id`
    (its MLflow child run, None until MLflow has it)."""
    from sweeplab import ledger
    from sweeplab.commands import sweep as cmd
    from sweeplab.core.errors import SweepError
    from sweeplab.runner import launch as L

    folder = cmd.resolve_storage(storage) / launch
    meta = L.read_meta(folder)
    if meta is None:
        raise SweepError(f"no launch {launch!r} in {folder.parent}")
    uri = tracking_uri or meta["tracking_uri"]
    return _table(launch, ledger.read(folder)[0], _run_ids(uri, launch))


def best(
    sweep_or_launch: str,
    *,
    metric: str = "val/error",
    top: int = 1,
    smoke: bool = False,
    tracking_uri: str | None = None,
) -> list[dict[str, Any]]:
    """The `top` trials of a sweep (or one launch of it) by the last value of `metric` in MLflow, best
    first, as `sweeplab best` ranks them: each a dict with `run_id`, `label`, `value`, `launch` and
    `config` (the trial's whole nested config, which `sweeplab train` reruns as it is)."""
    from sweeplab.analysis import runs

    c = runs.open_client(tracking_uri, must_exist=True)
    found = runs.best(c, sweep_or_launch, metric, max(1, top), smoke=smoke)
    return [
        {
            "run_id": t.run_id,
            "label": t.label,
            "value": t.metrics[metric],
            "launch": t.launch,
            "config": runs.config_of(c, t),
        }
        for t in found
    ]


def load_model(run_id: str, tracking_uri: str | None = None) -> Any:
    """The trained `torch.nn.Module` that MLflow run `run_id` logged (a sweep's trial or `sweeplab train`),
    in eval mode: it takes float images in [0, 1], shape (N, C, H, W), and returns logits. `tracking_uri`
    defaults to $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db, as every command's."""
    from sweeplab.tracking.models import load_model as load

    return load(run_id, tracking_uri)


# ---- helpers -------------------------------------------------------------------------------------------------


def _progress(value: str) -> str:
    from sweeplab.core.errors import ConfigError

    if value not in ("lines", "tune", "none"):
        raise ConfigError(f"progress must be 'lines', 'tune' or 'none', got {value!r}")
    return value


def _door(where: Any, inputs: Any) -> None:
    """The command line's checks of the same values (core/inputs.py), before anything is written."""
    if where.storage is not None:
        inputs.storage(where.storage, "storage")
    if where.tracking_uri is not None:
        inputs.tracking_uri(where.tracking_uri, "tracking_uri")
    if where.address is not None:
        inputs.address(where.address, "address")


def _frame(result: Any, code: int) -> Any:
    """A finished session's trials (`trials`'s table), with how it ended in `.attrs`."""
    uri = _uri_of(result)
    df = _table(result.launch, result.record, _run_ids(uri, result.launch))
    df.attrs.update(launch=result.launch, status=result.status, exit_code=code, tracking_uri=uri)
    return df


def _uri_of(result: Any) -> str:
    from sweeplab.runner import launch as L

    meta = L.read_meta(result.launch_dir) or {}
    return str(meta.get("tracking_uri", ""))


def _run_ids(uri: str, launch: str) -> dict[str, str]:
    """Trial key -> MLflow child run id, for the runs MLflow holds of the launch ({} without a store)."""
    from sweeplab.analysis import runs

    try:
        c = runs.open_client(uri)
        return {t.trial_id: t.run_id for t in runs.trials(c, launch)} if c is not None else {}
    except Exception:  # no such launch in MLflow yet: the ledger is still the record
        return {}


def _table(launch: str, record: Any, run_ids: dict[str, str]) -> Any:
    import pandas as pd

    rows = []
    for t in record.ordered():
        rows.append(
            {
                "launch": launch,
                "key": t.key,
                "label": t.label,
                "status": str(t.status),
                "epochs": t.epoch,
                **t.point,
                **{k: v for k, v in t.last.items() if k != "epoch"},
                "error": t.error,
                "run_id": run_ids.get(t.key),
            }
        )
    return pd.DataFrame(rows)
