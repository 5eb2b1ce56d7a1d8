"""`sweeplab status NAME` on a launch of many trials: the ledger alone is read (no Ray, no MLflow).

Writes a launch folder whose ledger holds `--trials` trials of `--epochs` epochs each (as a real driver
writes them, through ledger.Writer), then times `sweeplab status NAME` as a user runs it (a new process,
import included), best of `--repeat`.

    python benchmarks/status.py                       # 1,000 trials x 20 epochs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sweeplab import ledger
from sweeplab.runner import launch
from sweeplab.search_spaces import load

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="sweeplab-status-") as tmp:
        folder = Path(tmp) / "big"
        sweep = load(ROOT / "sweeps" / "quickstart.yaml", smoke=True)
        launch.write_meta(folder, {"sweep": sweep.snapshot(), "tracking_uri": "sqlite:///x.db", "launch": "big"})
        w = ledger.Writer(folder)
        w.append({"ev": "session", "pid": 1, "host": "bench"})
        for i in range(args.trials):
            key = str(i)
            w.append({"ev": "trial", "key": key, "point": {"optim.lr": 0.001 * (i + 1)}, "label": f"t{i}", "seed": 0})
            w.append({"ev": "start", "key": key, "session": 1})
            for e in range(1, args.epochs + 1):
                metrics = {m: 1.0 / e for m in ("lr", "train/loss", "train/error", "val/loss", "val/error")}
                w.append({"ev": "result", "key": key, "epoch": e, "metrics": metrics, "at": time.time()})
            w.append({"ev": "end", "key": key, "outcome": "FINISHED", "epoch": args.epochs})
        w.append({"ev": "stop", "status": "FINISHED"})
        w.close()
        size = ledger.path_of(folder).stat().st_size
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            r = subprocess.run(
                [sys.executable, "-m", "sweeplab.cli", "status", "big", "--storage", tmp],
                capture_output=True,
                text=True,
            )
            times.append(time.perf_counter() - start)
            assert r.returncode == 0 and f"{args.trials} trials: {args.trials} finished" in r.stdout, r.stderr
        print(
            json.dumps(
                {
                    "trials": args.trials,
                    "epochs": args.epochs,
                    "ledger_bytes": size,
                    "best_s": round(min(times), 3),
                    "median_s": round(sorted(times)[len(times) // 2], 3),
                }
            )
        )


if __name__ == "__main__":
    main()
