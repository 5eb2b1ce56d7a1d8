"""Figures for a paper from a sampled (Optuna-like) sweep: each key on its sampler's scale, a few round
ticks instead of one per sampled value, no trial-by-trial legend, an SVG beside every PNG."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

import sweeplab.tracking  # noqa: F401 - first: it turns MLflow telemetry off before mlflow loads
from mlflow_store import fresh_uri
from sweeplab.analysis import figures, runs, scales
from sweeplab.cli import main
from sweeplab.search_spaces.sweep import label
from sweeplab.tracking import Tracker
from sweeplab.tracking.store import client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")

SWEEP = """\
name: sampled
config: configs/fashion_mnist/resnet_preact20.yaml
space:
  optim.lr: {loguniform: [0.01, 0.8]}
  augment.label_smoothing: {uniform: [0.0, 0.2]}
  optim.weight_decay: {grid: [1.0e-4, 1.0e-3]}
search: {name: optuna, num_samples: 20}
smoke:
  space: {optim.lr: {choice: [0.1, 0.2]}}
"""
LAUNCH = "sampled-20260101-120000"  # a launch named as `sweeplab run` names it, with its time stamp


def _config(point: dict[str, float]) -> dict:
    tree: dict = {"data": {"name": "fashion_mnist"}, "model": {"name": "resnet_preact"}, "train": {"epochs": 4}}
    for key, value in point.items():
        section, leaf = key.split(".")
        tree.setdefault(section, {})[leaf] = value
    return tree


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = fresh_uri(tmp_path_factory.mktemp("sampled"), tmp_path_factory)
    t = Tracker(uri, "sampled", LAUNCH, {})
    t.launch_settings({"search.name": "optuna"}, {"sweep.yaml": SWEEP})
    rng = random.Random(0)
    for i in range(20):
        point = {
            "optim.lr": math.exp(rng.uniform(math.log(0.01), math.log(0.8))),
            "augment.label_smoothing": rng.uniform(0.0, 0.2),
            "optim.weight_decay": rng.choice([1e-4, 1e-3]),
        }
        stopped = i % 3 == 0
        tags = {"sweeplab.trial_id": f"t{i}", "sweeplab.label": label(point), "sweeplab.smoke": "false"}
        t.trial_start(f"t{i}", _config(point), tags)
        for epoch in range(1, 3 if stopped else 5):
            t.trial_result(f"t{i}", {"epoch": epoch, "val/error": 50.0 / epoch + rng.uniform(0, 5)})
        t.trial_end(f"t{i}", failed=False, stopped_early=stopped, epoch=2 if stopped else 4)
    t.close()
    return uri


def test_scales_come_from_the_launch_s_sweep_file(store: str) -> None:
    trials = runs.trials(client(store), "sampled")
    assert scales.logged(client(store), trials) == {
        "optim.lr": "log",  # loguniform
        "augment.label_smoothing": "linear",  # uniform: never a log axis, whatever its values span
        "optim.weight_decay": "values",  # a grid: its values, one tick each
    }
    smoke = scales.of_sweep_file(SWEEP, smoke=True)
    assert smoke["optim.lr"] == "values" and smoke["augment.label_smoothing"] == "linear"


def test_sampled_keys_get_a_few_round_ticks(store: str) -> None:
    trials = runs.trials(client(store), "sampled")
    keys = runs.varied_keys(trials)
    axes, lines = figures.parallel_data(trials, keys, scales.logged(client(store), trials))
    ticks = {a.key: [text for _, text in a.ticks] for a in axes}
    # a few round numbers, not the 20 sampled values: 1-2-5 per decade on the log axis, steps of 0.04 on the linear
    assert 3 <= len(ticks["optim.lr"]) <= 6 and set(ticks["optim.lr"]) <= {"0.01", "0.02", "0.05", "0.1", "0.2", "0.5"}
    smoothing = [float(x) for x in ticks["augment.label_smoothing"]]
    assert 3 <= len(smoothing) <= 6 and all(abs(x * 25 - round(x * 25)) < 1e-9 for x in smoothing)
    assert ticks["optim.weight_decay"] == ["0.0001", "0.001"]  # a grid: its values
    assert len(lines) == 20
    # no colour groups of sampled values: a grid key with two values colours the points instead
    assert {p.group for p in figures.error_points(trials, "optim.lr", keys)} == {
        "weight_decay=0.0001",
        "weight_decay=0.001",
    }


def _png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


def test_report_figures_are_for_a_paper(store: str, tmp_path: Path) -> None:
    assert main(["report", "--out", str(tmp_path), "--tracking-uri", store]) == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == [f"sweep_sampled_{k}.png" for k in ("curves", "error", "parallel", "stops")]
    for png in pngs:
        assert _png_width(png) > 640 and png.with_suffix(".svg").is_file(), png.name
    error = (tmp_path / "sweep_sampled_error.svg").read_text()  # its text is text: checkable, editable
    assert "optim.lr (log scale)" in error and "augment.label_smoothing (linear scale)" in error
    assert "stopped early at epoch 2" in error and "ran to the end" in error
    trials = runs.trials(client(store), "sampled")
    curves = (tmp_path / "sweep_sampled_curves.svg").read_text()
    assert "20 trials, coloured by their last error" in curves
    assert not [t.label for t in trials if t.label in curves]  # no legend entry per sampled config
    page = (tmp_path / "index.html").read_text()
    assert "<a href='sweep_sampled_error.svg'><img src='sweep_sampled_error.png'" in page
    assert LAUNCH not in page.split("<h2>Sweeps")[1].split("<table>")[0]
