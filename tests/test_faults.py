"""Fault injection, end to end: the `sweeplab` CLI in subprocesses on a real local Ray (2 CPUs) and a
real SQLite MLflow store, with tiny synthetic data. Each test breaks one thing a hostile or unlucky
user would (issue 16): a planted pickle in Tune's state, a driver killed and its state torn as by a
full disk, a corrupt newest checkpoint, SIGTERM, two first sweeps on one new store, a full MLflow
disk, a full storage disk. After the fault (and `sweeplab resume`) nothing may be lost and nothing
duplicated: one FINISHED child run per trial id, every epoch logged exactly once, params present,
and in Tune every trial finished once under the trial ids it started with.

Each test signs Tune's state with a key of its own ($SWEEPLAB_KEY_FILE, outside --storage).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep_cli import cli, descendants, write_sweep

# A trial's start line: "[    4s] lr=0.1  start  (trial 1b395_00000)" (progress lines name trials by label)
STARTED = r"  start  \(trial (\S+_\d{5})\)"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# About half a second an epoch on a loaded 2-core machine: slow enough that a test sees a trial
# mid-way and acts (kill, fill a disk) before it ends.
SLOW = {"data.synthetic_shape": [1, 32, 32], "data.synthetic_train": 1024}
RUN_S = 300  # one sweep or resume; each takes 30-60 s here


# ---- processes ----------------------------------------------------------------------------------


def keyed(tmp_path: Path, key: Path | None = None) -> dict[str, str]:
    """The environment of a sweeplab command: this test's own signing key, outside --storage."""
    return {**os.environ, "SWEEPLAB_KEY_FILE": str(key or tmp_path / "keys" / "state.key")}


def cmd(*args: str, storage: Path, uri: str) -> list[str]:
    """Like sweep_cli.cli, for a storage folder or store elsewhere than tmp_path."""
    return [sys.executable, "-m", "sweeplab.cli", *args, "--storage", str(storage), "--tracking-uri", uri]


def sweeplab(argv: list[str], env: dict[str, str], timeout: int = RUN_S) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


class Driver:
    """A `sweeplab run` in the background: stdout read line by line, stderr kept in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], stderr: Path) -> None:
        self.stderr_path = stderr
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=stderr.open("w"), text=True, env=env, start_new_session=True
        )

    def until(self, pattern: str) -> re.Match | None:
        """Read stdout up to the first line matching `pattern` (None at the end of the output)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
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


# ---- what MLflow and Tune hold ------------------------------------------------------------------


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


def assert_logged_once(uri: str, launch: str, ids: set[str], epochs: int) -> None:
    """MLflow holds the launch exactly once: one FINISHED parent, one FINISHED child run per trial id
    (no other), each with its params and every epoch's metrics at steps 1..epochs exactly once."""
    client, parents, runs = mlflow_runs(uri, launch)
    assert [p.info.status for p in parents] == ["FINISHED"]
    tids = sorted(r.data.tags["sweeplab.trial_id"] for r in runs)
    assert tids == sorted(ids), f"child runs {tids}, trials {sorted(ids)}"
    for run in runs:
        tid = run.data.tags["sweeplab.trial_id"]
        assert run.info.status == "FINISHED", (tid, run.info.status)
        assert "optim.lr" in run.data.params and "train.epochs" in run.data.params, (tid, run.data.params)
        for key in ("epoch", "val/error", "train/loss"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, epochs + 1)), f"trial {tid}: {key} logged at steps {steps}"


def trial_ids(first_start: str, n: int) -> set[str]:
    """The ids Tune gives the n trials of a grid launch whose first trial is `first_start`."""
    prefix = first_start.rsplit("_", 1)[0]
    return {f"{prefix}_{i:05d}" for i in range(n)}


def assert_tune_finished_once(storage: Path, launch: str, ids: set[str], env: dict[str, str]) -> None:
    """Tune's saved state and folders: exactly the trials `ids`, each FINISHED, each once."""
    r = sweeplab([sys.executable, "-m", "sweeplab.cli", "status", launch, "--storage", str(storage)], env, 120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(ids)} trials: {len(ids)} finished" in r.stdout, r.stdout + r.stderr
    listed = re.findall(r"^\s+(\S+_\d{5})\s+FINISHED\s", r.stdout, re.M)
    assert sorted(listed) == sorted(ids), r.stdout
    folders = sorted(p.name for p in (storage / launch).glob("train_trial_*"))
    # a trial that started after Tune's last saved state runs again from its start, in a new folder
    # (the old one is left as it was): every folder belongs to one of `ids`, every id has one
    assert {t for t in ids if any(f"_{t}_" in f for f in folders)} == ids, folders
    assert all(any(f"_{t}_" in f for t in ids) for f in folders), folders


def saved_trials(launch_dir: Path) -> dict[str, dict]:
    """trial id -> {status, last_result} in the newest signed copy of the launch's Tune state."""
    for _ in range(20):  # a copy being replaced as we read it: read the next one
        copies = sorted((launch_dir / ".sweeplab-state").glob("[0-9]*"), reverse=True)
        try:
            (state,) = copies[0].glob("experiment_state-*.json")
            out = {}
            for trial, meta in json.loads(state.read_text())["trial_data"]:
                trial, meta = json.loads(trial), json.loads(meta)
                out[trial["trial_id"]] = {"status": trial["status"], "last_result": meta["last_result"]}
            return out
        except (IndexError, OSError, ValueError):
            time.sleep(0.2)
    return {}


def resumable(launch: Path) -> tuple[str, int] | None:
    """An unfinished trial whose newest checkpoint on disk (with an older one beside it) is the one
    Tune's saved state resumes it from: the checkpoint `resume` will load first."""
    for tid, t in saved_trials(launch).items():
        name = t["last_result"].get("checkpoint_dir_name") or ""
        on_disk = sorted(p.name for p in launch.glob(f"train_trial_{tid}_*/checkpoint_*"))
        if t["status"] != "TERMINATED" and len(on_disk) >= 2 and on_disk[-1] == name:
            return tid, int(name[len("checkpoint_") :])
    return None


class Payload:
    """A pickle that creates `marker` when unpickled: what a hostile user plants in a launch folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


# ---- 0. the signed copies themselves ----------------------------------------------------------


def test_a_state_file_caught_mid_write_is_never_signed(tmp_path, monkeypatch):
    """Tune's syncer uploads its state files in a background thread: a copy taken meanwhile held a
    0-byte experiment_state, signed, and `resume` died on it with a traceback (found by case 2)."""
    from sweeplab.runner import launch_state as ls

    monkeypatch.setenv("SWEEPLAB_KEY_FILE", str(tmp_path / "keys" / "state.key"))
    d = tmp_path / "ray" / "torn"
    d.mkdir(parents=True)
    (d / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    (d / "experiment_state-1.json").write_text('{"trial_data": []}')
    keeper = ls.Keeper(d, min_interval_s=0)
    assert keeper.maybe_copy()
    good = ls.verified(d)
    for name, torn in [
        ("experiment_state-1.json", b""),
        ("experiment_state-1.json", b'{"trial_data": ['),
        ("basic-variant-state-1.json", pickle.dumps(list(range(50)))[:-7]),
    ]:
        (d / name).write_bytes(torn)
        assert not keeper.maybe_copy(), name
        assert ls.verified(d) == good
        (d / name).write_bytes(b'{"trial_data": [1]}' if name.startswith("exp") else pickle.dumps([1]))
    assert keeper.maybe_copy() and ls.verified(d) != good  # whole again: copied
    # a torn copy signed before (by an older sweeplab) is passed over for the older whole one
    newest = ls.verified(d)
    (newest / "experiment_state-1.json").write_bytes(b"")
    digests = json.loads((newest / ls.DIGESTS).read_text())
    digests["experiment_state-1.json"] = ls._digest(ls.key(create=False), newest / "experiment_state-1.json")
    (newest / ls.DIGESTS).write_text(json.dumps(digests))
    assert ls.verified(d) != newest


# ---- 1. planted pickles -------------------------------------------------------------------------


@pytest.mark.slow
def test_planted_tune_pickles_never_run(tmp_path):
    env = keyed(tmp_path)
    path = write_sweep(
        tmp_path,
        name="plant",
        overrides={"train.epochs": 2},
        space={"optim.lr": {"grid": [0.01, 0.1]}},
        max_concurrent=2,
    )
    r = sweeplab(cli(tmp_path, "run", str(path), "--name", "plant", "--num-cpus", "2"), env)
    assert r.returncode == 0, r.stdout + r.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = set(re.findall(STARTED, r.stdout))
    assert len(ids) == 2
    launch = tmp_path / "ray" / "plant"
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))
    assert probe.exists()  # the payload does run when unpickled
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(Payload(marker))

    # the live tuner.pkl replaced: status and resume read the signed copy, and move the live one aside
    (launch / "tuner.pkl").write_bytes(payload)
    s = sweeplab([sys.executable, "-m", "sweeplab.cli", "status", "plant", "--storage", str(tmp_path / "ray")], env)
    assert s.returncode == 0 and "2 trials: 2 finished" in s.stdout, s.stdout + s.stderr
    assert not marker.exists()
    r = sweeplab(cli(tmp_path, "resume", "plant", "--num-cpus", "2"), env)
    assert not marker.exists()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "moved aside unread" in r.stderr and "tuner.pkl" in r.stderr, r.stderr
    assert (launch / "tuner.pkl").read_bytes() != payload
    assert list((launch / ".sweeplab-state").glob("unverified-*/tuner.pkl"))
    assert_logged_once(uri, "plant", ids, 2)
    before = all_run_ids(uri)

    # another user's key (or none): nothing verifies, nothing is read or run
    other = tmp_path / "other" / "state.key"
    other.parent.mkdir()
    other.write_bytes(secrets.token_bytes(32))
    for key in (other, tmp_path / "nokey" / "state.key"):
        r = sweeplab(cli(tmp_path, "resume", "plant", "--num-cpus", "2"), keyed(tmp_path, key), 120)
        assert r.returncode == 2, r.stdout + r.stderr  # refused: not this account's state (bad input)
        assert "cannot resume plant" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "nokey").exists()  # resume never makes a key up

    # the payload in every signed copy too (and live): resume refuses, nothing runs, MLflow untouched
    (launch / "tuner.pkl").write_bytes(payload)
    copies = sorted((launch / ".sweeplab-state").glob("[0-9]*"))
    assert copies and all((c / "tuner.pkl").is_file() for c in copies)
    for copy in copies:
        (copy / "tuner.pkl").write_bytes(payload)
    r = sweeplab(cli(tmp_path, "resume", "plant", "--num-cpus", "2"), env, 120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(r"does not verify", r.stderr), r.stderr
    assert len([ln for ln in r.stderr.splitlines() if "does not verify" in ln]) == 1, r.stderr
    assert "Traceback" not in r.stderr
    s = sweeplab([sys.executable, "-m", "sweeplab.cli", "status", "plant", "--storage", str(tmp_path / "ray")], env)
    assert "does not verify" in s.stderr, s.stdout + s.stderr
    assert not marker.exists()
    assert all_run_ids(uri) == before
    assert_logged_once(uri, "plant", ids, 2)


# ---- 2. torn Tune state -------------------------------------------------------------------------


@pytest.mark.slow
def test_torn_tune_state_resumes_the_same_trials(tmp_path, drivers):
    env = keyed(tmp_path)
    path = write_sweep(
        tmp_path,
        name="torn",
        overrides={"train.epochs": 3},
        space={"optim.lr": {"grid": [0.001, 0.01, 0.1, 0.5]}},
        max_concurrent=2,
    )
    d = Driver(cli(tmp_path, "run", str(path), "--name", "torn", "--num-cpus", "2"), env, tmp_path / "err")
    drivers.append(d)
    first = d.until(STARTED)
    assert first is not None, d.out
    assert d.until(r" done ") is not None, d.out
    launch = tmp_path / "ray" / "torn"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the last good state (a signed copy) has the finished trial
        if any(t["status"] == "TERMINATED" for t in saved_trials(launch).values()):
            break
        time.sleep(0.05)
    d.kill()
    ids = trial_ids(first.group(1), 4)
    finished = {tid for tid, t in saved_trials(launch).items() if t["status"] == "TERMINATED"}
    assert finished, "no signed copy of Tune's state records a finished trial\n" + d.out
    # what a full disk leaves: Tune's state files cut short mid-write
    torn = [*launch.glob("experiment_state-*.json"), *launch.glob("basic-variant-state-*.json")]
    assert len(torn) == 2, sorted(p.name for p in launch.iterdir())
    for p in torn:
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 3] + b"\0garbage")

    r = sweeplab(cli(tmp_path, "resume", "torn", "--num-cpus", "2"), env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 trials: 4 finished" in r.stdout, r.stdout + r.stderr
    started = set(re.findall(STARTED, r.stdout))
    assert started <= ids, f"resume ran trials {sorted(started - ids)} that the launch never had"
    again = set(re.findall(STARTED, r.stdout)) & finished
    assert not again, f"resume trained finished trials {sorted(again)} again"
    assert_logged_once(f"sqlite:///{tmp_path / 'mlflow.db'}", "torn", ids, 3)
    assert_tune_finished_once(tmp_path / "ray", "torn", ids, env)


# ---- 3. corrupt newest checkpoint ---------------------------------------------------------------


# enough epochs, each long enough (~2 s) for the signed state (saved every second) to catch up with a
# trial's newest checkpoint before the next one replaces it; at ~0.7 s an epoch it sometimes never did
CKPT_EPOCHS = 8


def killed_with_a_resumable_trial(tmp_path: Path, drivers: list, name: str) -> tuple[str, Path, int]:
    """A 2-trial launch killed once Tune's signed state names an unfinished trial's newest checkpoint
    (an older one beside it): (the first trial's id, that trial's folder, the checkpoint's index)."""
    env = keyed(tmp_path)
    path = write_sweep(
        tmp_path,
        name=name,
        overrides={"train.epochs": CKPT_EPOCHS, **SLOW, "data.synthetic_train": 3072},
        space={"optim.lr": {"grid": [0.01, 0.1]}},
        max_concurrent=2,
    )
    d = Driver(cli(tmp_path, "run", str(path), "--name", name, "--num-cpus", "2"), env, tmp_path / "err")
    drivers.append(d)
    first = d.until(STARTED)
    assert first is not None, d.out
    assert d.until(rf" epoch 2/{CKPT_EPOCHS} ") is not None, d.out
    launch = tmp_path / "ray" / name
    deadline = time.monotonic() + 60
    while resumable(launch) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    d.kill()
    found = resumable(launch)
    assert found is not None, "no unfinished trial whose saved state names its newest checkpoint\n" + d.out
    victim, index = found
    (folder,) = launch.glob(f"train_trial_{victim}_*")
    return first.group(1), folder, index


def assert_resumed_whole(tmp_path: Path, name: str, first: str) -> subprocess.CompletedProcess:
    """`resume` ends both trials, every epoch in MLflow once and in Tune each trial once."""
    env = keyed(tmp_path)
    r = sweeplab(cli(tmp_path, "resume", name, "--num-cpus", "2"), env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 trials: 2 finished" in r.stdout, r.stdout + r.stderr
    ids = trial_ids(first, 2)
    assert_logged_once(f"sqlite:///{tmp_path / 'mlflow.db'}", name, ids, CKPT_EPOCHS)
    assert_tune_finished_once(tmp_path / "ray", name, ids, env)
    return r


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_to_the_older(tmp_path, drivers):
    first, folder, index = killed_with_a_resumable_trial(tmp_path, drivers, "ckpt")
    newest = folder / f"checkpoint_{index:06d}" / "state.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a write cut short
    assert_resumed_whole(tmp_path, "ckpt", first)
    # the corrupted epoch was trained again, from the older checkpoint
    epochs = [json.loads(line)["epoch"] for line in (folder / "result.json").read_text().splitlines()]
    assert epochs.count(index + 1) >= 2 and epochs[-1] == CKPT_EPOCHS, (newest, epochs)


@pytest.mark.slow
def test_a_checkpoint_deleted_after_the_last_saved_state_is_replaced_by_the_newer(tmp_path, drivers):
    """Tune deletes a trial's older checkpoints as newer ones come, but saves its state at most every
    second: a driver killed in between leaves a state that names a deleted checkpoint. `resume` puts the
    newer one in its place (runner/relink.py) instead of failing the trial on every try."""
    first, folder, index = killed_with_a_resumable_trial(tmp_path, drivers, "gone")
    # what the race leaves: the named checkpoint deleted, a newer one (registered after the save) beside it
    named, newer = folder / f"checkpoint_{index:06d}", folder / f"checkpoint_{index + 1:06d}"
    assert not newer.exists()
    named.rename(newer)
    r = assert_resumed_whole(tmp_path, "gone", first)
    assert f"{named.name} deleted after Tune's last saved state; resuming from {newer.name}" in r.stderr, r.stderr
    assert "does not exist on storage" not in r.stdout + r.stderr, r.stdout + r.stderr
    epochs = [json.loads(line)["epoch"] for line in (folder / "result.json").read_text().splitlines()]
    assert epochs[-1] == CKPT_EPOCHS, epochs


# ---- 4. SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_the_sweep_cleanly_and_resume_finishes_it(tmp_path, drivers):
    env = keyed(tmp_path)
    path = write_sweep(
        tmp_path,
        name="term",
        overrides={"train.epochs": 4, **SLOW},
        space={"optim.lr": {"grid": [0.01, 0.1, 0.3]}},
        max_concurrent=2,
    )
    d = Driver(cli(tmp_path, "run", str(path), "--name", "term", "--num-cpus", "2"), env, tmp_path / "err")
    drivers.append(d)
    first = d.until(STARTED)
    assert first is not None, d.out
    assert d.until(r" epoch 1/4 ") is not None, d.out
    os.kill(d.proc.pid, signal.SIGTERM)  # the driver alone, as a scheduler or `timeout` would
    rc = d.finish(timeout=120)
    assert rc == 1, d.out
    err = d.stderr
    assert "Traceback" not in err and "SIGTERM received" not in err and not re.search(r"@ +0x[0-9a-f]+", err), err
    assert "`sweeplab resume term` continues them" in err, d.out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, parents, runs = mlflow_runs(uri, "term")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert runs and not [r for r in runs if r.info.status == "RUNNING"], [
        (r.data.tags["sweeplab.trial_id"], r.info.status) for r in runs
    ]
    assert any(r.info.status == "KILLED" for r in runs)

    r = sweeplab(cli(tmp_path, "resume", "term", "--num-cpus", "2"), env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 trials: 3 finished" in r.stdout, r.stdout + r.stderr
    # e.g. Tune's "Failed to fetch metrics" for a trial stopped before its first epoch (no result files)
    assert "WARNING" not in r.stdout + r.stderr, r.stdout + r.stderr
    ids = trial_ids(first.group(1), 3)
    assert_logged_once(uri, "term", ids, 4)
    assert_tune_finished_once(tmp_path / "ray", "term", ids, env)


# ---- 5. two first sweeps on one new store and storage folder -------------------------------------


@pytest.mark.slow
def test_two_first_sweeps_at_once_on_one_new_store(tmp_path, drivers):
    env = keyed(tmp_path)
    path = write_sweep(
        tmp_path,
        name="pair",
        overrides={"train.epochs": 2},
        space={"optim.lr": {"grid": [0.01, 0.1]}},
        max_concurrent=1,
    )
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()
    pair = [
        Driver(cli(tmp_path, "run", str(path), "--name", name, "--num-cpus", "1"), env, tmp_path / f"err-{name}")
        for name in ("pair-a", "pair-b")
    ]
    drivers.extend(pair)
    rcs = [d.finish() for d in pair]
    assert rcs == [0, 0], "\n=====\n".join(d.out for d in pair)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for d, name in zip(pair, ("pair-a", "pair-b")):
        ids = set(re.findall(STARTED, "".join(d.lines)))
        assert len(ids) == 2, d.out
        assert_logged_once(uri, name, ids, 2)
        assert_tune_finished_once(tmp_path / "ray", name, ids, env)
        b = sweeplab([sys.executable, "-m", "sweeplab.cli", "best", name, "--tracking-uri", uri], env, 120)
        assert b.returncode == 0 and "optim.lr" in b.stdout + b.stderr, b.stdout + b.stderr
    assert len(all_run_ids(uri)) == 6  # two parents, four children: nothing else


# ---- 6. full disk under MLflow ------------------------------------------------------------------


@pytest.mark.slow
def test_full_mlflow_disk_is_reported_and_resume_relogs(tmp_path, tmp_path_factory, drivers, tmpfs):
    from mlflow_store import fresh_uri

    env = keyed(tmp_path)
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
        env,
        tmp_path / "err",
    )
    drivers.append(d)
    first = d.until(STARTED)
    assert first is not None, d.out
    assert d.until(r" epoch 1/3 ") is not None, d.out
    filler = fill(disk)
    rc = d.finish()
    ids = trial_ids(first.group(1), 2)
    assert rc == 1, d.out
    named = re.search(r"MLflow is missing data of (.*?);", d.stderr)
    assert named and set(re.findall(r"\S+_\d{5}", named.group(1))) & ids, d.out
    filler.unlink()

    r = sweeplab(cmd("resume", "mlfull", "--num-cpus", "2", storage=tmp_path / "ray", uri=uri), env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "logged again from Tune's results" in r.stderr, r.stderr
    assert_logged_once(uri, "mlfull", ids, 3)
    assert_tune_finished_once(tmp_path / "ray", "mlfull", ids, env)


# ---- 7. full disk under the storage folder ------------------------------------------------------


@pytest.mark.slow
def test_full_storage_disk_is_not_silent_and_resume_completes(tmp_path, drivers, tmpfs):
    env = keyed(tmp_path)
    storage = tmpfs("store", "16m")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_sweep(
        tmp_path,
        name="stfull",
        overrides={"train.epochs": 3, **SLOW},
        space={"optim.lr": {"grid": [0.01, 0.1]}},
        max_concurrent=2,
    )
    d = Driver(
        cmd("run", str(path), "--name", "stfull", "--num-cpus", "2", storage=storage, uri=uri), env, tmp_path / "err"
    )
    drivers.append(d)
    first = d.until(STARTED)
    assert first is not None, d.out
    assert d.until(r" epoch 1/3 ") is not None, d.out
    filler = fill(storage)
    rc = d.finish()
    ids = trial_ids(first.group(1), 2)
    assert rc != 0, d.out  # a sweep whose state or checkpoints could not be written does not end "fine"
    filler.unlink()

    r = sweeplab(cmd("resume", "stfull", "--num-cpus", "2", storage=storage, uri=uri), env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 trials: 2 finished" in r.stdout, r.stdout + r.stderr
    assert_logged_once(uri, "stfull", ids, 3)
    assert_tune_finished_once(storage, "stfull", ids, env)
