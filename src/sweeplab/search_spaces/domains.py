"""Search-space entries of a sweep file: samplers, grids, dependent values (`expr`) and variants.

Plain Python, no Ray: `ray_backend` translates a Domain into the matching Tune object, and the
dry-run samples the same distributions with `random.Random(seed)`.
"""
from __future__ import annotations

import ast
import math
import random
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sweeplab.config import SECTIONS, ConfigError, _suggest, valid_keys


class SweepError(ConfigError):
    """A bad sweep file: the message names the file and the key."""


KINDS = ("grid", "choice", "uniform", "loguniform", "quniform", "randint", "expr")
BOUNDS = {"uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2}
# What an `expr` may call: arithmetic helpers, nothing that touches the outside world.
FUNCTIONS = {"min": min, "max": max, "abs": abs, "round": round, "int": int, "float": float,
             "sqrt": math.sqrt, "log": math.log, "log2": math.log2, "exp": math.exp, "pow": pow,
             "ceil": math.ceil, "floor": math.floor}


@dataclass
class Domain:
    """One `space` entry: kind is one of KINDS; args are the values, bounds or the expression."""

    kind: str
    args: Any

    @property
    def sampled(self) -> bool:
        """True for the distributions (not grid, not expr): the dimensions a searcher samples."""
        return self.kind not in ("grid", "expr")

    def sample(self, rng: random.Random) -> Any:
        """One draw, with Tune's conventions (randint's upper bound exclusive, quniform rounds)."""
        a = self.args
        if self.kind in ("grid", "choice"):
            return rng.choice(a)
        if self.kind == "uniform":
            return rng.uniform(a[0], a[1])
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(a[0]), math.log(a[1])))
        if self.kind == "quniform":
            return round(round(rng.uniform(a[0], a[1]) / a[2]) * a[2], 12)
        if self.kind == "randint":
            return rng.randrange(a[0], a[1])
        raise ValueError(f"{self.kind} is not sampled")

    def extremes(self) -> list[Any]:
        """The values at the edges of the domain (checked against the config schema up front)."""
        if self.kind in ("grid", "choice"):
            return list(self.args)
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        if self.kind in BOUNDS:
            return [self.args[0], self.args[1]]
        return []


def is_config_key(key: str) -> bool:
    """A dotted key `sweeplab train` accepts (model options are checked per trial, by the model)."""
    return key in valid_keys() or (key.startswith("model.") and key.count(".") == 1 and len(key) > 6)


def check_key(key: str, where: str, path: str) -> None:
    """Raise SweepError when `key` is not a config key, suggesting the nearest one."""
    if not isinstance(key, str) or not is_config_key(key):
        raise SweepError(f"{path}: '{where}{key}' is not a config key{_suggest(str(key), valid_keys())}")


def parse(key: str, spec: Any, path: str, where: str = "space.") -> Domain:
    """A `space` entry ({grid: [...]}, {uniform: [lo, hi]}, {expr: "..."}, ...) as a Domain."""
    name = f"{where}{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SweepError(f"{path}: '{name}' must be one sampler like {{grid: [...]}}; one of {', '.join(KINDS)} "
                         "(fixed values go under `overrides`)")
    ((kind, args),) = spec.items()
    if kind not in KINDS:
        raise SweepError(f"{path}: '{name}' has unknown sampler '{kind}'{_suggest(str(kind), list(KINDS))}")
    if kind in ("grid", "choice"):
        if not isinstance(args, list) or not args:
            raise SweepError(f"{path}: '{name}.{kind}' must be a non-empty list")
    elif kind == "expr":
        if not isinstance(args, str):
            raise SweepError(f"{path}: '{name}.expr' must be a string like \"0.1 * data.batch_size / 128\"")
        check_expr(args, f"{name}.expr", path)
    else:
        n = BOUNDS[kind]
        if (not isinstance(args, list) or len(args) != n
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args)):
            shape = "[lo, hi, q]" if n == 3 else "[lo, hi]"
            raise SweepError(f"{path}: '{name}.{kind}' must be {shape} numbers, got {args!r}")
        if args[0] >= args[1]:
            raise SweepError(f"{path}: '{name}.{kind}' needs lo < hi, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise SweepError(f"{path}: '{name}.loguniform' needs lo > 0, got {args!r}")
        if kind == "randint" and not all(isinstance(v, int) for v in args):
            raise SweepError(f"{path}: '{name}.randint' needs integer bounds, got {args!r}")
        if kind == "quniform" and args[2] <= 0:
            raise SweepError(f"{path}: '{name}.quniform' needs q > 0, got {args!r}")
    return Domain(kind, args)


def parse_variants(spec: Any, path: str, where: str = "space.") -> Domain:
    """`variant: {grid|choice: [{label: str, set: {dotted key: value}}, ...]}` as a Domain of bundles."""
    name = f"{where}variant"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("grid", "choice"):
        raise SweepError(f"{path}: '{name}' must be {{grid: [...]}} or {{choice: [...]}} of "
                         "{label: ..., set: {...}} bundles")
    ((kind, items),) = spec.items()
    if not isinstance(items, list) or not items:
        raise SweepError(f"{path}: '{name}.{kind}' must be a non-empty list")
    labels: set[str] = set()
    for i, item in enumerate(items):
        at = f"{name}.{kind}[{i}]"
        if not isinstance(item, dict) or set(item) != {"label", "set"}:
            raise SweepError(f"{path}: '{at}' must have exactly the keys label and set")
        if not isinstance(item["label"], str) or item["label"] in labels:
            raise SweepError(f"{path}: '{at}.label' must be a unique string, got {item['label']!r}")
        labels.add(item["label"])
        if not isinstance(item["set"], dict):
            raise SweepError(f"{path}: '{at}.set' must be a mapping of dotted config keys")
        for key in item["set"]:
            check_key(key, f"{at}.set.", path)
    return Domain(kind, items)


def check_expr(text: str, name: str, path: str) -> None:
    """Reject an expression that is not arithmetic over dotted config keys and FUNCTIONS."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise SweepError(f"{path}: '{name}' is not a valid expression: {e.msg}") from None
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop, ast.Constant, ast.Name,
               ast.Attribute, ast.Load, ast.Call, ast.IfExp, ast.Compare, ast.cmpop, ast.BoolOp, ast.boolop)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise SweepError(f"{path}: '{name}' may only use arithmetic, dotted config keys and "
                             f"{', '.join(FUNCTIONS)}; found {type(node).__name__}")
        if isinstance(node, ast.Attribute):
            if not isinstance(node.value, ast.Name) or node.value.id not in SECTIONS:
                raise SweepError(f"{path}: '{name}' refers to '{ast.unparse(node)}', not a dotted config key")
            check_key(f"{node.value.id}.{node.attr}", f"{name} -> ", path)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise SweepError(f"{path}: '{name}' calls '{ast.unparse(node.func)}'; allowed: {', '.join(FUNCTIONS)}")
        elif isinstance(node, ast.Name) and node.id not in SECTIONS and node.id not in FUNCTIONS:
            raise SweepError(f"{path}: '{name}' refers to unknown name '{node.id}'; use dotted config keys "
                             "like data.batch_size")


def evaluate(text: str, tree: dict[str, dict[str, Any]]) -> Any:
    """Evaluate a checked expression against a nested config dict (sections as namespaces)."""
    names = {section: SimpleNamespace(**values) for section, values in tree.items() if isinstance(values, dict)}
    return eval(compile(text, "<expr>", "eval"), {"__builtins__": {}, **FUNCTIONS}, names)  # noqa: S307 (AST-checked)
