"""benchmarks/driver.py run tiny on a real local Ray and a real MLflow store: every way is measured, and
every simulated result reaches MLflow exactly once through sweeplab's session (ledger, then the follower)
and through Ray's callback. (Its `--stores http` runs the same follower against `mlflow server`.)"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlflow_store import fresh_uri, run_trial
from sweeplab.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
TRIALS, EPOCHS = 2, 5


def bench_module():
    spec = importlib.util.spec_from_file_location("driver_bench", ROOT / "benchmarks/driver.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exactly_once_check_sees_a_duplicate_and_a_gap(tmp_path, tmp_path_factory) -> None:
    """The benchmark's MLflow check counts each trial's epochs, and fails on one logged twice or missing."""
    check = bench_module().check
    uri = fresh_uri(tmp_path, tmp_path_factory)
    t = Tracker(uri, "bench", "launch", {})
    for i in range(2):
        run_trial(t, f"t{i}", 0.1, 5e-4, 1, [20.0, 15.0, 12.0], epochs=3)
    assert check(uri, "bench", "sweeplab", trials=2, epochs=3)[:2] == (6, True)
    assert check(uri, "bench", "sweeplab", trials=3, epochs=3)[:2] == (6, False)  # a trial without a run
    assert check(uri, "bench", "sweeplab", trials=2, epochs=4)[:2] == (6, False)  # an epoch missing
    MlflowClient(uri).log_metric(t._children["t1"], "val/loss", 0.5, step=2)  # one metric of one epoch twice
    assert check(uri, "bench", "sweeplab", trials=2, epochs=3)[:2] == (6, False)


def run_bench(tmp_path: Path, *stores: str) -> dict:
    out = tmp_path / "driver.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks/driver.py"),
        *("--trials", str(TRIALS), "--epochs", str(EPOCHS), "--concurrency", "2", "--json", str(out)),
        *("--stores", *stores),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| sweeplab |" in done.stdout  # the table is printed
    return json.loads(out.read_text())


def check(report: dict, stores: tuple[str, ...]) -> None:
    assert report["expected_results"] == TRIALS * EPOCHS
    rows = {(r["store"], r["way"]): r for r in report["rows"]}
    assert set(rows) == {(s, w) for s in stores for w in ("tune", "sweeplab", "ray")}
    for (store, way), r in rows.items():
        assert r["results"] == TRIALS * EPOCHS, (store, way)
        assert r["wall_s"] > 0 and r["results_per_s"] > 0
        if way == "tune":
            assert r["added_ms_per_result"] == 0 and "reached_mlflow" not in r
            continue
        assert r["reached_mlflow"] == TRIALS * EPOCHS, (store, way)
        assert r["exactly_once"] is True, (store, way, r["not_once"])
    for store in stores:
        assert report["goals"][store]["every_result_exactly_once"] is True
        assert rows[(store, "sweeplab")]["follower_cpu_ms_per_result"] > 0  # the follower's own process


@pytest.mark.slow
def test_driver_bench_sqlite(tmp_path: Path) -> None:
    check(run_bench(tmp_path, "sqlite"), ("sqlite",))
