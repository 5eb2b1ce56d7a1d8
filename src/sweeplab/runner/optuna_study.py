"""`search: {name: optuna}`: Tune's OptunaSearch over a study kept in a real database (docs/sweeps.md).

The study lives in an SQLAlchemy database (default `optuna.db` beside the MLflow SQLite file), so
`optuna-dashboard` and `optuna.visualization` read it, and a resumed launch continues the same study.
Each Tune trial is one study trial: its Tune id, label and launch are user attributes, its params the
dotted keys; a trial a scheduler stopped early is PRUNED, one that failed FAIL, the others COMPLETE.
https://optuna.readthedocs.io/en/stable/reference/storages.html
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from sweeplab.search_spaces import Choice, Domain, Grid, LogUniform, QUniform, RandInt, Sweep, Uniform, label

DB = "optuna.db"
# Set by ray_backend while a launch with signed state copies runs: the study learns a trial's outcome only
# once a kept copy of Tune's state has the trial ended (see StudySearch.on_trial_complete).
DEFER = False
ACTIVE: list[Any] = []  # the driver's StudySearch, once it has an outcome to tell
TUNE_ID, LABEL, LAUNCH = "tune_trial_id", "label", "launch"  # the study trial's user attributes


def default_storage(tracking_uri: str, storage: str) -> str:
    """The study's database when the sweep file names none: `optuna.db` beside an MLflow SQLite file
    (its own file: Optuna's tables and MLflow's alembic migrations stay apart), else in the storage folder."""
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///') :]).resolve().parent / DB}"
    if "://" not in storage:
        return f"sqlite:///{Path(storage) / DB}"
    return f"sqlite:///{Path.cwd() / DB}"  # remote Tune storage, remote MLflow: the working directory


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

    seed = sweep.search.seed
    name = sweep.search.sampler
    if name == "cmaes":  # a choice key is drawn independently (at random): documented, not warned per trial
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name == "grid":
        grid = {k: list(d.values) for k, d in sweep.space.items() if isinstance(d, (Grid, Choice))}
        return __getattr__("GridSampler")(grid, seed=seed)
    return samplers.TPESampler(seed=seed)


def end_cut_trials(sweep: Sweep, launch: str) -> int:
    """Tell the study PRUNED for each trial of `launch` still RUNNING when the time budget ended the sweep
    (Tune stops them without telling the searcher); returns how many."""
    import optuna
    from optuna.trial import TrialState

    s = sweep.search
    if s.storage is None:
        return 0
    study = optuna.load_study(study_name=s.study or launch, storage=s.storage)
    cut = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.user_attrs.get(LAUNCH) == launch
    ]
    for t in cut:  # its value is its last epoch's, like a trial a scheduler stopped
        study.tell(t.number, state=TrialState.PRUNED, skip_if_finished=True)
    return len(cut)


def finished_trials(sweep: Sweep, launch: str) -> dict[str, dict[str, Any]]:
    """Tune trial id -> its epoch and value as the study has them, for each trial of `launch` the study
    holds as COMPLETE or PRUNED. The study is told at once, Tune's state up to a second or two later: a
    driver killed in between leaves a trial Tune would run again (from an older checkpoint, or from its
    start, where a scheduler may decide otherwise) while the study has its outcome. `resume` ends those
    trials as the study has them, so the two records agree."""
    import optuna
    from optuna.trial import TrialState

    s = sweep.search
    if s.name != "optuna" or s.storage is None:
        return {}
    try:
        study = optuna.load_study(study_name=s.study or launch, storage=s.storage)
    except KeyError:  # no study yet (killed before its first trial)
        return {}
    out = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED, TrialState.COMPLETE)):
        if t.user_attrs.get(LAUNCH) == launch and TUNE_ID in t.user_attrs:
            step = max(t.intermediate_values, default=0)
            value = t.value if t.state is TrialState.COMPLETE else t.intermediate_values.get(step)
            out[str(t.user_attrs[TUNE_ID])] = {"epoch": step, **({sweep.metric: value} if value is not None else {})}
    return out


def tell_all() -> None:
    """The sweep ended and Tune saved its final state: every outcome still waiting goes to the study."""
    for search in ACTIVE:
        search.tell_kept(None)


def tell_kept(copy: Path) -> None:
    """A new kept copy of Tune's state: the outcomes of the trials it has ended go to the study."""
    if ACTIVE and ACTIVE[0].__dict__.get("_untold"):  # nothing waiting: the copy's JSON is not read
        from sweeplab.runner import launch_state

        ACTIVE[0].tell_kept(launch_state.ended_trials(copy))


def __getattr__(name: str) -> Any:
    """`StudySearch` and `GridSampler`, built on first use (PEP 562): Ray and Optuna are imported only
    after `cluster.environment`, yet `pickle` finds both classes here by name (Tune pickles the searcher)."""
    if name in _BUILDERS:
        cls = _BUILDERS[name]()
        cls.__module__, cls.__qualname__ = __name__, name
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _grid_sampler() -> type:
    from optuna.samplers import GridSampler

    class Grid(GridSampler):
        """Optuna's GridSampler, without `study.stop()` once the grid is done: outside `optimize` that
        raises; `search.num_samples` (default: the grid's size) ends a sweep."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass

    return Grid


def _study_search() -> type:
    import optuna
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """OptunaSearch with sweeplab's bookkeeping (module doc). Tune pickles it with its state, which
        launch_state signs before `resume` reads it."""

        def __init__(self, sweep: Sweep, launch: str, **kwargs: Any) -> None:
            self._sweep, self._launch = sweep, launch
            super().__init__(**kwargs)
            with warnings.catch_warnings():  # experimental in Optuna 5; the dashboard's axes say "val/error"
                warnings.simplefilter("ignore")
                self._ot_study.set_metric_names([self._metric])

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            if trial_id not in self._ot_trials:
                orphan = self._orphan()
                # asked just before a driver died, never in Tune's saved state: this Tune trial takes it over
                ot = optuna.Trial(self._ot_study, orphan) if orphan is not None else self._ot_study.ask(self._space)
                self._ot_trials[trial_id] = ot
                ot.set_user_attr(TUNE_ID, trial_id)
                ot.set_user_attr(LABEL, label(ot.params))
                ot.set_user_attr(LAUNCH, self._launch)
            return {"point": dict(self._ot_trials[trial_id].params)}

        def _orphan(self) -> int | None:
            """A RUNNING study trial of this launch that no Tune trial holds (None when there is none)."""
            held = {t._trial_id for t in self._ot_trials.values()}
            for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if t._trial_id not in held and t.user_attrs.get(LAUNCH) == self._launch:
                    return int(t._trial_id)
            return None

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            if trial_id not in self._completed_trials:
                self._report(trial_id, result)

        def _report(self, trial_id: str, result: dict[str, Any]) -> None:
            ot = self._ot_trials.get(trial_id)
            value = result.get(self.metric)
            if ot is None or value is None or result.get("replay"):
                return  # a replayed result (the trial finished before the driver died) is in the study already
            try:  # by epoch, the scheduler's time: a restored trial's epochs carry on from its checkpoint
                with warnings.catch_warnings():  # an epoch reported twice (a restored trial) keeps its first value
                    warnings.simplefilter("ignore")
                    ot.report(value, int(result.get("epoch", result.get("training_iteration", 0))))
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError):
                pass  # finished in the study before the driver died: told again at its end, and skipped there

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            """The trial's outcome, told to the study once Tune's state that `resume` reads has it ended
            (DEFER; at once otherwise): told earlier, a driver killed within the second or two before
            Tune's next saved state left a study that knew an outcome Tune's restored state did not,
            and `resume` ran that trial again or a new one in its place."""
            ot = self._ot_trials.get(trial_id)
            if ot is None or trial_id in self._completed_trials:
                return
            self._completed_trials.add(trial_id)
            # Tune hands the result a scheduler stopped a trial on, and a trial's last, to this call alone
            self._report(trial_id, result or {})
            value = (result or {}).get(self.metric)
            state = TrialState.FAIL if error else TrialState.PRUNED if value is None else TrialState.COMPLETE
            if state is TrialState.COMPLETE:  # stopped before its last epoch (scheduler, time budget): PRUNED
                planned = self._sweep.resolve(ot.params).train.epochs
                if int((result or {}).get("epoch", planned)) < planned:
                    state = TrialState.PRUNED
            self.__dict__.setdefault("_untold", {})[trial_id] = (value, state.name)
            ACTIVE[:] = [self]
            if not DEFER:
                self.tell_kept(None)

        def tell_kept(self, ended: set[str] | None) -> None:
            """Tell the study the outcomes waiting for a kept state whose trials `ended` (None: all)."""
            untold = self.__dict__.setdefault("_untold", {})
            for trial_id in [t for t in untold if ended is None or t in ended]:
                value, name = untold.pop(trial_id)
                state = TrialState[name]
                told = value if state is TrialState.COMPLETE else None
                self._ot_study.tell(self._ot_trials[trial_id], told, state=state, skip_if_finished=True)

        def restore_from_dir(self, checkpoint_dir: str) -> None:
            """Tune's restore; outcomes waiting in the saved searcher whose trials the restored state has
            ended are told now (that state is the verified copy `resume` put back)."""
            super().restore_from_dir(checkpoint_dir)
            ACTIVE[:] = [self]
            from sweeplab.runner import launch_state  # the state was synced into this folder to be read

            self.tell_kept(launch_state.ended_trials(checkpoint_dir))

    return StudySearch


_BUILDERS = {"GridSampler": _grid_sampler, "StudySearch": _study_search}


def searcher(sweep: Sweep, launch: str) -> Any:
    """Tune's OptunaSearch over the sweep's study, each Tune trial one study trial (see module doc)."""
    import optuna

    s = sweep.search
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # an INFO line per trial would drown the progress lines
    return __getattr__("StudySearch")(
        sweep,
        launch,
        space=space(sweep),
        metric=sweep.metric,
        mode=sweep.mode,
        sampler=sampler(sweep),
        study_name=s.study or launch,
        storage=optuna.storages.RDBStorage(s.storage or f"sqlite:///{DB}"),
    )
