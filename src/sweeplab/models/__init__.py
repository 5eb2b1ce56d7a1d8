"""Model registry: `build(name, num_classes, in_channels, **options)` and `names()`."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

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
    return sorted(_REGISTRY)


def options(name: str) -> dict[str, Any]:
    """The options a model takes, with their defaults (num_classes and in_channels excluded)."""
    params = inspect.signature(_lookup(name)).parameters
    return {k: p.default for k, p in params.items() if k not in ("num_classes", "in_channels")}


def check_options(name: str, opts: dict[str, Any]) -> None:
    """Raise ValueError naming the first option `name` does not take, with the nearest valid one."""
    valid = options(name)
    for key in opts:
        if key not in valid:
            near = difflib.get_close_matches(key, list(valid), n=1)
            hint = f"; did you mean 'model.{near[0]}'?" if near else f"; valid: {', '.join(sorted(valid))}"
            raise ValueError(f"model '{name}' has no option 'model.{key}'{hint}")


def build(name: str, num_classes: int = 10, in_channels: int = 3, **opts: Any) -> nn.Module:
    """Build model `name` for `num_classes` classes from `in_channels`-channel images."""
    check_options(name, opts)
    return _lookup(name)(num_classes=num_classes, in_channels=in_channels, **opts)


def num_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _lookup(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(names())}")
    return _REGISTRY[name]


# Importing the family modules registers them.
from sweeplab.models import (densenet, pyramidnet, resnet, resnet9, resnet_preact, resnext,  # noqa: E402,F401
                             se_resnet_preact, shake_shake, vgg, wrn)
