"""Warnings of the libraries underneath, held while a command checks its input: a refusal stays one line.

With PYTHONWARNINGS=default (or -W default), MLflow, SQLAlchemy and Ray print deprecation warnings as
they are imported and as a store is opened: lines above a bad-input error that make it two or three.
The CLI runs each command inside `held()`: every warning is kept back, then dropped if the command ends
as bad input (its one line is the whole answer) or shown when it ends otherwise. A long command calls
`release()` once its input is checked, so that what it warns of later is shown as it happens.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

_held: list[tuple[Any, ...]] | None = None  # the warnings kept back, None when nothing is held
_show = warnings.showwarning  # Python's own, restored on release


def _hold(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    if _held is None:
        _show(message, category, filename, lineno, file, line)
    else:
        _held.append((message, category, filename, lineno, file, line))


@contextmanager
def held() -> Iterator[None]:
    """Keep back every warning shown inside the block; show them at its end unless `drop()` was called."""
    global _held, _show
    _held, _show = [], warnings.showwarning
    warnings.showwarning = _hold
    try:
        yield
    finally:
        release()


def drop() -> None:
    """Forget the warnings held so far (the command is ending as bad input)."""
    if _held is not None:
        _held.clear()


def release() -> None:
    """Show the warnings held so far and stop holding: the input has been checked."""
    global _held
    shown, _held = _held or [], None
    if warnings.showwarning is _hold:
        warnings.showwarning = _show
    for args in shown:
        warnings.showwarning(*args)
