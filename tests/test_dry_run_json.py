"""`sweeplab run SWEEP --dry-run --json`: the compiled trials as data, one JSON object per line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sweeplab.schema import valid_keys
from sweeplab.search_spaces import load

ROOT = Path(__file__).resolve().parents[1]


def dry_run_json(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sweeplab.cli", "run", *args, "--dry-run", "--json"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_each_trial_is_one_json_line_with_its_whole_config():
    r = dry_run_json("sweeps/quickstart.yaml", "--smoke")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    trials = load("sweeps/quickstart.yaml", smoke=True).trials()
    assert len(records) == len(trials) == 8
    for rec, t in zip(records, trials):
        assert rec["index"] == t.index and rec["smoke"] is True
        assert rec["config"] == json.loads(json.dumps(t.config.flat()))  # every key, as the trial runs it
        assert rec["point"] == t.values and rec["tables"] == t.rows and rec["seed"] == t.config.train.seed
        assert rec["config"]["optim.lr"] == t.values["optim.lr"]
        model_options = {k for k in rec["config"] if k.startswith("model.")}
        assert set(valid_keys()) - {"model.name"} <= set(rec["config"]) and "model.name" in model_options


def test_a_variant_sweep_shows_each_variants_settings():
    r = dry_run_json("sweeps/precision.yaml")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    by_label = {}
    for rec in records:
        by_label.setdefault(rec["point"]["variant"], set()).add(rec["config"]["train.precision"])
    assert set(by_label) == {"FP32", "FP16", "mixed"}
    assert all(len(precisions) == 1 for precisions in by_label.values())  # one precision per variant label


def test_json_without_dry_run_is_bad_input():
    cmd = [sys.executable, "-m", "sweeplab.cli", "run", "sweeps/quickstart.yaml", "--json"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--dry-run" in r.stderr and "Traceback" not in r.stderr and r.stdout == ""
