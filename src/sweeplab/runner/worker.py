"""What runs inside a trial, without Ray: reports with checkpoints, restoring, DDP replica checks.

`ray_backend` passes in Tune's or Ray Train's `report` and `Checkpoint`, so this module works with
either and is tested without a cluster.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Reporter:
    """Turns the engine's on_epoch into reports with a checkpoint (the engine's state) per epoch."""

    def __init__(
        self,
        report: Callable[..., None],
        checkpoint_cls: Any,
        rank: int,
        hardware: str,
        dataset: dict[str, Any] | None = None,
    ) -> None:
        self.report, self.checkpoint_cls, self.rank, self.hardware = report, checkpoint_cls, rank, hardware
        self.dataset = dataset or {}
        self.val: dict[str, float] = {}

    def __call__(
        self, metrics: dict[str, float], state: Callable[[], dict[str, Any]], extra: dict[str, Any] | None = None
    ) -> None:
        import torch

        # When the epoch was measured, on this worker: the driver logs it to MLflow with this time,
        # not with whenever the result reached it (seconds later on a busy driver).
        out = {**metrics, **(extra or {}), "reported_at": time.time()}
        if "val/error" in metrics:
            self.val = {k: v for k, v in metrics.items() if k.startswith("val/")}  # whichever the sweep ranks by
        else:  # eval_every > 1: schedulers need the metric every epoch; flagged so tracking skips it
            out.update(self.val, val_stale=True)
        if self.hardware:
            out["hardware"], self.hardware = self.hardware, ""
        if self.dataset:  # the first result only, like hardware: the driver logs it as the run's dataset input
            out["dataset"], self.dataset = self.dataset, {}
        if self.rank != 0:  # every rank reports (Train's barrier); rank 0 alone writes the checkpoint
            self.report(out)
            return
        with tempfile.TemporaryDirectory(prefix="sweeplab-ckpt-") as d:
            torch.save(state(), Path(d) / "state.pt")
            (Path(d) / "metrics.json").write_text(json.dumps(metrics))
            self.report(out, checkpoint=self.checkpoint_cls.from_directory(d))


class Unrecoverable(RuntimeError):
    """No checkpoint of a trial loads: `resume` would fail the same way, so the trial must be rerun."""


def restore(checkpoint: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(engine state, last metrics) of a checkpoint, or (None, {}). When the latest one cannot be read,
    the newest older checkpoint folder beside it that can (Tune and Train keep two) is used instead."""
    if checkpoint is None:
        return None, {}
    from sweeplab.engine import CheckpointError

    problems = []
    try:
        with checkpoint.as_directory() as d:
            return _load(Path(d))
    except CheckpointError as e:
        problems.append(str(e))
    for folder in _older(checkpoint):
        try:
            state, metrics = _load(folder)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        print(f"sweeplab: {problems[0]}; continuing from {folder} (epoch {state['epoch']})", file=sys.stderr)
        return state, metrics
    raise Unrecoverable(f"this trial cannot be resumed from its checkpoints and must be rerun: {'; '.join(problems)}")


def _load(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine state and metrics of one checkpoint folder, read as tensors and plain data only."""
    from sweeplab.engine import CheckpointError, load_checkpoint

    state = load_checkpoint(folder / "state.pt")
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / 'metrics.json'}: unreadable ({e.__class__.__name__})") from None
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{folder / 'metrics.json'}: not a JSON object")
    return state, metrics


def _older(checkpoint: Any) -> list[Path]:
    """The checkpoint folders beside a local one that are older (Tune's checkpoint_000003 before
    checkpoint_000004, Train's dated names likewise), newest first; none for remote storage."""
    fs = getattr(checkpoint, "filesystem", None)
    if fs is not None and type(fs).__name__ != "LocalFileSystem":
        return []
    latest = Path(str(getattr(checkpoint, "path", "") or ""))
    if not latest.name.startswith("checkpoint_") or not latest.parent.is_dir():
        return []

    def order(p: Path) -> tuple[int, str]:  # numbers compare as numbers past checkpoint_999999
        suffix = p.name[len("checkpoint_") :]
        return (int(suffix), "") if suffix.isdigit() else (-1, suffix)

    siblings = [
        p
        for p in latest.parent.iterdir()
        if p.name.startswith("checkpoint_") and p.is_dir() and order(p) < order(latest)
    ]
    return sorted(siblings, key=order, reverse=True)


def adopt(state: dict[str, Any], conf: Any) -> dict[str, Any]:
    """A checkpoint of another trial's config (PBT's exploit) continues with this trial's optimiser
    hyperparameters: the loaded optimiser state would otherwise bring the donor's weight decay and
    momentum back (the learning rate is recomputed every step, so it follows the config anyway)."""
    if state["config"].get("optim") == conf.to_dict()["optim"]:
        return state
    for group in state["optimizer"]["param_groups"]:
        if "weight_decay" in group and not group.get("lars_exclude"):
            group["weight_decay"] = conf.optim.weight_decay
        if "momentum" in group:
            group["momentum"] = conf.optim.momentum
    return state


def hardware(device: str, workers: int = 1) -> str:
    """What a trial trains on, for the run's tags: 'NVIDIA H100 80GB HBM3', '2 x cpu x1 threads'."""
    import torch

    from sweeplab.engine import resolve_device

    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    return f"{workers} x {name}" if workers > 1 else name


_DATASETS: dict[tuple[Any, ...], dict[str, Any]] = {}  # per process: a reused actor digests its data once


def dataset_info(data: Any) -> dict[str, Any]:
    """The dataset a trial trains on, for its MLflow dataset input: name, split sizes and a 16-hex digest
    of the labels and of up to 256 evenly spaced images per split (milliseconds; another copy or version
    of the data changes it). `data` is the trial's DataConfig; its load is the one the engine reuses."""
    synthetic = (data.synthetic_shape, data.synthetic_classes, data.synthetic_train, data.synthetic_test)
    # what picks the examples (the folder does not: the digest reads them); not batch size or device
    key = (data.name, data.root, *(synthetic if data.name == "synthetic" else ()), data.train_subset, data.test_subset)
    key = tuple(tuple(k) if isinstance(k, list) else k for k in key)
    if key not in _DATASETS:
        from sweeplab.data import datasets

        full = datasets.load(data)
        h = hashlib.sha256(repr(key[:1] + key[2:]).encode())
        for x, y in ((full.train_x, full.train_y), (full.test_x, full.test_y)):
            h.update(y.numpy().tobytes())
            h.update(x[:: max(1, len(x) // 256)].contiguous().numpy().tobytes())
        sizes = len(full.train_y), len(full.test_y)
        train, test = (min(n, size) if n else size for n, size in zip((data.train_subset, data.test_subset), sizes))
        _DATASETS[key] = {"name": data.name, "train": train, "test": test, "digest": h.hexdigest()[:16]}
    return dict(_DATASETS[key])


def weight_spread(model_state: dict[str, Any], device: str = "cpu") -> float:
    """Largest difference between ranks of any parameter tensor's sum or L1 norm (0.0 when DDP keeps
    the replicas identical). BatchNorm running statistics are left out: each rank updates its own
    in the forward pass and DDP re-broadcasts rank 0's at the next one."""
    import torch
    import torch.distributed as dist

    stats = [
        s
        for k, t in model_state.items()
        if t.is_floating_point() and "running_" not in k
        for s in (t.double().sum(), t.double().abs().sum())
    ]
    hi = torch.stack(stats).to(device if dist.get_backend() == "nccl" else "cpu")
    lo = hi.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max())
