"""Search-space entries of a sweep file: samplers, grids, dependent values (`expr`) and variants.

One frozen class per sampler, with named fields (like Optuna's distributions). Plain Python, no Ray:
`runner.tune_space` maps each class to its Tune call, and the dry-run samples the same
distributions with `random.Random(seed)`.
"""

from __future__ import annotations

import ast
import math
import random
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from sweeplab.config import check_tree
from sweeplab.core.errors import ConfigError, SweepError, common_name, suggest
from sweeplab.core.yamlio import quoted_number
from sweeplab.schema import SECTIONS, valid_keys
from sweeplab.search_spaces import foreign
from sweeplab.search_spaces.expr import FUNCTIONS, MAX_EXPR, evaluate


@dataclass(frozen=True)
class Domain:
    """One `space` entry; its subclasses are the sampler kinds, each with named fields."""

    sampled: ClassVar[bool] = True  # a distribution a searcher samples (not a grid, not an expr)

    def sample(self, rng: random.Random) -> Any:
        """One draw, with Tune's conventions (randint's upper bound exclusive, quniform rounds)."""
        raise ValueError(f"{type(self).__name__} is not sampled")

    def extremes(self) -> list[Any]:
        """The values at the edges of the domain (checked against the config schema up front)."""
        return []


@dataclass(frozen=True)
class Grid(Domain):
    """`{grid: [...]}`: every value, in every pass over the space."""

    values: tuple[Any, ...]
    sampled: ClassVar[bool] = False

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)

    def extremes(self) -> list[Any]:
        return list(self.values)


@dataclass(frozen=True)
class Choice(Domain):
    """`{choice: [...]}`: one of the values, drawn uniformly."""

    values: tuple[Any, ...]

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)

    def extremes(self) -> list[Any]:
        return list(self.values)


@dataclass(frozen=True)
class Uniform(Domain):
    """`{uniform: [low, high]}`."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> Any:
        return rng.uniform(self.low, self.high)

    def extremes(self) -> list[Any]:
        return [self.low, self.high]


@dataclass(frozen=True)
class LogUniform(Domain):
    """`{loguniform: [low, high]}`: uniform in log space (low > 0)."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> Any:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))

    def extremes(self) -> list[Any]:
        return [self.low, self.high]


@dataclass(frozen=True)
class QUniform(Domain):
    """`{quniform: [low, high, q]}`: uniform, rounded to a multiple of q."""

    low: float
    high: float
    q: float

    def sample(self, rng: random.Random) -> Any:
        return round(round(rng.uniform(self.low, self.high) / self.q) * self.q, 12)

    def extremes(self) -> list[Any]:
        return [self.low, self.high]


@dataclass(frozen=True)
class RandInt(Domain):
    """`{randint: [low, high]}`: an integer in [low, high), as in Tune."""

    low: int
    high: int

    def sample(self, rng: random.Random) -> Any:
        return rng.randrange(self.low, self.high)

    def extremes(self) -> list[Any]:
        return [self.low, self.high - 1]


@dataclass(frozen=True)
class Expr(Domain):
    """`{expr: "..."}`: a value computed per trial from its other values (checked by `check_expr`)."""

    text: str
    sampled: ClassVar[bool] = False

    def evaluate(self, tree: dict[str, dict[str, Any]]) -> Any:
        """The value for a trial's nested config."""
        return evaluate(self.text, tree)


@dataclass(frozen=True)
class GridVariant(Grid):
    """`variant: {grid: [{label, set}, ...]}`: `values` are the labels, `sets` each label's dotted keys."""

    sets: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class ChoiceVariant(Choice):
    """`variant: {choice: [{label, set}, ...]}`: `values` are the labels, `sets` each label's dotted keys."""

    sets: dict[str, dict[str, Any]]


Variant = GridVariant | ChoiceVariant
# The sweep file's sampler names; the bounded ones take their fields, in order, from the list.
SAMPLERS: dict[str, type[Domain]] = {
    "grid": Grid,
    "choice": Choice,
    "uniform": Uniform,
    "loguniform": LogUniform,
    "quniform": QUniform,
    "randint": RandInt,
    "expr": Expr,
}
KINDS = tuple(SAMPLERS)


def is_config_key(key: str) -> bool:
    """A dotted key `sweeplab train` accepts (model options are checked per trial, by the model)."""
    return key in valid_keys() or (key.startswith("model.") and key.count(".") == 1 and len(key) > 6)


def check_key(key: str, where: str, path: str) -> None:
    """Raise SweepError when `key` is not a config key, suggesting the nearest one (for an undotted name,
    like W&B's `batch_size`, the config key it names: data.batch_size)."""
    if not isinstance(key, str) or not is_config_key(key):
        raise SweepError(f"{path}: '{where}{key}' is not a config key{suggest_key(key)}")


def suggest_key(key: object) -> str:
    """ "; did you mean 'optim.lr'?" for a dotted key's typo or an undotted name (`lr`, `learning_rate`)."""
    if isinstance(key, str) and "." not in key:
        named = [k for k in valid_keys() if k.rsplit(".", 1)[-1] == key] or [
            k for k in [common_name(key, valid_keys())] if k is not None
        ]
        if named:
            return f"; did you mean {', '.join(repr(k) for k in named)}? (config keys are dotted: section.key)"
    return suggest(str(key), valid_keys())


def parse(key: str, spec: Any, path: str, where: str = "space.") -> Domain:
    """A `space` entry ({grid: [...]}, {uniform: [lo, hi]}, {expr: "..."}, ...) as a Domain."""
    name = f"{where}{key}"
    hint = foreign.entry_hint(spec)
    if hint:  # {values: [...]}, {distribution: ..., min, max}, {grid_search: [...]}
        raise SweepError(f"{path}: '{name}' is {hint}")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SweepError(
            f"{path}: '{name}' must be one sampler like {{grid: [...]}}; one of {', '.join(KINDS)} "
            "(fixed values go under `overrides`)"
        )
    ((kind, args),) = spec.items()
    if kind not in KINDS:
        raise SweepError(f"{path}: '{name}' has unknown sampler '{kind}'{suggest(str(kind), list(KINDS))}")
    cls = SAMPLERS[kind]
    if cls in (Grid, Choice):
        if not isinstance(args, list) or not args:
            raise SweepError(f"{path}: '{name}.{kind}' must be a non-empty list")
        try:
            check_tree(args, f" in {path}", f"{name}.{kind}")
        except ConfigError as e:
            raise SweepError(str(e)) from None
        return cls(tuple(args))
    if cls is Expr:
        if not isinstance(args, str):
            raise SweepError(f"{path}: '{name}.expr' must be a string like \"0.1 * data.batch_size / 128\"")
        check_expr(args, f"{name}.expr", path)
        return Expr(args)
    n = len(fields(cls))
    if (
        not isinstance(args, list)
        or len(args) != n
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args)
    ):
        shape = "[lo, hi, q]" if n == 3 else "[lo, hi]"
        quoted = isinstance(args, list) and any(quoted_number(v) for v in args)
        raise SweepError(
            f"{path}: '{name}.{kind}' must be {shape} numbers, got {args!r}"
            + ("; write numbers without quotes ('1e-3' in quotes is a string)" if quoted else "")
        )
    if not all(math.isfinite(v) for v in args) or not math.isfinite(args[1] - args[0]):
        raise SweepError(f"{path}: '{name}.{kind}' needs finite bounds less than 1e308 apart, got {args!r}")
    if args[0] >= args[1]:
        raise SweepError(f"{path}: '{name}.{kind}' needs lo < hi, got {args!r}")
    if cls is LogUniform and args[0] <= 0:
        raise SweepError(f"{path}: '{name}.loguniform' needs lo > 0, got {args!r}")
    if cls is RandInt and not all(isinstance(v, int) for v in args):
        raise SweepError(f"{path}: '{name}.randint' needs integer bounds, got {args!r}")
    if cls is QUniform and args[2] <= 0:
        raise SweepError(f"{path}: '{name}.quniform' needs q > 0, got {args!r}")
    return cls(*args)


def parse_variants(spec: Any, path: str, where: str = "space.") -> Variant:
    """`variant: {grid|choice: [{label: str, set: {dotted key: value}}, ...]}` as a GridVariant or ChoiceVariant."""
    name = f"{where}variant"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("grid", "choice"):
        raise SweepError(
            f"{path}: '{name}' must be {{grid: [...]}} or {{choice: [...]}} of {{label: ..., set: {{...}}}} bundles"
        )
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
    sets = {item["label"]: item["set"] for item in items}
    return (GridVariant if kind == "grid" else ChoiceVariant)(tuple(sets), sets)


def check_expr(text: str, name: str, path: str) -> None:
    """Reject an expression that is not arithmetic over dotted config keys and FUNCTIONS."""
    if len(text) > MAX_EXPR:
        raise SweepError(f"{path}: '{name}' is longer than {MAX_EXPR} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise SweepError(f"{path}: '{name}' is not a valid expression: {e.msg}") from None
    except (RecursionError, MemoryError):
        raise SweepError(f"{path}: '{name}' is nested too deeply") from None
    allowed = (
        ast.Expression,
        ast.BinOp,
        ast.UnaryOp,
        ast.operator,
        ast.unaryop,
        ast.Constant,
        ast.Name,
        ast.Attribute,
        ast.Load,
        ast.Call,
        ast.IfExp,
        ast.Compare,
        ast.cmpop,
        ast.BoolOp,
        ast.boolop,
    )
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise SweepError(
                f"{path}: '{name}' may only use arithmetic, dotted config keys and "
                f"{', '.join(FUNCTIONS)}; found {type(node).__name__}"
            )
        if isinstance(node, ast.Attribute):
            if not isinstance(node.value, ast.Name) or node.value.id not in SECTIONS:
                raise SweepError(f"{path}: '{name}' refers to '{ast.unparse(node)}', not a dotted config key")
            check_key(f"{node.value.id}.{node.attr}", f"{name} -> ", path)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise SweepError(f"{path}: '{name}' calls '{ast.unparse(node.func)}'; allowed: {', '.join(FUNCTIONS)}")
        elif isinstance(node, ast.Name) and node.id not in SECTIONS and node.id not in FUNCTIONS:
            raise SweepError(
                f"{path}: '{name}' refers to unknown name '{node.id}'; use dotted config keys like data.batch_size"
            )
