"""Fault injection, end to end: the `sweeplab` CLI in subprocesses on a real local Ray (2 CPUs) and a
real SQLite MLflow store, with tiny synthetic data. Each test breaks what a hostile or unlucky user
would: a driver SIGKILLed, then its launch folder made hostile (pickles planted in every file Tune
wrote and beside sweeplab's, the ledger torn mid-line, an unfinished trial's newest checkpoint cut);
SIGTERM; two first sweeps on one new store; a full MLflow disk; a full storage disk. After the fault
(and `sweeplab resume`) nothing may be lost, nothing duplicated and nothing planted may run: one
FINISHED child run per trial, every epoch logged exactly once, and in the ledger every trial ended once
under the key it started with. (The fake executor of test_runner.py kills the driver after every event;
these are the same promises on a real Ray.)
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow_store import fresh_uri
from sweep_cli import cli, descendants, write_sweep
from sweeplab import ledger

# A trial's start line: "[    4s] lr=0.1  start  (trial 3)" (progress lines name trials by label, then key)
STARTED = r"  start  \(trial (\d+)\)"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# About half a second an epoch on a loaded 2-core machine: slow enough that a test sees a trial
# mid-way and acts (kill, fill a disk) before it ends.
SLOW = {"data.synthetic_shape": [1, 32, 32], "data.synthetic_train": 1024}
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


@pytest.fixture
def drivers():
    """Drivers a test started; any still running at its end (a failed assertion) is killed."""
    started: list[Driver] = []
    yield started
    for d in started:
        d.kill()


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, size) -> a new tmpfs folder under tmp_path; unmounted at the end, whatever happens."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


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


# ---- 1. a killed driver, then a hostile launch folder ------------------------------------------

EPOCHS = 4


@pytest.mark.slow
def test_a_killed_driver_and_a_hostile_launch_folder(tmp_path, tmp_path_factory, drivers):
    """SIGKILL the driver mid-sweep; then plant a pickle in every file Tune wrote and beside sweeplab's own,
    tear the ledger's last line, cut an unfinished trial's newest checkpoint. `status` and `resume` run
    nothing planted; resume finishes every trial once from where the ledger and checkpoints left it; no
    process of the launch is left. Then every file of the launch made a pickle: refused in one line."""
    fresh_uri(tmp_path, tmp_path_factory)  # migrated already (a new store: test_faults' pair)
    path = write_sweep(
        tmp_path,
        name="hostile",
        overrides={"train.epochs": EPOCHS, **SLOW},
        space={"optim.lr": {"grid": [0.001, 0.01, 0.1, 0.5]}},
        max_concurrent=2,
    )
    d = Driver(cli(tmp_path, "run", str(path), "--name", "hostile", "--num-cpus", "2"), tmp_path / "err")
    drivers.append(d)
    assert d.until(r" done ") is not None, d.out
    assert d.until(rf" epoch 2/{EPOCHS} ") is not None, d.out
    os.kill(d.proc.pid, signal.SIGKILL)  # the driver alone, as the OOM killer would: Ray's processes stay behind
    d.proc.wait(timeout=60)
    time.sleep(2)  # the trials' workers die with their owner; what they wrote last stays
    launch = tmp_path / "ray" / "hostile"
    record = ledger.read(launch)[0]
    ended = {k for k, t in record.trials.items() if t.status.ended}
    assert ended, d.out
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(Payload(marker))
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))
    assert probe.exists()  # the payload does run when unpickled
    # Tune's own files: its experiment (in this user's private temp folder, for a local Ray) and the keys
    # sweeplab keeps beside the launch (runner/worker.own_key)
    from sweeplab.runner.cluster import private_temp_dir

    tune_dir = Path(private_temp_dir()) / "tune" / "hostile"
    planted = [p for p in [*(launch / "tune").rglob("*"), *tune_dir.rglob("*")] if p.is_file()]
    assert any(p.name == "tuner.pkl" for p in planted), planted
    for p in [*planted, launch / "tuner.pkl", launch / "trials" / "0" / "state.pkl", launch / "experiment_state.pkl"]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(payload)
    with ledger.path_of(launch).open("ab") as f:  # a write cut short
        f.write(b'{"ev":"result","key":"0","epoch":9,"metr')
    victims = [
        t
        for k, t in record.trials.items()
        if not t.status.ended and (launch / "trials" / k / "checkpoint.prev.pt").exists()
    ]
    cut = None
    if victims:
        cut = launch / "trials" / victims[0].key / "checkpoint.pt"
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])

    s = sweeplab([sys.executable, "-m", "sweeplab.cli", "status", "hostile", "--storage", str(tmp_path / "ray")])
    assert s.returncode == 0 and re.search(r"\d trials: .*unfinished", s.stdout), s.stdout + s.stderr
    assert s.stderr == "", s.stderr  # a torn last line is not there yet: nothing to say
    assert not alive(d.pids), alive(d.pids)  # `status` stopped what the killed driver's Ray left running
    r = Driver(cli(tmp_path, "resume", "hostile", "--num-cpus", "2"), tmp_path / "err-resume")
    drivers.append(r)
    rc = r.finish()
    assert rc == 0, r.out
    assert not marker.exists()
    assert "Traceback" not in r.stderr, r.stderr
    started = set(re.findall(STARTED, "".join(r.lines)))
    assert not started & ended, f"resume trained ended trials {sorted(started & ended)} again"
    if cut is not None:
        assert f"{cut}: truncated or corrupt" in r.out and "continuing from" in r.out, r.out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert_logged_once(uri, "hostile", 4, EPOCHS)
    assert_ledger_finished(tmp_path / "ray", "hostile", 4, EPOCHS)
    assert not alive(r.pids), alive(r.pids)  # nothing of the launch outlives its driver

    before = all_run_ids(uri)
    for p in [p for p in launch.rglob("*") if p.is_file()]:
        p.write_bytes(payload)
    for argv in (
        [sys.executable, "-m", "sweeplab.cli", "status", "hostile", "--storage", str(tmp_path / "ray")],
        cli(tmp_path, "resume", "hostile", "--num-cpus", "2"),
    ):
        x = sweeplab(argv, 120)
        assert x.returncode == 2, x.stdout + x.stderr
        assert x.stderr.count("\n") == 1 and "sweeplab.json is not a launch file" in x.stderr, x.stderr
    assert not marker.exists()
    assert all_run_ids(uri) == before


# ---- 2. SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_the_sweep_cleanly_and_resume_finishes_it(tmp_path, tmp_path_factory, drivers):
    """SIGTERM mid-sweep: one clean stop, every run KILLED until `resume`, which ends every trial once.
    The sweep uses ASHA, to measure what a resumed scheduler decides differently (docs/architecture.md,
    "The ledger"): its rungs start empty, so it never stops a trial at a rung the trial had already
    passed before the kill, and the test says how many it stopped in each session."""
    fresh_uri(tmp_path, tmp_path_factory)  # migrated already (a new store: test_faults' pair)
    path = write_sweep(
        tmp_path,
        name="term",
        overrides={"train.epochs": 4, **SLOW},
        space={"optim.lr": {"grid": [0.5, 0.3, 0.001, 0.0001]}},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        max_concurrent=2,
    )
    d = Driver(cli(tmp_path, "run", str(path), "--name", "term", "--num-cpus", "2"), tmp_path / "err")
    drivers.append(d)
    assert d.until(STARTED) is not None, d.out
    assert d.until(r" epoch 1/4 ") is not None, d.out
    os.kill(d.proc.pid, signal.SIGTERM)  # the driver alone, as a scheduler or `timeout` would
    rc = d.finish(timeout=120)
    assert rc == 1, d.out
    err = d.stderr
    assert "Traceback" not in err and "SIGTERM received" not in err and not re.search(r"@ +0x[0-9a-f]+", err), err
    assert "`sweeplab resume term` continues them" in err, d.out
    assert not alive(d.pids), alive(d.pids)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, parents, runs = mlflow_runs(uri, "term")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert runs and not [r for r in runs if r.info.status == "RUNNING"], [
        (r.data.tags["sweeplab.trial_id"], r.info.status) for r in runs
    ]
    assert any(r.info.status == "KILLED" for r in runs)
    before = ledger.read(tmp_path / "ray" / "term")[0]
    assert before.stopped == "KILLED"
    reached = {k: t.epoch for k, t in before.trials.items()}

    r = sweeplab(cli(tmp_path, "resume", "term", "--num-cpus", "2"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"4 trials: \d finished, \d stopped early, 0 failed\n", r.stdout), r.stdout + r.stderr
    assert "WARNING" not in r.stdout + r.stderr, r.stdout + r.stderr
    after = assert_mlflow_matches_ledger(uri, tmp_path / "ray" / "term")
    resumed = [t for k, t in after.trials.items() if not (k in before.trials and before.trials[k].status.ended)]
    for t in resumed:  # the resumed ASHA judged each trial only past where the kill left it
        if t.status == "STOPPED":
            assert t.epoch > reached.get(t.key, 0), (t.key, t.epoch, reached.get(t.key))
    stopped = (sum(t.status == "STOPPED" for t in before.trials.values()), sum(t.status == "STOPPED" for t in resumed))
    print(f"ASHA across the kill: stopped {stopped[0]} before it, {stopped[1]} of {len(resumed)} resumed trials after")


# ---- 3. two first sweeps on one new store and storage folder -------------------------------------


@pytest.mark.slow
def test_two_first_sweeps_at_once_on_one_new_store(tmp_path, drivers):
    path = write_sweep(
        tmp_path,
        name="pair",
        overrides={"train.epochs": 2},
        space={"optim.lr": {"grid": [0.01, 0.1]}},
        max_concurrent=1,
    )
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()
    pair = [
        Driver(cli(tmp_path, "run", str(path), "--name", name, "--num-cpus", "1"), tmp_path / f"err-{name}")
        for name in ("pair-a", "pair-b")
    ]
    drivers.extend(pair)
    rcs = [d.finish() for d in pair]
    assert rcs == [0, 0], "\n=====\n".join(d.out for d in pair)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name in ("pair-a", "pair-b"):
        assert_logged_once(uri, name, 2, 2)
        assert_ledger_finished(tmp_path / "ray", name, 2, 2)
        b = sweeplab([sys.executable, "-m", "sweeplab.cli", "best", name, "--tracking-uri", uri], 120)
        assert b.returncode == 0 and "optim.lr" in b.stdout + b.stderr, b.stdout + b.stderr
    assert len(all_run_ids(uri)) == 6  # two parents, four children: nothing else


# ---- 4. full disk under MLflow ------------------------------------------------------------------


@pytest.mark.slow
def test_full_mlflow_disk_is_reported_and_resume_fills_what_mlflow_lacks(tmp_path, tmp_path_factory, drivers, tmpfs):
    disk = tmpfs("mlfs", "6m")
    uri = fresh_uri(disk, tmp_path_factory)  # migrated already: the migration is not what fills the disk
    path = write_sweep(
        tmp_path,
        name="mlfull",
        overrides={"train.epochs": 3, **SLOW},
        space={"optim.lr": {"grid": [0.01, 0.1]}},
        max_concurrent=2,
    )
    d = Driver(
        cmd("run", str(path), "--name", "mlfull", "--num-cpus", "2", storage=tmp_path / "ray", uri=uri),
        tmp_path / "err",
    )
    drivers.append(d)
    assert d.until(STARTED) is not None, d.out
    assert d.until(r" epoch 1/3 ") is not None, d.out
    filler = fill(disk)
    rc = d.finish()
    assert rc == 1, d.out
    named = re.search(r"MLflow is missing data of (.*?);", d.stderr)
    assert named and re.search(r"trial \d|the parent run", named.group(1)), d.out
    assert "Traceback" not in d.stderr, d.stderr
    filler.unlink()

    r = sweeplab(cmd("resume", "mlfull", "--num-cpus", "2", storage=tmp_path / "ray", uri=uri))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_logged_once(uri, "mlfull", 2, 3)
    assert_ledger_finished(tmp_path / "ray", "mlfull", 2, 3)


# ---- 5. full disk under the storage folder ------------------------------------------------------


@pytest.mark.slow
def test_full_storage_disk_is_one_line_and_resume_completes(tmp_path, tmp_path_factory, drivers, tmpfs):
    storage = tmpfs("store", "16m")
    uri = fresh_uri(tmp_path, tmp_path_factory)  # migrated already (a new store: test_faults' pair)
    path = write_sweep(
        tmp_path,
        name="stfull",
        overrides={"train.epochs": 3, **SLOW},
        space={"optim.lr": {"grid": [0.01, 0.1]}},
        max_concurrent=2,
    )
    d = Driver(cmd("run", str(path), "--name", "stfull", "--num-cpus", "2", storage=storage, uri=uri), tmp_path / "err")
    drivers.append(d)
    assert d.until(STARTED) is not None, d.out
    assert d.until(r" epoch 1/3 ") is not None, d.out
    filler = fill(storage)
    rc = d.finish()
    assert rc == 1, d.out  # a sweep whose ledger or checkpoints could not be written does not end "fine"
    err = d.stderr.splitlines()
    assert "Traceback" not in d.stderr and len(err) <= 4, d.stderr  # a line per trial at most, and the reason
    assert "No space left on device" in d.out and "sweeplab resume stfull" in d.stderr, d.out
    failed = [ln for ln in d.lines if " FAILED at epoch " in ln]  # one line per trial, naming the cause
    assert failed and all("No space left on device" in ln for ln in failed), d.out
    status = [ln for ln in d.lines if re.match(r"\[\s*\d+s\] status  ", ln)]
    summary = re.search(r"sweeplab: 2 trials: (\d) finished, (\d) stopped early, (\d) failed", "".join(d.lines))
    if status and summary:  # the summary counts what the last status line counted
        assert f"{summary[1]} done, {summary[2]} stopped early, {summary[3]} failed" in status[-1], d.out
    filler.unlink()

    r = sweeplab(cmd("resume", "stfull", "--num-cpus", "2", storage=storage, uri=uri))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 trials: 2 finished" in r.stdout, r.stdout + r.stderr
    assert_logged_once(uri, "stfull", 2, 3)
    assert_ledger_finished(storage, "stfull", 2, 3)
