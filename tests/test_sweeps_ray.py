"""Sweeps on a real local Ray (2 CPUs), through the `sweeplab` CLI in a subprocess, on tiny synthetic data:
ASHA stops trials early and the whole record lands in MLflow, every socket is on loopback and the piped
output is plain lines without warnings; DDP keeps the ranks' weights identical; PBT continues trials from
other trials' checkpoints with a perturbed lr, and the ledger and MLflow say which.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlflow_store import fresh_uri
from sweep_cli import LOOPBACK, child_runs, cli, descendants, listening, write_sweep
from sweeplab import ledger

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
WARNED = re.compile(r"WARNING|Warning:|warn_if_slow|may be a performance bottleneck|Traceback")


def _run_watching(argv: list[str], when: str) -> tuple[int, str, str, list | None, set[int]]:
    """Run `argv`; the sockets of its processes when a stdout line first contains `when`; every pid seen."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines, sockets, pids = [], None, {proc.pid}
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        pids |= descendants(proc.pid)
        if sockets is None and when in line:
            sockets = listening(descendants(proc.pid))
    err = proc.stderr.read() if proc.stderr else ""
    proc.wait(timeout=600)
    return proc.returncode, "".join(lines), err, sockets, pids


@pytest.fixture(scope="module")
def asha_sweep(tmp_path_factory):
    """A 4-trial ASHA sweep, its output piped; the sockets of its processes while the first trial runs."""
    tmp_path = tmp_path_factory.mktemp("asha")
    fresh_uri(tmp_path, tmp_path_factory)  # migrated already (a new store: test_faults' pair)
    path = write_sweep(
        tmp_path,
        name="asha",
        overrides={"train.epochs": 4},
        space={"optim.lr": {"grid": [0.5, 0.3, 0.001, 0.0001]}},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        max_concurrent=2,
        tables={"quickstart": {"match": {"initial lr": "optim.lr"}}},
        mlflow={},  # the default: each finished trial logs its model
    )
    rc, out, err, sockets, pids = _run_watching(
        cli(tmp_path, "run", str(path), "--name", "asha", "--num-cpus", "2"), " start "
    )
    return tmp_path, path, rc, out, err, sockets, pids


def test_asha_stops_a_trial_early(asha_sweep):
    tmp_path, _, rc, out, err, *_ = asha_sweep
    assert rc == 0, out + err
    assert "stopped early at epoch" in out
    summary = re.search(r"sweeplab: 4 trials: (\d) finished, (\d) stopped early, 0 failed\n", out)
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
    # the run's summary and `status` (the ledger alone) tell finished from stopped the same way
    assert f"4 trials: {summary[1]} finished, {summary[2]} stopped" in status.stdout, status.stdout


def test_local_ray_listens_on_loopback_only(asha_sweep):
    *_, sockets, _ = asha_sweep
    assert sockets is not None and len(sockets) >= 3, sockets  # at least GCS, raylet and a worker
    assert all(addr in LOOPBACK for addr, _ in sockets), sockets


def test_nothing_of_the_launch_outlives_it(asha_sweep):
    *_, pids = asha_sweep
    alive = [p for p in pids if Path(f"/proc/{p}").exists() and "zombie" not in _state(p)]
    assert not alive, [(p, Path(f"/proc/{p}/cmdline").read_bytes()[:80]) for p in alive]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_piped_output_is_plain_lines_without_warnings(asha_sweep):
    _, _, rc, out, err, *_ = asha_sweep
    assert "\x1b" not in out + err  # a pipe: no cursor movement, no colour
    status = [line for line in out.splitlines() if re.match(r"\[\s*\d+s\] status  ", line)]
    ended = re.findall(r"  (done|stopped early at epoch \d/\d)  ", out)
    assert len(ended) == 4 and len(status) >= 4, out  # one after each trial's end, one at the close
    summary = re.search(r"sweeplab: 4 trials: (\d) finished, (\d) stopped early, 0 failed", out)
    finished, stopped = int(summary[1]), int(summary[2])
    last = status[-1]
    assert f"0 running, {finished} done, {stopped} stopped early, 0 failed, 0 pending (of 4)" in last, last
    ends = re.findall(r"\] (.+?)  (?:done|stopped early at epoch \d/\d)  val/error (\S+)", out)
    value, name = min((float(v), n) for n, v in ends)
    assert f"best val/error {value:.4g} ({name})" in last, out
    done, budget = map(int, re.search(r"epochs (\d+)/(\d+)", last).groups())
    assert done == budget == 4 * finished + sum(int(e) for e in re.findall(r"stopped early at epoch (\d)/", out))
    assert not [line for line in (out + err).splitlines() if WARNED.search(line)], out + err


def test_the_record_a_user_finds_in_mlflow(asha_sweep):
    """Without opening the launch folder: runs named by label, tags, dataset, checkpoint, the parent's report."""
    tmp_path, path, *_ = asha_sweep
    client, runs = child_runs(tmp_path, "asha")
    record = ledger.read(tmp_path / "ray" / "asha")[0]
    assert sorted(r.info.run_name for r in runs) == sorted(t.label for t in record.trials.values())
    for r in runs:
        tags = r.data.tags
        t = record.trials[tags["sweeplab.trial_id"]]
        assert tags["sweeplab.label"] == r.info.run_name == t.label
        assert tags["sweeplab.outcome"] == (
            "finished" if t.status == "FINISHED" else f"stopped early at epoch {t.epoch}"
        )
        assert tags["mlflow.source.name"] == str(path) and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] and "mlflow.source.git.commit" in tags
        (data,) = r.inputs.dataset_inputs
        assert data.dataset.name == "synthetic" and len(data.dataset.digest) == 16
        assert json.loads(data.dataset.profile) == {"num_rows": 384, "train_rows": 256, "test_rows": 128}
        ckpt = Path(tags["sweeplab.checkpoint_path"])
        assert ckpt == tmp_path / "ray" / "asha" / "trials" / t.key / "checkpoint.pt" and ckpt.is_file()
        files = sorted(a.path for a in client.list_artifacts(r.info.run_id, "checkpoint"))
        assert files == ["checkpoint/metrics.json", "checkpoint/state.pt"]
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "val/error"))
        assert steps == sorted(t.results) == list(range(1, t.epoch + 1))
        # a trial that ran all its epochs logged its final weights as an MLflow PyTorch model
        models = client.search_logged_models([r.info.experiment_id], filter_string=f"source_run_id = '{r.info.run_id}'")
        assert [str(m.status) for m in models] == (["READY"] if t.status == "FINISHED" else []), (t.key, models)
    (parent,) = client.search_runs(
        [runs[0].info.experiment_id], "tags.`sweeplab.launch` = 'asha' and tags.`mlflow.parentRunId` IS NULL"
    )
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.name"] == "grid" and parent.data.params["scheduler.name"] == "asha"
    assert parent.data.params["mlflow.log_models"] == "true"
    finished = [r for r in runs if r.data.tags["sweeplab.outcome"] == "finished"]
    best = min(finished, key=lambda r: r.data.metrics["val/error"])
    assert parent.data.metrics["best/val/error"] == best.data.metrics["val/error"]
    assert parent.data.tags["sweeplab.best_label"] == best.info.run_name
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == ["report", "sweep.yaml", "trials.json"]
    report = sorted(a.path for a in client.list_artifacts(parent.info.run_id, "report"))
    assert "report/best_trials.md" in report and any(f.endswith(".png") for f in report), report
    sweep_file = client.download_artifacts(parent.info.run_id, "sweep.yaml", str(tmp_path / "parent"))
    assert yaml.safe_load(Path(sweep_file).read_text()) == yaml.safe_load(path.read_text())


def test_ddp_trial_keeps_ranks_identical(tmp_path, tmp_path_factory):
    fresh_uri(tmp_path, tmp_path_factory)  # migrated already (a new store: test_faults' pair)
    # 64 images in batches of 64: one optimiser step per epoch, so "after each epoch" is "after each step"
    path = write_sweep(
        tmp_path,
        name="ddp",
        overrides={"train.epochs": 3, "data.synthetic_train": 64},
        space={"optim.lr": {"grid": [0.5]}},
        resources={"workers": 2, "cpus_per_worker": 1},
    )
    rc, out, err, sockets, _ = _run_watching(
        cli(tmp_path, "run", str(path), "--name", "ddp", "--num-cpus", "2"), " epoch 1/"
    )
    assert rc == 0, out + err
    # the rendezvous (torch's TCPStore) and gloo's pairs listen on loopback like the rest of the local Ray
    assert sockets is not None and any("RayTrain" in p for _, p in sockets), sockets  # ss cuts names at 15
    assert all(addr in LOOPBACK for addr, _ in sockets), sockets
    (t,) = ledger.read(tmp_path / "ray" / "ddp")[0].trials.values()
    assert sorted(t.results) == [1, 2, 3] and t.status == "FINISHED"
    lines = [
        json.loads(x) for x in (tmp_path / "ray" / "ddp" / "trials" / t.key / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert t.results[1]["train/loss"] != t.results[3]["train/loss"]  # the weights did move
    _, (run,) = child_runs(tmp_path, "ddp")
    assert run.data.tags["sweeplab.hardware"].startswith("2 x cpu")
    spread = {m.step: m.value for m in _client(tmp_path).get_metric_history(run.info.run_id, "ddp/weight_spread")}
    assert spread == {} or set(spread.values()) == {0.0}  # logged when MLflow keeps it: then identical ranks


def _client(tmp_path: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_pbt_continues_trials_from_others_checkpoints_under_tunes_reporter(tmp_path, tmp_path_factory):
    """PBT, end to end, with `--progress tune` (Tune's own table): a trial takes another's checkpoint with a
    perturbed lr; its next epochs continue from there; the ledger and its MLflow run say whose it took."""
    fresh_uri(tmp_path, tmp_path_factory)  # migrated already (a new store: test_faults' pair)
    path = write_sweep(
        tmp_path,
        name="pbt",
        # two trials, a CPU each: at every interval PBT ranks both (quantile 0.5: the worse one takes the
        # better one's checkpoint). Epochs of ~0.5 s keep their reports close together; epochs of 0.1 s let
        # a trial finish before PBT's exploit reached it (seen once)
        overrides={"train.epochs": 6, "data.synthetic_shape": [1, 32, 32], "data.synthetic_train": 1024},
        space={"optim.lr": {"loguniform": [0.001, 1.0]}},
        search={"name": "random", "num_samples": 2, "seed": 3},
        scheduler={"name": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5},
        max_concurrent=2,
    )
    r = subprocess.run(
        cli(tmp_path, "run", str(path), "--name", "pbt", "--num-cpus", "2", "--progress", "tune"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Trial status:" in out and not re.search(r"\] status  |  start  \(trial ", r.stdout), out
    assert "sweeplab: 2 trials: 2 finished" in r.stdout
    record = ledger.read(tmp_path / "ray" / "pbt")[0]
    took = [(t, o) for t in record.trials.values() for o in t.origins]
    assert took, "no trial continued from another's checkpoint"
    client, runs = child_runs(tmp_path, "pbt")
    by_key = {run.data.tags["sweeplab.trial_id"]: run for run in runs}
    for t, origin in took:
        assert origin["key"] != t.key and origin["key"] in record.trials and origin["epoch"] >= 1
        assert t.point["optim.lr"] != record.trials[origin["key"]].point["optim.lr"] or t.point != {}
        tag = json.loads(by_key[t.key].data.tags["sweeplab.pbt.origin"])
        assert tag == t.origins[-1]
        # after the exploit its epochs continue the donor's count (a donor ahead of it skips some): each once
        steps = [m.step for m in client.get_metric_history(by_key[t.key].info.run_id, "val/error")]
        assert sorted(steps) == sorted(set(steps)) == sorted(t.results), (t.key, steps)
        assert origin["epoch"] + 1 in t.results or origin["epoch"] >= 6, (t.key, origin, sorted(t.results))
