"""How long Tune's callback waits for the driver on each result: `Driver.trial_result` timed on 200
results (4 trials x 50 epochs) against a fresh SQLite MLflow store, and the time until MLflow holds
them all. Before issue 17 the driver wrote to MLflow inside the call; now it queues to the writer thread.

    python benchmarks/driver_results.py [--trials 4] [--epochs 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import sweeplab.tracking  # noqa: F401 - first: it turns MLflow telemetry off before mlflow loads
from sweeplab.commands.progress import Driver
from sweeplab.search_spaces import load
from sweeplab.tracking import Tracker
from sweeplab.tracking.store import client

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=50)
    args = ap.parse_args()
    sweep = load(ROOT / "sweeps" / "quickstart.yaml", smoke=True)
    points = sweep.points()
    with tempfile.TemporaryDirectory() as d:
        uri = f"sqlite:///{d}/mlflow.db"
        client(uri).search_experiments()  # the schema migrations, outside the timing
        tracker = Tracker(uri, "quickstart", "timing", {})
        driver = Driver(sweep, tracker, out=open(os.devnull, "w"))
        ids = [f"t{i}" for i in range(args.trials)]
        for i, tid in enumerate(ids):
            driver.trial_start(tid, points[i % len(points)])
        if hasattr(driver, "drain"):
            driver.drain()
        times, begin = [], time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            for i, tid in enumerate(ids):
                result = {
                    **{k: 1.0 for k in ("lr", "train/loss", "train/error", "val/loss", "val/error", "time/epoch_s")},
                    "epoch": epoch,
                    "time/images_per_s": 1000.0,
                    "reported_at": time.time(),
                    "config": {"point": points[i % len(points)]},
                }
                start = time.perf_counter()
                driver.trial_result(tid, result)
                times.append(time.perf_counter() - start)
        calls = time.perf_counter() - begin
        if hasattr(driver, "drain"):  # the driver before the writer thread has none
            driver.drain()
        total = time.perf_counter() - begin
        c = client(uri)
        logged = sum(len(c.get_metric_history(tracker._children[t], "epoch")) for t in ids)
    print(
        f"{len(times)} trial_result calls: mean {statistics.mean(times) * 1e3:.2f} ms, "
        f"median {statistics.median(times) * 1e3:.2f} ms, max {max(times) * 1e3:.1f} ms; "
        f"all calls {calls:.2f} s, all in MLflow after {total:.2f} s ({logged} epochs)"
    )


if __name__ == "__main__":
    main()
