"""Every Ray call of sweeplab: local cluster, Tuner, searchers, schedulers, trainables, restore.

Ray's API has changed three times; keeping it in one module keeps the next change in one place.
Ray reads some settings once, when it is first imported (auth mode, usage stats, binding), so
`environment()` must run before the process's first `import ray`: every Ray import is inside a
function here.
"""
from __future__ import annotations

import copy
import importlib
import logging
import math
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from sweeplab.search_spaces import Domain, Sweep
from sweeplab.trainables import worker

LOCAL_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",   # a local node binds 127.0.0.1, not the external address
    "RAY_USAGE_STATS_ENABLED": "0",             # nothing leaves the machine
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "1",            # experiment state saved often: `resume` loses little
    # Tune's default TensorBoard logger imports torch in the driver (1.5 s, just as the first trial is
    # scheduled) to write what MLflow already has; `_loggers()` keeps the JSON and CSV ones.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}
DDP_STORAGE = "_ddp"  # Ray Train runs of DDP trials, inside the launch's folder


class Listener(Protocol):
    """What the driver does with Tune's trial events (tracking, progress lines)."""

    def trial_start(self, trial_id: str, point: dict[str, Any]) -> None: ...
    def trial_result(self, trial_id: str, result: dict[str, Any]) -> None: ...
    def trial_end(self, trial_id: str, result: dict[str, Any], error: str | None) -> None: ...
    def trial_retry(self, trial_id: str, result: dict[str, Any], error: str) -> None: ...


@dataclass
class TrialSummary:
    """A trial as Tune last saw it."""

    trial_id: str
    status: str                 # PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    point: dict[str, Any]
    result: dict[str, Any]
    error: str | None = None


_LISTENER: Listener | None = None  # the driver's listener; the (pickled) Tune callback looks it up here
_STARTED = False


def environment(storage: str, local: bool) -> None:
    """Ray's environment; call before the first `import ray`. A local Ray gets token auth, with the
    token file under the storage folder instead of ~/.ray."""
    for key, value in LOCAL_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if local and "://" not in storage and "RAY_AUTH_MODE" not in os.environ:
        token = Path(storage) / ".ray_auth_token"
        if not token.exists():
            token.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, secrets.token_hex(32).encode())
            os.close(fd)
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token.resolve()))


def start(address: str | None, num_cpus: int | None, storage: str, dashboard: bool = True) -> str:
    """Start a local Ray on 127.0.0.1 (address None) or join a cluster; return the address.
    `dashboard` False leaves a local Ray's dashboard modules out (a sweep without DDP trials)."""
    global _STARTED
    environment(storage, local=address is None)
    import ray

    # Importing Tune takes ~1.5 s of CPU; ray.init mostly waits on its daemons: overlap the two.
    tune_import = threading.Thread(target=importlib.import_module, args=("ray.tune",), daemon=True)
    tune_import.start()
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    if address is None:
        # DDP trials need the dashboard (on loopback): Train V2 cleans up after a stopped trial through
        # it. Other sweeps skip its modules: ~2 CPU-seconds that a 2-core laptop would spend while Ray
        # starts, right before the first trial's start-up (BENCHMARKS.md, "command -> first step").
        ctx = ray.init(address="local", num_cpus=num_cpus, object_store_memory=100_000_000,
                       _temp_dir=f"/tmp/sweeplab-ray-{os.getuid()}", dashboard_host="127.0.0.1",
                       include_dashboard=dashboard, **quiet)
    else:
        ctx = ray.init(address=address, **quiet)
    _STARTED = True
    tune_import.join()
    return ctx.address_info.get("gcs_address", address or "local")


def shutdown() -> None:
    """Stop what `start` started (and only that)."""
    global _STARTED
    if _STARTED:
        import ray

        ray.shutdown()
        _STARTED = False


def fit_resources(sweep: Sweep, local: bool) -> tuple[Sweep, str | None]:
    """The sweep with trials this cluster can run, and a note when that changed them. A Ray that
    sweeplab started here, or a smoke run, on a cluster without GPUs runs GPU-requesting trials on CPU
    (same number of workers, so DDP is still exercised, over gloo), and every such run caps a trial's
    CPUs to the largest node: otherwise its trials would wait forever. A joined cluster's full run is
    left alone, as its autoscaler may still add GPU nodes (cluster.yaml's head node has none)."""
    if not (local or sweep.smoke):
        return sweep, None
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    largest = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    r = dict(sweep.resources)
    if r["gpus_per_worker"] > 0 and not any(n.get("GPU", 0) for n in nodes):
        r["gpus_per_worker"] = 0
    fits = math.floor(100 * largest / r["workers"]) / 100  # Ray keeps 4 decimals of a resource
    if fits > 0 and r["cpus_per_worker"] > fits:
        r["cpus_per_worker"] = int(fits) if fits == int(fits) else fits
    if r == sweep.resources:
        return sweep, None
    fitted = copy.copy(sweep)  # the trials and the DDP trainer read `resources` from this copy
    fitted.resources = r
    was, w = sweep.resources, r["workers"]
    now = f"{w} worker(s) x {r['cpus_per_worker']} CPU{' (DDP over gloo)' if w > 1 else ''}"
    before = f"{w} x {was['cpus_per_worker']} CPU + {was['gpus_per_worker']} GPU"
    if r["gpus_per_worker"] != was["gpus_per_worker"]:
        return fitted, f"note: this Ray cluster has no GPU: each trial runs on CPU as {now} instead of {before}"
    return fitted, (f"note: each trial runs as {now} instead of {before}, "
                    f"to fit this cluster's largest node ({largest:g} CPU)")


def _tune_domain(dom: Domain, variant: bool = False) -> Any:
    from ray import tune

    args = [b["label"] for b in dom.args] if variant else dom.args
    if dom.kind == "grid":
        return tune.grid_search(args)
    if dom.kind == "choice":
        return tune.choice(args)
    return getattr(tune, dom.kind)(*args)


def param_space(sweep: Sweep) -> dict[str, Any]:
    """Tune's param_space: grid and random search run the compiled points (so the dry-run is what
    runs); TPE gets the distributions. Exprs are computed inside the trial from its point."""
    from ray import tune

    if sweep.search["name"] == "optuna":
        return {"point": {k: _tune_domain(d, k == "variant") for k, d in sweep.space.items() if d.kind != "expr"}}
    return {"point": tune.grid_search(sweep.points())}


def _searcher(sweep: Sweep) -> Any:
    if sweep.search["name"] != "optuna":
        return None  # Tune's variant generator walks the grid of compiled points
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(sampler=TPESampler(seed=sweep.search["seed"]))


def _scheduler(sweep: Sweep) -> Any:
    from ray.tune import schedulers as s

    opts = dict(sweep.scheduler)
    name, max_t = opts.pop("name"), opts.pop("max_t", sweep.max_epochs())
    if name == "asha":
        return s.ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=opts.get("grace_period", 1),
                               reduction_factor=opts.get("reduction_factor", 4), brackets=opts.get("brackets", 1))
    if name == "hyperband":
        return s.HyperBandScheduler(time_attr="epoch", max_t=max_t, reduction_factor=opts.get("reduction_factor", 3))
    if name == "median":
        return s.MedianStoppingRule(time_attr="epoch", grace_period=opts.get("grace_period", 1),
                                    min_samples_required=opts.get("min_samples_required", 3))
    if name == "pbt":
        mutations = {k: (sweep.space[k].args if sweep.space[k].kind == "grid" else _tune_domain(sweep.space[k]))
                     for k in opts["mutate"]}
        return s.PopulationBasedTraining(time_attr="epoch", perturbation_interval=opts.get("perturbation_interval", 1),
                                         hyperparam_mutations={"point": mutations},
                                         quantile_fraction=opts.get("quantile_fraction", 0.25),
                                         resample_probability=opts.get("resample_probability", 0.25))
    return s.FIFOScheduler()


def _trainable(sweep: Sweep, storage: str, launch: str) -> Any:
    from ray import tune

    r = sweep.resources
    if r["workers"] == 1:
        fn = tune.with_parameters(train_trial, sweep=sweep)
        return tune.with_resources(fn, {"cpu": r["cpus_per_worker"], "gpu": r["gpus_per_worker"]})
    # The trial's own function only launches the TorchTrainer, whose workers hold the CPUs and GPUs.
    fn = tune.with_parameters(train_ddp_trial, sweep=sweep, storage=f"{storage.rstrip('/')}/{launch}/{DDP_STORAGE}")
    return tune.with_resources(fn, {"cpu": 0, "memory": 10_000_000})


def _callback() -> Any:
    """A Tune callback forwarding trial events to the driver's listener. It pickles as a call to this
    factory (Tune stores its run config), so a restored Tuner forwards to the new driver's listener."""
    from ray import tune

    class Forward(tune.Callback):
        def __reduce__(self) -> tuple[Callable[[], Any], tuple[()]]:
            return _callback, ()

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if _LISTENER:
                _LISTENER.trial_start(trial.trial_id, trial.config["point"])

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if _LISTENER:
                _LISTENER.trial_result(trial.trial_id, result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if _LISTENER:
                _LISTENER.trial_end(trial.trial_id, trial.last_result or {}, None)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if _LISTENER:  # failed (e.g. its node died) and will run again from its last checkpoint
                _LISTENER.trial_retry(trial.trial_id, trial.last_result or {}, _error(trial))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if _LISTENER:
                _LISTENER.trial_end(trial.trial_id, trial.last_result or {}, _error(trial))

    return Forward()


def _loggers() -> list[Any]:
    """Tune's per-trial result.json and progress.csv, which its ExperimentAnalysis (`status`) reads."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def _error(trial: Any) -> str:
    err = trial.get_error()
    if err is None and getattr(trial, "error_file", None) and Path(trial.error_file).is_file():
        err = Path(trial.error_file).read_text()  # the driver's copy: a retried trial's error is not synced yet
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()] if err else []
    return lines[-1] if lines else "failed"


def run(sweep: Sweep, launch: str, storage: str, listener: Listener, max_concurrent: int | None) -> list[TrialSummary]:
    """Run a sweep as a Tune experiment `storage/launch`; return every trial's summary."""
    global _LISTENER
    from ray import tune

    _LISTENER = listener
    tuner = tune.Tuner(
        _trainable(sweep, storage, launch), param_space=param_space(sweep),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, search_alg=_searcher(sweep),
                                    scheduler=_scheduler(sweep), max_concurrent_trials=max_concurrent,
                                    # a reused actor has torch imported and the dataset cached:
                                    # seconds saved on every trial after the first
                                    reuse_actors=True,
                                    num_samples=sweep.search["num_samples"] if sweep.search["name"] == "optuna" else 1),
        run_config=tune.RunConfig(name=launch, storage_path=storage, verbose=0, callbacks=[_callback(), *_loggers()],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=1)))
    return _summaries(tuner.fit())


def resume(sweep: Sweep, launch: str, storage: str, listener: Listener) -> list[TrialSummary]:
    """Continue `storage/launch`: unfinished and errored trials from their checkpoints, the searcher's
    state restored; finished trials are not run again."""
    global _LISTENER
    from ray import tune

    _LISTENER = listener
    path = f"{storage.rstrip('/')}/{launch}"
    tuner = tune.Tuner.restore(path, _trainable(sweep, storage, launch), resume_unfinished=True,
                               resume_errored=True, param_space=param_space(sweep))
    return _summaries(tuner.fit())


def can_resume(storage: str, launch: str) -> bool:
    """Whether Tune saved a restorable state for this launch."""
    from ray import tune

    return tune.Tuner.can_restore(f"{storage.rstrip('/')}/{launch}")


def trials(storage: str, launch: str) -> list[TrialSummary]:
    """The trials of a launch as last saved, read from storage without starting Ray."""
    from ray.tune import ExperimentAnalysis

    return _summaries_of(ExperimentAnalysis(f"{storage.rstrip('/')}/{launch}").trials)


def _summaries(results: Any) -> list[TrialSummary]:
    return _summaries_of(results._experiment_analysis.trials)


def _summaries_of(trials: list[Any]) -> list[TrialSummary]:
    return [TrialSummary(t.trial_id, t.status, dict(t.config.get("point", {})), dict(t.last_result or {}),
                         _error(t) if t.status == "ERROR" else None) for t in trials]


# ---- the trial functions: they run in Ray's workers ----------------------------------------------


def train_trial(config: dict[str, Any], sweep: Sweep) -> None:
    """One-worker Tune trial: `engine.fit`, reporting each epoch with a checkpoint; resumes from one."""
    import ray
    from ray import tune

    from sweeplab import engine

    conf = sweep.resolve(config["point"])
    state, last = worker.restore(tune.get_checkpoint())
    if state is not None and state["epoch"] >= conf.train.epochs:
        tune.report({**last, "replay": True})  # finished before the driver died: train nothing
        return
    state = worker.adopt(state, conf) if state is not None else None
    # Each epoch's result says which Ray node ran it (Tune adds hostname and pid, which do not tell two
    # nodes of one machine apart): where a trial retried after a node died went on is in its result.json.
    node = ray.get_runtime_context().get_node_id()

    def report_on(metrics: dict[str, Any], **kwargs: Any) -> None:
        tune.report({**metrics, "node_id": node}, **kwargs)

    report = worker.Reporter(report_on, tune.Checkpoint, 0, worker.hardware(conf.data.device))
    engine.fit(conf, report, checkpoint=state)


def train_ddp_trial(config: dict[str, Any], sweep: Sweep, storage: str) -> None:
    """Multi-worker Tune trial: the same `fit` under Ray Train's TorchTrainer (Train V2: launched from
    the trial, metrics forwarded to Tune by TuneReportCallback). Train restores its own latest checkpoint
    when a run of the same name exists, which is how a resumed DDP trial continues."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    conf = sweep.resolve(config["point"])
    r = sweep.resources
    gpu = r["gpus_per_worker"] > 0
    per_worker = {"CPU": r["cpus_per_worker"], **({"GPU": r["gpus_per_worker"]} if gpu else {})}
    trainer = TorchTrainer(
        ddp_worker, train_loop_config={"config": conf.to_dict(), "workers": r["workers"]},
        scaling_config=ray.train.ScalingConfig(num_workers=r["workers"], use_gpu=gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=ray.train.RunConfig(name=tune.get_context().get_trial_id(), storage_path=storage,
                                       callbacks=[TuneReportCallback()],
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)))
    trainer.fit()


def ddp_worker(loop_config: dict[str, Any]) -> None:
    """One DDP rank: the engine shards each epoch across ranks and all-reduces the epoch metrics."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    from sweeplab import engine
    from sweeplab.config import from_dict

    conf = from_dict(copy.deepcopy(loop_config["config"]))
    rank = ray.train.get_context().get_world_rank()
    if conf.data.device in ("auto", "cuda") and torch.cuda.is_available():
        conf.data.device = str(get_device())  # this rank's GPU, not cuda:0
    state, last = worker.restore(ray.train.get_checkpoint())
    if state is not None and state["epoch"] >= conf.train.epochs:
        ray.train.report({**last, "replay": True})
        return
    report = worker.Reporter(ray.train.report, ray.train.Checkpoint, rank,
                             worker.hardware(conf.data.device, loop_config["workers"]))

    def on_epoch(metrics: dict[str, float], state_fn: Callable[[], dict[str, Any]]) -> None:
        spread = worker.weight_spread(state_fn()["model"], conf.data.device)  # every rank takes part
        report(metrics, state_fn, {"ddp/weight_spread": spread})

    engine.fit(conf, on_epoch, checkpoint=state)
