"""`expr` values of a sweep file: safe arithmetic over a trial's dotted config keys.

A sweep file is input, so an expression is parsed with `ast`, checked node by node (domains.check_expr)
and evaluated here by walking the tree: no `eval`, no attribute access beyond `section.key`, and no
number beyond LIMIT (a crafted `10 ** 10 ** 10` would otherwise take the driver's memory and time).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

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


def names(text: str) -> set[str]:
    """The dotted config keys a checked expression reads ('data.batch_size', ...)."""
    return {
        f"{n.value.id}.{n.attr}"
        for n in ast.walk(ast.parse(text, mode="eval"))
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
    }


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
