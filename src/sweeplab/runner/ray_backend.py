"""Every Ray call of sweeplab: local cluster, Tuner, searchers, schedulers, trainables, restore.

Ray's API has changed three times; keeping it in one module keeps the next change in one place.
Ray reads some settings once, when it is first imported (auth mode, usage stats, binding), so
`environment()` must run before the process's first `import ray`: every Ray import is inside a
function here.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import math
import os
import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sweeplab.runner import launch_state, ray_ddp, worker
from sweeplab.runner.outcome import Outcome, ended_as
from sweeplab.search_spaces import Choice, Domain, Grid, LogUniform, QUniform, RandInt, Sweep, Uniform

LOCAL_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # a local node binds 127.0.0.1, not the external address
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "1",  # experiment state saved often: `resume` loses little
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
    """A trial as Tune last saw it, in sweeplab's words."""

    trial_id: str
    outcome: Outcome
    point: dict[str, Any]
    result: dict[str, Any]
    error: str | None = None
    path: str | None = None  # the trial's folder (Tune's result.json), when it is local


_LISTENER: Listener | None = None  # the driver's listener; the (pickled) Tune callback looks it up here
_KEEPER: launch_state.Keeper | None = None  # signs copies of Tune's state as the experiment goes
_STARTED = False
_LOCAL = False  # this process started the Ray it uses: one machine, so DDP stays on loopback


def environment(storage: str, local: bool) -> None:
    """Ray's environment; call before the first `import ray`. A local Ray gets token auth, with the
    token file under the storage folder instead of ~/.ray."""
    for key, value in LOCAL_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if local and "://" not in storage and "RAY_AUTH_MODE" not in os.environ:
        token = Path(storage) / ".ray_auth_token"
        if not token.exists():
            token.parent.mkdir(parents=True, exist_ok=True)
            tmp = token.with_name(f".ray_auth_token.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, secrets.token_hex(32).encode())
            os.close(fd)
            try:  # atomic, never overwrites: two first sweeps in one new folder share the winner's token
                os.link(tmp, token)
            except FileExistsError:
                pass
            os.unlink(tmp)
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token.resolve()))


def start(address: str | None, num_cpus: int | None, storage: str, dashboard: bool = True) -> str:
    """Start a local Ray on 127.0.0.1 (address None) or join a cluster; return the address.
    `dashboard` False leaves a local Ray's dashboard modules out (a sweep without DDP trials)."""
    global _STARTED, _LOCAL
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
        ctx = ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=100_000_000,
            _temp_dir=private_temp_dir(),
            dashboard_host="127.0.0.1",
            include_dashboard=dashboard,
            **quiet,
        )
    else:
        ctx = ray.init(address=address, **quiet)
    _STARTED, _LOCAL = True, address is None
    tune_import.join()
    return ctx.address_info.get("gcs_address", address or "local")


def private_temp_dir() -> str:
    """Ray's temp folder, inside a folder of this user's with mode 0700: Ray makes its own folders
    world-writable (sockets, logs, session files), so the folder above them is what keeps them private."""
    path = Path(tempfile.gettempdir()) / f"sweeplab-ray-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if st.st_uid != os.getuid() or not path.is_dir() or path.is_symlink():
        raise RuntimeError(f"{path} is not a folder of this user: remove it, or set TMPDIR elsewhere")
    os.chmod(path, 0o700)
    return str(path / "ray")  # Ray chmods its own folder to 0777: the one above it stays private


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
    was = sweep.resources
    r = was
    if r.gpus_per_worker > 0 and not any(n.get("GPU", 0) for n in nodes):
        r = dataclasses.replace(r, gpus_per_worker=0)
    fits = math.floor(100 * largest / r.workers) / 100  # Ray keeps 4 decimals of a resource
    if fits > 0 and r.cpus_per_worker > fits:
        r = dataclasses.replace(r, cpus_per_worker=int(fits) if fits == int(fits) else fits)
    if r == was:
        return sweep, None
    fitted = copy.copy(sweep)  # the trials and the DDP trainer read `resources` from this copy
    fitted.resources = r
    w = r.workers
    now = f"{w} worker(s) x {r.cpus_per_worker} CPU{' (DDP over gloo)' if w > 1 else ''}"
    before = f"{w} x {was.cpus_per_worker} CPU + {was.gpus_per_worker} GPU"
    if r.gpus_per_worker != was.gpus_per_worker:
        return fitted, f"note: this Ray cluster has no GPU: each trial runs on CPU as {now} instead of {before}"
    return fitted, (
        f"note: each trial runs as {now} instead of {before}, to fit this cluster's largest node ({largest:g} CPU)"
    )


def _tune_domain(dom: Domain) -> Any:
    """The Tune search-space object of a sampled or grid entry (a variant's values are its labels)."""
    from ray import tune

    if isinstance(dom, Grid):
        return tune.grid_search(list(dom.values))
    if isinstance(dom, Choice):
        return tune.choice(list(dom.values))
    if isinstance(dom, Uniform):
        return tune.uniform(dom.low, dom.high)
    if isinstance(dom, LogUniform):
        return tune.loguniform(dom.low, dom.high)
    if isinstance(dom, QUniform):
        return tune.quniform(dom.low, dom.high, dom.q)
    if isinstance(dom, RandInt):
        return tune.randint(dom.low, dom.high)
    raise TypeError(f"{type(dom).__name__} has no Tune search-space object")  # Expr: computed in the trial


def param_space(sweep: Sweep) -> dict[str, Any]:
    """Tune's param_space: grid and random search run the compiled points (so the dry-run is what
    runs); TPE gets the distributions. Exprs are computed inside the trial from its point."""
    from ray import tune

    if sweep.search.name == "optuna":
        return {"point": {k: _tune_domain(d) for k, d in sweep.space.items() if d.sampled}}
    return {"point": tune.grid_search(sweep.points())}


def _searcher(sweep: Sweep) -> Any:
    if sweep.search.name != "optuna":
        return None  # Tune's variant generator walks the grid of compiled points
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(sampler=TPESampler(seed=sweep.search.seed))


def _scheduler(sweep: Sweep) -> Any:
    """The Tune scheduler named in search_spaces.SCHEDULERS, with that table's defaults."""
    s = sweep.scheduler
    module, name = s.kind.tune_class.split(":")
    cls = getattr(importlib.import_module(module), name)
    kwargs = s.tune_kwargs(sweep.max_epochs())
    if s.mutate is not None:  # PBT perturbs the point's keys: a grid as its list, a sampler as its Tune domain
        doms = {k: sweep.space[k] for k in s.mutate}
        mutations = {k: list(d.values) if isinstance(d, Grid) else _tune_domain(d) for k, d in doms.items()}
        kwargs["hyperparam_mutations"] = {"point": mutations}
    return cls(**kwargs)


def _trainable(sweep: Sweep, storage: str, launch: str) -> Any:
    from ray import tune

    r = sweep.resources
    if r.workers == 1:
        fn = tune.with_parameters(train_trial, sweep=sweep)
        return tune.with_resources(fn, {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker})
    # The trial's own function only launches the TorchTrainer, whose workers hold the CPUs and GPUs.
    fn = tune.with_parameters(
        ray_ddp.train_ddp_trial, sweep=sweep, storage=f"{storage.rstrip('/')}/{launch}/{DDP_STORAGE}", loopback=_LOCAL
    )
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

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if _KEEPER:  # Tune saves its state every TUNE_GLOBAL_CHECKPOINT_S; copy it when it changed
                _KEEPER.maybe_copy()

    return Forward()


def _loggers() -> list[Any]:
    """Tune's per-trial result.json and progress.csv, which its ExperimentAnalysis (`status`) reads."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def _error(trial: Any) -> str:
    err = trial.get_error()
    if err is None and getattr(trial, "error_file", None) and Path(trial.error_file).is_file():
        err = Path(trial.error_file).read_text()  # the driver's copy: a retried trial's error is not synced yet
    return _last_line(err)


def _last_line(err: Any) -> str:
    """An error's last non-blank line (the exception, after Ray's traceback), or 'failed'."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()] if err else []
    return lines[-1] if lines else "failed"


def run(sweep: Sweep, launch: str, storage: str, listener: Listener, max_concurrent: int | None) -> list[TrialSummary]:
    """Run a sweep as a Tune experiment `storage/launch`; return its trials as Tune saved them at the end."""
    from ray import tune

    _watch(listener, storage, launch)
    tuner = tune.Tuner(
        _trainable(sweep, storage, launch),
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            search_alg=_searcher(sweep),
            scheduler=_scheduler(sweep),
            max_concurrent_trials=max_concurrent,
            # a reused actor has torch imported and the dataset cached:
            # seconds saved on every trial after the first
            reuse_actors=True,
            num_samples=sweep.search.num_samples if sweep.search.name == "optuna" else 1,
        ),
        run_config=tune.RunConfig(
            name=launch,
            storage_path=storage,
            verbose=0,
            callbacks=[_callback(), *_loggers()],
            # two: the older is the fallback when the newest is unreadable
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    return _fit(tuner, sweep, storage, launch)


def _watch(listener: Listener, storage: str, launch: str) -> None:
    global _LISTENER, _KEEPER
    _no_pickled_errors()
    _LISTENER = listener
    _KEEPER = launch_state.Keeper(f"{storage}/{launch}") if "://" not in storage else None


def _no_pickled_errors() -> None:
    """Tune reads a failed trial's `error.pkl` from the storage folder with cloudpickle (building the
    results of `fit`, in the driver): a planted file would run code, a torn one (full disk) raises.
    Its `error.txt` says the same in text, and `Trial.get_error` reads that: use only it."""
    from ray.tune.experiment.trial import Trial

    Trial.get_pickled_error = lambda self: None


def _fit(tuner: Any, sweep: Sweep, storage: str, launch: str) -> list[TrialSummary]:
    """Run the Tuner; return the trials as its final saved state has them, the state `resume` continues
    from. Tune's own view at the end is less exact: interrupted (Ctrl-C, SIGTERM), it calls the trials
    it stopped TERMINATED and leaves out those it had not started; its saved state says RUNNING or
    PENDING. That view is used only when the saved state cannot be read (e.g. a full disk)."""
    try:
        results = tuner.fit()
    finally:  # the final state (Tune saves it as the experiment ends), signed for `resume` and `status`
        if _KEEPER:
            _KEEPER.maybe_copy(force=True)
    try:
        return trials(storage, launch, sweep)
    except Exception:
        return _summaries_of_results(results, sweep)


def resume(sweep: Sweep, launch: str, storage: str, listener: Listener) -> list[TrialSummary]:
    """Continue `storage/launch`: unfinished and errored trials from their checkpoints, the searcher's
    state restored; finished trials are not run again. Tune reads only the state `prepare_resume`
    put back from a verified copy."""
    from ray import tune

    _watch(listener, storage, launch)
    path = f"{storage.rstrip('/')}/{launch}"
    tuner = tune.Tuner.restore(
        path,
        _trainable(sweep, storage, launch),
        resume_unfinished=True,
        resume_errored=True,
        param_space=param_space(sweep),
    )
    return _fit(tuner, sweep, storage, launch)


def prepare_resume(storage: str, launch: str) -> list[str]:
    """Put the launch's newest verified Tune state back in place (launch_state.StateError if there is
    none); return the names of live files that did not match it and were moved aside unread."""
    if "://" in storage:  # remote storage: Tune's own state, as stored (docs/cluster.md)
        return []
    return launch_state.reinstate(f"{storage.rstrip('/')}/{launch}")[1]


def trials(storage: str, launch: str, sweep: Sweep | None = None) -> list[TrialSummary]:
    """The trials of a launch as last saved (its newest verified copy), read without starting Ray.
    `sweep` (the launch's) tells a trial that ran all its epochs from one stopped early."""
    from ray.tune import ExperimentAnalysis

    _no_pickled_errors()
    path = f"{storage.rstrip('/')}/{launch}"
    source = path
    if "://" not in storage:
        copy = launch_state.verified(path)
        if launch_state.differing(path, copy):  # a running sweep's newer state, or not its own: the copy
            source = str(copy)
            # read from the copy's folder, Tune looks for each trial's result files there: they are not
            # needed (the state holds each trial's last result), nor is its warning
            logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    return _summaries_of(ExperimentAnalysis(source).trials, sweep)


def _summaries_of(trials: list[Any], sweep: Sweep | None) -> list[TrialSummary]:
    out = []
    for t in trials:
        point, result = dict(t.config.get("point", {})), dict(t.last_result or {})
        outcome = _outcome(t.status, point, result, sweep)
        error = _error(t) if outcome is Outcome.FAILED else None
        out.append(TrialSummary(t.trial_id, outcome, point, result, error, _local_path(t)))
    return out


def _summaries_of_results(results: Any, sweep: Sweep) -> list[TrialSummary]:
    """The trials of `tuner.fit()`'s ResultGrid, as Tune had them in memory at the end. A Result has no
    status: one with an error failed; the others ended; one that never reported has no id and is left out."""
    from ray.tune.experiment import Trial

    out = []
    for r in results:
        result = dict(r.metrics or {})
        if "trial_id" not in result:  # never reported: nothing tells its id; counted as not created
            continue
        point = dict((r.config or {}).get("point", {}))
        status = Trial.ERROR if r.error else Trial.TERMINATED
        error = _last_line(r.error) if r.error else None
        path = r.path if r.path and "://" not in r.path and Path(r.path).is_dir() else None
        out.append(TrialSummary(result["trial_id"], _outcome(status, point, result, sweep), point, result, error, path))
    return out


def _outcome(status: str, point: dict[str, Any], result: dict[str, Any], sweep: Sweep | None) -> Outcome:
    """Tune's trial status in sweeplab's words: the one place that reads Tune's states. A trial Tune
    ended without an error finished or was stopped early, by its last epoch (without the sweep, a
    launch saved without its snapshot: finished)."""
    from ray.tune.experiment import Trial

    if status == Trial.ERROR:
        return Outcome.FAILED
    if status == Trial.TERMINATED:
        epochs = sweep.resolve(point).train.epochs if sweep is not None and point else 0
        return ended_as(int(result.get("epoch", 0)), epochs)
    # a state Tune may add later is one that has not ended: `resume` continues the trial
    return {Trial.RUNNING: Outcome.RUNNING, Trial.PAUSED: Outcome.PAUSED}.get(status, Outcome.PENDING)


def _local_path(trial: Any) -> str | None:
    """The trial's folder on this machine, if its storage is a local folder."""
    try:
        path = trial.path
    except Exception:
        return None
    return path if path and "://" not in path and Path(path).is_dir() else None


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
