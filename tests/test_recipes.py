"""Every recipe under configs/ loads, validates, and trains one epoch on tiny synthetic data.

The recipes are found by glob, so a new configs/**/*.yaml is tested without touching this file.
The short run keeps everything a recipe sets (optimiser, schedule, augmentation, precision, model
family and its options) and shrinks only the data and the model's depth and width, so the whole
file runs in seconds on a 2-core CPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from sweeplab import config, engine
from sweeplab.schema import Config, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(ROOT.glob("configs/**/*.yaml"))
IDS = [str(p.relative_to(ROOT / "configs")) for p in RECIPES]

# The image shape of each dataset, so the synthetic stand-in exercises the recipe's real input path
# (28x28x1 digits go through every model's small-input handling).
SHAPES = {
    "cifar10": [3, 32, 32],
    "cifar100": [3, 32, 32],
    "mnist": [1, 28, 28],
    "fashion_mnist": [1, 28, 28],
    "kmnist": [1, 28, 28],
    "synthetic": None,
}


def tiny_model(model: ModelConfig) -> dict[str, Any]:
    """Overrides that shrink a model to its smallest valid depth and a small width, keeping its kind."""
    name, block = model.name, model.options.get("block_type", "basic")
    bottleneck = block == "bottleneck"
    if name in ("resnet", "resnet_preact", "se_resnet_preact"):
        return {"depth": 11 if bottleneck else 8, "initial_channels": 4}
    if name == "pyramidnet":
        return {"depth": 11 if bottleneck else 8, "alpha": 8}
    if name == "wrn":
        return {"depth": 10, "widening_factor": 1}
    if name == "densenet":
        return {"depth": 10 if bottleneck else 7, "growth_rate": 4}
    if name == "resnext":
        return {"depth": 11, "cardinality": 2, "base_channels": 2}
    if name == "shake_shake":
        return {"depth": 8, "initial_channels": 4}
    if name == "vgg":  # the source layout (stage lists) keeps its number of stages, each 4 wide, 1 conv deep
        stages = len(model.options.get("stage_channels", ()))
        return {"n_channels": 4, "n_layers": 6, "stage_channels": [4] * stages, "stage_layers": [1] * stages}
    if name == "resnet9":
        return {"channels": 4}
    raise AssertionError(f"tiny_model does not know model {name!r}: add its small size here")


def smoke_overrides(recipe: Config) -> dict[str, Any]:
    """Dotted overrides for a one-epoch run of `recipe` on 64 synthetic images of its dataset's shape."""
    shape = SHAPES[recipe.data.name] or recipe.data.synthetic_shape
    over: dict[str, Any] = {
        "data.name": "synthetic",
        "data.synthetic_shape": shape,
        "data.synthetic_classes": 10,
        "data.synthetic_train": 64,
        "data.synthetic_test": 32,
        "data.batch_size": 16,
        "data.eval_batch_size": 32,
        "data.device": "cpu",
        "train.epochs": 1,
    }
    if recipe.train.ghost_batch_size:
        over["train.ghost_batch_size"] = 8
    # warm-up, milestones and cycles are fractions or epochs: one epoch must still be a valid schedule
    over["sched.warmup_epochs"] = min(recipe.sched.warmup_epochs, 1.0)
    over.update({f"model.{k}": v for k, v in tiny_model(recipe.model).items()})
    return over


def test_recipes_found() -> None:
    assert len(RECIPES) >= 10, "configs/ lost its recipes"


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_loads(path: Path) -> None:
    c = config.load(path)
    assert c.data.name in SHAPES
    assert c.train.epochs >= 1
    head = path.read_text().splitlines()[:2]
    assert all(line.startswith("#") for line in head), f"{path.name}: start with a comment saying where it comes from"


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_trains_on_synthetic_data(path: Path) -> None:
    recipe = config.load(path)
    c = config.load(path, smoke_overrides(recipe))
    # the run keeps what the recipe is about
    for key in (
        "optim.name",
        "sched.name",
        "augment.cutout",
        "augment.mixup",
        "augment.ricap",
        "augment.dual_cutout",
        "augment.label_smoothing",
        "train.precision",
        "train.flip_tta",
    ):
        assert c.flat()[key] == recipe.flat()[key], key
    assert c.model.name == recipe.model.name
    metrics = engine.fit(c)
    assert metrics["epoch"] == 1
    for key in ("train/loss", "val/loss", "val/error"):
        assert math.isfinite(metrics[key]), f"{key} = {metrics[key]}"
