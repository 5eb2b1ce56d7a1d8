"""Ray Tune as the executor of a session: a fresh Tuner over the trials the ledger has not ended.

Ray's API has changed three times; this folder is the only code that imports it. sweeplab never
restores a Tuner and never reads what Tune writes (`STORAGE/LAUNCH/tune/`): each session is a new
Tune experiment whose trials carry their ledger key in their config, and whose events go to the
`Driver` through `Forward`. Tune still gets each epoch's checkpoint, for its own retries and PBT.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeplab.runner import cluster, ray_ddp, worker
from sweeplab.runner.driver import Driver, Plan
from sweeplab.runner.tune_space import mutations, scheduler
from sweeplab.search_spaces import Sweep


@dataclass
class Session:
    """What one driver session runs."""

    sweep: Sweep
    launch_dir: Path
    number: int  # the ledger's session count: Tune's experiment `session-N`
    max_concurrent: int | None = None
    tune_reporter: bool = False  # Tune prints its own status table instead of sweeplab's lines


def ray_executor(address: str | None, num_cpus: int | None) -> Any:
    """The executor of a session on Ray: a local Ray on 127.0.0.1 (address None) or a joined cluster."""

    def run(session: Session, driver: Driver, plan: Plan) -> Callable[[], None]:
        storage = str(session.launch_dir.parent)
        term = signal.getsignal(signal.SIGTERM)
        cluster.start(address, num_cpus, storage, dashboard=session.sweep.resources.workers > 1)
        cluster.remember(session.launch_dir / cluster.PROCESSES)
        # ray.init installs its own SIGTERM handler (a C++ stack dump): the session's (SIGTERM ends it as Ctrl-C
        # does, so Tune stops the trials and the ledger says so) goes back in place
        signal.signal(signal.SIGTERM, term)
        try:
            sweep, note = cluster.fit_resources(session.sweep, local=address is None)
            if note:  # e.g. a multi-GPU sweep's smoke run on a laptop
                print(f"sweeplab: {note}", flush=True)
            execute(dataclasses.replace(session, sweep=sweep), driver, plan)
        except BaseException:
            cluster.shutdown()
            raise
        # Ray is stopped by the session once the ledger says the session stopped: the MLflow follower, which
        # ends on that line, finishes while Ray shuts down (~1.5 s at the end of every sweep)
        return cluster.shutdown

    return run


def execute(session: Session, driver: Driver, plan: Plan, trainable: Any = None) -> None:
    """Run the session's trials on the Ray this process is connected to; returns when Tune does
    (every trial over, the time budget spent, or Ctrl-C / SIGTERM: Tune stops the running trials).
    `trainable`: Tune's trainable instead of sweeplab's trial function (benchmarks/driver.py's fake one)."""
    from ray import tune

    sweep = session.sweep
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if session.tune_reporter else cluster.LOCAL_DEFAULTS["RAY_AIR_NEW_OUTPUT"]
    # a failed trial's traceback goes to its error.log; the driver prints one line for it
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    # the result grid `fit` returns reads trial folders sweeplab asks Tune not to fill (no result.json)
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # Tune's own experiment state and its copies of it, which sweeplab never reads: failing to save them (a
    # full disk) is not news (a traceback per try, at warning level from Train's syncer); what matters (the
    # ledger, a trial's checkpoint) is said by sweeplab
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.CRITICAL)
    logging.getLogger("ray.train").setLevel(logging.ERROR)
    if sweep.search.name == "optuna":
        searcher, space, n = ask(plan.asked()), {}, plan.remaining()
    else:
        trials = plan.grid()
        known = {k: driver.record.trials[k].epoch if k in driver.record.trials else 0 for k, _ in trials}
        searcher, n = None, 1
        space = {"trial": tune.grid_search([{"key": k, "point": p, "known": known[k]} for k, p in trials])}
    if n == 0 or (searcher is None and not space["trial"]["grid_search"]):
        return
    tuner = tune.Tuner(
        trainable or _trainable(session),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            search_alg=searcher,
            scheduler=scheduler(sweep, mutations(sweep, prefix=("trial", "point"))),
            max_concurrent_trials=session.max_concurrent,
            # a reused actor has torch imported and the dataset cached: seconds saved on every trial after the first
            reuse_actors=True,
            num_samples=n,
            time_budget_s=sweep.search.time_budget_s,  # Tune stops the running trials and starts no more
            trial_dirname_creator=_dirname,
        ),
        run_config=tune.RunConfig(
            name=f"session-{session.number}",
            storage_path=tune_storage(session),
            verbose=1 if session.tune_reporter else 0,
            callbacks=[forward(driver, session.launch_dir)],
            # PBT clones another trial's checkpoint some epochs after choosing it: Tune must keep them all
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if sweep.scheduler.name == "pbt" else 2),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    tuner.fit()


def _trainable(session: Session) -> Any:
    from ray import tune

    sweep, r = session.sweep, session.sweep.resources
    if r.workers == 1:
        fn = tune.with_parameters(train_trial, sweep=sweep, launch_dir=str(session.launch_dir))
        return tune.with_resources(fn, {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker})
    # The trial's own function only launches the TorchTrainer, whose workers hold the CPUs and GPUs.
    fn = tune.with_parameters(
        ray_ddp.train_ddp_trial, sweep=sweep, launch_dir=str(session.launch_dir), loopback=cluster.is_local()
    )
    return tune.with_resources(fn, {"cpu": 0, "memory": 10_000_000})


def tune_storage(session: Session) -> str:
    """Where Tune keeps its own experiment: for a local Ray, this user's private temporary folder (mode 0700:
    nothing planted there, and a full launch disk does not touch it); on a cluster, the launch folder's
    `tune/` (Tune wants a folder every node sees). sweeplab reads neither."""
    if cluster.is_local():
        return str(Path(cluster.private_temp_dir()) / "tune" / session.launch_dir.name)
    return str(session.launch_dir / worker.TUNE_DIR)


def train_trial(config: dict[str, Any], sweep: Sweep, launch_dir: str) -> None:
    """One-worker Tune trial: `worker.run_trial` with Tune's report and checkpoint."""
    import ray
    from ray import tune

    from sweeplab.runner import facts

    t = config["trial"]
    key = worker.own_key(Path(launch_dir), tune.get_context().get_trial_id(), str(t["key"]))
    job = worker.TrialJob(key, dict(t["point"]), Path(launch_dir) / "trials" / key, int(t["known"]))
    # Each report says which Ray node ran it: where a trial retried after a node died went on.
    node = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(folder)) if folder is not None else None
        tune.report({**metrics, "node_id": node}, checkpoint=checkpoint)

    def extras(conf: Any) -> dict[str, Any]:
        return {"hardware": facts.hardware(conf.data.device), "dataset": facts.dataset_info(conf.data)}

    given = tune.get_checkpoint()
    try:
        if given is None:
            worker.run_trial(job, sweep, report, None, extras=extras)
            return
        with given.as_directory() as folder:
            worker.run_trial(job, sweep, report, Path(folder), extras=extras)
    except worker.TrialFailed as e:
        # Said in a last report rather than raised: Tune pickles a raised error into the storage folder and reads
        # it back when `fit` returns; the driver records the failure from this report. (A worker that dies is
        # Tune's to retry, as FailureConfig says.) Tune wants the sweep's metric in every report.
        failed = {sweep.metric: float("nan"), **e.last, "trial_failed": str(e), "trial_log": e.log}
        report(failed, None)


def ask(pairs: Iterator[tuple[str, dict[str, Any]]]) -> Any:
    """Tune's searcher for an Optuna sweep: hands out the Plan's (key, point) pairs in order. The study's
    outcomes are told by the Driver after the ledger has them, not here; nothing is saved with Tune."""
    from ray.tune.search import Searcher

    class AskPlan(Searcher):
        def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
            return True

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
            pair = next(pairs, None)
            if pair is None:
                return Searcher.FINISHED
            return {"trial": {"key": pair[0], "point": pair[1], "known": 0}}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            pass

        def save(self, checkpoint_path: str) -> None:
            pass  # the ledger and the study are the record: nothing of a session's searcher is kept

        def restore(self, checkpoint_path: str) -> None:
            pass

        def __reduce__(self) -> tuple[Any, ...]:
            return _inert, ()  # Tune pickles its run config into its own state, which is never read

    return AskPlan()


def error_of(trial: Any, folder: Path) -> tuple[str, str | None]:
    """A failed trial's one-line cause and where its traceback is: the trial's own error.log when its code
    raised, else Tune's text of the failure (a restore, a dead worker), as `Trial.get_error` gives it."""
    error, log = worker.error_of(folder)
    if log is not None:
        return error, log
    try:
        text = trial.get_error()
    except Exception:
        text = None
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    return (lines[-1], trial.error_file) if lines else (error, None)


def _dirname(trial: Any) -> str:
    """Tune's folder of a trial: its id (the default spells out the whole config)."""
    return str(trial.trial_id)


def _inert() -> None:
    return None


def forward(driver: Driver, launch_dir: Path) -> Any:
    """A Tune callback passing trial events to the driver by ledger key; `on_step_end` syncs the ledger."""
    from ray import tune

    keys: dict[str, str] = {}  # Tune trial id -> ledger key, from its config when it first started (see own_key)
    seen = [time.monotonic()]  # when the processes were last written down

    def key_of(trial: Any) -> str:
        return keys.setdefault(trial.trial_id, str(trial.config["trial"]["key"]))

    class Forward(tune.Callback):
        def __reduce__(self) -> tuple[Any, ...]:
            return _inert, ()  # holds the live driver; Tune pickles its run config into state never read

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            driver.start(key_of(trial), dict(trial.config["trial"]["point"]))
            cluster.remember(launch_dir / cluster.PROCESSES)  # its worker process too

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            driver.result(key_of(trial), result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            driver.end(key_of(trial), {}, None)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            key = key_of(trial)  # failed (e.g. its node died); runs again from its checkpoint
            driver.retry(key, error_of(trial, launch_dir / "trials" / key)[0])

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            key = key_of(trial)
            driver.end(key, {}, *error_of(trial, launch_dir / "trials" / key))

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            driver.step()
            now = time.monotonic()
            if now - seen[0] > 5:  # Ray starts workers and agents as it goes: written down for `reap`
                seen[0] = now
                cluster.remember(launch_dir / cluster.PROCESSES)

    return Forward()
