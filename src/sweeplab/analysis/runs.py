"""Reading sweeplab's runs back from MLflow: the trials of a sweep, a launch or a table."""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote as url_quote

import yaml

from sweeplab.config import parse_value
from sweeplab.core.errors import ConfigError
from sweeplab.core.names import (
    LABEL,
    LAUNCH,
    OUTCOME,
    PARENT,
    SEED,
    SMOKE,
    STOPPED_EARLY,
    SWEEP,
    TABLES,
    TRIAL,
    VARIANT,
    default_mode,
)
from sweeplab.tracking.store import client, quote, resolve_uri, search, sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

CHILD = f"tags.`{TRIAL}` IS NOT NULL"
SEED_KEY = "train.seed"  # varies across seeds, not configs: the label carries it, no column does
UI_URL = "http://127.0.0.1:5000"  # where `sweeplab ui` serves the MLflow UI
_TUNE_ID = re.compile(r"[0-9a-f]{5}_\d{5}")  # Tune's trial ids ("25ce8_00004"), the run names of old stores


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
    run_name: str = ""
    experiment_id: str = ""

    @property
    def launch(self) -> str:
        return self.tags.get(LAUNCH, "")

    @property
    def label(self) -> str:
        """The config's label ("lr=0.1 weight_decay=0.0005"): its `sweeplab.label` tag, else its run name
        unless that is a Tune id, else (stores written before labels) the trial id."""
        if self.tags.get(LABEL):
            return self.tags[LABEL]
        if self.run_name and self.run_name != self.trial_id and not _TUNE_ID.fullmatch(self.run_name):
            return self.run_name
        return self.trial_id

    @property
    def stopped_early(self) -> bool:
        """A scheduler stopped it (`sweeplab.stopped_early`; stores written before the prefix: `stopped_early`)."""
        return self.tags.get(STOPPED_EARLY, self.tags.get("stopped_early")) == "true"

    @property
    def outcome(self) -> str:
        """finished, stopped early at epoch E, failed or unfinished: its `sweeplab.outcome` tag, else its status."""
        if self.tags.get(OUTCOME):
            return self.tags[OUTCOME]
        if self.status == "FAILED":
            return "failed"
        if self.stopped_early:
            return f"stopped early at epoch {self.epochs}"
        return "finished" if self.status == "FINISHED" else "unfinished"

    @property
    def smoke(self) -> bool:
        """Logged by a `--smoke` launch (its `sweeplab.smoke` tag; runs from before the tag count as full)."""
        return self.tags.get(SMOKE) == "true"

    @property
    def seed(self) -> str:
        return self.tags.get(SEED, self.params.get("train.seed", "0"))

    @property
    def epochs(self) -> int:
        return int(self.metrics.get("epoch", 0))

    def value(self, key: str) -> Any:
        """A param parsed back to its type (MLflow stores strings); `variant` is the variant's label."""
        if key == "variant":
            return self.tags.get(VARIANT, "")
        return parse_value(self.params[key]) if key in self.params else None

    def cell(self, key: str) -> str:
        """A key's value as a table shows it: the variant's label, else the param as logged ('' without it)."""
        return self.tags.get(VARIANT, "") if key == "variant" else self.params.get(key, "")


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
        run.info.run_name or "",
        run.info.experiment_id,
    )


def varied_keys(trials: list[LoggedTrial]) -> list[str]:
    """The keys the trials differ in: the dotted params with two or more values among them (the seed aside),
    and `variant` first when a trial has one, in place of the keys each variant alone sets."""
    keys = sorted({k for t in trials for k in t.params} - {SEED_KEY})
    varied = [k for k in keys if len({t.params[k] for t in trials if k in t.params}) > 1]
    variants = {t.value("variant") for t in trials}
    if not variants - {""}:
        return varied

    def set_by_variant(key: str) -> bool:  # one value within each variant: the variant's label says it
        return all(len({t.params.get(key) for t in trials if t.value("variant") == v}) == 1 for v in variants)

    return ["variant"] + [k for k in varied if not set_by_variant(k)]


def ui_link(trials: list[LoggedTrial], ui_url: str = UI_URL) -> str:
    """The MLflow UI page of these runs ('' for none): the run's own page for one, for several the
    compare-runs page of exactly them (it spans experiments, and MLflow 3's experiment page may open
    in its GenAI view)."""
    base = ui_url.rstrip("/")
    if len(trials) == 1:
        return f"{base}/#/experiments/{trials[0].experiment_id}/runs/{trials[0].run_id}"
    if not trials:
        return ""
    ids = json.dumps([t.run_id for t in trials], separators=(",", ":"))
    exps = json.dumps(sorted({t.experiment_id for t in trials}), separators=(",", ":"))
    return f"{base}/#/compare-runs?runs={url_quote(ids, safe='')}&experiments={url_quote(exps, safe='')}"


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


def parent_run(c: MlflowClient, launch: str) -> Run | None:
    """The parent run of a launch (None when MLflow has none)."""
    ids = list(_experiments(c))
    found = search(c, ids, f"tags.`{LAUNCH}` = {quote(launch)} and tags.`{PARENT}` IS NULL", limit=1) if ids else []
    return found[0] if found else None


def trials(c: MlflowClient, target: str) -> list[LoggedTrial]:
    """Every trial of a sweep or launch, oldest first."""
    ids, where = target_filter(c, target)
    names = _experiments(c)
    return [_trial(r, names) for r in search(c, ids, where, order_by=["attributes.start_time ASC"])]


def order(metric: str) -> str:
    """The order_by clause that ranks best first (MLflow uses each run's last value of the metric)."""
    direction = "DESC" if default_mode(metric) == "max" else "ASC"  # the sweep file's default mode
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
