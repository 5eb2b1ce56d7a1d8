"""`search: {name: optuna}`: the launch's Optuna study, through Optuna's public API only (docs/sweeps.md).

The study lives in an SQLAlchemy database (default `optuna.db` beside the MLflow SQLite file), so
`optuna-dashboard` and `optuna.visualization` read it, and a resumed launch continues the same study.
A trial's ledger key is its study trial number. The ledger comes first: a trial asked is written to
the ledger (and synced) before it runs; an outcome is told to the study only once the ledger has the
trial's end, and told again on resume (`skip_if_finished`), so after any kill the two agree.
A trial the scheduler stopped early is PRUNED, one that failed FAIL, the others COMPLETE; each
epoch's value is an intermediate value. User attributes: `label`, `launch`, and `mlflow_run_id` (its
MLflow child run, which carries the trial number as `sweeplab.optuna_trial`).
https://optuna.readthedocs.io/en/stable/reference/storages.html
"""

from __future__ import annotations

import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from sweeplab.ledger import Outcome, key_of
from sweeplab.search_spaces import Choice, Domain, Grid, LogUniform, QUniform, RandInt, Sweep, Uniform, label

DB = "optuna.db"
LABEL, LAUNCH, RUN_ID = "label", "launch", "mlflow_run_id"  # the study trial's user attributes


def default_storage(tracking_uri: str, storage: str) -> str:
    """The study's database when the sweep file names none: `optuna.db` beside an MLflow SQLite file
    (its own file: Optuna's tables and MLflow's alembic migrations stay apart), else in the storage folder."""
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///') :]).resolve().parent / DB}"
    return f"sqlite:///{Path(storage) / DB}"


def absolute(url: str) -> str:
    """An SQLite URL with a relative path made absolute (a resume from another folder opens the same
    file); other URLs as given."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix) :].startswith("/") and url != prefix + ":memory:":
        return f"{prefix}{Path(url[len(prefix) :]).resolve()}"
    return url


def shown(url: str) -> str:
    """A database URL as printed and logged: its password masked."""
    return re.sub(r"^([^:/]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def dashboard_hint(storage: str) -> str:
    """The command that serves the study in a browser, on this machine only."""
    return f"optuna-dashboard --host 127.0.0.1 --port 8080 '{shown(storage)}' (then open http://127.0.0.1:8080)"


def with_study(sweep: Sweep, tracking_uri: str, storage: Path, launch: str) -> Sweep:
    """The sweep with its study's database and name filled in (the file's, else the defaults: optuna.db
    beside the MLflow SQLite file, the launch's name), fixed at launch so `resume` continues the same one."""
    s = sweep.search
    url = absolute(s.storage) if s.storage else default_storage(tracking_uri, str(storage))
    return replace(sweep, search=replace(s, storage=url, study=s.study or launch))


def distribution(dom: Domain) -> Any:
    """The Optuna distribution of an entry of the space (grid and choice values are categorical)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dom, (Grid, Choice)):
        return CategoricalDistribution(list(dom.values))
    if isinstance(dom, Uniform):
        return FloatDistribution(dom.low, dom.high)
    if isinstance(dom, LogUniform):
        return FloatDistribution(dom.low, dom.high, log=True)
    if isinstance(dom, QUniform):
        return FloatDistribution(dom.low, dom.high, step=dom.q)
    if isinstance(dom, RandInt):
        return IntDistribution(dom.low, dom.high - 1)  # Tune's and sweeplab's high is exclusive, Optuna's not
    raise TypeError(f"{type(dom).__name__} has no Optuna distribution")  # Expr: computed in the trial


def space(sweep: Sweep) -> dict[str, Any]:
    """Dotted key (or `variant`) -> distribution, for every entry the sampler chooses."""
    return {k: distribution(d) for k, d in sweep.space.items() if d.sampled or isinstance(d, Grid)}


def sampler(sweep: Sweep) -> Any:
    """The Optuna sampler a sweep file names, seeded by `search.seed`."""
    from optuna import samplers

    seed, name = sweep.search.seed, sweep.search.sampler
    if name == "cmaes":  # a choice key is drawn independently (at random): documented, not warned per trial
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name == "grid":
        grid = {k: list(d.values) for k, d in sweep.space.items() if isinstance(d, (Grid, Choice))}
        return _grid_sampler()(grid, seed=seed)
    return samplers.TPESampler(seed=seed)


def _grid_sampler() -> type:
    from optuna.samplers import GridSampler

    class Grid(GridSampler):
        """Optuna's GridSampler, without `study.stop()` once the grid is done: outside `optimize` that
        raises; `search.num_samples` (default: the grid's size) ends a sweep."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass

    return Grid


class Study:
    """The launch's study: `ask` a new trial, `report` an epoch, `tell` an outcome (idempotent)."""

    def __init__(self, sweep: Sweep, launch: str) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # an INFO line per trial would drown the progress
        s = sweep.search
        self.sweep, self.launch, self.space = sweep, launch, space(sweep)
        self.study = optuna.create_study(
            study_name=s.study or launch,
            storage=s.storage or f"sqlite:///{DB}",
            sampler=sampler(sweep),
            direction="minimize" if sweep.mode == "min" else "maximize",
            load_if_exists=True,
        )
        with warnings.catch_warnings():  # experimental in Optuna 5; the dashboard's axes say "val/error"
            warnings.simplefilter("ignore")
            self.study.set_metric_names([sweep.metric])
        self.live: dict[str, Any] = {}  # key -> the optuna.Trial this driver asked (it takes intermediate values)
        self.run_ids: Any = lambda: {}  # key -> MLflow run id, as the follower wrote them down (launch.session)

    def ask(self) -> tuple[str, dict[str, Any]]:
        """A new study trial: its key (the trial number) and point."""
        trial = self.study.ask(self.space)
        key = key_of(trial.number)
        trial.set_user_attr(LABEL, label(trial.params))
        trial.set_user_attr(LAUNCH, self.launch)
        self.live[key] = trial
        return key, dict(trial.params)

    def report(self, key: str, epoch: int, value: Any) -> None:
        """An epoch's value as the trial's intermediate value (trials asked by an earlier driver take none:
        Optuna's public API reaches a running trial only through the object `ask` returned)."""
        trial = self.live.get(key)
        if trial is None or not isinstance(value, (int, float)):
            return
        import optuna

        try:
            with warnings.catch_warnings():  # an epoch reported twice (a resumed trial) keeps its first value
                warnings.simplefilter("ignore")
                trial.report(float(value), epoch)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError):
            pass

    def tell(self, key: str, outcome: Outcome, value: Any) -> None:
        """The trial's outcome as the ledger has it: FINISHED -> COMPLETE with its value, STOPPED -> PRUNED,
        FAILED -> FAIL. Telling a trial the study has finished already does nothing."""
        from optuna.trial import TrialState

        state = {Outcome.FINISHED: TrialState.COMPLETE, Outcome.STOPPED: TrialState.PRUNED}.get(
            outcome, TrialState.FAIL
        )
        if state is TrialState.COMPLETE and not isinstance(value, (int, float)):
            state = TrialState.FAIL  # finished without the metric: nothing to rank it by
        told = float(value) if state is TrialState.COMPLETE else None
        trial, run_id = self.live.get(key), self.run_ids().get(key)
        if trial is not None and run_id:  # the study trial names its MLflow run (a live one only: see report)
            trial.set_user_attr(RUN_ID, run_id)
        self.study.tell(int(key), told, state=state, skip_if_finished=True)
        self.live.pop(key, None)

    def orphans(self, known: set[str]) -> list[tuple[str, dict[str, Any]]]:
        """Trials of this launch the study holds as RUNNING that the ledger never got (asked just before a
        driver died): (key, point) each, for the ledger to take over."""
        from optuna.trial import TrialState

        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [
            (key_of(t.number), dict(t.params))
            for t in running
            if t.user_attrs.get(LAUNCH) == self.launch and key_of(t.number) not in known
        ]
