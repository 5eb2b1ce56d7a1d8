"""Trained weights as MLflow PyTorch models: saved where the training ran, logged by whoever talks to MLflow.

A model is saved in two steps because only the driver talks to MLflow (one SQLite file serves a
cluster): `save_model` writes an MLflow model folder on local disk with no tracking server (a Ray
trial worker can call it), and `log_saved_model` attaches such a folder to an existing run, as
`mlflow.pytorch.log_model` would have: a LoggedModel named "model" whose source run is that run, so
`mlflow.pytorch.load_model("runs:/<run id>/model")` finds it and the MLflow UI lists it among the
run's logged models (and the registry can register it). This module imports no torch itself;
`mlflow.pytorch` does, when called.

The folder is MLflow 3's default "pt2" format (`torch.export`): loading it unpickles nothing, where
MLflow refuses a pickled model unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from sweeplab.core.errors import ConfigError
from sweeplab.tracking.store import client, resolve_uri

NAME = "model"  # the name under the run: runs:/<run id>/model


def _requirements() -> list[str]:
    """The model's pip requirements, pinned to what trained it: MLflow's own inference of them imports
    the model in a subprocess, which takes longer than the save."""
    return [f"{p}=={metadata.version(p)}" for p in ("torch", "numpy")]


def save_model(module: Any, input_example: Any, path: str | Path) -> Path:
    """Write `module` (an nn.Module in eval mode, on the CPU) as an MLflow PyTorch model folder at `path`,
    with `input_example` (a numpy batch of two or more inputs: the batch size stays free) and the
    signature inferred from it. Local disk only: no tracking server is needed."""
    import mlflow.pytorch

    mlflow.pytorch.save_model(
        module, str(path), input_example=input_example, serialization_format="pt2", pip_requirements=_requirements()
    )
    return Path(path)


def log_saved_model(tracking_uri: str | None, run_id: str, path: str | Path, name: str = NAME, step: int = 0) -> str:
    """Attach the saved model folder `path` to run `run_id` of the store at `tracking_uri` as its logged
    model `name` (an output of the run at `step`, with the run's params); returns the model's id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    c = client(resolve_uri(tracking_uri))
    run = c.get_run(run_id)
    params = {k: str(v) for k, v in run.data.params.items()}
    # the run's source, user and commit, which the UI shows as the model's "Logged from"
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("mlflow.source.") or k == "mlflow.user"}
    model = c.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id, params=params, tags=tags)
    try:
        with tempfile.TemporaryDirectory(prefix="sweeplab-model-") as tmp:
            folder = Path(shutil.copytree(path, Path(tmp) / name))
            # the MLmodel file names its logged model and run, as mlflow.pytorch.log_model writes it
            spec = Model.load(str(folder / "MLmodel"))
            spec.model_uuid, spec.model_id, spec.run_id = model.model_id, model.model_id, run_id
            spec.artifact_path = model.artifact_location
            spec.save(str(folder / "MLmodel"))
            c.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
            c.log_model_artifacts(model.model_id, str(folder))
    except BaseException:
        c.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    c.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_id


def load_model(run_id: str, tracking_uri: str | None = None) -> Any:
    """The trained nn.Module that run `run_id` logged as its model, in eval mode; it takes float images
    in [0, 1] (N, C, H, W) and returns logits. ConfigError when the run or its model is not there."""
    import mlflow.artifacts
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    uri = resolve_uri(tracking_uri)
    c = client(uri)
    try:
        run = c.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no run '{run_id}' in the MLflow store {uri}") from None
    # found as runs:/<id>/model is, but read from this store: MLflow's models:/ lookup behind runs:/ asks
    # the process-wide tracking URI, not the one it is given
    found = [
        m
        for m in c.search_logged_models([run.info.experiment_id], filter_string=f"name = '{NAME}'")
        if m.source_run_id == run_id and str(m.status) == "READY"
    ]
    if not found:
        raise ConfigError(
            f"run '{run_id}' has no logged model '{NAME}' (trained with --no-mlflow, or before models were logged)"
        )
    with tempfile.TemporaryDirectory(prefix="sweeplab-model-") as tmp:
        newest = max(found, key=lambda m: m.creation_timestamp)  # a resumed run logs its longer training again
        local = mlflow.artifacts.download_artifacts(newest.artifact_location, dst_path=tmp, tracking_uri=uri)
        return _eval(mlflow.pytorch.load_model(local))


def _eval(module: Any) -> Any:
    """`module` in eval mode. An exported graph has inference baked in (BatchNorm on its running
    statistics, no dropout: it was exported in eval mode) and refuses `.eval()`; its flags say so instead."""
    try:
        return module.eval()
    except NotImplementedError:
        for m in module.modules():
            m.training = False
        return module
