"""Two Ray nodes on one machine: a head (`ray start --head`) and a second node, separate processes, both
on 127.0.0.1. A smoke sweep driven by `sweeplab run --address` puts trials on both nodes; the second node
is killed while one of its trials runs; that trial must continue from its checkpoint on the head, and
MLflow must end with one FINISHED child run per trial. Every socket of both nodes (and of the driver)
is on loopback.

A second node cannot join through `ray start --address` and stay on loopback (Ray issue #59110), so it
is started the way `ray.cluster_utils.Cluster.add_node` does it, without `Cluster` itself (which writes
/tmp/ray/ray_current_cluster, where another test's or user's Ray would find it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from sweep_cli import BASE, LOOPBACK, TINY, child_runs, descendants, free_ports, listening

EPOCHS = 5
TRIALS = 3
# Slow enough (about 1 s an epoch on a loaded 2-core machine) that the test sees a trial of the second
# node report its first epoch and kills the node before the trial ends.
DATA = {"data.synthetic_shape": [1, 32, 32], "data.synthetic_train": 2048, "data.synthetic_test": 128}

SECOND_NODE = r"""
import json, sys, time
from ray._private import services
from ray._private.node import Node
from ray._private.parameter import RayParams

gcs, temp_dir = sys.argv[1:3]
params = RayParams(gcs_address=gcs, node_ip_address="127.0.0.1", num_cpus=1, num_gpus=0,
                   resources={"second_node": 1}, object_store_memory=80 * 2**20, min_worker_port=0,
                   max_worker_port=0, node_manager_port=0, include_log_monitor=False,
                   dashboard_agent_listen_port=None, temp_dir=temp_dir)
# shutdown_at_exit: SIGTERM stops the node's processes; they also die with this process (fate sharing)
node = Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
services.wait_for_node(gcs, node.plasma_store_socket_name, 60)
print(json.dumps({"node_id": node.node_id}), flush=True)
while True:
    time.sleep(3600)
"""


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the Ray head exited while starting"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(procs: list[subprocess.Popen], seen: set[int]) -> None:
    """SIGTERM the process groups this test started; after 30 s, SIGKILL whatever is left of the sessions
    they lead (a Ray worker has a process group of its own, in its node's session)."""
    sessions = {p.pid for p in procs}
    for p in procs:
        seen |= descendants(p.pid)
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 30
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for pid in seen:
        try:
            if os.getsid(pid) in sessions:  # not a reused pid
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def trial_rows(launch_dir: Path) -> dict[str, list[dict]]:
    """trial key -> the epochs the launch's ledger has of it so far, each with the Ray node that ran it."""
    out: dict[str, list[dict]] = {}
    path = launch_dir / "ledger.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if row.get("ev") == "result":
            out.setdefault(row["key"], []).append(row)
    return out


@pytest.fixture
def cluster(tmp_path):
    """A head and a second node; yields (address, second node id, env, [head, second], pids seen)."""
    ray_tmp = tempfile.mkdtemp(prefix="sl2n-")  # short: Ray's socket paths must fit 107 bytes
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM stops a node at once
        # the GCS declares a dead node dead after ~3 s instead of ~15 s
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }
    env.pop("RAY_ADDRESS", None)  # nothing but --address may point the driver at a cluster
    port, dashboard, client = free_ports(3)
    head_cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=1",
        "--num-gpus=0",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--dashboard-agent-listen-port=0",
        f"--ray-client-server-port={client}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--object-store-memory=100000000",
        f"--temp-dir={ray_tmp}",
        '--resources={"head_node": 1}',
    ]
    procs: list[subprocess.Popen] = []
    seen: set[int] = set()
    try:
        with open(tmp_path / "head.log", "w") as log:
            procs.append(
                subprocess.Popen(head_cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            )
        wait_for_port(port, procs[0], 60)
        with open(tmp_path / "second.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", SECOND_NODE, f"127.0.0.1:{port}", ray_tmp],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    env=env,
                    start_new_session=True,
                )
            )
        line = procs[1].stdout.readline()
        assert line, (tmp_path / "second.log").read_text()[-3000:]
        yield f"127.0.0.1:{port}", json.loads(line)["node_id"], env, procs, seen
    finally:
        stop(procs, seen)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trial_of_a_dead_node_continues_from_its_checkpoint(tmp_path, cluster):
    address, second, env, (head, node2), seen = cluster
    spec = {
        "config": BASE,
        "name": "twonode",
        "overrides": {**TINY, **DATA},
        "space": {"optim.lr": {"grid": [0.05, 0.1, 0.2]}},
        "smoke": {"overrides": {"train.epochs": EPOCHS}},
    }
    sweep = tmp_path / "twonode.yaml"
    sweep.write_text(yaml.safe_dump(spec, sort_keys=False))
    launch_dir = tmp_path / "ray" / "twonode"
    cmd = [
        sys.executable,
        "-m",
        "sweeplab.cli",
        "run",
        str(sweep),
        "--smoke",
        "--name",
        "twonode",
        "--address",
        address,
        "--storage",
        str(tmp_path / "ray"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    log = (tmp_path / "driver.log").read_text
    start = time.monotonic()
    with open(tmp_path / "driver.log", "w") as f:
        driver = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=tmp_path
        )
    try:
        # Wait for a trial on the second node to report (and so checkpoint) an epoch, then kill the node.
        victim, sockets = None, []
        while victim is None and driver.poll() is None and time.monotonic() - start < 180:
            for trial_id, rows in trial_rows(launch_dir).items():
                if any(r.get("node_id") == second and r["epoch"] >= 1 for r in rows):
                    victim = trial_id
            time.sleep(0.1)
        assert victim is not None, log()
        pids = descendants(head.pid) | descendants(node2.pid) | descendants(driver.pid)
        sockets = listening(pids)
        node2_sockets = listening(descendants(node2.pid))
        doomed = descendants(node2.pid)
        seen |= pids
        os.killpg(node2.pid, signal.SIGKILL)  # a crash: no drain, nothing told
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed_at = max(r["epoch"] for r in trial_rows(launch_dir)[victim])
        assert killed_at < EPOCHS, "the trial of the second node ended before it was killed; slow its epochs"
        driver.wait(timeout=max(1, 240 - (time.monotonic() - start)))
    finally:
        if driver.poll() is None:  # it joined the cluster: its group is all it started
            os.killpg(driver.pid, signal.SIGKILL)
    out = log()
    assert driver.returncode == 0, out
    assert f"{TRIALS} trials: {TRIALS} finished" in out, out

    # Both nodes (and the driver) listened on loopback only, the second node included.
    assert len(node2_sockets) >= 2 and len(sockets) >= 5, sockets
    assert all(addr in LOOPBACK for addr, _ in sockets), sockets

    # Trials ran on both nodes; the victim went on from its checkpoint on the head, not from epoch 1.
    rows = trial_rows(launch_dir)
    assert len(rows) == TRIALS
    nodes = {r["node_id"] for trial in rows.values() for r in trial}
    assert second in nodes and len(nodes) == 2, nodes
    (head_id,) = nodes - {second}
    before = [r["epoch"] for r in rows[victim] if r["node_id"] == second]
    after = [r["epoch"] for r in rows[victim] if r["node_id"] == head_id]
    assert before and before == list(range(1, len(before) + 1)), rows[victim]
    assert after and 1 < after[0] <= before[-1] + 1 and after[-1] == EPOCHS, (before, after)
    started = re.search(rf"\] (.+?)  start  \(trial {victim}\)", out)  # progress lines name trials by label
    assert started is not None, out
    assert f"{started.group(1)}  failed at epoch {before[-1]}/{EPOCHS}" in out
    assert f"retrying from its epoch {before[-1]} checkpoint" in out
    others = [t for t in rows if t != victim]
    assert all({r["node_id"] for r in rows[t]} <= {head_id, second} for t in others)
    assert any(r["node_id"] == head_id for t in others for r in rows[t])

    # MLflow: one FINISHED child run per trial; the victim's epochs 1..EPOCHS, epoch 1 logged once.
    client, runs = child_runs(tmp_path, "twonode")
    assert sorted(r.data.tags["sweeplab.trial_id"] for r in runs) == sorted(rows)
    assert all(r.info.status == "FINISHED" for r in runs)
    (run,) = [r for r in runs if r.data.tags["sweeplab.trial_id"] == victim]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
    assert set(steps) == set(range(1, EPOCHS + 1)) and steps.count(1) == 1, steps
    print(
        f"two-node test: {time.monotonic() - start:.0f} s of sweep; {len(sockets)} listening sockets, all on "
        f"loopback; victim {victim} killed at epoch {killed_at}, resumed at epoch {after[0]}"
    )
