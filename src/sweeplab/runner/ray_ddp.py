"""DDP trials: Ray Train's TorchTrainer launched from a Tune trial, and its rendezvous on 127.0.0.1.

Part of the Ray layer with ray_backend (every import of Ray is inside a function, as there). Ray
Train's TorchConfig starts torch's TCPStore, which listens on every interface whatever MASTER_ADDR
says, and gloo and NCCL pick the host's address. A sweep on sweeplab's own local Ray (one machine)
binds the store to a loopback socket made here (TCPStore's master_listen_fd) and points gloo and
NCCL at `lo`, so a DDP trial listens on 127.0.0.1 like every other sweeplab process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

from sweeplab.runner import worker
from sweeplab.search_spaces import Sweep


def train_ddp_trial(config: dict[str, Any], sweep: Sweep, storage: str, loopback: bool = False) -> None:
    """Multi-worker Tune trial: the same `fit` under Ray Train's TorchTrainer (Train V2: launched from
    the trial, metrics forwarded to Tune by TuneReportCallback). Train restores its own latest checkpoint
    when a run of the same name exists, which is how a resumed DDP trial continues."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    conf = sweep.resolve(config["point"])
    r = sweep.resources
    gpu = r.gpus_per_worker > 0
    per_worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if gpu else {})}
    trainer = TorchTrainer(
        ddp_worker,
        train_loop_config={"config": conf.to_dict(), "workers": r.workers},
        scaling_config=ray.train.ScalingConfig(num_workers=r.workers, use_gpu=gpu, resources_per_worker=per_worker),
        torch_config=_loopback_config(gpu) if loopback else TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=tune.get_context().get_trial_id(),
            storage_path=storage,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    trainer.fit()


def ddp_worker(loop_config: dict[str, Any]) -> None:
    """One DDP rank: the engine shards each epoch across ranks and all-reduces the epoch metrics."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    from sweeplab import engine
    from sweeplab.config import from_dict

    conf = from_dict(loop_config["config"])
    rank = ray.train.get_context().get_world_rank()
    if conf.data.device in ("auto", "cuda") and torch.cuda.is_available():
        conf.data.device = str(get_device())  # this rank's GPU, not cuda:0
    state, last = worker.restore(ray.train.get_checkpoint())
    if state is not None and state["epoch"] >= conf.train.epochs:
        ray.train.report({**last, "replay": True})
        return
    report = worker.Reporter(
        ray.train.report,
        ray.train.Checkpoint,
        rank,
        worker.hardware(conf.data.device, loop_config["workers"]),
        worker.dataset_info(conf.data) if rank == 0 else None,
    )

    def on_epoch(metrics: dict[str, float], state_fn: Callable[[], dict[str, Any]]) -> None:
        spread = worker.weight_spread(state_fn()["model"], conf.data.device)  # every rank takes part
        report(metrics, state_fn, {"ddp/weight_spread": spread})

    engine.fit(conf, on_epoch, checkpoint=state)


# ---- the rendezvous on loopback ------------------------------------------------------------------

_STORE: Any = None  # rank 0's TCPStore and its socket, alive as long as the worker process


def _loopback_config(gpu: bool) -> Any:
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

    class LoopbackBackend(_TorchBackend):
        def on_start(self, worker_group: Any, backend_config: Any) -> None:
            import ray

            world, timeout_s = len(worker_group), backend_config.timeout_s
            port = worker_group.execute_single(0, _open_loopback_store, world=world, timeout_s=timeout_s)
            worker_group.execute(_set_torch_distributed_env_vars)
            ray.get(
                [
                    worker_group.execute_single_async(
                        i,
                        _join_loopback,
                        backend=backend_config.backend,
                        world_rank=i,
                        world=world,
                        port=port,
                        timeout_s=timeout_s,
                    )
                    for i in range(world)
                ]
            )

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


def _join_loopback(backend: str, world_rank: int, world: int, port: int, timeout_s: int) -> None:
    """Every rank: join the process group through the loopback store, with gloo/NCCL sockets on `lo`."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    timeout = datetime.timedelta(seconds=timeout_s)
    store = _STORE[0] if world_rank == 0 else dist.TCPStore("127.0.0.1", port, world, False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=world_rank, world_size=world, timeout=timeout)
