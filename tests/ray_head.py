"""A Ray head on 127.0.0.1 (`ray start --head --block`) that several `sweeplab run --address` drivers join,
as the drivers of cluster.yaml's head do; stopped with everything it started."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sweep_cli import descendants, free_ports


@contextmanager
def ray_head(log: Path, num_cpus: int) -> Iterator[tuple[str, dict[str, str]]]:
    """(address, environment for the drivers) of a fresh one-node Ray cluster."""
    temp = tempfile.mkdtemp(prefix="slrh-")  # short: Ray's socket paths must fit 107 bytes
    token = Path(temp) / "auth_token"  # the cluster's own, as cluster.yaml copies one to every node
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    env.pop("RAY_ADDRESS", None)  # nothing but --address may point a driver at a cluster
    port, dashboard, client = free_ports(3)
    cmd = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={num_cpus}", "--num-gpus=0",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--dashboard-agent-listen-port=0",
        f"--ray-client-server-port={client}", "--min-worker-port=0", "--max-worker-port=0",
        "--object-store-memory=100000000", f"--temp-dir={temp}",
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the Ray head exited with {proc.returncode}: {log.read_text()[-3000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not listen on 127.0.0.1:{port} within 120 s")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", env
    finally:
        _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the head's process group; after 30 s SIGKILL to what is left of its session (a Ray
    worker has a process group of its own, in the head's session)."""
    seen = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for pid in seen | descendants(proc.pid):
        try:
            if os.getsid(pid) == proc.pid:  # not a reused pid
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait(timeout=30)
