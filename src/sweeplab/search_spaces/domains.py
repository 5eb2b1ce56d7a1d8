"""Search-space entries of a sweep file: samplers, grids, dependent values (`expr`) and variants.

One frozen class per sampler, with named fields (like Optuna's distributions). Plain Python, no Ray:
`runner.ray_backend` maps each class to its Tune call, and the dry-run samples the same
distributions with `random.Random(seed)`.
"""

from __future__ import annotations

import ast
import math
import operator
import random
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from sweeplab.config import check_tree
from sweeplab.core.errors import ConfigError, SweepError, suggest
from sweeplab.schema import SECTIONS, valid_keys

# What an `expr` may call: arithmetic helpers, nothing that touches the outside world.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "int": int,
    "float": float,
    "sqrt": math.sqrt,
    "log": math.log,
    "log2": math.log2,
    "exp": math.exp,
    "pow": pow,
    "ceil": math.ceil,
    "floor": math.floor,
}


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
    """Raise SweepError when `key` is not a config key, suggesting the nearest one."""
    if not isinstance(key, str) or not is_config_key(key):
        raise SweepError(f"{path}: '{where}{key}' is not a config key{suggest(str(key), valid_keys())}")


def parse(key: str, spec: Any, path: str, where: str = "space.") -> Domain:
    """A `space` entry ({grid: [...]}, {uniform: [lo, hi]}, {expr: "..."}, ...) as a Domain."""
    name = f"{where}{key}"
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
        raise SweepError(f"{path}: '{name}.{kind}' must be {shape} numbers, got {args!r}")
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


MAX_EXPR = 1000  # characters: an expression is a formula, not a program
LIMIT = 1e300  # the largest magnitude an expr may reach: far above any config value, below float overflow
BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
UNARY: dict[type, Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
    ast.Invert: operator.invert,
}
COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


class ExprError(ValueError):
    """An expression whose evaluation would be unbounded (huge numbers, strings) or is not a real number."""


def evaluate(text: str, tree: dict[str, dict[str, Any]]) -> Any:
    """Evaluate a checked expression against a nested config dict (sections as namespaces).

    A small interpreter over the nodes `check_expr` allows, not `eval`: every number it makes stays
    finite and within LIMIT, and a power or shift is refused before it is computed, so `9**9**9`
    fails at once instead of running for hours."""
    return _eval(ast.parse(text, mode="eval").body, tree)


def _eval(node: ast.expr, tree: dict[str, dict[str, Any]]) -> Any:
    if isinstance(node, ast.Constant):
        return _bounded(node.value)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        values = tree.get(node.value.id)
        if not isinstance(values, dict) or node.attr not in values:
            raise ExprError(f"{node.value.id}.{node.attr} has no value in this trial")
        return values[node.attr]
    if isinstance(node, ast.BinOp):
        a, b = _number(_eval(node.left, tree), node), _number(_eval(node.right, tree), node)
        _guard(node.op, a, b)
        return _bounded(BINARY[type(node.op)](a, b))
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, tree)
        return UNARY[type(node.op)](value if isinstance(node.op, ast.Not) else _number(value, node))
    if isinstance(node, ast.BoolOp):
        value = None
        for operand in node.values:  # short-circuits like Python's `and` / `or`
            value = _eval(operand, tree)
            if bool(value) == isinstance(node.op, ast.Or):
                return value
        return value
    if isinstance(node, ast.Compare):
        left = _eval(node.left, tree)
        for op, comparator in zip(node.ops, node.comparators):
            right = _eval(comparator, tree)
            if not COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body if _eval(node.test, tree) else node.orelse, tree)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        args = [_eval(a, tree) for a in node.args]
        if node.func.id == "pow" and len(args) == 2:
            _guard(ast.Pow(), _number(args[0], node), _number(args[1], node))
        return _bounded(FUNCTIONS[node.func.id](*args))
    raise ExprError(f"'{ast.unparse(node)}' is not a value here")


def _number(value: Any, node: ast.expr) -> int | float:
    """Arithmetic is on numbers only: `'a' * 10**9` or a list times a count would build huge objects."""
    if not isinstance(value, (int, float)):
        raise ExprError(f"'{ast.unparse(node)}' needs numbers, got {type(value).__name__} {value!r:.40}")
    return value


def _guard(op: ast.operator, a: int | float, b: int | float) -> None:
    """Refuse a power or a shift whose result would pass LIMIT, before computing it."""
    if isinstance(op, ast.Pow) and isinstance(b, (int, float)) and b > 0 and abs(a) > 1:
        if b * math.log10(abs(a)) > math.log10(LIMIT):
            raise ExprError(f"a power beyond {LIMIT:g} ({_short(a)} ** {_short(b)})")
    if isinstance(op, ast.LShift) and isinstance(a, int) and isinstance(b, int) and b > 0:
        if a.bit_length() + b > LIMIT_BITS:
            raise ExprError(f"a shift beyond {LIMIT:g} ({_short(a)} << {_short(b)})")


LIMIT_BITS = int(math.log2(LIMIT))


def _bounded(value: Any) -> Any:
    """`value`, if a number: finite, real and within LIMIT."""
    if isinstance(value, complex):
        raise ExprError(f"a complex number ({value})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ExprError(f"a non-finite number ({value})")
    if isinstance(value, (int, float)) and abs(value) > LIMIT:
        raise ExprError(f"a number beyond {LIMIT:g}")
    return value


def _short(value: int | float) -> str:
    text = repr(value)
    return text if len(text) <= 20 else f"{text[:8]}...({len(text)} digits)"
