"""The sweep driver at scale, by simulation: what sweeplab's record costs Tune per result (issues 17, 22).

Many fast trials (a trainable that reports N epochs of sweeplab's metrics without training) run three
ways, side by side in one process on one local Ray:

  tune      Tune alone: a Tuner over the same trials, no callback, no record.
  sweeplab  a real session (runner.launch.session): Tune's events -> runner.driver.Driver -> the ledger
            (JSON lines, fsynced per batch) -> the MLflow follower process (tracking/follow.py), as
            `sweeplab run` wires them. The driver process never talks to MLflow.
  ray       Tune alone plus Ray's own `ray.air.integrations.mlflow.MLflowLoggerCallback`.

against each store: a SQLite file, and `mlflow server` over HTTP on 127.0.0.1 (started here with a
SQLite backend, stopped by its process group at the end). For each: wall seconds (sweeplab's until the
follower has copied everything), results per second through the driver, the driver process's CPU ms
per result (and the follower's, a process of its own), the wall and CPU added to Tune alone, the
results that reached MLflow and whether each is there exactly once (every run's metric history holds
each epoch once, for every metric).

    python benchmarks/driver.py                                   # 32 trials x 200 epochs, 4 at a time
    python benchmarks/driver.py --trials 2 --epochs 5 --stores sqlite --json out.json   # tiny
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

import sweeplab  # noqa: F401  (sets the no-telemetry switches before mlflow or ray is imported)
from sweeplab.commands import wrapup
from sweeplab.commands.mlflow_ui import _stop_group, _wait_ready
from sweeplab.core.env import no_telemetry
from sweeplab.core.names import LAUNCH, METRICS, PARENT
from sweeplab.runner import cluster, launch, tune_exec, tune_space
from sweeplab.search_spaces import Sweep, load
from sweeplab.tracking import warm_store

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("tune", "sweeplab", "ray")
STORES = ("sqlite", "http")
# what the fake trial reports every epoch, as the engine does (time/train_s and time/compile_s are optional)
REPORTED = tuple(m for m in METRICS if m not in ("time/train_s", "time/compile_s"))


def fake_trial(config: dict[str, Any], epochs: int, epoch_s: float) -> None:
    """A trial that trains nothing: N epochs of plausible metrics for its point, as worker.Reporter
    sends them (the first result also carries the hardware and the dataset description)."""
    import math
    import random
    import time

    from ray import tune

    point = config["trial"]["point"]
    lr0 = float(point.get("optim.lr", 0.1))
    rng = random.Random(repr(point))
    first = {
        "hardware": "cpu x1 threads",
        "dataset": {"name": "fashion_mnist", "train": 60000, "test": 10000, "digest": "0123456789abcdef"},
    }
    for epoch in range(1, epochs + 1):
        if epoch_s:
            time.sleep(epoch_s)
        progress_ = epoch / epochs
        loss = 2.3 * math.exp(-3 * progress_) + 0.1 + 0.02 * rng.random()
        train_error = 100 * (0.9 * math.exp(-3 * progress_) + 0.03 * rng.random())
        val_error = 100 * (0.9 * math.exp(-3 * progress_) + 0.05 + 0.03 * rng.random())
        tune.report(
            {
                "epoch": epoch,
                "lr": lr0 * 0.5 * (1 + math.cos(math.pi * progress_)),
                "train/loss": loss,
                "train/error": train_error,
                "train/accuracy": 100 - train_error,
                "val/loss": loss * 1.1,
                "val/error": val_error,
                "val/accuracy": 100 - val_error,
                "time/epoch_s": 12.0 + rng.random(),
                "time/images_per_s": 5000.0 + 100 * rng.random(),
                "reported_at": time.time(),
                "node_id": "simulated",
                **(first if epoch == 1 else {}),
            }
        )


def sweep_file(folder: Path, trials: int, epochs: int, concurrency: int) -> Sweep:
    """A grid of `trials` learning rates, compiled as `sweeplab run` compiles a sweep file."""
    path = folder / "driver_bench.yaml"
    spec = {
        "name": "driver_bench",
        "config": str(ROOT / "configs/fashion_mnist/resnet_preact20.yaml"),
        "overrides": {"train.epochs": epochs},
        "space": {"optim.lr": {"grid": [round(0.001 * (i + 1), 6) for i in range(trials)]}},
        "search": {"name": "grid"},
        "scheduler": {"name": "fifo"},
        "metric": "val/error",
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
        "max_concurrent": concurrency,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load(path, max_trials=max(trials, 1000))


def trainable(sweep: Sweep, args: argparse.Namespace) -> Any:
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(fake_trial, epochs=sweep.max_epochs(), epoch_s=args.epoch_s), {"cpu": 1}
    )


def fit(sweep: Sweep, storage: str, name: str, args: argparse.Namespace, extra: list[Any]) -> tuple[int, float]:
    """Tune alone (plus `extra` callbacks): the trials as tune_exec gives them, no driver, no record.
    Returns (results, seconds)."""
    import logging

    from ray import tune

    # the result grid `fit` returns reads trial folders no logger filled (as tune_exec says)
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    trials = [{"key": str(i), "point": p, "known": 0} for i, p in enumerate(sweep.points())]
    tuner = tune.Tuner(
        trainable(sweep, args),
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            scheduler=tune_space.scheduler(sweep),
            max_concurrent_trials=args.concurrency,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=0,
            callbacks=extra,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - start
    return sum(int((r.metrics or {}).get("training_iteration", 0)) for r in grid), seconds


def session(sweep: Sweep, storage: str, name: str, uri: str, args: argparse.Namespace) -> tuple[int, float, float]:
    """A real sweeplab session of the fake trials, its follower copying the ledger to MLflow in its own
    process; returns (results, seconds until the follower is done, the follower's CPU seconds)."""
    folder = Path(storage) / name
    meta = {"sweep": sweep.snapshot(), "tracking_uri": uri, "launch": name, "command": "benchmarks/driver.py"}
    launch.write_meta(folder, meta)

    def executor(s: Any, driver: Any, plan: Any) -> None:
        tune_exec.execute(s, driver, plan, trainable=trainable(sweep, args))

    children0 = _cpu(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = launch.session(
        sweep, folder, wrapup.parent(sweep, meta, args.concurrency), executor, None, args.concurrency
    )
    seconds = time.perf_counter() - start
    if result.lost or result.owed:
        raise RuntimeError(f"session {name}: lost {result.lost}, owed {result.owed}")
    return (
        sum(len(t.results) for t in result.record.trials.values()),
        seconds,
        _cpu(resource.RUSAGE_CHILDREN) - children0,
    )


def one_way(way: str, store: str, uri: str, sweep: Sweep, storage: str, args: argparse.Namespace, n: int) -> dict:
    """Run the sweep one way against one store; what it cost and what reached MLflow."""
    name = f"{way}-{store}-{n}"
    experiment = sweep.name if way == "sweeplab" else f"driver_bench-{name}"
    extra = []
    if way == "ray":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        extra = [MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment)]
    cpu0, follower_s = _cpu(), 0.0
    if way == "sweeplab":
        results, wall_s, follower_s = session(sweep, storage, name, uri, args)
    else:
        results, wall_s = fit(sweep, storage, name, args, extra)
    cpu_s = _cpu() - cpu0
    row = {
        "way": way,
        "store": store,
        "round": n,
        "wall_s": round(wall_s, 3),
        "results": results,
        "results_per_s": round(results / wall_s, 1),
        "driver_cpu_ms_per_result": round(1000 * cpu_s / max(1, results), 3),
        "follower_cpu_ms_per_result": round(1000 * follower_s / max(1, results), 3),
    }
    if way != "tune":
        reached, once, problems = check(uri, experiment, way, args.trials, args.epochs, launch=name)
        row.update(
            reached_mlflow=reached,
            exactly_once=once,
            not_once=problems[:20],
            mlflow_results_per_s=round(reached / wall_s, 1),
        )
    return row


def check(
    uri: str, experiment: str, way: str, trials: int, epochs: int, launch: str = ""
) -> tuple[int, bool, list[str]]:
    """(results in MLflow, each exactly once, what is not): one run per trial, whose history of every
    reported metric holds steps 1..epochs once each. Results counted by the `epoch` metric's history."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return 0, False, [f"no experiment {experiment}"]
    where = ""
    if way == "sweeplab":
        where = (
            f"tags.`{PARENT}` IS NOT NULL and tags.`{LAUNCH}` = '{launch}'"
            if launch
            else f"tags.`{PARENT}` IS NOT NULL"
        )
    runs = c.search_runs([exp.experiment_id], where, max_results=50_000)
    want, reached = list(range(1, epochs + 1)), 0
    problems = [] if len(runs) == trials else [f"{len(runs)} runs for {trials} trials"]
    for r in runs:
        for key in REPORTED:
            steps = Counter(m.step for m in c.get_metric_history(r.info.run_id, key))
            if key == "epoch":
                reached += sum(steps.values())
            if sorted(steps) != want or set(steps.values()) != {1}:
                twice = sorted(k for k, v in steps.items() if v > 1)
                missing = sorted(set(want) - set(steps))
                problems.append(f"run {r.info.run_name} {key}: steps twice {twice[:5]}, missing {missing[:5]}")
    return reached, not problems, problems


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds of this process (the driver: Tune's loop, the callbacks, the ledger), or of its waited-for
    children (the follower, once a session has ended)."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def start_server(folder: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """`mlflow server` on a free port of 127.0.0.1, SQLite backend and artifacts in `folder`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
        "--artifacts-destination", str(folder / "mlartifacts"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    env = no_telemetry({**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    with open(folder / "server.log", "wb") as log:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    failed = _wait_ready(proc, base)
    if failed:
        _stop_group(proc)
        raise RuntimeError(f"{failed} (log: {folder / 'server.log'})")
    return proc, base


def summarise(rounds: list[dict]) -> list[dict]:
    """Median per store x way over the rounds, with the cost added to Tune alone in the same store."""
    rows = []
    for store in dict.fromkeys(r["store"] for r in rounds):
        base = statistics.median(r["wall_s"] for r in rounds if r["store"] == store and r["way"] == "tune")
        base_cpu = statistics.median(
            r["driver_cpu_ms_per_result"] for r in rounds if r["store"] == store and r["way"] == "tune"
        )
        for way in WAYS:
            mine = [r for r in rounds if r["store"] == store and r["way"] == way]
            if not mine:
                continue
            wall_s = statistics.median(r["wall_s"] for r in mine)
            results = mine[0]["results"]
            row = {
                "store": store,
                "way": way,
                "rounds": len(mine),
                "wall_s": round(wall_s, 2),
                "results": results,
                "results_per_s": round(results / wall_s, 1),
                "driver_cpu_ms_per_result": round(statistics.median(r["driver_cpu_ms_per_result"] for r in mine), 3),
                "follower_cpu_ms_per_result": round(
                    statistics.median(r["follower_cpu_ms_per_result"] for r in mine), 3
                ),
                "added_ms_per_result": round(1000 * (wall_s - base) / max(1, results), 3),
                "added_pct": round(100 * (wall_s - base) / base, 1),
                "added_cpu_ms_per_result": round(
                    statistics.median(r["driver_cpu_ms_per_result"] for r in mine) - base_cpu, 3
                ),
            }
            if way != "tune":
                row.update(
                    reached_mlflow=min(r["reached_mlflow"] for r in mine),
                    exactly_once=all(r["exactly_once"] for r in mine),
                    mlflow_results_per_s=round(statistics.median(r["mlflow_results_per_s"] for r in mine), 1),
                )
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| store | way | wall s | results | results/s | driver CPU ms/result | follower CPU ms/result "
        "| added ms/result | added % | added driver CPU ms/result | reached MLflow | exactly once |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['store']} | {r['way']} | {r['wall_s']:.1f} | {r['results']} | {r['results_per_s']:.0f} "
            f"| {r['driver_cpu_ms_per_result']:.2f} | {r['follower_cpu_ms_per_result']:.2f} "
            f"| {r['added_ms_per_result']:+.2f} | {r['added_pct']:+.1f} | {r['added_cpu_ms_per_result']:+.2f} "
            f"| {r.get('reached_mlflow', '-')} | {str(r['exactly_once']).lower() if 'exactly_once' in r else '-'} |"
        )
    return "\n".join(lines)


def goals(rows: list[dict], expected: int) -> dict[str, dict]:
    """Issue 22's goals for sweeplab's driver, per store: at most 0.5 driver CPU ms per result beyond Tune
    alone, every result in MLflow exactly once, and the wall within 15% of Tune alone's."""
    out = {}
    for r in rows:
        if r["way"] == "sweeplab":
            out[r["store"]] = {
                "added_driver_cpu_at_most_0.5_ms": r["added_cpu_ms_per_result"] <= 0.5,
                "every_result_exactly_once": r["exactly_once"] and r["reached_mlflow"] == expected,
                "added_wall_at_most_15_pct": r["added_pct"] <= 15,
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=4, help="trials at a time (each takes 1 Ray CPU)")
    p.add_argument("--epoch-s", type=float, default=0.0, help="seconds each fake epoch sleeps (0: report at once)")
    p.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    p.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    p.add_argument("--repeat", type=int, default=1, help="rounds; each round rotates the order of the ways")
    p.add_argument("--server-workers", type=int, default=1, help="`mlflow server --workers`")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args()
    if "tune" not in args.ways:
        p.error("--ways must include tune: the other ways are measured against it")
    expected = args.trials * args.epochs
    began, load0 = time.strftime("%Y-%m-%d %H:%M:%S %Z"), os.getloadavg()
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sweeplab-driver-bench-") as tmp:
        work = Path(tmp)
        sweep = sweep_file(work, args.trials, args.epochs, args.concurrency)
        storage = str(work / "ray")
        cluster.start(None, args.concurrency, storage, dashboard=False)
        server = None
        try:
            # warm-up: Ray's worker processes started and Tune imported in them before anything is timed
            (work / "warm").mkdir()
            fit(sweep_file(work / "warm", args.concurrency, 2, args.concurrency), storage, "warmup", args, [])
            for store in args.stores:
                if store == "http":
                    server, uri = start_server(work, args.server_workers)
                else:
                    uri = f"sqlite:///{work / 'mlflow.db'}"
                    warm_store(uri)  # the schema's migrations, outside the timings
                for n in range(args.repeat):
                    ways = args.ways[n % len(args.ways) :] + args.ways[: n % len(args.ways)]
                    for way in ways:
                        row = one_way(way, store, uri, sweep, storage, args, n)
                        rounds.append(row)
                        print(f"{store:6} {way:8} round {n}: {json.dumps(row)}", file=sys.stderr, flush=True)
                if server is not None:
                    _stop_group(server)
                    server = None
        finally:
            if server is not None:
                _stop_group(server)
            cluster.shutdown()
    rows = summarise(rounds)
    print(
        f"{args.trials} trials x {args.epochs} epochs, {args.concurrency} at a time ({expected} results per way); "
        f"load average {load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    print(table(rows))
    reached = goals(rows, expected)
    for store, g in reached.items():
        print(f"goals, {store}: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in g.items()))
    if args.json:
        out = {
            "command": " ".join(["python", "benchmarks/driver.py", *sys.argv[1:]]),
            "started": began,
            "trials": args.trials,
            "epochs": args.epochs,
            "concurrency": args.concurrency,
            "expected_results": expected,
            "cpus": os.cpu_count(),
            "load_average": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
            "rows": rows,
            "rounds": rounds,
            "goals": reached,
        }
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
