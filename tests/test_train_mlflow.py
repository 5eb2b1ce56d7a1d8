"""`sweeplab train` logs its run to MLflow (params, a step per epoch, config.yaml, the model), and the model
it logs is the trained network: `sweeplab.load_model` and `mlflow.pytorch.load_model` give the same
predictions, and they score the test set as the run reported."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

import sweeplab
import sweeplab.tracking  # first: it turns MLflow telemetry off before mlflow loads
from mlflow_store import fresh_uri
from sweeplab import config
from sweeplab.cli import main
from sweeplab.core.errors import ConfigError
from sweeplab.data import datasets
from sweeplab.tracking.store import client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow", "ignore::UserWarning:mlflow")

CONFIG = str(Path(__file__).parents[1] / "configs/fashion_mnist/resnet_preact20.yaml")
TINY = [
    "data.name=synthetic",
    "data.synthetic_shape=[1,12,12]",
    "data.synthetic_classes=4",
    "data.synthetic_train=256",
    "data.synthetic_test=64",
    "data.batch_size=32",
    "model.depth=8",
    "model.initial_channels=4",
    "optim.lr=0.2",
    "train.threads=1",
    "train.activation=celu",  # the model must carry the config's tricks, not only its weights
    "train.celu_alpha=0.3",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, Path, str]:
    """(store URI, run folder, run id) of a 1-epoch run continued to 2 epochs with --resume."""
    folder = tmp_path_factory.mktemp("trained")
    uri = fresh_uri(folder / "store", tmp_path_factory)
    out = folder / "run"
    assert main(["train", CONFIG, *TINY, "train.epochs=1", "--output", str(out), "--tracking-uri", uri]) == 0
    first = json.loads((out / "mlflow.json").read_text())["run_id"]
    assert (
        main(["train", CONFIG, *TINY, "train.epochs=2", "--output", str(out), "--resume", "--tracking-uri", uri]) == 0
    )
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == first  # --resume continues the same run
    return uri, out, first


def test_the_run_holds_params_epochs_config_and_its_model(trained) -> None:
    uri, out, run_id = trained
    c = client(uri)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert c.get_experiment(run.info.experiment_id).name == "train"
    assert run.data.params["optim.lr"] == "0.2" and run.data.params["train.epochs"] == "1"  # as first launched
    assert run.data.tags["sweeplab.resumed_with"] == "train.epochs=2"  # MLflow params never change: a tag says it
    with tempfile.TemporaryDirectory() as tmp:
        assert (
            yaml.safe_load(Path(c.download_artifacts(run_id, "config.yaml", tmp)).read_text())["train"]["epochs"] == 2
        )
    assert [m.step for m in c.get_metric_history(run_id, "val/error")] == [1, 2]  # each epoch once
    assert "epoch" not in run.data.metrics  # the step, not a metric
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert run.data.metrics["val/error"] == pytest.approx(last["val/error"])
    assert "config.yaml" in {a.path for a in c.list_artifacts(run_id)}
    models = [m for m in c.search_logged_models([run.info.experiment_id]) if m.source_run_id == run_id]
    assert {m.name for m in models} == {"model"} and all(str(m.status) == "READY" for m in models)
    assert {o.step for o in run.outputs.model_outputs} == {1, 2}  # the model of each finished training


def test_load_model_gives_the_trained_network(trained, monkeypatch) -> None:
    uri, out, run_id = trained
    model = sweeplab.load_model(run_id, tracking_uri=uri)
    assert isinstance(model, torch.nn.Module) and not model.training
    import mlflow.pytorch

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # what `runs:/` reads (another test may have set the process-wide one)
    try:
        same = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(before)
    conf = config.load(CONFIG, [*TINY, "train.epochs=2"])
    data = datasets.load(conf.data)
    images = data.test_x.float() / 255
    with torch.no_grad():
        logits, other = model(images), same(images)
    assert torch.equal(logits, other)
    # the test set scored as the run's last epoch reported it: normalisation and CELU are inside the model
    error = 100.0 * (logits.argmax(1) != data.test_y).float().mean().item()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert error == pytest.approx(last["val/error"], abs=1e-6)


def test_load_model_names_what_is_missing(trained, tmp_path, tmp_path_factory) -> None:
    uri, _, _ = trained
    with pytest.raises(ConfigError, match="no run '" + "0" * 32):
        sweeplab.load_model("0" * 32, tracking_uri=uri)
    other = fresh_uri(tmp_path / "plain", tmp_path_factory)
    c = client(other)
    run = c.create_run(c.get_experiment_by_name("Default").experiment_id).info.run_id
    with pytest.raises(ConfigError, match="has no logged model 'model'"):
        sweeplab.load_model(run, tracking_uri=other)


def test_no_mlflow_logs_nothing(tmp_path) -> None:
    out = tmp_path / "run"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (
        main(["train", CONFIG, *TINY, "train.epochs=1", "--output", str(out), "--tracking-uri", uri, "--no-mlflow"])
        == 0
    )
    assert not (out / "mlflow.json").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_half_precision_state_serves_in_fp32() -> None:
    """fp16_pure trains the weights in half: the served model is fp32 on the CPU, with the same outputs."""
    from sweeplab import engine
    from sweeplab.models import classifier

    conf = config.load(CONFIG, [*TINY, "train.epochs=1"])
    trainer = engine.Trainer(conf)
    state = trainer.state_dict()
    data = datasets.load(conf.data)
    args = (data.shape, data.num_classes, data.mean, data.std)
    full = classifier.from_state(state, *args)
    halved = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}  # as model.half()
    half = classifier.from_state({**state, "model": halved}, *args)
    assert all(p.dtype == torch.float32 for p in half.parameters()) and not half.training
    images = data.test_x[:8].float() / 255
    with torch.no_grad():
        assert torch.allclose(full(images), half(images), atol=0.05)
