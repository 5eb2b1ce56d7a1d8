"""The errors that mean "bad input" (exit 2), and the one "did you mean" helper they all use."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A bad config: the message names the offending key or file."""


class SweepError(ConfigError):
    """A bad sweep file: the message names the file and the key."""


def suggest(key: object, candidates: Iterable[object], prefix: str = "", n: int = 1, cutoff: float = 0.5) -> str:
    """ "; did you mean 'optim.lr'?" for the `n` candidates nearest to `key`, or "" when none is near."""
    near = difflib.get_close_matches(str(key), [str(c) for c in candidates], n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(repr(prefix + m) for m in near)}?" if near else ""
