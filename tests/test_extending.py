"""docs/architecture.md's "Where to add things", done once for real: a new model and a new trial scheduler.

Each test follows the recipe step by step (a family module with `@register_model`, a catalog row; a
row of the scheduler table) and then uses the addition the way a user would: a config naming it is
validated without torch and trained, a sweep file naming the scheduler compiles and Tune gets it.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest
import yaml

from sweeplab import config, engine, models
from sweeplab.core.errors import ConfigError, SweepError
from sweeplab.models import catalog
from sweeplab.runner import tune_space
from sweeplab.search_spaces import load, schedulers
from sweeplab.search_spaces.schedulers import SchedulerKind

# Step 1 of "A model": a family module, its builder decorated with @register_model.
TINYNET = '''
"""TinyNet: one convolution and a linear head, the smallest model that trains (an example family)."""

from torch import nn

from sweeplab.models import register_model


class TinyNet(nn.Module):
    def __init__(self, num_classes, in_channels, width):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@register_model
def tinynet(num_classes: int = 10, in_channels: int = 3, width: int = 8) -> nn.Module:
    """TinyNet of `width` channels."""
    return TinyNet(num_classes, in_channels, width)
'''


@pytest.fixture
def tinynet(tmp_path, monkeypatch):
    """The new family, as if saved as src/sweeplab/models/tinynet.py, with its catalog row (step 2)."""
    path = tmp_path / "tinynet.py"
    path.write_text(TINYNET)
    spec = importlib.util.spec_from_file_location("sweeplab.models.tinynet", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "sweeplab.models.tinynet", module)
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))  # the test leaves the registry as it was
    monkeypatch.setitem(catalog.MODELS, "tinynet", catalog.ModelEntry("tinynet", {"width": 8}))
    spec.loader.exec_module(module)
    return module


def test_a_new_model_is_validated_built_and_trained(tinynet, tmp_path):
    # the catalog row is the builder's signature (what tests/test_models.py checks for every model)
    params = inspect.signature(models._REGISTRY["tinynet"]).parameters
    assert {k: p.default for k, p in params.items()} == {**catalog.BUILD_ARGS, **catalog.MODELS["tinynet"].options}
    assert "tinynet" in models.names() and models.options("tinynet") == {"width": 8}

    # a config names it like any other model; its options are checked from the catalog
    recipe = tmp_path / "tinynet.yaml"
    recipe.write_text(
        "model: {name: tinynet, width: 4}\n"
        "data: {name: synthetic, synthetic_train: 64, synthetic_test: 32, batch_size: 32, device: cpu}\n"
        "train: {epochs: 1, threads: 1}\n"
    )
    conf = config.load(recipe)
    assert conf.model.name == "tinynet" and conf.model.options == {"width": 4}
    assert conf.flat()["model.width"] == 4  # the MLflow param it becomes
    with pytest.raises(ConfigError, match=r"model 'tinynet' has no option 'model.widht'; did you mean 'model.width'"):
        config.load(recipe, ["model.widht=4"])

    # and it trains through the engine, from the registry, as a sweep trial would
    metrics = engine.fit(conf)
    assert metrics["epoch"] == 1 and 0 <= metrics["val/error"] <= 100


def sweep_file(tmp_path, scheduler):
    path = tmp_path / "extend.yaml"
    spec = {
        "name": "extend",
        "config": "configs/fashion_mnist/resnet_preact20.yaml",
        "overrides": {"data.name": "synthetic", "train.epochs": 4},
        "space": {"optim.lr": {"grid": [0.1, 0.2]}},
        "scheduler": scheduler,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_new_trial_scheduler_reaches_tune(tmp_path, monkeypatch):
    # step 1 of "A trial scheduler": one row of the table; here Tune's HyperBand for BOHB
    row = SchedulerKind(
        "ray.tune.schedulers:HyperBandForBOHB",
        {"reduction_factor": (int, float), "max_t": int},
        {"time_attr": "epoch", "reduction_factor": 3},
    )
    monkeypatch.setitem(schedulers.SCHEDULERS, "bohb_hyperband", row)

    # a sweep file names it; the compiler checks its options against the row
    sweep = load(sweep_file(tmp_path, {"name": "bohb_hyperband", "reduction_factor": 2}))
    assert sweep.scheduler.name == "bohb_hyperband" and len(sweep.trials()) == 2
    with pytest.raises(SweepError, match=r"scheduler\.grace_period"):
        load(sweep_file(tmp_path, {"name": "bohb_hyperband", "grace_period": 2}))
    with pytest.raises(SweepError, match=r"scheduler\.reduction_factor"):
        load(sweep_file(tmp_path, {"name": "bohb_hyperband", "reduction_factor": "fast"}))

    # step 2: nothing else to write; the runner builds the Tune class from the row
    from ray.tune.schedulers import HyperBandForBOHB

    tune_scheduler = tune_space.scheduler(sweep)
    assert isinstance(tune_scheduler, HyperBandForBOHB)
    assert tune_scheduler._time_attr == "epoch" and tune_scheduler._eta == 2 and tune_scheduler._max_t_attr == 4


def test_the_recipes_name_files_that_exist():
    """The doc's recipes point at real places, so following them cannot start with a missing file."""
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "architecture.md").read_text()
    places = set(re.findall(r"`((?:src/sweeplab/|tests/|models/|data/|search_spaces/|runner/)[\w/.]+?)`", doc))
    assert {
        "src/sweeplab/models/catalog.py",
        "src/sweeplab/search_spaces/schedulers.py",
        "tests/test_extending.py",
    } <= places
    for place in places:
        assert (root / place).exists() or (root / "src" / "sweeplab" / place).exists(), place
