"""Readable analysis of a sweep that varies lr x label smoothing: config labels everywhere, columns = the
keys the sweep varies, and figures that draw the trials a scheduler stopped (their data, not pixels)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sweeplab.tracking  # noqa: F401 - first: it turns MLflow telemetry off before mlflow loads
from mlflow_store import fresh_uri, run_trial
from sweeplab.analysis import figures, runs
from sweeplab.analysis.runs import LoggedTrial
from sweeplab.cli import main
from sweeplab.search_spaces.sweep import label
from sweeplab.tracking import Tracker
from sweeplab.tracking.store import client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")  # MLflow's own SQLAlchemy use

# (lr, label smoothing) -> (errors per epoch, how it ended); batch size is the same everywhere
GRID = {
    (0.05, 0.0): ([60.0], "stopped"),  # ASHA cut the slow low-lr trials: they must still be drawn
    (0.05, 0.1): ([62.0, 50.0], "stopped"),
    (0.1, 0.0): ([40.0, 20.0, 12.0], "finished"),
    (0.1, 0.1): ([40.0, 19.0, 11.0], "finished"),
    (0.4, 0.0): ([30.0, 15.0, 10.0], "finished"),
    (0.4, 0.1): ([80.0, 90.0], "failed"),
}


def _label(lr: float, smoothing: float) -> str:
    return label({"optim.lr": lr, "train.label_smoothing": smoothing})


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = fresh_uri(tmp_path_factory.mktemp("smoothing"), tmp_path_factory)
    t = Tracker(uri, "smoothing", "ls-a", {})
    for i, ((lr, sm), (errors, end)) in enumerate(GRID.items()):
        run_trial(
            t,
            f"abcde_0000{i}",  # a Tune id, as Tune names trials
            lr,
            5e-4,
            seed=0,
            errors=errors,
            stopped=end == "stopped",
            failed=end == "failed",
            rows={},
            label=_label(lr, sm),
            smoothing=sm,
        )
    t.close()
    return uri


@pytest.fixture(scope="module")
def trials(store: str) -> list[LoggedTrial]:
    return runs.trials(client(store), "smoothing")


def test_labels_name_the_runs(trials: list[LoggedTrial]) -> None:
    assert [t.label for t in trials] == [_label(lr, sm) for lr, sm in GRID]
    assert trials[0].label == "lr=0.05 label_smoothing=0" and trials[0].run_name == trials[0].label
    assert trials[0].stopped_early and trials[0].outcome == "stopped early at epoch 1"
    assert [t.outcome for t in trials[2:]] == ["finished", "finished", "finished", "failed"]


def _trial(run_name: str, tags: dict[str, str], params: dict[str, str] | None = None) -> LoggedTrial:
    return LoggedTrial("r", "e", "25ce8_00004", "FINISHED", 0, params or {}, {}, tags, run_name)


def test_label_and_stopped_early_fall_back_for_old_stores() -> None:
    assert _trial("x", {"sweeplab.label": "lr=0.1"}).label == "lr=0.1"
    assert _trial("lr=0.2 seed=1", {}).label == "lr=0.2 seed=1"  # named by label, tag missing
    assert _trial("25ce8_00004", {}).label == "25ce8_00004"  # named by its Tune id: the trial id
    assert _trial("f00d1_00012", {}).label == "25ce8_00004"
    assert _trial("", {"stopped_early": "true"}).stopped_early  # the tag before the sweeplab. prefix
    assert _trial("", {"sweeplab.stopped_early": "true", "stopped_early": "false"}).stopped_early
    assert not _trial("", {"sweeplab.stopped_early": "false"}).stopped_early


def test_varied_keys_with_variants() -> None:
    def t(variant: str, depth: str, lr: str, seed: str) -> LoggedTrial:
        params = {"model.depth": depth, "optim.lr": lr, "train.seed": seed, "data.batch_size": "128"}
        return _trial("", {"sweeplab.variant": variant}, params)

    # the variant sets the depth (its label says so); lr varies within a variant; seeds are in the label
    grid = [t(v, d, lr, s) for v, d in (("small", "20"), ("big", "56")) for lr in ("0.1", "0.2") for s in "01"]
    assert runs.varied_keys(grid) == ["variant", "optim.lr"]
    assert runs.varied_keys([t("", "20", lr, "0") for lr in ("0.1", "0.2")]) == ["optim.lr"]
    assert runs.varied_keys([t("only", "20", "0.1", "0")]) == ["variant"]  # the variant shown when there is one


def test_best_columns_are_the_varied_keys(store: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["best", "smoothing", "--top", "3", "--tracking-uri", store]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = [c.strip() for c in lines[2].strip("|").split("|")]
    assert head == ["rank", "trial", "val/error", "epochs", "outcome", "optim.lr", "train.label_smoothing", "run id"]
    assert lines[4].startswith("| 1 | lr=0.4 label_smoothing=0 | 10 | 3 | finished | 0.4 | 0.0 |")
    assert main(["best", "smoothing", "--top", "1", "--json", "--tracking-uri", store]) == 0
    (top,) = json.loads(capsys.readouterr().out)
    assert top["label"] == "lr=0.4 label_smoothing=0" and top["outcome"] == "finished"
    assert top["varied"] == {"optim.lr": "0.4", "train.label_smoothing": "0.0"}  # the sweep's keys, not batch size


def test_error_vs_key_draws_stopped_trials_hollow(trials: list[LoggedTrial]) -> None:
    keys = runs.varied_keys(trials)
    assert figures.numeric_keys(trials, keys) == ["optim.lr", "train.label_smoothing"]
    points = {p.label: p for p in figures.error_points(trials, "optim.lr", keys)}
    assert set(points) == {_label(lr, sm) for lr, sm in GRID if (lr, sm) != (0.4, 0.1)}  # the failed one aside
    low = points["lr=0.05 label_smoothing=0"]
    assert (low.x, low.error, low.epoch, low.stopped) == (0.05, 60.0, 1, True)  # where it stopped
    assert points["lr=0.05 label_smoothing=0.1"].error == 50.0 and points["lr=0.05 label_smoothing=0.1"].epoch == 2
    assert not points["lr=0.1 label_smoothing=0"].stopped
    assert {p.group for p in points.values()} == {"label_smoothing=0", "label_smoothing=0.1"}  # coloured by it


def test_legends_and_parallel_coordinates_use_labels(store: str, trials: list[LoggedTrial]) -> None:
    legend = [name for name, _, _ in figures.curve_data(client(store), trials)]
    assert legend == sorted(
        _label(lr, sm) + {"stopped": " (stopped)", "failed": " (failed)", "finished": ""}[end]
        for (lr, sm), (_, end) in GRID.items()
    )
    axes, lines = figures.parallel_data(trials, runs.varied_keys(trials))
    assert [a.key for a in axes] == ["optim.lr", "train.label_smoothing", "val/error"]
    assert len(lines) == 5 and any(t.stopped_early for t, _ in lines)
    assert all(0.0 <= y <= 1.0 for _, ys in lines for y in ys)
    assert [text for _, text in axes[0].ticks] == ["0.05", "0.1", "0.4"]


def test_report_of_the_sweep(store: str, tmp_path: Path) -> None:
    assert main(["report", "--out", str(tmp_path), "--tracking-uri", store]) == 0
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [f"sweep_smoothing_{k}.png" for k in ("curves", "error", "parallel", "stops")]
    page = (tmp_path / "index.html").read_text()
    assert "<th>trial</th><th>val/error</th><th>epochs</th><th>outcome</th><th>optim.lr</th>" in page
    assert "<th>train.label_smoothing</th><th>MLflow</th>" in page and "data.batch_size" not in page
    assert "<td>lr=0.4 label_smoothing=0</td>" in page
