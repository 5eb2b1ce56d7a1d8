"""Running a sweep on Tune: the Tuner, its callback to the driver, resume, and the trial function.

Ray's API has changed three times; the runner folder is the only code that imports it, so the next
change stays here: `cluster` starts Ray, `tune_space` translates the sweep, `trials` reads Tune's
trial states. Every Ray import is inside a function (see cluster.environment).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from sweeplab.runner import cluster, launch_state, ray_ddp, relink, worker
from sweeplab.runner.trials import (
    TrialSummary,
    ended_result,
    error_of,
    from_results,
    no_pickled_errors,
    quiet_analysis,
    trials,
)
from sweeplab.runner.tune_space import param_space, scheduler, searcher
from sweeplab.search_spaces import Sweep

DDP_STORAGE = "_ddp"  # Ray Train runs of DDP trials, inside the launch's folder


class Listener(Protocol):
    """What the driver does with Tune's trial events (tracking, progress lines)."""

    def trial_start(self, trial_id: str, point: dict[str, Any]) -> None: ...
    def trial_result(self, trial_id: str, result: dict[str, Any]) -> None: ...
    def trial_end(self, trial_id: str, result: dict[str, Any], error: str | None) -> None: ...
    def trial_retry(self, trial_id: str, result: dict[str, Any], error: str) -> None: ...


_LISTENER: Listener | None = None  # the driver's listener; the (pickled) Tune callback looks it up here
_KEEPER: launch_state.Keeper | None = None  # signs copies of Tune's state as the experiment goes
_ON_COPY: Callable[[Any], None] | None = None  # told each new kept copy (an Optuna study's waiting outcomes)


def _trainable(sweep: Sweep, storage: str, launch: str, ended: dict[str, dict[str, Any]] | None = None) -> Any:
    """`ended`: by id, trials whose outcome the searcher had before Tune's saved state did (resume)."""
    from ray import tune

    r = sweep.resources
    if r.workers == 1:
        fn = tune.with_parameters(train_trial, sweep=sweep, ended=ended or {})
        return tune.with_resources(fn, {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker})
    # The trial's own function only launches the TorchTrainer, whose workers hold the CPUs and GPUs.
    fn = tune.with_parameters(
        ray_ddp.train_ddp_trial,
        sweep=sweep,
        storage=f"{storage.rstrip('/')}/{launch}/{DDP_STORAGE}",
        loopback=cluster.is_local(),
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
                _LISTENER.trial_end(trial.trial_id, ended_result(trial), None)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if _LISTENER:  # failed (e.g. its node died) and will run again from its last checkpoint
                _LISTENER.trial_retry(trial.trial_id, trial.last_result or {}, error_of(trial))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if _LISTENER:
                _LISTENER.trial_end(trial.trial_id, ended_result(trial), error_of(trial))

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if _KEEPER and _KEEPER.maybe_copy():  # Tune saves its state every TUNE_GLOBAL_CHECKPOINT_S
                copy = _KEEPER.newest()
                if _ON_COPY is not None and copy is not None:
                    _ON_COPY(copy)

    return Forward()


def _loggers() -> list[Any]:
    """Tune's per-trial result.json and progress.csv, which its ExperimentAnalysis (`status`) reads."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def run(
    sweep: Sweep,
    launch: str,
    storage: str,
    listener: Listener,
    max_concurrent: int | None,
    tune_reporter: bool = False,
) -> list[TrialSummary]:
    """Run a sweep as a Tune experiment `storage/launch`; return its trials as Tune saved them at the end.
    `tune_reporter`: Tune prints its own status table (else the listener prints progress)."""
    from ray import tune

    _watch(listener, storage, launch)
    _reporter(tune_reporter)
    tuner = tune.Tuner(
        _trainable(sweep, storage, launch),
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            search_alg=searcher(sweep, launch),
            scheduler=scheduler(sweep),
            max_concurrent_trials=max_concurrent,
            # a reused actor has torch imported and the dataset cached:
            # seconds saved on every trial after the first
            reuse_actors=True,
            num_samples=expected_trials(sweep) if sweep.search.name == "optuna" else 1,
            time_budget_s=sweep.search.time_budget_s,  # Tune stops the running trials and starts no more
        ),
        run_config=tune.RunConfig(
            name=launch,
            storage_path=storage,
            verbose=1 if tune_reporter else 0,
            callbacks=[_callback(), *_loggers()],
            # two: the older is the fallback when the newest is unreadable
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    return _fit(tuner, sweep, storage, launch)


def expected_trials(sweep: Sweep) -> int:
    """How many trials the sweep has when it is complete (search.trial_cap included)."""
    if sweep.search.name == "optuna":
        cap = sweep.search.trial_cap
        return min(sweep.search.num_samples, cap) if cap is not None else sweep.search.num_samples
    return len(sweep.points())


def _watch(listener: Listener, storage: str, launch: str) -> None:
    global _LISTENER, _KEEPER
    no_pickled_errors()
    _LISTENER = listener
    _KEEPER = launch_state.Keeper(f"{storage}/{launch}") if "://" not in storage else None


def _fit(tuner: Any, sweep: Sweep, storage: str, launch: str) -> list[TrialSummary]:
    """Run the Tuner; return the trials as its final saved state has them, the state `resume` continues
    from. Tune's own view at the end is less exact: interrupted (Ctrl-C, SIGTERM), it calls the trials
    it stopped TERMINATED and leaves out those it had not started; its saved state says RUNNING or
    PENDING. That view is used only when the saved state cannot be read (e.g. a full disk)."""
    global _ON_COPY
    started = time.monotonic()
    optuna = sweep.search.name == "optuna"
    if optuna:
        from sweeplab.runner import optuna_study

        optuna_study.DEFER = _KEEPER is not None  # the study waits for the state `resume` reads
        _ON_COPY = optuna_study.tell_kept
    quiet_analysis()
    try:
        results = tuner.fit()
    finally:  # the final state (Tune saves it as the experiment ends), signed for `resume` and `status`
        if _KEEPER:
            _KEEPER.maybe_copy(force=True)
        _ON_COPY = None
    budget = sweep.search.time_budget_s
    if optuna:
        optuna_study.tell_all()
        if budget is not None and time.monotonic() - started >= budget:
            optuna_study.end_cut_trials(sweep, launch)  # Tune stopped the running trials without telling the searcher
    try:
        return trials(storage, launch, sweep)
    except Exception:
        return from_results(results, sweep)


def _reporter(on: bool) -> None:
    """Tune's current reporter ('Trial status: ...', a table every 30 s and at each trial's end: see
    docs.ray.io, Tune's "How to configure logging") when it is on; off, the legacy output engine at
    verbose 0 prints nothing. Read by Tune when the run starts, not when Ray is imported."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if on else cluster.LOCAL_DEFAULTS["RAY_AIR_NEW_OUTPUT"]


def resume(
    sweep: Sweep, launch: str, storage: str, listener: Listener, tune_reporter: bool = False
) -> list[TrialSummary]:
    """Continue `storage/launch`: unfinished and errored trials from their checkpoints, the searcher's
    state restored; finished trials are not run again. Tune reads only the state `prepare_resume`
    put back from a verified copy."""
    from ray import tune

    _watch(listener, storage, launch)
    _reporter(tune_reporter)
    path = f"{storage.rstrip('/')}/{launch}"
    ended: dict[str, dict[str, Any]] = {}
    if sweep.search.name == "optuna":
        from sweeplab.runner import optuna_study

        ended = optuna_study.finished_trials(sweep, launch)
    tuner = tune.Tuner.restore(
        path,
        _trainable(sweep, storage, launch, ended),
        resume_unfinished=True,
        resume_errored=True,
        param_space=param_space(sweep),
    )
    # The restored run config is the launch's, `verbose` included: this command's --progress decides.
    # Tuner.restore takes no run config, so it is set on the restored one (a local Tuner's).
    restored = getattr(getattr(tuner, "_local_tuner", None), "get_run_config", lambda: None)()
    if restored is not None:
        restored.verbose = 1 if tune_reporter else 0
    return _fit(tuner, sweep, storage, launch)


def prepare_resume(storage: str, launch: str) -> tuple[list[str], list[str]]:
    """Put the launch's newest verified Tune state back in place (launch_state.StateError if there is
    none) and the checkpoints it names back where Tune deleted them (relink); return the names of live
    files that did not match it and were moved aside unread, and a line per trial relinked."""
    if "://" in storage:  # remote storage: Tune's own state, as stored (docs/cluster.md)
        return [], []
    launch_dir = f"{storage.rstrip('/')}/{launch}"
    aside = launch_state.reinstate(launch_dir)[1]
    return aside, relink.relink(launch_dir)


# ---- the trial functions: they run in Ray's workers ----------------------------------------------


def train_trial(config: dict[str, Any], sweep: Sweep, ended: dict[str, dict[str, Any]] | None = None) -> None:
    """One-worker Tune trial: `engine.fit`, reporting each epoch with a checkpoint; resumes from one.
    A trial in `ended` (its outcome in the searcher's study, not in Tune's saved state) ends as it did."""
    import ray
    from ray import tune

    from sweeplab import engine

    conf = sweep.resolve(config["point"])
    state, last = worker.restore(tune.get_checkpoint())
    known = (ended or {}).get(tune.get_context().get_trial_id())
    if known is not None or (state is not None and state["epoch"] >= conf.train.epochs):
        # ended before the driver died: train nothing; the checkpoint's result where it is the outcome
        # the searcher has (or there is no searcher's), else the searcher's epoch and value
        mine = state is not None and (known is None or int(last.get("epoch", -1)) == known["epoch"])
        tune.report({**((last if mine else known) or {}), "replay": True})
        return
    state = worker.adopt(state, conf) if state is not None else None
    # Each epoch's result says which Ray node ran it (Tune adds hostname and pid, which do not tell two
    # nodes of one machine apart): where a trial retried after a node died went on is in its result.json.
    node = ray.get_runtime_context().get_node_id()

    def report_on(metrics: dict[str, Any], **kwargs: Any) -> None:
        tune.report({**metrics, "node_id": node}, **kwargs)

    report = worker.Reporter(
        report_on, tune.Checkpoint, 0, worker.hardware(conf.data.device), worker.dataset_info(conf.data)
    )
    engine.fit(conf, report, checkpoint=state)
