"""Fault injection, end to end: the `sweeplab` CLI in subprocesses on a real local Ray (2 CPUs) and a real
SQLite MLflow store, with tiny synthetic data. Each test breaks what a hostile or unlucky user would: a
driver SIGKILLed, then its launch folder made hostile (pickles planted in every file Tune wrote and
beside sweeplab's, the ledger torn mid-line, an unfinished trial's newest checkpoint cut); SIGTERM; two
first sweeps on one new store; a full storage disk, then a full MLflow disk (one launch: a Ray session
fewer, ~25 CPU-s of the suite's busy 2 cores). After the fault (and `sweeplab resume`) nothing may be
lost, nothing duplicated and nothing planted may run: one FINISHED child run per trial, every epoch
logged exactly once, and in the ledger every trial ended once under the key it started with. (The fake
executor of test_runner.py kills the driver after every event; these are the same promises on a real
Ray.)
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

from fault_kit import (
    Driver,
    Payload,
    alive,
    all_run_ids,
    assert_ledger_finished,
    assert_logged_once,
    assert_mlflow_matches_ledger,
    cmd,
    fill,
    mlflow_runs,
    sweeplab,
)
from mlflow_store import fresh_uri
from sweep_cli import cli, write_sweep
from sweeplab import ledger

# A trial's start line: "[    4s] lr=0.1  start  (trial 3)" (progress lines name trials by label, then key)
STARTED = r"  start  \(trial (\d+)\)"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# About half a second an epoch on a loaded 2-core machine: slow enough that a test sees a trial
# mid-way and acts (kill, fill a disk) before it ends.
SLOW = {"data.synthetic_shape": [1, 32, 32], "data.synthetic_train": 1024}


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


# ---- 4. full disks: under the storage folder, then under MLflow ----------------------------------


@pytest.mark.slow
def test_full_disks_are_one_line_each_and_resume_completes(tmp_path, tmp_path_factory, drivers, tmpfs):
    """The storage folder's disk fills mid-sweep: one line per trial, exit 1. The next `resume` (space
    freed) finds the MLflow store's disk full instead: the trials go on, MLflow's loss is named, exit 1.
    The last `resume` (space freed) fills exactly what MLflow lacks, from the ledger."""
    storage, disk = tmpfs("store", "16m"), tmpfs("mlfs", "6m")
    uri = fresh_uri(disk, tmp_path_factory)  # migrated already: the migration is not what fills the disk
    path = write_sweep(
        tmp_path,
        name="full",
        overrides={"train.epochs": 3, **SLOW},
        space={"optim.lr": {"grid": [0.01, 0.1]}},
        max_concurrent=2,
    )

    def driver(*args: str, name: str) -> Driver:
        d = Driver(cmd(*args, "--num-cpus", "2", storage=storage, uri=uri), tmp_path / name)
        drivers.append(d)
        assert d.until(STARTED) is not None, d.out
        assert d.until(r" epoch \d/3 ") is not None, d.out
        return d

    d = driver("run", str(path), "--name", "full", name="err-run")
    filler = fill(storage)
    rc = d.finish()
    assert rc == 1, d.out  # a sweep whose ledger or checkpoints could not be written does not end "fine"
    err = d.stderr.splitlines()
    assert "Traceback" not in d.stderr and len(err) <= 4, d.stderr  # a line per trial at most, and the reason
    assert "No space left on device" in d.out and "sweeplab resume full" in d.stderr, d.out
    failed = [ln for ln in d.lines if " FAILED at epoch " in ln]  # one line per trial, naming the cause
    assert failed and all("No space left on device" in ln for ln in failed), d.out
    status = [ln for ln in d.lines if re.match(r"\[\s*\d+s\] status  ", ln)]
    summary = re.search(r"sweeplab: 2 trials: (\d) finished, (\d) stopped early, (\d) failed", "".join(d.lines))
    if status and summary:  # the summary counts what the last status line counted
        assert f"{summary[1]} done, {summary[2]} stopped early, {summary[3]} failed" in status[-1], d.out
    filler.unlink()

    r = driver("resume", "full", name="err-resume")
    filler = fill(disk)
    rc = r.finish()
    assert rc == 1, r.out
    named = re.search(r"MLflow is missing data of (.*?);", r.stderr)
    assert named and re.search(r"trial \d|the parent run", named.group(1)), r.out
    assert "disk is full" in r.stderr, r.stderr  # the cause, not SQLAlchemy's note on autoflush
    assert "Traceback" not in r.stderr, r.stderr
    filler.unlink()

    last = sweeplab(cmd("resume", "full", "--num-cpus", "2", storage=storage, uri=uri))
    assert last.returncode == 0, last.stdout + last.stderr
    assert "2 trials: 2 finished" in last.stdout, last.stdout + last.stderr
    assert_logged_once(uri, "full", 2, 3)
    assert_ledger_finished(storage, "full", 2, 3)
