"""What each model family can build, as plain Python: the builders and the config validator call these.

No torch here: `sweeplab run` validates every trial's model options in the driver, before Ray starts,
with the same functions the family modules call when they build the model, so a depth a family cannot
build fails in the dry-run instead of inside a trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


class OptionError(ValueError):
    """A model option its family cannot build: `key` is the dotted key, `message` says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"'model.{key}' {message}")
        self.key, self.message = f"model.{key}", message


def positive(key: str, value: int) -> None:
    """A width, a count or a ratio that must be >= 1."""
    if value < 1:
        raise OptionError(key, f"must be >= 1, got {value}")


def probability(key: str, value: float, top: bool = False) -> None:
    """A drop rate: in [0, 1), or [0, 1] with `top`."""
    if not (0 <= value <= 1 if top else 0 <= value < 1):
        raise OptionError(key, f"must be in [0, {'1]' if top else '1)'}, got {value}")


def stage_depth(depth: int, block_type: str, per_block: dict[str, int], extra: int = 2) -> int:
    """Blocks per stage for a 3-stage CIFAR net: depth = 3 * layers_per_block * n + extra."""
    if block_type not in per_block:
        raise OptionError("block_type", f"must be one of {', '.join(sorted(per_block))}, got {block_type!r}")
    layers = 3 * per_block[block_type]
    if depth < layers + extra or (depth - extra) % layers:
        valid = ", ".join(str(layers * n + extra) for n in (1, 2, 3))
        raise OptionError("depth", f"must be {layers}n+{extra} for {block_type} blocks ({valid}, ...), got {depth}")
    return (depth - extra) // layers


def resnet_preact(depth: int, block_type: str, initial_channels: int, preact_stage: Sequence[bool], **_: Any) -> int:
    """Blocks per stage of a (SE-)ResNet-preact."""
    positive("initial_channels", initial_channels)
    if len(preact_stage) != 3:
        raise OptionError("preact_stage", f"needs 3 booleans (one per stage), got {list(preact_stage)}")
    return stage_depth(depth, block_type, {"basic": 2, "bottleneck": 3})


def se_resnet_preact(se_reduction: int, **options: Any) -> int:
    """Blocks per stage of an SE-ResNet-preact."""
    positive("se_reduction", se_reduction)
    return resnet_preact(**options)


def resnet(depth: int, block_type: str, initial_channels: int, **_: Any) -> int:
    """Blocks per stage of a ResNet."""
    positive("initial_channels", initial_channels)
    return stage_depth(depth, block_type, {"basic": 2, "bottleneck": 3})


def resnext(depth: int, cardinality: int, base_channels: int, **_: Any) -> int:
    """Blocks per stage of a ResNeXt."""
    positive("cardinality", cardinality)
    positive("base_channels", base_channels)
    return stage_depth(depth, "bottleneck", {"bottleneck": 3})


def wrn(depth: int, widening_factor: int, drop_rate: float, **_: Any) -> int:
    """Blocks per stage of a WRN."""
    positive("widening_factor", widening_factor)
    probability("drop_rate", drop_rate)
    return stage_depth(depth, "basic", {"basic": 2}, extra=4)


def densenet(depth: int, block_type: str, growth_rate: int, compression_rate: float, drop_rate: float, **_: Any) -> int:
    """Layers per dense block of a DenseNet."""
    positive("growth_rate", growth_rate)
    if not 0 < compression_rate <= 1:
        raise OptionError("compression_rate", f"must be in (0, 1], got {compression_rate}")
    probability("drop_rate", drop_rate)
    return stage_depth(depth, block_type, {"basic": 1, "bottleneck": 2}, extra=4)


def pyramidnet(depth: int, block_type: str, alpha: int, shakedrop: float, **_: Any) -> int:
    """Blocks per stage of a PyramidNet."""
    if alpha < 0:
        raise OptionError("alpha", f"(the total width increase) must be >= 0, got {alpha}")
    if not 0 <= shakedrop < 1:
        raise OptionError("shakedrop", f"(the last block's drop probability) must be in [0, 1), got {shakedrop}")
    return stage_depth(depth, block_type, {"basic": 2, "bottleneck": 3})


def shake_shake(depth: int, initial_channels: int, **_: Any) -> int:
    """Blocks per stage of a Shake-Shake net."""
    positive("initial_channels", initial_channels)
    return stage_depth(depth, "basic", {"basic": 2})


def vgg(
    n_channels: int,
    n_layers: int,
    stage_channels: Sequence[int] = (),
    stage_layers: Sequence[int] = (),
    bn_scale_init: str = "ones",
    **_: Any,
) -> list[tuple[int, int]]:
    """(width, convs) of each stage of the VGG-like net: from `stage_channels` and `stage_layers` when given,
    else three stages n, 2n, 4n of (n_layers - 3) / 3 convs."""
    if bn_scale_init not in ("ones", "uniform"):
        raise OptionError("bn_scale_init", f"must be 'ones' or 'uniform', got {bn_scale_init!r}")
    if stage_channels or stage_layers:
        if len(stage_channels) != len(stage_layers):
            raise OptionError(
                "stage_layers",
                f"needs one conv count per stage of model.stage_channels ({len(stage_channels)}), "
                f"got {len(stage_layers)}",
            )
        for key, values in (("stage_channels", stage_channels), ("stage_layers", stage_layers)):
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise OptionError(key, f"must be integers >= 1, got {list(values)}")
        return list(zip(stage_channels, stage_layers))
    positive("n_channels", n_channels)
    if n_layers < 6 or n_layers % 3:
        raise OptionError("n_layers", f"must be 3n+3 (n convs in each of 3 stages: 6, 9, 12, ...), got {n_layers}")
    per_stage = (n_layers - 3) // 3
    return [(n_channels * 2**i, per_stage) for i in range(3)]


def resnet9(channels: int, celu_alpha: float, output_scale: float = 0.125, **_: Any) -> None:
    """ResNet-9's prep width, activation and output scale."""
    positive("channels", channels)
    if celu_alpha < 0:
        raise OptionError("celu_alpha", f"must be >= 0 (0 = ReLU), got {celu_alpha}")
    if not output_scale > 0:
        raise OptionError("output_scale", f"must be > 0, got {output_scale}")


RULES: dict[str, Callable[..., Any]] = {
    "resnet_preact": resnet_preact,
    "se_resnet_preact": se_resnet_preact,
    "resnet": resnet,
    "resnext": resnext,
    "wrn": wrn,
    "densenet": densenet,
    "pyramidnet": pyramidnet,
    "shake_shake": shake_shake,
    "vgg": vgg,
    "resnet9": resnet9,
}


def check_type(key: str, value: Any, default: Any) -> None:
    """Raise OptionError unless `value` has the type of the option's default (ints pass for floats)."""

    def bad(want: str) -> OptionError:
        return OptionError(key, f"must be {want} (like the default {default!r}), got {type(value).__name__} {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise OptionError(key, f"must be a finite number, got {value}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
    elif isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        for item in value:
            if default and isinstance(default[0], bool) and not isinstance(item, bool):
                raise bad("a list of true/false")


def check(name: str, options: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Raise OptionError naming the first option of model `name` of the wrong type or that it cannot build."""
    for key, value in options.items():
        check_type(key, value, defaults[key])
    rule = RULES.get(name)
    if rule is not None:
        rule(**{**defaults, **options})
