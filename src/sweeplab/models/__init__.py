"""Model registry: `build(name, num_classes, in_channels, **options)`, `names()` and `options(name)`.

Names and options come from `catalog.MODELS` (a plain table, checked against the builders by the
tests), so a config is validated without importing torch; `build` imports the model's family module,
whose `@register_model` functions fill the registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sweeplab.core.errors import suggest
from sweeplab.models import catalog, rules

if TYPE_CHECKING:
    from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder `fn(num_classes, in_channels, **options)` under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(catalog.MODELS)


def options(name: str) -> dict[str, Any]:
    """The options a model takes, with their defaults (num_classes and in_channels excluded)."""
    return dict(_lookup(name).options)


def check_options(name: str, opts: dict[str, Any]) -> None:
    """Raise ValueError naming the first option `name` does not take (with the nearest valid one), or
    one of the wrong type or that the family cannot build (`rules.OptionError`, torch-free)."""
    valid = options(name)
    for key in opts:
        if key not in valid:
            hint = suggest(key, valid, prefix="model.", cutoff=0.6) or f"; valid: {', '.join(sorted(valid))}"
            raise ValueError(f"model '{name}' has no option 'model.{key}'{hint}")
    rules.check(name, opts, valid)


def build(name: str, num_classes: int = 10, in_channels: int = 3, **opts: Any) -> nn.Module:
    """Build model `name` for `num_classes` classes from `in_channels`-channel images."""
    check_options(name, opts)
    importlib.import_module(_lookup(name).module)  # registers the family's models
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **opts)


def num_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _lookup(name: str) -> catalog.ModelEntry:
    if name not in catalog.MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(names())}")
    return catalog.MODELS[name]
