"""Facts a trial reports once, for its MLflow run: the hardware it trains on and a digest of its data;
and DDP's check that the replicas stay identical. Run inside trial workers (torch), never in the driver.
"""

from __future__ import annotations

import hashlib
from typing import Any


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
