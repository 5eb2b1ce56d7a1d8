"""What the model and optimiser registries hold, read from their source without importing torch.

Validating a config needs only the names and each model's options. Reading them from the decorated
functions' signatures keeps torch (~1.5 s to import) out of `sweeplab run`'s driver, its dry-run and
its bad-input errors; tests/test_models.py checks this against the imported registries.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

NO_DEFAULT = object()  # a parameter without a default value


def registered(module: str, decorator: str) -> dict[str, dict[str, Any]]:
    """{function: {parameter: default}} of `module`'s top-level functions decorated with `@decorator`."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(module)
    return _parse(spec.origin, decorator)


@cache
def _parse(path: str, decorator: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for node in ast.parse(Path(path).read_text()).body:
        if not (
            isinstance(node, ast.FunctionDef)
            and any(isinstance(d, ast.Name) and d.id == decorator for d in node.decorator_list)
        ):
            continue
        a = node.args
        positional = a.posonlyargs + a.args
        defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults) + list(a.kw_defaults)
        out[node.name] = {arg.arg: _literal(d) for arg, d in zip(positional + a.kwonlyargs, defaults)}
    return out


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return NO_DEFAULT
    try:
        return ast.literal_eval(node)
    except ValueError:  # not a literal (e.g. a class): its source text, for listings
        return ast.unparse(node)


@lru_cache(maxsize=1)
def models() -> dict[str, tuple[str, dict[str, Any]]]:
    """Model name -> (its module, {parameter: default}) for every `@register_model` in sweeplab.models."""
    package = importlib.util.find_spec("sweeplab.models")
    assert package is not None and package.submodule_search_locations is not None
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for info in pkgutil.iter_modules(package.submodule_search_locations):
        module = f"sweeplab.models.{info.name}"
        for name, params in registered(module, "register_model").items():
            out[name] = (module, params)
    return out


def optimizers() -> list[str]:
    """Every `@register_optim` name in sweeplab.optim, sorted."""
    return sorted(registered("sweeplab.optim", "register_optim"))
