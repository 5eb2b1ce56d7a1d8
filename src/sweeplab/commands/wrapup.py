"""A launch's MLflow parent run (what it holds), and the end of a session: report, summary, exit code."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from sweeplab.commands import listing
from sweeplab.core.names import COMMAND, LAUNCH, SMOKE, SWEEP_FILE, TABLES
from sweeplab.runner.driver import best_trial
from sweeplab.runner.launch import Result
from sweeplab.search_spaces import Sweep


def parent(sweep: Sweep, meta: dict[str, Any], max_concurrent: int | None) -> dict[str, Any]:
    """What the launch's parent run holds: tags, params (the sweep's settings) and text artifacts."""
    tags = {
        SWEEP_FILE: sweep.path,
        LAUNCH: meta["launch"],
        COMMAND: meta.get("command", ""),
        SMOKE: str(sweep.smoke).lower(),
        TABLES: ",".join(sweep.tables),
    }
    return {"tags": tags, "params": settings(sweep, max_concurrent), "files": launch_files(sweep)}


def settings(sweep: Sweep, max_concurrent: int | None) -> dict[str, Any]:
    """The sweep's settings as the parent run's params ('search.name', 'scheduler.grace_period', ...)."""
    r, s = sweep.resources, sweep.search
    optuna = {}
    if s.name == "optuna":
        from sweeplab.runner.study import shown

        optuna = {"search.sampler": s.sampler, "search.storage": shown(str(s.storage)), "search.study": s.study}
    return {
        "search.name": s.name,
        "search.num_samples": s.num_samples,
        "search.seed": s.seed,
        **optuna,
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
        "mlflow.log_models": str(sweep.log_models).lower(),
    }


def launch_files(sweep: Sweep) -> dict[str, str]:
    """The parent run's artifacts: the sweep file as given (as compiled when it is gone or unreadable)
    and the compiled trials as `sweeplab run --dry-run --json` prints them, one JSON list."""
    import yaml

    try:
        text = Path(sweep.path).read_text()
    except (OSError, UnicodeDecodeError):
        text = yaml.safe_dump(sweep.spec, sort_keys=False)
    return {"sweep.yaml": text, "trials.json": json.dumps(listing.trial_records(sweep), indent=1)}


def finish(result: Result, uri: str) -> int:
    """After a session: the launch's report on its parent run, the summary, what to do next; the exit code."""
    sweep, launch = result.sweep, result.launch
    if not result.lost:
        result.lost = _log_report(uri, launch)
    best = best_trial(sweep, result.record)
    listing.print_summary(sweep, result.record, _run_id(uri, launch, best.key) if best is not None else None)
    if result.out_of_time:
        print(
            f"sweeplab: the time budget (search.time_budget_s {sweep.search.time_budget_s:g} s) ran out: "
            f"{len(result.record.trials)} of {sweep.size()[0]} trials started; Tune stopped those still running",
            flush=True,
        )
    if sweep.search.name == "optuna":
        from sweeplab.runner.study import dashboard_hint, shown

        print(
            f"sweeplab: Optuna study {sweep.search.study!r} is in {shown(str(sweep.search.storage))}; to browse it: "
            f"{dashboard_hint(str(sweep.search.storage))}",
            flush=True,
        )
    if result.lost:  # never silent: the sweep ran, but its record in MLflow is incomplete
        who = ", ".join(f"trial {k}" if k else "the parent run" for k in result.lost)
        print(
            f"sweeplab: MLflow is missing data of {who}; `sweeplab resume {launch}` logs it from the ledger "
            "once the store works",
            file=sys.stderr,
        )
    if result.failure:  # the ledger could not be written: nothing after that point is recorded
        print(
            f"sweeplab: error: {result.failure}; the session stopped its trials: free space (or make the folder "
            f"writable), then `sweeplab resume {launch}`",
            file=sys.stderr,
        )
        return 1
    if result.owed:
        print(
            f"sweeplab: stopped with {result.owed} trial(s) unfinished; `sweeplab resume {launch}` continues them",
            file=sys.stderr,
        )
        return 1
    failed = [t for t in result.record.ordered() if t.status == "FAILED"]
    if failed:
        print(
            f"sweeplab: {len(failed)} trial(s) failed ({', '.join(t.key for t in failed)}); "
            f"`sweeplab resume {launch}` retries them",
            file=sys.stderr,
        )
    return 1 if failed or result.lost else 0


def _run_id(uri: str, launch: str, key: str) -> str | None:
    """The MLflow run id of trial `key` of the launch (None when MLflow does not have it)."""
    from sweeplab.analysis import runs

    try:
        c = runs.open_client(uri)
        found = [t for t in runs.trials(c, launch) if t.trial_id == key] if c is not None else []
    except Exception:
        return None
    return found[0].run_id if found else None


def _log_report(uri: str, launch: str) -> list[str]:
    """The launch's table of best trials and its figures, drawn from what MLflow holds, on its parent run;
    ['']  (the parent run lacks it) when MLflow did not take it."""
    from sweeplab.analysis import report, runs

    try:
        client = runs.open_client(uri)
        with tempfile.TemporaryDirectory(prefix="sweeplab-report-") as d:
            if client is not None and report.launch_report(client, launch, Path(d)):
                parent = runs.parent_run(client, launch)
                if parent is not None:
                    client.log_artifacts(parent.info.run_id, d, "report")
    except Exception as e:
        print(f"sweeplab: MLflow did not take the launch's report ({type(e).__name__})", file=sys.stderr)
        return [""]
    return []
