"""What runs inside a trial, without Ray: reports with checkpoints, restoring, DDP replica checks.

`ray_backend` passes in Tune's or Ray Train's `report` and `Checkpoint`, so this module works with
either and is tested without a cluster.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable


class Reporter:
    """Turns the engine's on_epoch into reports with a checkpoint (the engine's state) per epoch."""

    def __init__(self, report: Callable[..., None], checkpoint_cls: Any, rank: int, hardware: str) -> None:
        self.report, self.checkpoint_cls, self.rank, self.hardware = report, checkpoint_cls, rank, hardware
        self.val: dict[str, float] = {}

    def __call__(self, metrics: dict[str, float], state: Callable[[], dict[str, Any]],
                 extra: dict[str, Any] | None = None) -> None:
        import torch

        # When the epoch was measured, on this worker: the driver logs it to MLflow with this time,
        # not with whenever the result reached it (seconds later on a busy driver).
        out = {**metrics, **(extra or {}), "reported_at": time.time()}
        if "val/error" in metrics:
            self.val = {k: metrics[k] for k in ("val/loss", "val/error")}
        else:  # eval_every > 1: schedulers need the metric every epoch; flagged so tracking skips it
            out.update(self.val, val_stale=True)
        if self.hardware:
            out["hardware"], self.hardware = self.hardware, ""
        if self.rank != 0:  # every rank reports (Train's barrier); rank 0 alone writes the checkpoint
            self.report(out)
            return
        with tempfile.TemporaryDirectory(prefix="sweeplab-ckpt-") as d:
            torch.save(state(), Path(d) / "state.pt")
            (Path(d) / "metrics.json").write_text(json.dumps(metrics))
            self.report(out, checkpoint=self.checkpoint_cls.from_directory(d))


def restore(checkpoint: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(engine state, last metrics) of a checkpoint, or (None, {})."""
    if checkpoint is None:
        return None, {}
    import torch

    with checkpoint.as_directory() as d:
        return (torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False),
                json.loads((Path(d) / "metrics.json").read_text()))


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


def weight_spread(model_state: dict[str, Any], device: str = "cpu") -> float:
    """Largest difference between ranks of any parameter tensor's sum or L1 norm (0.0 when DDP keeps
    the replicas identical). BatchNorm running statistics are left out: each rank updates its own
    in the forward pass and DDP re-broadcasts rank 0's at the next one."""
    import torch
    import torch.distributed as dist

    stats = [s for k, t in model_state.items() if t.is_floating_point() and "running_" not in k
             for s in (t.double().sum(), t.double().abs().sum())]
    hi = torch.stack(stats).to(device if dist.get_backend() == "nccl" else "cpu")
    lo = hi.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max())
