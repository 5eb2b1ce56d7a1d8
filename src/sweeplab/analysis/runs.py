"""Reading sweeplab's runs back from MLflow: the trials of a sweep, a launch or a table."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sweeplab.config import parse_value
from sweeplab.core.errors import ConfigError
from sweeplab.core.names import LAUNCH, PARENT, SWEEP, TABLES, TRIAL
from sweeplab.tracking.store import client, quote, resolve_uri, search, sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

# the five axes of the classic grid (docs/architecture.md, "Contracts"), shown wherever trials are listed
AXES = ("data.batch_size", "optim.lr", "train.epochs", "optim.weight_decay", "train.precision")
CHILD = f"tags.`{TRIAL}` IS NOT NULL"
SMOKE = "sweeplab.smoke"  # "true" on the parent and child runs of a `sweeplab run --smoke` launch
# metrics where bigger is better; everything else (errors, losses, times) is minimised
_DESCENDING = ("acc", "images_per_s")


class UnknownTarget(ConfigError):
    """No sweep (experiment) or launch of that name in the store (exit 2)."""


@dataclass
class LoggedTrial:
    """A trial as MLflow logged it (one child run): its params, tags and last metric values.

    Not `search_spaces.Trial`, the config a sweep resolves before it runs; this is what a run left behind.
    """

    run_id: str
    experiment: str
    trial_id: str
    status: str
    start_time: int
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def launch(self) -> str:
        return self.tags.get(LAUNCH, "")

    @property
    def stopped_early(self) -> bool:
        return self.tags.get("stopped_early") == "true"

    @property
    def smoke(self) -> bool:
        """Logged by a `--smoke` launch (its `sweeplab.smoke` tag; runs from before the tag count as full)."""
        return self.tags.get(SMOKE) == "true"

    @property
    def seed(self) -> str:
        return self.tags.get("sweeplab.seed", self.params.get("train.seed", "0"))

    @property
    def epochs(self) -> int:
        return int(self.metrics.get("epoch", 0))

    def value(self, key: str) -> Any:
        """A param parsed back to its type (MLflow stores strings); `variant` is the variant's label."""
        if key == "variant":
            return self.tags.get("sweeplab.variant", "")
        return parse_value(self.params[key]) if key in self.params else None


def kept(found: list[LoggedTrial], smoke: bool = False) -> list[LoggedTrial]:
    """Only the full runs' trials, or with `smoke` only the smoke runs': the two never mix in a result."""
    return [t for t in found if t.smoke == smoke]


def open_client(uri: str | None, must_exist: bool = False) -> MlflowClient | None:
    """The client for the resolved URI; None (or an error) when its sqlite file does not exist yet."""
    resolved = resolve_uri(uri)
    db = sqlite_path(resolved)
    if db is not None and not db.is_file():  # do not leave an empty mlflow.db behind a read
        if must_exist:
            raise UnknownTarget(f"no MLflow store at {db} (run a sweep first, or pass --tracking-uri)")
        return None
    return client(resolved)


def _trial(run: Run, names: dict[str, str]) -> LoggedTrial:
    tags = dict(run.data.tags)
    return LoggedTrial(
        run.info.run_id,
        names.get(run.info.experiment_id) or tags.get(SWEEP, ""),
        tags.get(TRIAL, run.info.run_name or ""),
        run.info.status,
        run.info.start_time or 0,
        dict(run.data.params),
        dict(run.data.metrics),
        tags,
    )


def _experiments(c: MlflowClient) -> dict[str, str]:
    return {e.experiment_id: e.name for e in c.search_experiments(max_results=50000)}


def target_filter(c: MlflowClient, target: str) -> tuple[list[str], str]:
    """(experiment ids, filter string) of the trial runs of a sweep name or a launch name."""
    exp = c.get_experiment_by_name(target)
    if exp is not None:
        return [exp.experiment_id], CHILD
    ids = list(_experiments(c))
    launch = f"tags.`{LAUNCH}` = {quote(target)}"
    if ids and search(c, ids, f"{launch} and tags.`{PARENT}` IS NULL", limit=1):
        return ids, f"{launch} and {CHILD}"
    known = sorted(set(_experiments(c).values()) - {"Default"})
    raise UnknownTarget(
        f"no sweep or launch named '{target}' in the MLflow store; sweeps: {', '.join(known) or 'none yet'}"
    )


def trials(c: MlflowClient, target: str) -> list[LoggedTrial]:
    """Every trial of a sweep or launch, oldest first."""
    ids, where = target_filter(c, target)
    names = _experiments(c)
    return [_trial(r, names) for r in search(c, ids, where, order_by=["attributes.start_time ASC"])]


def order(metric: str) -> str:
    """The order_by clause that ranks best first (MLflow uses each run's last value of the metric)."""
    direction = "DESC" if any(s in metric for s in _DESCENDING) else "ASC"
    return f"metrics.`{metric}` {direction}"


def best(
    c: MlflowClient, target: str, metric: str = "val/error", top: int = 1, smoke: bool = False
) -> list[LoggedTrial]:
    """The `top` trials by the metric's last value, in MLflow's own order; runs without it are left out,
    and so are smoke runs (only smoke runs with `smoke`)."""
    ids, where = target_filter(c, target)
    names = _experiments(c)
    runs = search(c, ids, where, order_by=[order(metric)])
    return kept([_trial(r, names) for r in runs if metric in r.data.metrics], smoke)[:top]


def all_trials(c: MlflowClient) -> list[LoggedTrial]:
    """Every sweeplab trial in the store, oldest first."""
    names = _experiments(c)
    return (
        [_trial(r, names) for r in search(c, list(names), CHILD, order_by=["attributes.start_time ASC"])]
        if names
        else []
    )


def tables_of(trial: LoggedTrial) -> list[str]:
    """The table ids a trial fills (its `sweeplab.tables` tag)."""
    return [t for t in trial.tags.get(TABLES, "").split(",") if t]


def table_trials(c: MlflowClient, table_id: str) -> list[LoggedTrial]:
    """Every trial, in any sweep, tagged as filling `table_id`."""
    names = _experiments(c)
    if not names:
        return []
    runs = search(
        c,
        list(names),
        f"tags.`{TABLES}` LIKE {quote('%' + table_id + '%')} and {CHILD}",
        order_by=["attributes.start_time ASC"],
    )
    out = [_trial(r, names) for r in runs]
    return [t for t in out if table_id in tables_of(t)]


def history(c: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric, by step (a re-logged step keeps its latest value)."""
    points = {
        m.step: (m.timestamp, m.value) for m in sorted(c.get_metric_history(run_id, key), key=lambda m: m.timestamp)
    }
    return [(step, v) for step, (_, v) in sorted(points.items())]


def config_of(c: MlflowClient, trial: LoggedTrial) -> dict[str, Any]:
    """The trial's nested config: its config.yaml artifact, else rebuilt from the dotted params."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            saved = yaml.safe_load(Path(c.download_artifacts(trial.run_id, "config.yaml", tmp)).read_text())
            if isinstance(saved, dict):
                return saved
        except Exception:
            pass
    tree: dict[str, Any] = {}
    for key, text in sorted(trial.params.items()):
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parse_value(text)
    return tree
