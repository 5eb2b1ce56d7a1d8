"""`sweeplab run | resume`, and the Python API's `sweeplab.run | resume`: one path for both.

Everything about the input is checked before anything starts (bad input exits 2). A launch is the
folder `STORAGE/NAME` (runner/launch.py); `sweeplab status` is commands/status.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sweeplab import ledger
from sweeplab.commands import listing
from sweeplab.core.errors import SweepError, suggest
from sweeplab.core.names import check_name
from sweeplab.runner import launch as L
from sweeplab.search_spaces import Sweep, from_snapshot, load

DEFAULT_STORAGE = "runs/ray"


@dataclass
class Where:
    """Where a launch runs and records: its storage folder, MLflow store, Ray, and what it shows."""

    storage: str | None = None
    tracking_uri: str | None = None
    address: str | None = None
    num_cpus: int | None = None
    progress: str = "lines"  # "lines": sweeplab's; "tune": Tune's own reporter; "none": nothing but the summary


def resolve_storage(storage: str | None) -> Path:
    """The storage folder, absolute (Ray's workers and `resume` from another folder see the same one)."""
    return Path(storage or DEFAULT_STORAGE).expanduser().resolve()  # a URI is refused at the door (core/inputs)


def run(args: argparse.Namespace) -> int:
    """`sweeplab run`: validate, then dry-run or launch."""
    sweep = load(args.sweep, smoke=args.smoke, max_trials=args.max_trials)
    if args.dry_run:
        (listing.print_trials_json if args.json else listing.print_trials)(sweep)
        return 0
    if args.json:
        raise SweepError("--json prints the compiled trials: use it with --dry-run")
    where = Where(args.storage, args.tracking_uri, args.address, args.num_cpus, getattr(args, "progress", "lines"))
    return start(sweep, where, args.name, args.max_concurrent)[1]


def resume(args: argparse.Namespace) -> int:
    """`sweeplab resume NAME`: continue a launch whose driver died or was stopped."""
    where = Where(args.storage, args.tracking_uri, args.address, args.num_cpus, getattr(args, "progress", "lines"))
    return proceed(args.name, where)[1]


def start(sweep: Sweep, where: Where, name: str | None = None, max_concurrent: int | None = None) -> tuple[Any, int]:
    """A new launch of a compiled sweep: (its runner.launch.Result, the exit code)."""
    storage = resolve_storage(where.storage)
    launch = check_name(name or f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}", "--name")
    if L.read_meta(storage / launch) is not None:
        raise SweepError(
            f"launch {launch!r} already exists in {storage}; continue it with "
            f"`sweeplab resume {launch}` or choose another --name"
        )
    from sweeplab.tracking import resolve_uri

    uri = resolve_uri(where.tracking_uri)
    meta: dict[str, Any] = {"sweep": sweep.snapshot(), "tracking_uri": uri, "launch": launch, "command": _command()}
    if sweep.search.name == "optuna":  # where the study is, fixed at launch: `resume` continues the same one
        from sweeplab.runner.study import with_study

        sweep = with_study(sweep, uri, storage, launch)
        meta["optuna"] = {"storage": sweep.search.storage, "study": sweep.search.study}
    print(
        f"sweeplab: launch {launch}: {sweep.size()[0]} trials of {sweep.path}{' (smoke)' if sweep.smoke else ''}, "
        f"at most {sweep.epoch_budget()} epochs; storage {storage}; tracking {uri}",
        flush=True,
    )
    L.write_meta(storage / launch, meta)
    return _drive(sweep, storage / launch, meta, where, max_concurrent or sweep.max_concurrent)


def proceed(name: str, where: Where) -> tuple[Any, int]:
    """Continue launch `name`: (its runner.launch.Result, the exit code)."""
    storage = resolve_storage(where.storage)
    check_name(name, "launch name")  # joined onto --storage: never a path out of it
    meta = L.read_meta(storage / name)
    if meta is None:
        known = L.launches(storage)
        raise SweepError(
            f"no launch {name!r} in {storage}{suggest(name, known)}{'; launches: ' + ', '.join(known) if known else ''}"
        )
    sweep = from_snapshot(meta["sweep"])
    if meta.get("optuna"):
        sweep = replace(sweep, search=replace(sweep.search, **meta["optuna"]))
    if where.tracking_uri:
        from sweeplab.tracking import resolve_uri

        meta["tracking_uri"] = resolve_uri(where.tracking_uri)
        L.write_meta(storage / name, meta)
    print(f"sweeplab: resuming {name} ({sweep.path}); storage {storage}; tracking {meta['tracking_uri']}", flush=True)
    return _drive(sweep, storage / name, meta, where, None)


def _drive(sweep: Sweep, launch_dir: Path, meta: dict[str, Any], where: Where, limit: int | None) -> tuple[Any, int]:
    from sweeplab.commands import progress, wrapup
    from sweeplab.runner.tune_exec import ray_executor

    view = progress.View(sweep) if where.progress == "lines" else None
    record = ledger.read(launch_dir)[0]
    listing.skipped(record)
    if view is not None:
        view.seen(record)
        view.status.begin()
    try:
        result = L.session(
            sweep,
            launch_dir,
            wrapup.parent(sweep, meta, limit),
            ray_executor(where.address, where.num_cpus),
            view,
            max_concurrent=limit,
            tune_reporter=where.progress == "tune",
        )
    finally:
        if view is not None:
            view.status.close()  # the final status stays printed above the summary
    return result, wrapup.finish(result, meta["tracking_uri"])


def _command() -> str:
    return " ".join(["sweeplab", *sys.argv[1:]])
