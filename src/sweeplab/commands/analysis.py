"""The analysis commands of the CLI: best, table, report, export, ui (each returns an exit code).

Bad input (unknown sweep, launch or table id) raises a ConfigError subclass, which the CLI turns
into exit 2 with its message; stdout carries only the requested output, so `best --yaml > f.yaml`
and `table --format csv > f.csv` work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

from sweeplab import reference
from sweeplab.analysis import runs, tables
from sweeplab.analysis.runs import AXES
from sweeplab.core.env import no_telemetry
from sweeplab.core.errors import ConfigError
from sweeplab.core.names import METRICS
from sweeplab.tracking.store import resolve_uri, sqlite_path


def best(args: argparse.Namespace) -> int:
    """Print the best trials of a sweep or launch (text, --json), or the best config (--yaml)."""
    if args.metric not in METRICS:
        raise ConfigError(f"unknown metric '{args.metric}'; logged metrics: {', '.join(METRICS)}")
    c = runs.open_client(args.tracking_uri, must_exist=True)
    found = runs.best(c, args.target, args.metric, max(1, args.top))
    if not found:
        print(f"sweeplab: no trial of '{args.target}' has logged {args.metric} yet", file=sys.stderr)
        return 1
    if args.yaml:  # the nested config, which `sweeplab train FILE` reruns as it is
        sys.stdout.write(yaml.safe_dump(runs.config_of(c, found[0]), sort_keys=False))
        return 0
    if args.json:
        out = [
            {
                "rank": i + 1,
                "run_id": t.run_id,
                "trial_id": t.trial_id,
                "experiment": t.experiment,
                "launch": t.launch,
                "status": t.status,
                "stopped_early": t.stopped_early,
                "metric": args.metric,
                "value": _finite(t.metrics[args.metric]),
                "epochs": t.epochs,
                "params": t.params,
                "tags": {k: v for k, v in t.tags.items() if k.startswith("sweeplab.")},
            }
            for i, t in enumerate(found)
        ]
        print(json.dumps(out, indent=2))
        return 0
    built = tables.Built(
        args.target,
        f"best by {args.metric}",
        ["rank", "trial", args.metric, "epochs", "status", *AXES, "run id"],
        [
            [
                str(i + 1),
                t.trial_id,
                f"{t.metrics[args.metric]:.4g}",
                str(t.epochs),
                t.status,
                *(t.params.get(a, "") for a in AXES),
                t.run_id,
            ]
            for i, t in enumerate(found)
        ],
    )
    print(tables.render(built, "md"), end="")
    return 0


def _finite(value: float) -> float | None:
    """NaN as null: JSON has no NaN."""
    return None if math.isnan(value) else value


def _list(fmt: str) -> int:
    """Every table id, its size and the sweep files that fill it."""
    filled = reference.sweeps_by_table()
    rows = [
        [t.id, t.dataset, str(len(t.rows)), ", ".join(filled.get(t.id, [])) or "-", t.title]
        for t in reference.tables().values()
    ]
    built = tables.Built("tables", f"{len(rows)} reference tables", ["id", "dataset", "rows", "sweeps", "title"], rows)
    print(tables.render(built, fmt), end="")
    return 0


def table(args: argparse.Namespace) -> int:
    """Print one table rebuilt from the runs (and write it with its figures into --out)."""
    if args.list:
        return _list(args.format)
    if not args.table_id:
        raise ConfigError("give a TABLE_ID or --list (see `sweeplab table --list`)")
    ref = reference.get(args.table_id)
    c = runs.open_client(args.tracking_uri)
    trials = runs.table_trials(c, ref.id) if c is not None else []
    built = tables.build(c, ref, trials)
    print(tables.render(built, args.format), end="")
    if args.out:
        from sweeplab.analysis.report import write_table

        figs = write_table(c, built, Path(args.out))
        print(f"wrote {args.out}/{ref.id}.{{md,csv,html}} and {len(figs)} figure(s)", file=sys.stderr)
    return 0


def report(args: argparse.Namespace) -> int:
    """Write every table with runs behind it, the figures and index.md/index.html into --out."""
    from sweeplab.analysis.report import report as write_report

    uri = resolve_uri(args.tracking_uri)
    out = write_report(runs.open_client(uri), Path(args.out), uri)
    print(f"report written to {out / 'index.html'} and {out / 'index.md'}")
    return 0


def export(args: argparse.Namespace) -> int:
    """Write every trial of a sweep or launch to one Parquet file."""
    from sweeplab.analysis.export import write_parquet

    if not str(args.out).endswith(".parquet"):
        raise ConfigError(f"--out must name a .parquet file, got '{args.out}'")
    c = runs.open_client(args.tracking_uri, must_exist=True)
    found = runs.trials(c, args.target)
    path = write_parquet(c, found, args.out)
    print(f"{len(found)} trials of '{args.target}' written to {path}")
    return 0


def ui(args: argparse.Namespace) -> int:
    """Run the MLflow UI on 127.0.0.1 against the resolved tracking URI until Ctrl-C."""
    uri = resolve_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server: open it in a browser")
        return 0
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    db = sqlite_path(uri)
    if db is not None:  # artifacts of experiments created from the UI go next to the database
        cmd += ["--artifacts-destination", str(db.resolve().parent / "mlartifacts")]
    env = no_telemetry({**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    print(f"MLflow UI on http://127.0.0.1:{args.port} for {uri} (Ctrl-C stops it)", file=sys.stderr)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0
