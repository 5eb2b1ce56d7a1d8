"""`sweeplab run | resume | status`: sweep file -> dry-run table, or a Tune run tracked in MLflow.

Everything about the input is checked before Ray starts (bad input exits 2). Each launch keeps
`sweeplab.json` next to Tune's state in `STORAGE/NAME`: the sweep as it was compiled and the
tracking URI, so `resume` rebuilds exactly the same trials even if the files were edited since.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sweeplab.commands import listing, progress
from sweeplab.core.errors import SweepError, suggest
from sweeplab.core.names import check_name
from sweeplab.runner.outcome import Outcome
from sweeplab.search_spaces import Sweep, from_snapshot, label, load

DEFAULT_STORAGE = "runs/ray"
META = "sweeplab.json"


def resolve_storage(storage: str | None) -> str:
    """A URI as given, a folder as an absolute path (Tune needs one)."""
    s = storage or DEFAULT_STORAGE
    return s if "://" in s else str(Path(s).expanduser().resolve())


def run(args: argparse.Namespace) -> int:
    """`sweeplab run`: validate, then dry-run or launch."""
    sweep = load(args.sweep, smoke=args.smoke, max_trials=args.max_trials)
    if args.dry_run:
        (listing.print_trials_json if args.json else listing.print_trials)(sweep)
        return 0
    if args.json:
        raise SweepError("--json prints the compiled trials: use it with --dry-run")
    storage = resolve_storage(args.storage)
    launch = check_name(args.name or f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}", "--name")
    if _read_meta(storage, launch) is not None:
        raise SweepError(
            f"launch {launch!r} already exists in {storage}; continue it with "
            f"`sweeplab resume {launch}` or choose another --name"
        )
    max_concurrent = args.max_concurrent or sweep.max_concurrent
    if max_concurrent is not None and max_concurrent < 1:
        raise SweepError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    from sweeplab.tracking import resolve_uri

    uri = resolve_uri(args.tracking_uri)
    meta = {"sweep": sweep.snapshot(), "tracking_uri": uri, "launch": launch, "command": _command()}
    if sweep.search.name == "optuna":  # where the study is, fixed at launch: `resume` continues the same one
        sweep = with_study(sweep, uri, storage, launch)
        meta["optuna"] = {"storage": sweep.search.storage, "study": sweep.search.study}
    n = len(sweep.trials())
    print(
        f"sweeplab: launch {launch}: {n} trials of {sweep.path}{' (smoke)' if sweep.smoke else ''}, "
        f"at most {sweep.epoch_budget()} epochs; storage {storage}; tracking {uri}",
        flush=True,
    )
    return _drive(sweep, storage, launch, meta, args, max_concurrent, resuming=False)


def resume(args: argparse.Namespace) -> int:
    """`sweeplab resume NAME`: continue a launch whose driver died."""
    storage = resolve_storage(args.storage)
    check_name(args.name, "launch name")  # joined onto --storage: never a path out of it
    meta = _read_meta(storage, args.name)
    if meta is None:
        known = launches(storage)
        raise SweepError(
            f"no launch {args.name!r} in {storage}{suggest(args.name, known)}"
            f"{'; launches: ' + ', '.join(known) if known else ''}"
        )
    sweep = from_snapshot(meta["sweep"])
    if meta.get("optuna"):
        sweep = replace(sweep, search=replace(sweep.search, **meta["optuna"]))
    if args.tracking_uri:
        from sweeplab.tracking import resolve_uri

        meta["tracking_uri"] = resolve_uri(args.tracking_uri)
    print(
        f"sweeplab: resuming {args.name} ({sweep.path}); storage {storage}; tracking {meta['tracking_uri']}", flush=True
    )
    return _drive(sweep, storage, args.name, meta, args, None, resuming=True)


def with_study(sweep: Sweep, tracking_uri: str, storage: str, launch: str) -> Sweep:
    """The sweep with its Optuna study's database and name filled in (the file's, else the defaults:
    optuna.db beside the MLflow SQLite file, the launch's name)."""
    from sweeplab.runner import optuna_study

    s = sweep.search
    url = optuna_study.absolute(s.storage) if s.storage else optuna_study.default_storage(tracking_uri, storage)
    return replace(sweep, search=replace(s, storage=url, study=s.study or launch))


def _drive(
    sweep: Sweep,
    storage: str,
    launch: str,
    meta: dict[str, Any],
    args: argparse.Namespace,
    max_concurrent: int | None,
    resuming: bool,
) -> int:
    from sweeplab.runner import cluster, launch_state, ray_backend, trials
    from sweeplab.tracking import Tracker, warm_store

    if resuming:
        cluster.environment(storage, local=args.address is None)
        try:  # Tune unpickles its state: only a copy this user's key signed is put back for it to read
            aside = ray_backend.prepare_resume(storage, launch)
        except launch_state.StateError as e:  # refused (not this key's): bad input, exit 2; none saved: 1
            print(
                f"sweeplab: {'error: ' if e.refused else ''}cannot resume {launch}: {e}; start the sweep "
                "again under another --name",
                file=sys.stderr,
            )
            return 2 if e.refused else 1
        if aside:
            print(
                f"sweeplab: moved aside unread, as they differ from the last verified Tune state: "
                f"{', '.join(aside)}; resuming from the verified copy",
                file=sys.stderr,
                flush=True,
            )
    else:
        _write_meta(storage, launch, meta)
    # A fresh SQLite store spends seconds on its schema migrations: do them while Ray starts.
    warm = threading.Thread(target=warm_store, args=(meta["tracking_uri"],), daemon=True)
    warm.start()
    address = cluster.start(args.address, args.num_cpus, storage, dashboard=sweep.resources.workers > 1)
    # SIGTERM (a scheduler's kill, `timeout`, `ray job stop`) ends the sweep like Ctrl-C does: Tune stops
    # the trials and saves its state, so the launch stays resumable. Set after ray.init, which installs
    # its own handler (a C++ stack dump).
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    warm.join()
    tags = {
        "sweeplab.sweep_file": sweep.path,
        "sweeplab.launch": launch,
        "sweeplab.command": _command(),
        "sweeplab.ray_address": address,
        "sweeplab.smoke": str(sweep.smoke).lower(),
        "sweeplab.tables": ",".join(sweep.tables),
    }
    tracker, status, driver, out_of_time = None, "FAILED", None, False
    reporter = getattr(args, "progress", "lines")  # "tune": Tune's own reporter instead of ours
    try:
        sweep, note = cluster.fit_resources(sweep, local=args.address is None)
        if note:  # e.g. a multi-GPU sweep's smoke run on a laptop
            print(f"sweeplab: {note}", flush=True)
        tracker = Tracker(meta["tracking_uri"], sweep.name, launch, tags, source=sweep.path)
        driver = progress.Driver(sweep, tracker, progress=reporter)
        driver.safe(tracker.launch_settings, settings(sweep, max_concurrent), launch_files(sweep))
        started = time.monotonic()
        if resuming:  # what an earlier driver could not log (killed, full disk) comes from Tune's results
            found = trials.trials(storage, launch, sweep)
            driver.reconcile(found)
            driver.seen(found)
        if driver.status is not None:
            driver.status.begin()
        if resuming:
            summaries = ray_backend.resume(sweep, launch, storage, driver, tune_reporter=reporter == "tune")
        else:
            summaries = ray_backend.run(
                sweep, launch, storage, driver, max_concurrent, tune_reporter=reporter == "tune"
            )
        driver.drain()  # the trial events Tune sent last are in MLflow (or in driver.lost) before it is read
        budget = sweep.search.time_budget_s
        out_of_time = budget is not None and time.monotonic() - started >= budget
        if driver.lost:  # the store may be back by now: log again from Tune's results what failed
            driver.reconcile(summaries)
        missing = max(0, _expected(sweep) - len(summaries))  # never created: Ctrl-C came first
        failed = [s for s in summaries if s.outcome is Outcome.FAILED]
        # Ctrl-C or SIGTERM: Tune stops the experiment, saves its state and returns with trials unfinished
        unfinished = [s for s in summaries if not s.outcome.ended]
        if out_of_time:  # Tune ended the sweep at search.time_budget_s: what it did not run is not owed
            missing, unfinished = 0, []
        status = "KILLED" if unfinished or missing else "FAILED" if failed else "FINISHED"
        for t in unfinished:  # stopped by Ctrl-C or SIGTERM: KILLED in MLflow until `resume` re-opens them
            driver.safe(tracker.trial_interrupted, t.trial_id)
        best = listing.best_trial(sweep, summaries)
        if best is not None:
            driver.safe(tracker.launch_best, sweep.metric, best.result[sweep.metric], label(best.point))
        driver.safe(_log_report, tracker, meta["tracking_uri"], launch)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if driver is not None and driver.status is not None:
            driver.status.close()  # the final status stays printed above the summary
        if tracker is not None and driver is not None:
            driver.safe(tracker.close, status)
        cluster.shutdown()
    listing.print_summary(sweep, summaries)
    if out_of_time:
        print(
            f"sweeplab: the time budget (search.time_budget_s {sweep.search.time_budget_s:g} s) ran out: "
            f"{len(summaries)} of {_expected(sweep)} trials started; Tune stopped those still running",
            flush=True,
        )
    if sweep.search.name == "optuna":
        from sweeplab.runner.optuna_study import dashboard_hint, shown

        print(
            f"sweeplab: Optuna study {sweep.search.study!r} is in {shown(str(sweep.search.storage))}; to browse it: "
            f"{dashboard_hint(str(sweep.search.storage))}",
            flush=True,
        )
    if driver.lost:  # never silent: the sweep ran, but its record in MLflow is incomplete
        who = ", ".join(t or "the parent run" for t in driver.lost_trials())
        print(
            f"sweeplab: MLflow is missing data of {who}; `sweeplab resume {launch}` logs it again from "
            "Tune's results once the store works",
            file=sys.stderr,
        )
    if unfinished or missing:
        print(
            f"sweeplab: stopped with {len(unfinished) + missing} trial(s) unfinished; `sweeplab resume {launch}` "
            "continues them",
            file=sys.stderr,
        )
        return 1
    lost = [s for s in failed if s.error and "cannot be resumed" in s.error]
    if lost:
        print(
            f"sweeplab: {len(lost)} trial(s) have no readable checkpoint and must be run again "
            f"({', '.join(s.trial_id for s in lost)})",
            file=sys.stderr,
        )
    if len(failed) > len(lost):
        print(
            f"sweeplab: {len(failed) - len(lost)} trial(s) failed; `sweeplab resume {launch}` retries them",
            file=sys.stderr,
        )
    return 1 if failed or driver.lost else 0


def settings(sweep: Sweep, max_concurrent: int | None) -> dict[str, Any]:
    """The sweep's settings as the parent run's params ('search.name', 'scheduler.grace_period', ...)."""
    r, s = sweep.resources, sweep.search
    return {
        "search.name": s.name,
        "search.num_samples": s.num_samples,
        "search.seed": s.seed,
        **(_optuna_settings(s) if s.name == "optuna" else {}),
        **({"search.trial_cap": s.trial_cap} if s.trial_cap is not None else {}),
        **({"search.time_budget_s": s.time_budget_s} if s.time_budget_s is not None else {}),
        "scheduler.name": sweep.scheduler.name,
        **{f"scheduler.{k}": v for k, v in sweep.scheduler.options.items()},
        "metric": sweep.metric,
        "mode": sweep.mode,
        "resources.workers": r.workers,
        "resources.cpus_per_worker": r.cpus_per_worker,
        "resources.gpus_per_worker": r.gpus_per_worker,
        "seeds": sweep.seeds,
        "smoke": str(sweep.smoke).lower(),
        "max_concurrent": max_concurrent or "unlimited",
        "mlflow.log_checkpoints": str(sweep.log_checkpoints).lower(),
    }


def _optuna_settings(s: Any) -> dict[str, Any]:
    from sweeplab.runner.optuna_study import shown

    return {"search.sampler": s.sampler, "search.storage": shown(str(s.storage)), "search.study": s.study}


def launch_files(sweep: Sweep) -> dict[str, str]:
    """The parent run's artifacts: the sweep file as given (as compiled when it is gone or unreadable)
    and the compiled trials as `sweeplab run --dry-run --json` prints them, one JSON list."""
    import yaml

    try:
        text = Path(sweep.path).read_text()
    except (OSError, UnicodeDecodeError):
        text = yaml.safe_dump(sweep.spec, sort_keys=False)
    return {"sweep.yaml": text, "trials.json": json.dumps(listing.trial_records(sweep), indent=1)}


def _log_report(tracker: Any, uri: str, launch: str) -> None:
    """The launch's table of best trials and its figures, drawn from what MLflow holds, on its parent run."""
    from sweeplab.analysis import report, runs

    client = runs.open_client(uri)
    with tempfile.TemporaryDirectory(prefix="sweeplab-report-") as d:
        if client is not None and report.launch_report(client, launch, Path(d)):
            tracker.launch_artifacts(Path(d), "report")


def _expected(sweep: Sweep) -> int:
    """How many trials the sweep has when it is complete."""
    from sweeplab.runner.ray_backend import expected_trials

    return expected_trials(sweep)


def status(args: argparse.Namespace) -> int:
    """`sweeplab status [NAME]`: launches and the states of their trials."""
    from sweeplab.runner import cluster, launch_state, trials

    storage = resolve_storage(args.storage)
    names = launches(storage)
    if args.name:
        check_name(args.name, "launch name")
    if args.name and args.name not in names:
        raise SweepError(f"no launch {args.name!r} in {storage}{suggest(args.name, names)}")
    if not names:
        print(f"no launches in {storage}")
        return 0
    cluster.environment(storage, local=False)
    for name in [args.name] if args.name else names:
        meta = _read_meta(storage, name) or {}
        compiled = from_snapshot(meta["sweep"]) if meta.get("sweep") else None
        try:
            found = trials.trials(storage, name, compiled)
        except launch_state.StateError as e:  # no copy of Tune's state this user's key signed: not read
            print(f"sweeplab: {name}: {e}", file=sys.stderr)
            found = []
        except Exception:
            found = []
        listing.print_status(name, meta, found, detail=bool(args.name))
    return 0


def _command() -> str:
    return " ".join(["sweeplab", *sys.argv[1:]])


# ---- launch metadata (local folder or any pyarrow filesystem URI) -----------------------------------


def _fs(storage: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(storage)


def _write_meta(storage: str, launch: str, meta: dict[str, Any]) -> None:
    fs, root = _fs(storage)
    fs.create_dir(f"{root}/{launch}", recursive=True)
    with fs.open_output_stream(f"{root}/{launch}/{META}") as f:
        f.write(json.dumps(meta, indent=1).encode())


def _read_meta(storage: str, launch: str) -> dict[str, Any] | None:
    if "://" not in storage:  # the common case, without importing pyarrow
        path = Path(storage) / launch / META
        return json.loads(path.read_text()) if path.is_file() else None
    import pyarrow.fs

    fs, root = _fs(storage)
    if fs.get_file_info(f"{root}/{launch}/{META}").type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(f"{root}/{launch}/{META}") as f:
        return json.loads(f.read())


def launches(storage: str) -> list[str]:
    """Launch names under `storage`, oldest first."""
    if "://" not in storage:
        folder = Path(storage)
        found = [p.parent for p in folder.glob(f"*/{META}")] if folder.is_dir() else []
        return [p.name for p in sorted(found, key=lambda p: (p / META).stat().st_mtime)]
    import pyarrow.fs

    fs, root = _fs(storage)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    return sorted(
        i.base_name
        for i in infos
        if i.type == pyarrow.fs.FileType.Directory and _read_meta(storage, i.base_name) is not None
    )
