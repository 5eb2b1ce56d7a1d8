"""Test helpers: a fresh SQLite MLflow store per test, a sweep simulated through the Tracker, and ledger
events written as a launch's driver writes them (for the MLflow follower to copy).

Creating an MLflow database takes seconds (schema migrations), so one empty database is built
per test session and copied for each test.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sweeplab import ledger, reference
from sweeplab.tracking import Tracker
from sweeplab.tracking.store import client

_TEMPLATE: list[Path] = []


def fresh_uri(folder: Path, factory) -> str:
    """sqlite URI of an empty, already-migrated store in `folder`."""
    if not _TEMPLATE:
        base = factory.mktemp("mlflow_template")
        client(f"sqlite:///{base / 'mlflow.db'}").search_experiments()
        _TEMPLATE.append(base / "mlflow.db")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(_TEMPLATE[0], folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def append(launch_dir: Path, *events: dict[str, Any]) -> None:
    """Events as the launch's driver writes them: appended to its ledger and synced."""
    w = ledger.Writer(launch_dir)
    try:
        for e in events:
            w.append(e)
        w.sync()
    finally:
        w.close()


def trial_config(lr: float, wd: float, seed: int, epochs: int = 3, smoothing: float | None = None) -> dict:
    """A nested training config like the sweep compiler resolves for a quickstart trial (with
    `smoothing`, its train.label_smoothing too)."""
    train = {"epochs": epochs, "seed": seed, "precision": "fp32"}
    if smoothing is not None:
        train["label_smoothing"] = smoothing
    return {
        "data": {"name": "fashion_mnist", "batch_size": 128, "synthetic_shape": [3, 32, 32]},
        "model": {"name": "resnet_preact", "depth": 20},
        "optim": {"name": "sgd", "lr": lr, "weight_decay": wd, "nesterov": True},
        "train": train,
    }


def run_trial(
    t: Tracker,
    trial_id: str,
    lr: float,
    wd: float,
    seed: int,
    errors: list[float],
    epochs: int = 3,
    failed: bool = False,
    stopped: bool = False,
    epoch_s: float = 20.0,
    rows: dict[str, int] | None = None,
    smoke: bool = False,
    label: str | None = None,
    smoothing: float | None = None,
    variant: str = "",
) -> None:
    """Drive the Tracker as the Tune callback does: start, one result per epoch (with Ray clutter), end.

    `rows` are the reference rows the trial fills (table id -> row index); default: its quickstart row
    (of the smoke grid for a smoke trial).
    `smoke` tags it as a trial of a `--smoke` launch. `label` is its config label (tag `sweeplab.label`,
    which names the run); None logs it as stores before labels did, named by the trial id.
    """
    if rows is None:
        quick = reference.get("quickstart", smoke=smoke)
        rows = {"quickstart": reference.match_row(quick, quick.match, {"optim.lr": lr, "optim.weight_decay": wd})}
    t.trial_start(
        trial_id,
        trial_config(lr, wd, seed, epochs, smoothing),
        {
            "sweeplab.trial_id": trial_id,
            "sweeplab.seed": str(seed),
            "sweeplab.variant": variant,
            **({"sweeplab.label": label} if label else {}),
            "sweeplab.tables": ",".join(rows),
            "sweeplab.smoke": str(smoke).lower(),
            **{f"sweeplab.row.{k}": str(v) for k, v in rows.items()},
        },
    )
    t.trial_tags(trial_id, {"sweeplab.hardware": "cpu x2"})
    for epoch, err in enumerate(errors, start=1):
        t.trial_result(
            trial_id,
            {
                "epoch": epoch,
                "lr": lr,
                "train/loss": 1.0 / epoch,
                "train/error": err + 1,
                "val/loss": 0.5,
                "val/error": err,
                "train/accuracy": 99 - err,
                "val/accuracy": 100 - err,
                "time/epoch_s": epoch_s,
                "time/images_per_s": 1000.0,
                "time/train_s": epoch_s * epoch,
                # what Ray adds to every result: none of it may reach MLflow
                "pid": 4242,
                "timestamp": 1700000000,
                "time_this_iter_s": 1.0,
                "training_iteration": epoch,
                "done": False,
                "trial_id": trial_id,
                "hostname": "node",
                "date": "2026-01-01",
                "config": {"x": 1},
            },
        )
    t.trial_end(trial_id, failed=failed, stopped_early=stopped, epoch=len(errors))


def grid_point(i: int) -> tuple[float, float]:
    """(lr, weight decay) of the quickstart table's row i."""
    lr, wd = reference.get("quickstart").rows[i][:2]
    return float(lr), float(wd)
