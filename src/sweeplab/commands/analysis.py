"""The analysis commands of the CLI: best, table, report, export, ui (each returns an exit code).

Bad input (unknown sweep, launch or table id) raises a ConfigError subclass, which the CLI turns
into exit 2 with its message; stdout carries only the requested output, so `best --yaml > f.yaml`
and `table --format csv > f.csv` work. Smoke runs (`sweeplab run --smoke`) are left out of every
result unless `--smoke` is given, which shows only them, "(smoke run)" in every title.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml

from sweeplab import reference
from sweeplab.analysis import runs, tables
from sweeplab.core.errors import ConfigError
from sweeplab.core.names import METRICS
from sweeplab.tracking.store import resolve_uri


def best(args: argparse.Namespace) -> int:
    """Print the best trials of a sweep or launch (text, --json), or the best config (--yaml)."""
    if args.metric not in METRICS:
        raise ConfigError(f"unknown metric '{args.metric}'; logged metrics: {', '.join(METRICS)}")
    c = runs.open_client(args.tracking_uri, must_exist=True)
    found = runs.best(c, args.target, args.metric, max(1, args.top), smoke=args.smoke)
    if not found:
        kind = "smoke-run " if args.smoke else ""
        print(f"sweeplab: no {kind}trial of '{args.target}' has logged {args.metric} yet", file=sys.stderr)
        _other_kind(runs.trials(c, args.target), args.smoke, f"'{args.target}'", f"sweeplab best {args.target}")
        return 1
    if args.yaml:  # the nested config, which `sweeplab train FILE` reruns as it is
        sys.stdout.write(yaml.safe_dump(runs.config_of(c, found[0]), sort_keys=False))
        return 0
    keys = runs.varied_keys(runs.kept(runs.trials(c, args.target), args.smoke))  # what the sweep varies
    if args.json:
        out = [
            {
                "rank": i + 1,
                "run_id": t.run_id,
                "trial_id": t.trial_id,
                "label": t.label,
                "experiment": t.experiment,
                "launch": t.launch,
                "status": t.status,
                "outcome": t.outcome,
                "stopped_early": t.stopped_early,
                "metric": args.metric,
                "value": _finite(t.metrics[args.metric]),
                "epochs": t.epochs,
                "varied": {k: t.cell(k) for k in keys},
                "params": t.params,
                "tags": {k: v for k, v in t.tags.items() if k.startswith("sweeplab.")},
            }
            for i, t in enumerate(found)
        ]
        print(json.dumps(out, indent=2))
        return 0
    built = tables.Built(
        args.target,
        f"best by {args.metric}" + _title(args.smoke),
        ["rank", "trial", args.metric, "epochs", "outcome", *keys, "run id"],
        [
            [str(i + 1), t.label, f"{t.metrics[args.metric]:.4g}", str(t.epochs), t.outcome]
            + [t.cell(k) for k in keys]
            + [t.run_id]
            for i, t in enumerate(found)
        ],
    )
    print(tables.render(built, "md"), end="")
    return 0


def _title(smoke: bool) -> str:
    return tables.SMOKE_TITLE if smoke else ""


def _other_kind(found: list[runs.LoggedTrial], smoke: bool, what: str, command: str) -> None:
    """On stderr: the runs left out are all of the other kind, and the command that shows them."""
    other = runs.kept(found, not smoke)
    if not other:
        return
    if smoke:
        print(
            f"sweeplab: no smoke run of {what}, only full runs ({len(other)} trials): `{command}` shows them",
            file=sys.stderr,
        )
    else:
        print(
            f"sweeplab: no full run of {what} exists yet, only smoke runs ({len(other)} trials): "
            f"`{command} --smoke` shows them",
            file=sys.stderr,
        )


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
    """Print one table rebuilt from the runs (and write it with its figures into --out), or with
    --all every table with runs behind it; --summary prints only the tables' verdict lines."""
    if args.list:
        return _list(args.format)
    if args.all and args.table_id:
        raise ConfigError("give a TABLE_ID or --all, not both")
    if not args.table_id and not args.all:
        raise ConfigError("give a TABLE_ID, --all or --list (see `sweeplab table --list`)")
    c = runs.open_client(args.tracking_uri)
    if args.all:
        return _all_tables(c, args)
    ref = reference.get(args.table_id, smoke=args.smoke)
    found = runs.table_trials(c, ref.id) if c is not None else []
    # the store's other trials, read only if no row of this table has seeds (for the seed noise)
    related = (lambda: runs.kept(runs.all_trials(c), args.smoke)) if c is not None else None
    built = tables.build(c, ref, runs.kept(found, args.smoke), smoke=args.smoke, related=related)
    if args.summary:
        print(f"{ref.id}{_title(args.smoke)}: {built.summary}")
    else:
        print(tables.render(built, args.format), end="")
        if args.format == "csv":  # the CSV stays rows only; its verdict line goes beside it
            print(f"sweeplab: {ref.id}{_title(args.smoke)}: {built.summary}", file=sys.stderr)
        _write(c, [built], args.out)
    if not built.has_runs:
        _other_kind(found, args.smoke, f"table {ref.id}", f"sweeplab table {ref.id}")
    return 0


def _all_tables(c: runs.MlflowClient | None, args: argparse.Namespace) -> int:
    """Every table with runs behind it (of the requested kind), or only their summary lines."""
    if args.format == "csv" and not args.summary and not args.out:
        raise ConfigError("--all --format csv would join many CSVs into one: add --out FOLDER or --summary")
    everything = runs.all_trials(c) if c is not None else []
    mine = runs.kept(everything, args.smoke)
    built = []
    for tid, ref in reference.tables(args.smoke).items():
        behind = [t for t in mine if tid in runs.tables_of(t)]
        if behind:
            built.append(tables.build(c, ref, behind, smoke=args.smoke, related=lambda: mine))
    if not built:
        print(f"sweeplab: no table has {'smoke ' if args.smoke else ''}runs behind it yet", file=sys.stderr)
        _other_kind(everything, args.smoke, "any table", "sweeplab table --all")
        return 0
    if args.summary:
        width = max(len(b.id + _title(args.smoke)) for b in built)
        for b in built:
            print(f"{b.id + _title(args.smoke) + ':':<{width + 1}} {b.summary}")
        return 0
    if args.format != "csv":
        print("\n".join(tables.render(b, args.format) for b in built), end="")
    _write(c, built, args.out)
    return 0


def _write(c: runs.MlflowClient | None, built: list[tables.Built], out: str | None) -> None:
    """Each table in every format, with its figures, into the folder `out` (nothing if None)."""
    if not out:
        return
    from sweeplab.analysis.report import slug, write_table

    figs = sum(len(write_table(c, b, Path(out))) for b in built)
    names = slug(built[0].id) if len(built) == 1 else f"<{len(built)} tables>"
    print(f"wrote {out}/{names}.{{md,csv,html}} and {figs} figure(s)", file=sys.stderr)


def report(args: argparse.Namespace) -> int:
    """Write every table with runs behind it, the figures and index.md/index.html into --out."""
    from sweeplab.analysis.report import report as write_report

    uri = resolve_uri(args.tracking_uri)
    out = write_report(runs.open_client(uri), Path(args.out), uri, smoke=args.smoke, ui_url=args.ui_url)
    print(f"report written to {out / 'index.html'} and {out / 'index.md'}")
    return 0


def export(args: argparse.Namespace) -> int:
    """Write every trial of a sweep or launch to one Parquet file."""
    from sweeplab.analysis.export import write_parquet

    if not str(args.out).endswith(".parquet"):
        raise ConfigError(f"--out must name a .parquet file, got '{args.out}'")
    c = runs.open_client(args.tracking_uri, must_exist=True)
    everything = runs.trials(c, args.target)
    found = runs.kept(everything, args.smoke)
    if everything and not found:  # writing an empty file would hide where the runs are
        print(f"sweeplab: no {'smoke-run ' if args.smoke else ''}trial of '{args.target}'", file=sys.stderr)
        _other_kind(everything, args.smoke, f"'{args.target}'", f"sweeplab export {args.target} --out {args.out}")
        return 1
    path = write_parquet(c, found, args.out)
    print(f"{len(found)} trials of '{args.target}'{_title(args.smoke)} written to {path}")
    return 0


def ui(args: argparse.Namespace) -> int:
    """Serve the MLflow UI on 127.0.0.1 and print (and open) a sweep's runs page; stops with sweeplab."""
    from sweeplab.commands.mlflow_ui import ui as serve

    return serve(args)
