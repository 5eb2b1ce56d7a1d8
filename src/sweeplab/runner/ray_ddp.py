"""DDP trials: Ray Train's TorchTrainer launched from a Tune trial, and its rendezvous on 127.0.0.1.

Part of the Ray layer with tune_exec (every import of Ray is inside a function, as there). Ray
Train's TorchConfig starts torch's TCPStore, which listens on every interface whatever MASTER_ADDR
says, and gloo and NCCL pick the host's address. A sweep on sweeplab's own local Ray (one machine)
uses a backend of its own (Ray Train's public `Backend` interface) that binds the store to a loopback
socket made here (TCPStore's master_listen_fd) and points gloo and NCCL at `lo`, so a DDP trial
listens on 127.0.0.1 like every other sweeplab process. Rank 0 writes the trial's folder
(runner/worker.py); every rank restores from it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweeplab.runner import facts, worker
from sweeplab.search_spaces import Sweep


def train_ddp_trial(config: dict[str, Any], sweep: Sweep, launch_dir: str, loopback: bool = False) -> None:
    """Multi-worker Tune trial: the same `fit` under Ray Train's TorchTrainer (Train V2: launched from
    the trial, metrics forwarded to Tune by TuneReportCallback)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    t = config["trial"]
    key = worker.own_key(Path(launch_dir), tune.get_context().get_trial_id(), str(t["key"]))
    r = sweep.resources
    gpu = r.gpus_per_worker > 0
    per_worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if gpu else {})}
    job = {"key": key, "point": dict(t["point"]), "folder": str(Path(launch_dir) / "trials" / key), "known": t["known"]}
    trainer = TorchTrainer(
        ddp_worker,
        train_loop_config={"job": job, "sweep": sweep, "workers": r.workers},
        scaling_config=ray.train.ScalingConfig(num_workers=r.workers, use_gpu=gpu, resources_per_worker=per_worker),
        torch_config=_loopback_config(gpu) if loopback else TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"{tune.get_context().get_trial_id()}-ddp",
            storage_path=str(Path(launch_dir) / worker.TUNE_DIR),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def ddp_worker(loop_config: dict[str, Any]) -> None:
    """One DDP rank: the engine shards each epoch across ranks and all-reduces the epoch metrics."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    j, sweep = loop_config["job"], loop_config["sweep"]
    rank = ray.train.get_context().get_world_rank()
    job = worker.TrialJob(j["key"], j["point"], Path(j["folder"]), int(j["known"]), rank)
    device = None
    if sweep.resolve(job.point).data.device in ("auto", "cuda") and torch.cuda.is_available():
        device = str(get_device())  # this rank's GPU, not cuda:0

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        ray.train.report(metrics)  # the checkpoint is the trial folder's, which rank 0 wrote

    def extras(conf: Any) -> dict[str, Any]:
        if rank != 0:
            return {}
        return {
            "hardware": facts.hardware(conf.data.device, loop_config["workers"]),
            "dataset": facts.dataset_info(conf.data),
        }

    worker.run_trial(job, sweep, report, None, trainer=_DDPEngine(device), extras=extras)


class _DDPEngine(worker.Engine):
    """The engine on one DDP rank: its own device, and the replicas' weight spread in each report."""

    def __init__(self, device: str | None) -> None:
        self.device = device

    def fit(self, conf: Any, on_epoch: Callable[..., None], checkpoint: dict[str, Any] | None) -> Any:
        from sweeplab import engine

        if self.device is not None:
            conf.data.device = self.device

        def each(metrics: dict[str, float], state_fn: Callable[[], dict[str, Any]]) -> None:
            spread = facts.weight_spread(state_fn()["model"], conf.data.device)  # every rank takes part
            on_epoch(metrics, state_fn, {"ddp/weight_spread": spread})

        return engine.fit(conf, each, checkpoint=checkpoint)


# ---- the rendezvous on loopback ------------------------------------------------------------------

_STORE: Any = None  # rank 0's TCPStore and its socket, alive as long as the worker process


def _loopback_config(gpu: bool) -> Any:
    import ray
    from ray.train.backend import Backend
    from ray.train.torch import TorchConfig

    class LoopbackBackend(Backend):
        share_cuda_visible_devices = True  # as Train's own torch backend: each rank sees every GPU of its node

        def on_start(self, worker_group: Any, backend_config: Any) -> None:
            world, timeout_s = len(worker_group), backend_config.timeout_s
            port = worker_group.execute_single(0, _open_loopback_store, world=world, timeout_s=timeout_s)
            joins = [
                worker_group.execute_single_async(
                    i, _join_loopback, backend=backend_config.backend, port=port, timeout_s=timeout_s
                )
                for i in range(world)
            ]
            ray.get(joins)

        def on_shutdown(self, worker_group: Any, backend_config: Any) -> None:
            worker_group.execute(_leave)

    class LoopbackTorchConfig(TorchConfig):
        @property
        def backend_cls(self) -> type:
            return LoopbackBackend

    return LoopbackTorchConfig(backend="nccl" if gpu else "gloo")


def _open_loopback_store(world: int, timeout_s: int) -> int:
    """Rank 0: a TCPStore served from a socket bound to 127.0.0.1; return its port."""
    global _STORE
    import socket

    import torch.distributed as dist

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    store = dist.TCPStore(
        "127.0.0.1",
        sock.getsockname()[1],
        world,
        True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=timeout_s),
        master_listen_fd=sock.fileno(),
    )
    _STORE = (store, sock)
    return sock.getsockname()[1]


def _join_loopback(backend: str, port: int, timeout_s: int) -> None:
    """Every rank: torch's distributed environment variables, then the process group joined through the
    loopback store, with gloo/NCCL sockets on `lo`."""
    import ray.train
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(ctx.get_local_rank()),
        LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()),
        NODE_RANK=str(ctx.get_node_rank()),
    )
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    timeout = datetime.timedelta(seconds=timeout_s)
    store = _STORE[0] if rank == 0 else dist.TCPStore("127.0.0.1", port, world, False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
