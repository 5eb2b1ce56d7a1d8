"""What test_faults.py's cases share: a `sweeplab` driver in the background whose output is read line by
line, the processes it started and whether any is left, a file system filled to the last byte, a pickle
that shows it ran, and what MLflow and the ledger must hold of a launch afterwards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from sweep_cli import descendants
from sweeplab import ledger

RUN_S = 300  # one sweep or resume; each takes 30-60 s here

# ---- processes ----------------------------------------------------------------------------------


def cmd(*args: str, storage: Path, uri: str) -> list[str]:
    """Like sweep_cli.cli, for a storage folder or store elsewhere than tmp_path."""
    return [sys.executable, "-m", "sweeplab.cli", *args, "--storage", str(storage), "--tracking-uri", uri]


def sweeplab(argv: list[str], timeout: int = RUN_S) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


class Driver:
    """A `sweeplab run` in the background: stdout read line by line, stderr kept in a file."""

    def __init__(self, argv: list[str], stderr: Path) -> None:
        self.stderr_path = stderr
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=stderr.open("w"), text=True, start_new_session=True
        )
        self.pids = started({self.proc.pid})

    def until(self, pattern: str) -> re.Match | None:
        """Read stdout up to the first line matching `pattern` (None at the end of the output)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self.pids |= started(descendants(self.proc.pid))
            if m := re.search(pattern, line):
                return m
        return None

    def finish(self, timeout: int = RUN_S) -> int:
        assert self.proc.stdout is not None
        self.lines.extend(self.proc.stdout)
        rc = self.proc.wait(timeout=timeout)
        self.stderr_path.with_suffix(".out").write_text("".join(self.lines))  # for a post-mortem
        return rc

    @property
    def out(self) -> str:
        return "".join(self.lines) + "\n--- stderr ---\n" + self.stderr

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def kill(self) -> None:
        """SIGKILL the driver and everything below it (Ray's workers run in process groups of their own)."""
        if self.proc.poll() is not None:
            return
        doomed = descendants(self.proc.pid)
        os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in doomed - {self.proc.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=60)
        self.stderr_path.with_suffix(".out").write_text("".join(self.lines))


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; returns the filler file (delete it to free)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


# ---- what MLflow and the ledger hold ------------------------------------------------------------


def mlflow_runs(uri: str, launch: str) -> tuple:
    """(client, parent runs, child runs) of a launch; a fresh client, not this process's cached one."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.`sweeplab.launch` = '{launch}'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def all_run_ids(uri: str) -> set[str]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id for r in client.search_runs(exps)} if exps else set()


def assert_logged_once(uri: str, launch: str, n: int, epochs: int) -> None:
    """MLflow holds the launch exactly once: one FINISHED parent, one FINISHED child run per trial key 0..n-1
    (no other), each with its params and every epoch's metrics at steps 1..epochs exactly once."""
    client, parents, runs = mlflow_runs(uri, launch)
    assert [p.info.status for p in parents] == ["FINISHED"]
    keys = sorted(r.data.tags["sweeplab.trial_id"] for r in runs)
    assert keys == sorted(str(i) for i in range(n)), f"child runs {keys}"
    for run in runs:
        key = run.data.tags["sweeplab.trial_id"]
        assert run.info.status == "FINISHED", (key, run.info.status)
        assert "optim.lr" in run.data.params and "train.epochs" in run.data.params, (key, run.data.params)
        for metric in ("epoch", "val/error", "train/loss"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
            assert steps == list(range(1, epochs + 1)), f"trial {key}: {metric} logged at steps {steps}"


def assert_mlflow_matches_ledger(uri: str, launch_dir: Path) -> ledger.Record:
    """Every trial of the ledger ended once, with epochs 1..its last; MLflow holds one FINISHED child run per
    trial and exactly the ledger's epochs of it, each once, and a FINISHED parent. Returns the record."""
    record = ledger.read(launch_dir)[0]
    client, parents, runs = mlflow_runs(uri, launch_dir.name)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(r.data.tags["sweeplab.trial_id"] for r in runs) == sorted(record.trials)
    for run in runs:
        t = record.trials[run.data.tags["sweeplab.trial_id"]]
        assert t.status.ended and sorted(t.results) == list(range(1, t.epoch + 1)), (t.key, t.status, t.results)
        assert run.info.status == "FINISHED", (t.key, run.info.status)
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/error"))
        assert steps == sorted(t.results), (t.key, steps)
    return record


def assert_ledger_finished(storage: Path, launch: str, n: int, epochs: int) -> None:
    """`sweeplab status` and the ledger: exactly the trials 0..n-1, each FINISHED once with every epoch."""
    r = sweeplab([sys.executable, "-m", "sweeplab.cli", "status", launch, "--storage", str(storage)], 120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{n} trials: {n} finished" in r.stdout, r.stdout + r.stderr
    record = ledger.read(storage / launch)[0]
    assert sorted(record.trials) == sorted(str(i) for i in range(n)), sorted(record.trials)
    for key, t in record.trials.items():
        assert t.status == "FINISHED" and sorted(t.results) == list(range(1, epochs + 1)), (key, t.status, t.results)


def started(pids: set[int]) -> set[tuple[int, str]]:
    """(pid, start time) of each process: a pid the kernel hands to a new process later is not taken for it."""
    out = set()
    for pid in pids:
        try:
            out.add((pid, Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]))
        except (OSError, IndexError):
            pass
    return out


def alive(pids: set[tuple[int, str]]) -> list[str]:
    """The processes of `pids` still running (not zombies), by command line."""
    out = []
    for pid, start in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
            if fields[19] == start and fields[0] != "Z":
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:100].decode() or str(pid))
        except (OSError, IndexError):
            pass
    return out


class Payload:
    """A pickle that creates `marker` when unpickled: what a hostile user plants in a launch folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")
