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
    c = runs.open_client(args.tracking_uri, must_exist=True)  # no store: exit 2, as every analysis command
    found = runs.best(c, args.target, args.metric, max(1, args.top), smoke=args.smoke)
    if not found:
        everything = runs.trials(c, args.target)
        logged = f" with {args.metric}" if runs.kept(everything, args.smoke) else ""
        return nothing_found(f"'{args.target}'{logged}", everything, args.smoke, f"sweeplab best {args.target}")
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


NOTHING_FOUND = 1  # the exit code of every analysis command that found no run to show (bad input is 2)


def nothing_found(what: str, found: list[runs.LoggedTrial], smoke: bool, command: str) -> int:
    """One line on stderr, the same in best, table, export and report: what has no run of the requested
    kind, and the one hint: the command showing the other kind's runs, else how to make some."""
    kind = "smoke run" if smoke else "full run"
    other, mine = runs.kept(found, not smoke), runs.kept(found, smoke)
    if mine:  # `best`: trials that have not reported the metric yet
        hint = f"its {len(mine)} trial(s) have not logged it yet (`sweeplab status` shows how far they are)"
    elif other:
        flag = "" if smoke else " --smoke"
        hint = f"only {'full' if smoke else 'smoke'} runs ({len(other)} trials): `{command}{flag}` shows them"
    else:
        hint = "run a sweep first: `sweeplab run SWEEP.yaml` (`sweeplab table --list` names each table's sweep)"
    print(f"sweeplab: nothing found: no {kind} of {what}; {hint}", file=sys.stderr)
    return NOTHING_FOUND


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
    ref = None if args.all else reference.get(args.table_id, smoke=args.smoke)
    c = runs.open_client(args.tracking_uri, must_exist=True)
    if ref is None:
        return _all_tables(c, args)
    found = runs.table_trials(c, ref.id) if c is not None else []
    # the store's other trials, read only if no row of this table has seeds (for the seed noise)
    related = (lambda: runs.kept(runs.all_trials(c), args.smoke)) if c is not None else None
    built = tables.build(c, ref, runs.kept(found, args.smoke), smoke=args.smoke, related=related)
    if not args.summary:
        _refuse_overwrite([built], args.out, args.force)  # before anything is printed: a refusal prints nothing
    if not built.has_runs:
        return nothing_found(f"table {ref.id}", found, args.smoke, f"sweeplab table {ref.id}")
    if args.summary:
        print(f"{ref.id}{_title(args.smoke)}: {built.summary}")
    else:
        print(tables.render(built, args.format), end="")
        if args.format == "csv":  # the CSV stays rows only; its verdict line goes beside it
            print(f"sweeplab: {ref.id}{_title(args.smoke)}: {built.summary}", file=sys.stderr)
        _write(c, [built], args.out)
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
        return nothing_found("any table", everything, args.smoke, "sweeplab table --all")
    if args.summary:
        width = max(len(b.id + _title(args.smoke)) for b in built)
        for b in built:
            print(f"{b.id + _title(args.smoke) + ':':<{width + 1}} {b.summary}")
        return 0
    _refuse_overwrite(built, args.out, args.force)
    if args.format != "csv":
        print("\n".join(tables.render(b, args.format) for b in built), end="")
    _write(c, built, args.out)
    return 0


def _refuse_overwrite(built: list[tables.Built], out: str | None, force: bool) -> None:
    """Bad input when --out holds files of these tables already (md, csv, html, figures) and not --force."""
    if not out or force:
        return
    from sweeplab.analysis.report import slug

    names = [f"{slug(b.id)}{end}" for b in built for end in (".md", ".csv", ".html", *_FIGURES)]
    there = [n for n in names if (Path(out) / n).exists()]
    if there:
        more = f" and {len(there) - 3} more" if len(there) > 3 else ""
        raise ConfigError(
            f"--out {out} holds {', '.join(there[:3])}{more} already; pass --force to replace them, "
            "or choose another folder"
        )


_FIGURES = tuple(f"_{kind}.png" for kind in ("error", "parallel", "curves", "stops"))  # report.figures_of's


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
    folder = Path(args.out)
    earlier = _earlier_report(folder)
    if folder.is_dir() and any(folder.iterdir()) and not earlier and not args.force:
        raise ConfigError(
            f"--out {args.out} holds files that are not a sweeplab report; choose a new or empty folder, "
            "or pass --force to write into it"
        )
    c = runs.open_client(uri, must_exist=True)
    everything = runs.all_trials(c) if c is not None else []
    if not runs.kept(everything, args.smoke):  # an empty page would look like a broken report
        return nothing_found("any sweep", everything, args.smoke, "sweeplab report")
    out = write_report(c, folder, uri, smoke=args.smoke, ui_url=args.ui_url)
    again = " (replacing the earlier report there)" if earlier else ""
    print(f"report written to {out / 'index.html'} and {out / 'index.md'}{again}")
    return 0


def _earlier_report(folder: Path) -> bool:
    """Whether `folder` holds a report `sweeplab report` wrote (its index.md says so on its first line)."""
    try:
        with (folder / "index.md").open() as f:
            return f.readline().startswith("# sweeplab report")
    except (OSError, UnicodeDecodeError):
        return False


def export(args: argparse.Namespace) -> int:
    """Write every trial of a sweep or launch to one Parquet file."""
    from sweeplab.analysis.export import write_parquet

    c = runs.open_client(args.tracking_uri, must_exist=True)
    everything = runs.trials(c, args.target)
    found = runs.kept(everything, args.smoke)
    if not found:  # writing an empty file would hide where the runs are
        return nothing_found(
            f"'{args.target}'", everything, args.smoke, f"sweeplab export {args.target} --out {args.out}"
        )
    path = write_parquet(c, found, args.out)
    print(f"{len(found)} trials of '{args.target}'{_title(args.smoke)} written to {path}")
    return 0


def ui(args: argparse.Namespace) -> int:
    """Serve the MLflow UI on 127.0.0.1 and print (and open) a sweep's runs page; stops with sweeplab."""
    from sweeplab.commands.mlflow_ui import ui as serve

    return serve(args)
