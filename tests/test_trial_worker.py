"""The inside of a trial without Ray: per-epoch reports with checkpoints, restoring, PBT's exploit."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import torch

from sweeplab import config, engine
from sweeplab.runner import worker


class FakeCheckpoint:
    """Tune's Checkpoint as far as the worker uses it: report copies the folder away (as Tune does)."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def from_directory(cls, path: str) -> FakeCheckpoint:
        return cls(path)

    @contextmanager
    def as_directory(self):
        yield self.path


def state_of(epoch: int, **model: torch.Tensor) -> dict:
    """An engine checkpoint's layout (engine.Trainer.state_dict) with a stand-in model."""
    return {
        "version": engine.CHECKPOINT_VERSION,
        "epoch": epoch,
        "step": 10 * epoch,
        "model": model,
        "optimizer": {"state": {}, "param_groups": []},
        "scaler": {},
        "config": {},
    }


def test_reporter_checkpoints_each_epoch_and_restore_reads_it(tmp_path):
    reports = []

    def report(metrics, checkpoint=None):
        kept = None
        if checkpoint is not None:  # the temporary folder is gone after report returns: copy it
            kept = FakeCheckpoint(shutil.copytree(checkpoint.path, tmp_path / f"ckpt{len(reports)}"))
        reports.append((metrics, kept))

    r = worker.Reporter(report, FakeCheckpoint, rank=0, hardware="cpu x1 threads")
    r({"epoch": 1, "val/error": 50.0, "val/loss": 1.0}, lambda: state_of(1, w=torch.ones(2)))
    r({"epoch": 2}, lambda: state_of(2, w=torch.zeros(2)))  # no evaluation this epoch
    (m1, c1), (m2, c2) = reports
    assert m1["hardware"] == "cpu x1 threads" and "hardware" not in m2
    assert m2["val/error"] == 50.0 and m2["val_stale"] is True and "val_stale" not in m1
    state, last = worker.restore(c2)
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.zeros(2))
    assert last == {"epoch": 2}  # the measured metrics, not the carried-forward ones
    assert worker.restore(None) == (None, {})


def test_other_ranks_report_without_a_checkpoint():
    reports = []
    r = worker.Reporter(lambda m, checkpoint=None: reports.append(checkpoint), FakeCheckpoint, rank=1, hardware="")
    r({"epoch": 1, "val/error": 1.0, "val/loss": 1.0}, lambda: (_ for _ in ()).throw(AssertionError("built state")))
    assert reports == [None]


def test_adopt_gives_a_donor_checkpoint_this_trials_optimiser_settings():
    donor = config.load(None, ["data.name=synthetic", "optim.weight_decay=0.001", "optim.momentum=0.9"])
    mine = config.load(None, ["data.name=synthetic", "optim.weight_decay=0.0001", "optim.momentum=0.8"])
    groups = [{"weight_decay": 0.001, "momentum": 0.9}, {"weight_decay": 0.0, "momentum": 0.9, "lars_exclude": True}]
    state = {"config": donor.to_dict(), "optimizer": {"param_groups": groups}}
    worker.adopt(state, mine)
    assert groups == [
        {"weight_decay": 0.0001, "momentum": 0.8},
        {"weight_decay": 0.0, "momentum": 0.8, "lars_exclude": True},
    ]
    own = {"config": mine.to_dict(), "optimizer": {"param_groups": [{"weight_decay": 0.5}]}}
    assert worker.adopt(own, mine)["optimizer"]["param_groups"] == [{"weight_decay": 0.5}]  # own checkpoint: untouched
