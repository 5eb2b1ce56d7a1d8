"""Sweeps on a local Ray (2 CPUs): ASHA stops trials early, a SIGKILLed driver is resumed, DDP keeps
the ranks' weights identical, and every socket a sweeplab-started Ray listens on is on loopback.

Each test drives the `sweeplab` CLI in a subprocess, on tiny synthetic data and a tiny model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sweep_cli import LOOPBACK, child_runs, cli, descendants, listening, write_sweep


@pytest.fixture(scope="module")
def asha_sweep(tmp_path_factory):
    """Run a 4-trial ASHA sweep; while its first trial runs, record the sockets of its Ray processes."""
    tmp_path = tmp_path_factory.mktemp("asha")
    path = write_sweep(
        tmp_path,
        name="asha",
        overrides={"train.epochs": 4},
        space={"optim.lr": {"grid": [0.5, 0.3, 0.001, 0.0001]}},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        max_concurrent=2,
        tables={"quickstart": {"match": {"initial lr": "optim.lr"}}},
    )
    proc = subprocess.Popen(
        cli(tmp_path, "run", str(path), "--name", "asha", "--num-cpus", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines, sockets = [], None
    for line in proc.stdout:
        lines.append(line)
        if sockets is None and " start " in line:  # Ray, the dashboard and a trial's worker are all up
            sockets = listening(descendants(proc.pid))
    proc.wait(timeout=600)
    return tmp_path, proc.returncode, "".join(lines), sockets


@pytest.mark.slow
def test_asha_stops_a_trial_early(asha_sweep):
    tmp_path, rc, out, _ = asha_sweep
    assert rc == 0, out
    assert "stopped early at epoch" in out
    summary = re.search(r"sweeplab: 4 trials: (\d) finished, (\d) stopped early, 0 failed", out)
    assert summary and int(summary[1]) >= 1 and int(summary[1]) + int(summary[2]) == 4, out
    client, runs = child_runs(tmp_path, "asha")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    stopped = [r for r in runs if r.data.tags.get("sweeplab.stopped_early") == "true"]
    assert stopped and all(r.data.metrics["epoch"] < 4 for r in stopped)
    assert any(r.data.metrics["epoch"] == 4 for r in runs)
    assert all(r.data.tags["sweeplab.hardware"].startswith("cpu") for r in runs)
    lrs = sorted(float(r.data.params["optim.lr"]) for r in runs)  # quickstart numbers its rows by value
    assert all(r.data.tags["sweeplab.row.quickstart"] == str(lrs.index(float(r.data.params["optim.lr"]))) for r in runs)
    status = subprocess.run(
        [sys.executable, "-m", "sweeplab.cli", "status", "asha", "--storage", str(tmp_path / "ray")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0 and "STOPPED" in status.stdout and "FINISHED" in status.stdout
    # the run's summary and `status` tell finished from stopped the same way
    assert f"4 trials: {summary[1]} finished, {summary[2]} stopped" in status.stdout, status.stdout


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only(asha_sweep):
    *_, sockets = asha_sweep
    assert sockets is not None and len(sockets) >= 3, sockets  # at least GCS, raylet and dashboard
    assert all(addr in LOOPBACK for addr, _ in sockets), sockets


@pytest.mark.slow
def test_resume_after_sigkill_finishes_every_trial_once(tmp_path):
    path = write_sweep(
        tmp_path,
        name="crash",
        overrides={"train.epochs": 3},
        space={"optim.lr": {"grid": [0.001, 0.01, 0.1, 0.5]}},
        max_concurrent=2,
    )
    proc = subprocess.Popen(
        cli(tmp_path, "run", str(path), "--name", "crash", "--num-cpus", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    first = None
    for line in proc.stdout:
        if " done " in line:
            first = line.split()[1]
            break
    assert first is not None, "no trial finished"
    doomed = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in doomed - {proc.pid}:  # Ray's workers run in process groups of their own
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)

    r = subprocess.run(cli(tmp_path, "resume", "crash", "--num-cpus", "2"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 trials: 4 finished" in r.stdout
    client, runs = child_runs(tmp_path, "crash")
    assert sorted(r.data.tags["sweeplab.trial_id"] for r in runs) == sorted(
        {r.data.tags["sweeplab.trial_id"] for r in runs}
    )
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert set(steps) == {1, 2, 3}
        if run.data.tags["sweeplab.trial_id"] == first:  # finished before the kill: not trained again
            assert sorted(steps) == [1, 2, 3]


@pytest.mark.slow
def test_ddp_trial_keeps_ranks_identical(tmp_path):
    # 64 images in batches of 64: one optimiser step per epoch, so "after each epoch" is "after each step"
    path = write_sweep(
        tmp_path,
        name="ddp",
        overrides={"train.epochs": 3, "data.synthetic_train": 64},
        space={"optim.lr": {"grid": [0.5]}},
        resources={"workers": 2, "cpus_per_worker": 1},
    )
    proc = subprocess.Popen(
        cli(tmp_path, "run", str(path), "--name", "ddp", "--num-cpus", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines, sockets = [], None
    for line in proc.stdout:
        lines.append(line)
        if sockets is None and " epoch 1/" in line:  # both ranks joined the process group and still train
            sockets = listening(descendants(proc.pid))
    proc.wait(timeout=600)
    assert proc.returncode == 0, "".join(lines)
    # the rendezvous (torch's TCPStore) and gloo's pairs listen on loopback like the rest of the local Ray
    assert sockets is not None and any("RayTrain" in p for _, p in sockets), sockets  # ss cuts names at 15
    assert all(addr in LOOPBACK for addr, _ in sockets), sockets
    (result,) = (tmp_path / "ray" / "ddp").glob("train_ddp_trial_*/result.json")
    epochs = [json.loads(line) for line in result.read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert all(e["ddp/weight_spread"] == 0.0 for e in epochs)
    assert epochs[0]["train/loss"] != epochs[-1]["train/loss"]  # the weights did move
    _, (run,) = child_runs(tmp_path, "ddp")
    assert run.data.tags["sweeplab.hardware"].startswith("2 x cpu")


def _spread_worker(rank: int, init: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from sweeplab.runner.worker import weight_spread

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    same = {"w": torch.ones(3), "bn.running_mean": torch.full((2,), float(rank))}
    moved = {"w": torch.ones(3) + rank * 1e-3}
    Path(out, str(rank)).write_text(json.dumps([weight_spread(same), weight_spread(moved)]))
    dist.destroy_process_group()


def test_weight_spread_sees_diverged_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_spread_worker, args=(f"file://{tmp_path / 'init'}", str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        same, moved = json.loads((tmp_path / str(rank)).read_text())
        assert same == 0.0  # BatchNorm running statistics may differ between ranks
        assert moved == pytest.approx(3e-3, rel=1e-3)  # |sum| of 3 float32 ones + 1e-3
