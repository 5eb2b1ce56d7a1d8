"""The sweep driver at scale, by simulation: what tracking costs Tune per result (issue 17).

Many fast trials (a trainable that reports N epochs of sweeplab's metrics without training) run three
ways, side by side in one process on one local Ray:

  tune      Tune alone, with the callbacks sweeplab gives it (its forwarding callback, with no
            listener, and the JSON/CSV loggers): no MLflow.
  sweeplab  the same, with sweeplab's listener: runner.ray_backend's callback -> commands.progress.Driver
            -> tracking.Tracker, as `sweeplab run` wires them.
  ray       the same as `tune`, plus Ray's own `ray.air.integrations.mlflow.MLflowLoggerCallback`.

against each store: a SQLite file, and `mlflow server` over HTTP on 127.0.0.1 (started here with a
SQLite backend, stopped by its process group at the end). For each: wall seconds, results per second
through the driver, the driver process's CPU ms per result, the ms per result added to Tune alone, the
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
from sweeplab.commands import progress
from sweeplab.commands.mlflow_ui import _stop_group, _wait_ready
from sweeplab.core.env import no_telemetry
from sweeplab.core.names import LAUNCH, METRICS, PARENT
from sweeplab.runner import cluster, ray_backend, tune_space
from sweeplab.search_spaces import Sweep, load
from sweeplab.tracking import Tracker, warm_store

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

    lr0 = float(config["point"].get("optim.lr", 0.1))
    rng = random.Random(repr(config["point"]))
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


def fit(sweep: Sweep, storage: str, name: str, args: argparse.Namespace, extra: list[Any]) -> tuple[Any, float]:
    """One Tune experiment of the fake trials, configured as ray_backend.run configures a sweep's."""
    from ray import tune

    trainable = tune.with_parameters(fake_trial, epochs=sweep.max_epochs(), epoch_s=args.epoch_s)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=tune_space.param_space(sweep),
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
            callbacks=[ray_backend._callback(), *ray_backend._loggers(), *extra],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    return grid, time.perf_counter() - start


def drain(driver: Any) -> list[str]:
    """Wait for what the driver still has to write (a batching writer), by whichever method it has."""
    called = []
    for obj, names in ((driver, ("drain", "flush", "close")), (driver.tracker, ("drain", "flush"))):
        for name in names:
            fn = getattr(obj, name, None)
            if callable(fn):
                fn()
                called.append(f"{type(obj).__name__}.{name}")
                break
    return called


def one_way(way: str, store: str, uri: str, sweep: Sweep, storage: str, args: argparse.Namespace, n: int) -> dict:
    """Run the sweep one way against one store; what it cost and what reached MLflow."""
    name = f"{way}-{store}-{n}"
    experiment = f"driver_bench-{name}"
    driver, extra = None, []
    if way == "sweeplab":
        tracker = Tracker(uri, experiment, name, {"sweeplab.sweep_file": sweep.path}, source=sweep.path)
        driver = progress.Driver(sweep, tracker, out=open(os.devnull, "w"))  # closed below
    elif way == "ray":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        extra = [MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment)]
    ray_backend._LISTENER, ray_backend._KEEPER = driver, None
    cpu0 = _cpu()
    try:
        grid, fit_s = fit(sweep, storage, name, args, extra)
        start, drained = time.perf_counter(), []
        if driver is not None:
            drained = drain(driver)
            driver.safe(driver.tracker.close, "FINISHED")
        drain_s = time.perf_counter() - start
    finally:
        ray_backend._LISTENER = None
        if driver is not None:
            driver.out.close()
    cpu_s = _cpu() - cpu0
    results = sum(int((r.metrics or {}).get("training_iteration", 0)) for r in grid)
    row = {
        "way": way,
        "store": store,
        "round": n,
        "fit_s": round(fit_s, 3),
        "drain_s": round(drain_s, 3),
        "wall_s": round(fit_s + drain_s, 3),
        "results": results,
        "errors": sum(1 for r in grid if r.error is not None),
        "results_per_s": round(results / fit_s, 1),
        "driver_cpu_ms_per_result": round(1000 * cpu_s / max(1, results), 3),
        "drained_with": drained,
        "lost": len(driver.lost) if driver is not None else 0,
    }
    if way != "tune":
        reached, once, problems = check(uri, experiment, way, args.trials, args.epochs)
        row.update(
            reached_mlflow=reached,
            exactly_once=once,
            not_once=problems[:20],
            mlflow_results_per_s=round(reached / (fit_s + drain_s), 1),
        )
    return row


def check(uri: str, experiment: str, way: str, trials: int, epochs: int) -> tuple[int, bool, list[str]]:
    """(results in MLflow, each exactly once, what is not): one run per trial, whose history of every
    reported metric holds steps 1..epochs once each. Results counted by the `epoch` metric's history."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return 0, False, [f"no experiment {experiment}"]
    where = f"tags.`{PARENT}` IS NOT NULL and tags.`{LAUNCH}` IS NOT NULL" if way == "sweeplab" else ""
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


def _cpu() -> float:
    """CPU seconds of this process (the driver: Tune's loop, the callbacks, the MLflow client, SQLite)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
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
        base = statistics.median(r["fit_s"] for r in rounds if r["store"] == store and r["way"] == "tune")
        base_cpu = statistics.median(
            r["driver_cpu_ms_per_result"] for r in rounds if r["store"] == store and r["way"] == "tune"
        )
        for way in WAYS:
            mine = [r for r in rounds if r["store"] == store and r["way"] == way]
            if not mine:
                continue
            fit_s, wall_s = (statistics.median(r[k] for r in mine) for k in ("fit_s", "wall_s"))
            results = mine[0]["results"]
            row = {
                "store": store,
                "way": way,
                "rounds": len(mine),
                "wall_s": round(wall_s, 2),
                "fit_s": round(fit_s, 2),
                "results": results,
                "results_per_s": round(results / fit_s, 1),
                "driver_cpu_ms_per_result": round(statistics.median(r["driver_cpu_ms_per_result"] for r in mine), 3),
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
                    lost=max(r["lost"] for r in mine),
                )
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| store | way | wall s | results | results/s (driver) | driver CPU ms/result | added ms/result "
        "| added % | added CPU ms/result | reached MLflow | results/s into MLflow | exactly once |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['store']} | {r['way']} | {r['wall_s']:.1f} | {r['results']} | {r['results_per_s']:.0f} "
            f"| {r['driver_cpu_ms_per_result']:.2f} | {r['added_ms_per_result']:+.2f} | {r['added_pct']:+.1f} "
            f"| {r['added_cpu_ms_per_result']:+.2f} "
            f"| {r.get('reached_mlflow', '-')} | {r.get('mlflow_results_per_s', '-')} "
            f"| {str(r['exactly_once']).lower() if 'exactly_once' in r else '-'} |"
        )
    return "\n".join(lines)


def goals(rows: list[dict], expected: int) -> dict[str, dict]:
    """Issue 17's goals for sweeplab's tracker, per store."""
    out = {}
    for r in rows:
        if r["way"] == "sweeplab":
            out[r["store"]] = {
                "added_pct_at_most_10": r["added_pct"] <= 10,
                "mlflow_at_least_500_per_s": r["mlflow_results_per_s"] >= 500,
                "every_result_exactly_once": r["exactly_once"] and r["reached_mlflow"] == expected,
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
