"""Shared test helpers live in plain modules next to the tests, imported by name:

- sweep_cli: drive `sweeplab` in a subprocess on tiny data (sweep file, argv, its processes, sockets, MLflow runs);
- mlflow_store: a fresh, already-migrated SQLite MLflow store per test, and a sweep simulated through the Tracker.
- mlflow_layout: what MLflow must hold of a finished launch (child runs, epochs, artifacts, parent), on any store;
- pg_server: a throwaway PostgreSQL cluster on 127.0.0.1 and an `mlflow server` on it;
- ray_head: a Ray head on 127.0.0.1 that several `sweeplab run --address` drivers join.
- fault_kit: test_faults' driver in the background, its processes, a filled disk, a planted pickle, and what
  MLflow and the ledger must hold of a launch afterwards.

They are modules rather than fixtures because most are plain functions of a folder, called from module-scoped
fixtures and helpers as well as from tests. A test file imports them, never another test file, so that each
test file can be renamed, split or deleted on its own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Torch's CPU threads (OpenMP) spin while they wait for each other, which on a 2-core box that runs two test
# workers and their subprocesses burns the other worker's CPU: a 2-thread `sweeplab train` of the README
# took ~10 CPU-s beside two busy processes, ~7 with passive waits (BENCHMARKS.md, "The test suite"). Set
# before any torch is loaded here (OpenMP reads it once), and inherited by every process a test starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# pytest's default import mode puts tests/ on sys.path already; `--import-mode=importlib` does not.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# `make test` runs two pytest-xdist workers, each taking a whole file at a time in collection order: the
# longest files are collected first, so that neither worker is handed one of them when the other is done.
LONGEST_FIRST = (
    "test_readme.py",
    "test_faults.py",
    "test_sweeps_ray.py",
    "test_mlflow_postgres.py",
    "test_gpu_check.py",
    "test_multinode.py",
    "test_optuna.py",
    "test_runner.py",
    "test_driver_bench.py",
    "test_ui.py",  # servers that take seconds to stop: not the last file while the other worker idles
)


def pytest_collection_modifyitems(items: list) -> None:
    """The files of LONGEST_FIRST first, in its order; every other file after them, as collected."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
