"""Drive the `sweeplab` CLI in a subprocess on tiny synthetic data: the sweep file, the command line,
the processes it starts, the sockets they listen on, and the MLflow child runs it logs.

Shared by test_sweeps_ray, test_faults and test_multinode.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "configs/fashion_mnist/resnet_preact20.yaml")
TINY = {
    "data.name": "synthetic",
    "data.synthetic_shape": [1, 8, 8],
    "data.synthetic_train": 256,
    "data.synthetic_test": 128,
    "data.batch_size": 64,
    "data.device": "cpu",
    "model.depth": 8,
    "model.initial_channels": 4,
    "train.threads": 1,
}
LOOPBACK = {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}
# Put before the argv of a command a test stops with Ctrl-C (SIGINT), as a terminal's foreground job gets it:
# a suite started as a shell's background job (`make test &`) inherits SIGINT ignored, and so would the command.
CTRL_C = ["env", "--default-signal=INT"]


def free_ports(n: int) -> list[int]:
    """n free TCP ports on 127.0.0.1 (held together while chosen, so all differ)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def write_sweep(tmp_path: Path, **spec) -> Path:
    """tmp_path/sweep.yaml from `spec`, on the quickstart config shrunk by TINY (spec's overrides win). Its
    trials log no model unless `spec` says `mlflow` (a trial's first export costs its worker ~4 CPU-seconds:
    the tests of models say `mlflow: {}`; the README's sweeps, run by test_readme, log them)."""
    spec = {"config": BASE, "mlflow": {"log_models": False}, **spec, "overrides": {**TINY, **spec.get("overrides", {})}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli(tmp_path: Path, *args: str, tracking_uri: str | None = None) -> list[str]:
    """argv of `sweeplab <args>` with its Ray storage and MLflow store inside tmp_path (or `tracking_uri`)."""
    return [
        sys.executable,
        "-m",
        "sweeplab.cli",
        *args,
        "--storage",
        str(tmp_path / "ray"),
        "--tracking-uri",
        tracking_uri or f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]


def descendants(root: int) -> set[int]:
    """`root` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            ppid = int(rest.rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo.extend(children.get(pid, []))
    return out


def listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process) of every TCP/UDP listening socket owned by one of `pids`."""
    out = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            local = line.split()[4]
            found.append((local.rsplit(":", 1)[0], line.split()[-1]))
    return found


def child_runs(tmp_path: Path, launch: str, tracking_uri: str | None = None) -> tuple:
    """(MLflow client, the child (trial) runs of `launch`) in tmp_path's store (or `tracking_uri`)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri or f"sqlite:///{tmp_path / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.`sweeplab.launch` = '{launch}'")
    return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags]
