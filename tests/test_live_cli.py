"""`sweeplab run` on a real local Ray, its output piped: the live status as plain lines with the final
counts, no Ray warning; `--progress tune`: Tune's own status table, and the trials still in MLflow."""

from __future__ import annotations

import re
import subprocess

import pytest

from sweep_cli import child_runs, cli, write_sweep

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

WARNED = re.compile(r"WARNING|Warning:|warn_if_slow|may be a performance bottleneck")


def _sweep(tmp_path):
    return write_sweep(
        tmp_path,
        name="live",
        overrides={"train.epochs": 2},
        space={"optim.lr": {"grid": [0.5, 0.1, 0.0001]}},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        max_concurrent=2,
    )


def _run(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    argv = cli(tmp_path, "run", str(_sweep(tmp_path)), "--name", "live", "--num-cpus", "2", *extra)
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


def test_piped_run_prints_plain_status_lines_and_no_warning(tmp_path):
    r = _run(tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "\x1b" not in out  # a pipe: no cursor movement, no colour
    status = [line for line in r.stdout.splitlines() if re.match(r"\[\s*\d+s\] status  ", line)]
    ended = re.findall(r"  (done|stopped early at epoch \d/\d)  ", r.stdout)
    assert len(ended) == 3 and len(status) >= 3, out  # one after each trial's end, one at the close
    summary = re.search(r"sweeplab: 3 trials: (\d) finished, (\d) stopped early, 0 failed", r.stdout)
    assert summary, out
    finished, stopped = int(summary[1]), int(summary[2])
    last = status[-1]
    assert f"0 running, {finished} done, {stopped} stopped early, 0 failed, 0 pending (of 3)" in last, last
    # the best of the trials' last values, as their end lines print them (stopped trials included)
    ends = re.findall(r"\] (.+?)  (?:done|stopped early at epoch \d/\d)  val/error (\S+)", r.stdout)
    value, name = min((float(v), n) for n, v in ends)
    assert f"best val/error {value:.4g} ({name})" in last, out
    done, budget = map(int, re.search(r"epochs (\d+)/(\d+)", last).groups())
    assert done == budget == 2 * finished + sum(int(e) for e in re.findall(r"stopped early at epoch (\d)/", r.stdout))
    assert "left ~0s" in last
    assert not [line for line in out.splitlines() if WARNED.search(line)], out


def test_tune_progress_prints_tunes_table_and_still_logs_to_mlflow(tmp_path):
    r = _run(tmp_path, "--progress", "tune")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Trial status:" in out and "Current time:" in out, out
    assert not re.search(r"\] status  |  start  \(trial ", r.stdout), out  # ours are off
    assert "sweeplab: 3 trials:" in r.stdout  # the summary stays
    assert not [line for line in out.splitlines() if WARNED.search(line)], out
    _, runs = child_runs(tmp_path, "live")
    assert len(runs) == 3 and all(r.data.metrics.get("epoch", 0) >= 1 for r in runs)
