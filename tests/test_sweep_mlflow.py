"""What MLflow keeps of a sweep: the `mlflow` key of a sweep file, and (slow) a real sweep's record,
read back with MlflowClient: runs named by label, outcomes, standard tags, dataset input, checkpoint
and the parent run's settings, files and best result."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweep_cli import write_sweep
from sweeplab.core.errors import SweepError
from sweeplab.search_spaces import from_snapshot, load


def test_log_checkpoints_key_defaults_true_and_smoke_overrides(tmp_path: Path) -> None:
    assert load(write_sweep(tmp_path)).log_checkpoints is True
    path = write_sweep(tmp_path, mlflow={"log_checkpoints": False}, smoke={"mlflow": {"log_checkpoints": True}})
    assert load(path).log_checkpoints is False
    assert load(path, smoke=True).log_checkpoints is True
    # a launch saved before the key existed resumes with the default
    snap = load(write_sweep(tmp_path)).snapshot()
    assert from_snapshot(snap).log_checkpoints is True


def test_log_models_key_defaults_true_and_smoke_overrides(tmp_path: Path) -> None:
    assert load(write_sweep(tmp_path, mlflow={})).log_models is True
    path = write_sweep(tmp_path, mlflow={"log_models": False}, smoke={"mlflow": {"log_models": True}})
    assert load(path).log_models is False and load(path).log_checkpoints is True
    assert load(path, smoke=True).log_models is True
    assert from_snapshot(load(path).snapshot()).log_models is False


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"mlflow": {"log_checkpoint": False}}, "unknown key 'mlflow.log_checkpoint'; did you mean"),
        ({"mlflow": {"log_checkpoints": "no"}}, "'mlflow.log_checkpoints' must be true or false"),
        ({"mlflow": True}, "'mlflow' must be a mapping"),
        ({"smoke": {"mlflow": {"log_checkpoints": 0}}}, "'smoke.mlflow.log_checkpoints' must be true or false"),
        ({"mlflow": {"log_models": "false"}}, "'mlflow.log_models' must be true or false"),
        ({"mlflow": {"log_model": False}}, "unknown key 'mlflow.log_model'; did you mean 'mlflow.log_models'"),
    ],
)
def test_bad_mlflow_key_names_it(tmp_path: Path, spec: dict, message: str) -> None:
    with pytest.raises(SweepError, match=message.replace("(", r"\(")):
        load(write_sweep(tmp_path, **spec))
