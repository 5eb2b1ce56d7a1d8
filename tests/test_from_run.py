"""`sweeplab train --from-run RUN_ID`: a trial rerun from its MLflow run alone (config, and checkpoint with --resume).

The child runs are written as a sweep's tracker writes them (params, `config.yaml`, tags) into a real SQLite
store, with a `checkpoint/` artifact (state.pt, metrics.json, as runner/worker.py writes them) made by a real
epoch of a tiny synthetic config.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from mlflow_store import fresh_uri
from sweeplab import config, engine
from sweeplab.cli import main
from sweeplab.tracking import Tracker
from sweeplab.tracking.store import client

CONFIG = str(Path(__file__).parents[1] / "configs/fashion_mnist/resnet_preact20.yaml")
TINY = [
    "data.name=synthetic",
    "data.synthetic_shape=[1,12,12]",
    "data.synthetic_classes=4",
    "data.synthetic_train=256",
    "data.synthetic_test=64",
    "data.batch_size=32",
    "model.name=resnet_preact",
    "model.depth=8",
    "model.initial_channels=4",
    "augment.random_crop=true",
    "augment.hflip=true",
    "augment.mixup=1.0",  # mixup draws from the epoch generator: its numbers must resume too
    "optim.lr=0.2",
    "optim.weight_decay=5e-4",
    "train.threads=1",
    "train.channels_last=false",  # as in test_checkpoints: this torch build's NHWC CPU kernels are unsafe on some CPUs
    "train.epochs=2",
    "train.seed=3",
]
LABEL = "lr=0.2 weight_decay=0.0005 seed=3"


def _trial(uri: str, conf: config.Config, checkpoint: Path | None = None, trial_id: str = "abc_00000") -> Tracker:
    """A launch whose one child run is logged as a sweep logs it; `checkpoint` (a run folder) becomes its
    `checkpoint/` artifact and tag, as the final Tune checkpoint would."""
    t = Tracker(uri, "tiny", "tiny-1", {})
    t.trial_start(trial_id, conf.to_dict(), {"sweeplab.label": LABEL, "sweeplab.seed": str(conf.train.seed)})
    run_id = t._children[trial_id]
    t.trial_tags(trial_id, {"sweeplab.checkpoint_path": f"/ray/tiny-1/{trial_id}/checkpoint_000001"})
    if checkpoint is not None:
        tune = checkpoint.parent / "tune_checkpoint"
        tune.mkdir()
        shutil.copyfile(checkpoint / "checkpoint.pt", tune / "state.pt")
        last = (checkpoint / "metrics.jsonl").read_text().splitlines()[-1]
        (tune / "metrics.json").write_text(last)
        t.client.log_artifacts(run_id, str(tune), "checkpoint")
    t.trial_end(trial_id, failed=False, stopped_early=False)
    return t


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoint.pt", weights_only=True)["model"]


def _epochs(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def uri(tmp_path, tmp_path_factory) -> str:
    return fresh_uri(tmp_path / "store", tmp_path_factory)


def test_the_run_s_config_is_the_trial_s_bit_for_bit(tmp_path, uri, monkeypatch, capsys):
    conf = config.load(CONFIG, TINY)
    run_id = _trial(uri, conf)._children["abc_00000"]
    monkeypatch.chdir(tmp_path)  # the default run folder is runs/<label>
    assert main(["train", "--from-run", run_id, "train.epochs=1", "--tracking-uri", uri, "--no-mlflow"]) == 0
    rerun = tmp_path / "runs" / LABEL.replace(" ", "_")
    again = config.load(rerun / "config.yaml")
    assert again == config.load(CONFIG, [*TINY, "train.epochs=1"])
    assert again.flat() == {**conf.flat(), "train.epochs": 1}
    # and it trains exactly as the original config file does with the same seed
    assert main(["train", CONFIG, *TINY, "train.epochs=1", "--output", str(tmp_path / "file"), "--no-mlflow"]) == 0
    a, b = _weights(rerun), _weights(tmp_path / "file")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _epochs(rerun)[0]["train/loss"] == _epochs(tmp_path / "file")[0]["train/loss"]


def test_params_stand_in_for_a_missing_config_yaml(tmp_path, uri):
    conf = config.load(CONFIG, TINY)
    run_id = _trial(uri, conf)._children["abc_00000"]
    artifacts = Path(client(uri).get_run(run_id).info.artifact_uri.removeprefix("file://"))
    (artifacts / "config.yaml").unlink()
    out = tmp_path / "rerun"
    assert (
        main(
            [
                "train",
                "--from-run",
                run_id,
                "--output",
                str(out),
                "--tracking-uri",
                uri,
                "--stop-after",
                "1",
                "--no-mlflow",
            ]
        )
        == 0
    )
    assert config.load(out / "config.yaml") == conf


def test_resume_continues_from_the_run_s_checkpoint_bit_exactly(tmp_path, uri, capsys):
    assert main(["train", CONFIG, *TINY, "--output", str(tmp_path / "straight"), "--no-mlflow"]) == 0
    assert main(["train", CONFIG, *TINY, "--output", str(tmp_path / "trial"), "--stop-after", "1", "--no-mlflow"]) == 0
    run_id = _trial(uri, config.load(CONFIG, TINY), tmp_path / "trial")._children["abc_00000"]
    out = tmp_path / "rerun"
    capsys.readouterr()
    assert (
        main(["train", "--from-run", run_id, "--resume", "--output", str(out), "--tracking-uri", uri, "--no-mlflow"])
        == 0
    )
    assert "(epoch 1)" in capsys.readouterr().err
    assert [m["epoch"] for m in _epochs(out)] == [1, 2]
    assert _epochs(out)[0] == _epochs(tmp_path / "trial")[0]  # epoch 1 is the artifact's, timings and all
    a, b = _weights(tmp_path / "straight"), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _epochs(out)[-1]["val/error"] == _epochs(tmp_path / "straight")[-1]["val/error"]
    # once the folder holds a checkpoint of its own, --resume continues from it, not from the run's
    more = ["train", "--from-run", run_id, "train.epochs=3", "--resume", "--output", str(out), "--no-mlflow"]
    assert main([*more, "--tracking-uri", uri]) == 0
    assert "continuing run" not in capsys.readouterr().err
    assert [m["epoch"] for m in _epochs(out)] == [1, 2, 3]
    # a checkpoint trained with another config is refused (only train.epochs may change)
    bad = ["train", "--from-run", run_id, "optim.lr=0.3", "--resume", "--output", str(tmp_path / "bad"), "--no-mlflow"]
    assert main([*bad, "--tracking-uri", uri]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def _fails(argv: list[str], capsys, *needles: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sweeplab: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def test_bad_runs_are_one_line_errors_and_write_nothing(tmp_path, uri, capsys):
    t = _trial(uri, config.load(CONFIG, TINY))
    run_id, out = t._children["abc_00000"], tmp_path / "out"
    args = ["--output", str(out), "--tracking-uri", uri]
    _fails(["train", "--from-run", "0" * 32, *args], capsys, "no run '" + "0" * 32)
    _fails(["train", "--from-run", t.parent_id, *args], capsys, "parent run of launch 'tiny-1'")
    other = t.client.create_run(t.experiment_id).info.run_id
    _fails(["train", "--from-run", other, *args], capsys, "not logged by a sweeplab sweep")
    # a sweep with mlflow: {log_checkpoints: false}: the error says where the Tune checkpoint is
    _fails(
        ["train", "--from-run", run_id, "--resume", *args],
        capsys,
        run_id,
        "sweeplab.checkpoint_path",
        "/ray/tiny-1/abc_00000/checkpoint_000001",
    )
    _fails(["train", "--from-run", run_id, "optim.nope=1", *args], capsys, "optim.nope", f"run {run_id}")
    _fails(["train", CONFIG, "--from-run", run_id, *args], capsys, "not both")
    _fails(["train", *args], capsys, "--from-run")
    missing = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    _fails(["train", "--from-run", run_id, "--output", str(out), "--tracking-uri", missing], capsys, "no MLflow store")
    assert not out.exists() and not (tmp_path / "none").exists()


class _Payload:
    """Unpickling this runs `touch MARKER`: what a crafted checkpoint artifact would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_a_payload_checkpoint_artifact_is_refused_not_unpickled(tmp_path, uri, capsys):
    trial, marker = tmp_path / "trial", tmp_path / "MARKER"
    trial.mkdir()
    state = {"version": engine.CHECKPOINT_VERSION, "epoch": 1, "model": _Payload(marker)}
    torch.save(state, trial / "checkpoint.pt")
    (trial / "metrics.jsonl").write_text('{"epoch": 1}\n')
    run_id = _trial(uri, config.load(CONFIG, TINY), trial)._children["abc_00000"]
    out = tmp_path / "out"
    _fails(
        ["train", "--from-run", run_id, "--resume", "--output", str(out), "--tracking-uri", uri, "--no-mlflow"],
        capsys,
        f"checkpoint artifact of run {run_id}",
        "refused",
    )
    assert not marker.exists() and not out.exists()
