"""What the model and optimiser registries hold, as plain data: names, family modules, option defaults.

Validating a config needs only the names and each model's options. A table here keeps torch (~1.5 s to
import) out of `sweeplab run`'s driver, its dry-run and its bad-input errors. The builders stay the
truth: tests/test_models.py imports each family and checks this table against the signatures of its
`@register_model` functions and against `sweeplab.optim`'s registry, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: the module under sweeplab.models that builds it and its options' defaults."""

    family: str  # e.g. "wrn" for sweeplab.models.wrn
    options: dict[str, Any] = field(default_factory=dict)  # in the builder's order, as `sweeplab models` lists them

    @property
    def module(self) -> str:
        """The family module's import path."""
        return f"sweeplab.models.{self.family}"


_PREACT = {
    "block_type": "basic",
    "initial_channels": 16,
    "remove_first_relu": False,
    "add_last_bn": False,
    "preact_stage": (True, True, True),
}

# Keep a model's options in its builder's order and with its builder's defaults (the test checks both).
MODELS: dict[str, ModelEntry] = {
    "densenet": ModelEntry(
        "densenet",
        {"depth": 100, "block_type": "bottleneck", "growth_rate": 12, "compression_rate": 0.5, "drop_rate": 0.0},
    ),
    "pyramidnet": ModelEntry("pyramidnet", {"depth": 272, "block_type": "bottleneck", "alpha": 200, "shakedrop": 0.0}),
    "resnet": ModelEntry("resnet", {"depth": 110, "block_type": "basic", "initial_channels": 16}),
    "resnet9": ModelEntry("resnet9", {"channels": 64, "celu_alpha": 0.0, "output_scale": 0.125}),
    "resnet_preact": ModelEntry("resnet_preact", {"depth": 20, **_PREACT}),
    "resnext": ModelEntry("resnext", {"depth": 29, "cardinality": 8, "base_channels": 64}),
    "se_resnet_preact": ModelEntry("se_resnet_preact", {"depth": 110, **_PREACT, "se_reduction": 16}),
    "shake_shake": ModelEntry(
        "shake_shake",
        {"depth": 26, "initial_channels": 96, "shake_forward": True, "shake_backward": True, "shake_image": True},
    ),
    "vgg": ModelEntry(
        "vgg",
        {
            "n_channels": 64,
            "n_layers": 15,
            "use_bn": True,
            "stage_channels": (),
            "stage_layers": (),
            "bn_scale_init": "ones",
        },
    ),
    "wrn": ModelEntry("wrn", {"depth": 28, "widening_factor": 10, "drop_rate": 0.0}),
}

# Every `@register_optim` builder in sweeplab.optim, sorted.
OPTIMIZERS: tuple[str, ...] = ("adam", "amsgrad", "lars", "sgd")

# What every builder takes besides its options: `models.build` passes them from the dataset.
BUILD_ARGS: dict[str, Any] = {"num_classes": 10, "in_channels": 3}
