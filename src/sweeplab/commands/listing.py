"""What `sweeplab run --dry-run`, the end of `sweeplab run` and `sweeplab status` print about trials."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from sweeplab.config import from_dict
from sweeplab.core.fmt import number
from sweeplab.ledger import Outcome, Record, TrialRecord
from sweeplab.runner.driver import best_trial
from sweeplab.schema import flatten
from sweeplab.search_spaces import Sweep, label


def print_summary(sweep: Sweep, record: Record, run_id: str | None = None) -> None:
    """Counts of trial outcomes (the same the status block ended with) and the best finished trial: its
    label, MLflow run id, and the commands that rerun it (from the run, or from the sweep's config)."""
    counts = _counts(record.trials.values())
    unfinished = sum(n for o, n in counts.items() if not o.ended)
    print(
        f"sweeplab: {len(record.trials)} trials: {counts.get(Outcome.FINISHED, 0)} finished, "
        f"{counts.get(Outcome.STOPPED, 0)} stopped early, {counts.get(Outcome.FAILED, 0)} failed"
        + (f", {unfinished} unfinished" if unfinished else "")
    )
    best = best_trial(sweep, record)
    if best is None:
        return
    run = f"  (MLflow run {run_id})" if run_id else ""
    print(f"best: trial {best.key}  {sweep.metric} {best.last[sweep.metric]:.4g}  {best.label}{run}")
    if run_id:
        print(f"rerun it: sweeplab train --from-run {run_id}")
    print(f"best config: {best_command(sweep, best.point)}")


def _counts(trials: Iterable[TrialRecord]) -> dict[Outcome, int]:
    counts: dict[Outcome, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return counts


def print_status(name: str, meta: dict[str, Any], record: Record, detail: bool, running: bool = False) -> None:
    """One line per launch; with `detail`, one line per trial. A trial a scheduler stopped is 'stopped'.
    A trial left RUNNING by a driver that is gone is 'unfinished'."""
    sweep = meta.get("sweep", {})
    counts = _counts(record.trials.values())
    shown = {o: ("unfinished" if o is Outcome.RUNNING and not running else o.lower()) for o in counts}
    states = ", ".join(f"{n} {shown[o]}" for o, n in sorted(counts.items())) or "no trial started"
    now = "  (running now)" if running else ""
    smoke = " (smoke)" if sweep.get("smoke") else ""
    print(f"{name}  {sweep.get('path', '?')}{smoke}  {len(record.trials)} trials: {states}{now}")
    if not detail:
        return
    for t in record.ordered():
        r = t.last
        vals = "  ".join(f"{k} {r[k]:.4g}" for k in ("val/error",) if isinstance(r.get(k), (int, float)))
        vals = f"epoch {t.epoch}  {vals}".strip()
        state = shown.get(t.status, t.status.lower()) if t.status is Outcome.RUNNING else str(t.status)
        error = f"  {t.error}" if t.error and t.status is Outcome.FAILED else ""
        print(f"  {t.key:>5}  {state:10s}  {vals:28s}  {t.label}{error}")


def skipped(record: Record) -> None:
    """One line when the ledger has lines that are not sweeplab's (never fatal, never silent)."""
    if record.skipped:
        print(f"sweeplab: the ledger has {record.skipped} line(s) that are not sweeplab's; skipped", file=sys.stderr)


def print_trials(sweep: Sweep) -> None:
    """The dry-run: one line per compiled trial, then the count and the epoch budget."""
    trials = sweep.trials()
    s = sweep.search
    sched = "".join(f" {k}={v}" for k, v in sweep.scheduler.options.items())
    print(
        f"{sweep.name}{' (smoke)' if sweep.smoke else ''}: {sweep.path}; search {s.name}"
        f"{' seed=' + str(s.seed) if s.name != 'grid' else ''}; scheduler {sweep.scheduler.name}{sched}; "
        f"metric {sweep.metric} ({sweep.mode})"
    )
    keys = list(dict.fromkeys(k for t in trials for k in t.values))
    header = ["#", *keys, "epochs", *(f"row:{tid}" for tid in sweep.tables)]
    rows = [
        [
            str(t.index),
            *(number(t.values.get(k)) for k in keys),
            str(t.config.train.epochs),
            *(str(t.rows.get(tid, "-")) for tid in sweep.tables),
        ]
        for t in trials
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    if s.name == "optuna":
        print(
            f"(optuna: the {s.sampler} sampler chooses the points as results arrive; shown are {len(trials)} "
            "draws from the prior)"
        )
    made_of = sweep.size()[1]
    if "capped" in made_of:
        print(f"({made_of})")
    if s.time_budget_s is not None:
        print(f"(search.time_budget_s {s.time_budget_s:g}: the sweep ends after {s.time_budget_s:g} s)")
    res = sweep.resources
    print(
        f"{len(trials)} trials, epoch budget {sweep.epoch_budget()} (if no trial is stopped early); "
        f"per trial {res.workers} worker(s) x {res.cpus_per_worker} CPU, {res.gpus_per_worker} GPU; "
        f"max concurrent {sweep.max_concurrent or 'unlimited'}"
    )


def trial_records(sweep: Sweep) -> list[dict[str, Any]]:
    """The compiled trials as data: each one's full config by dotted key, seed, label and table rows."""
    return [
        {
            "index": t.index,
            "label": label(t.values),
            "seed": t.config.train.seed,
            "point": t.values,
            "tables": t.rows,
            "smoke": sweep.smoke,
            "config": t.config.flat(),
        }
        for t in sweep.trials()
    ]


def print_trials_json(sweep: Sweep) -> None:
    """The dry-run as data: one JSON object per line, so a user or a test can check what will run with `jq`."""
    for record in trial_records(sweep):
        print(json.dumps(record, sort_keys=False))


def best_command(sweep: Sweep, point: dict[str, Any]) -> str:
    """A `sweeplab train` command line that reproduces the trial of `point`."""
    config_file = sweep.spec["config"]
    base = flatten(from_dict(sweep.config_tree).to_dict())
    flat = flatten(sweep.resolve(point).to_dict())
    diff = [f"{k}={number(v)}" for k, v in flat.items() if base.get(k) != v]
    return f"sweeplab train {config_file} {' '.join(diff)}".rstrip()
