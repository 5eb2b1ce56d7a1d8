"""Loading a training config: YAML, dotted overrides, types coerced and values validated.

A config is six flat sections. Every key has a type and a default; unknown keys, wrong types
and out-of-range values raise `ConfigError` naming the dotted key, before any data or model
is touched. `model.*` is the exception: its keys are the chosen model's own options, checked
against the model catalog (`sweeplab/models/catalog.py`, the builders' signatures as a table).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import yaml

from sweeplab.core.errors import ConfigError, suggest
from sweeplab.core.yamlio import DuplicateKey, load_text
from sweeplab.schema import SECTIONS, Config, ModelConfig, valid_keys
from sweeplab.validate import check

# A config or sweep file is a few KB (the largest in sweeps/ is 11 KB); PyYAML reads ~200 KB a second, so
# a bigger file is refused by its size before a byte is parsed (9 MB took 85 s of CPU to be refused).
MAX_YAML_BYTES = 256_000
MAX_YAML_VALUES = 100_000  # counted with aliases expanded: refuses "billion laughs" and self-references


def read_yaml(path: Path, kind: str) -> Any:
    """The YAML document in `path` (a `kind` file: config or sweep), with every number finite and no
    key twice; a file that is missing, unreadable, binary, huge or malformed raises ConfigError."""
    if "\0" in str(path):
        raise ConfigError(f"{kind} file name {str(path)!r} contains a NUL byte")
    if not path.is_file():
        what = "not found" if not path.is_symlink() and not path.exists() else "is not a regular file"
        raise ConfigError(f"{kind} file {what}: {path}")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(
                f"{kind} file {path} is larger than {MAX_YAML_BYTES // 1000} KB ({path.stat().st_size} bytes): "
                f"not a {kind} file"
            )
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {kind} file {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{kind} file {path} is not UTF-8 text (byte {e.start} is {data[e.start]:#04x})") from None
    try:
        tree = load_text(text)
    except DuplicateKey as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML in {path}: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"malformed YAML in {path}: nested too deeply") from None
    check_tree(tree, f" in {path}")
    return tree


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: what is wrong and where."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        return f"{e.problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else e.problem
    return " ".join(str(e).split())


def check_tree(tree: Any, where: str, prefix: str = "") -> None:
    """Raise ConfigError on a non-finite number anywhere in `tree` (naming its dotted key), or on a
    tree too big or too deep to be a config once aliases are expanded."""
    budget = [MAX_YAML_VALUES]

    def walk(node: Any, key: str, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0 or depth > 50:
            near = key if len(key) < 60 else f"{key[:60]}..."
            raise ConfigError(
                f"the YAML{where} is too large or refers to itself (near '{near}'): "
                f"more than {MAX_YAML_VALUES} values or 50 levels once its aliases are expanded"
            )
        if isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(f"'{key}'{where} is {node}: numbers must be finite")
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k), depth + 1)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]", depth + 1)

    walk(tree, prefix, 0)


def parse_value(text: str) -> Any:
    """A command-line value, read as a YAML scalar or list ('0.1' -> 0.1, '[1,2]' -> [1, 2])."""
    try:
        return load_text(text)
    except (yaml.YAMLError, RecursionError):
        return text


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree['a']['b'] = value for key 'a.b', creating the section when missing."""
    section, _, leaf = key.partition(".")
    if not leaf:
        hint = suggest(key, valid_keys()) or " like 'optim.lr'"
        raise ConfigError(f"override '{key}' must be a dotted key (section.key){hint}")
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section '{section}' in '{key}'{suggest(key, valid_keys())}")
    node = tree.setdefault(section, {})
    if not isinstance(node, dict):
        raise ConfigError(f"'{section}' must be a mapping")
    node[leaf] = value


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping; `base: other.yaml` (relative to this file) is merged underneath."""
    path = Path(path)
    tree = read_yaml(path, "config") or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(tree).__name__}")
    here = path.resolve()
    if here in _chain:  # `base:` chains that come back would recurse forever
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(here) :], here))
        raise ConfigError(f"{path}: 'base' includes itself: {cycle}")
    base = tree.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"'base' in {path} must name a config file, got {base!r}")
        try:
            tree = merge(load_yaml(path.parent / base, (*_chain, here)), tree)
        except ConfigError as e:
            if _chain:  # the outermost file adds its name once
                raise
            raise ConfigError(f"{e} (the 'base' of {path})") from None
    return tree


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `over` onto `base` (a changed model.name drops the base's model options)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            if k == "model" and "name" in v and v["name"] != out[k].get("name"):
                out[k] = dict(v)
            else:
                out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load a YAML config, apply `key=value` overrides, validate; raise ConfigError if bad."""
    tree = load_yaml(path) if path is not None else {}
    items = list(overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides or []))
    for key, value in items:
        set_dotted(tree, key, value)
    # an error may come from the file or from an override: name both
    where = (f" in {path}" if path is not None else "") + (
        f" (with {' '.join(f'{k}={v}' for k, v in items)})" if items else ""
    )
    return from_dict(tree, where)


def _split(override: str) -> tuple[str, Any]:
    key, eq, value = override.partition("=")
    if not eq or not key:
        raise ConfigError(f"override '{override}' must look like key=value, e.g. optim.lr=0.1")
    return key.strip(), parse_value(value)


def from_dict(tree: dict[str, Any], where: str = "") -> Config:
    """Build and validate a Config from a nested dict; `tree` is left as it was and shares nothing with the result."""
    if not isinstance(tree, dict):
        raise ConfigError(f"config{where} must be a mapping")
    kwargs: dict[str, Any] = {}
    for section, value in tree.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section '{section}'{where}{suggest(section, list(SECTIONS))}")
        if not isinstance(value, dict):
            raise ConfigError(f"'{section}'{where} must be a mapping of keys, got {value!r}")
        if section == "model":
            if "name" not in value:
                raise ConfigError(f"'model.name' is missing{where}: a model section needs a name")
            options = {k: v for k, v in value.items() if k != "name"}
            kwargs[section] = ModelConfig(value["name"], copy.deepcopy(options))
            continue
        cls = SECTIONS[section]
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        fields: dict[str, Any] = {}
        for key, v in value.items():
            if key not in known:
                raise ConfigError(f"unknown key '{section}.{key}'{where}{suggest(f'{section}.{key}', valid_keys())}")
            fields[key] = _coerce(f"{section}.{key}", v, hints[key], where)  # a list comes back as a new list
        kwargs[section] = cls(**fields)
    config = Config(**kwargs)
    check(config, where)
    return config


def _coerce(key: str, value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint; ints are accepted for floats, nothing else is converted."""
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}'{where} must be a list of {item.__name__}, got {value!r}")
        return [_coerce(key, v, item, where) for v in value]
    if hint is float and isinstance(value, str):
        try:  # a quoted number ('1e-4'): the key's type says it is one (unquoted, YAML reads a float)
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 1e300 else math.inf
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(
            f"'{key}'{where} must be {hint.__name__}, got {type(value).__name__} {value!r}{integral_hint(value, hint)}"
        )
    if hint is float and not math.isfinite(value):  # nan passes every range check; inf hangs or overflows
        raise ConfigError(f"'{key}'{where} must be a finite number, got {value}")
    if hint is int and abs(value) > MAX_INT:
        raise ConfigError(f"'{key}'{where} is out of range: {value}")
    return value


def integral_hint(value: Any, want: Any) -> str:
    """ "; write it as the integer 1000" when an int is wanted and `value` is a whole float (`1e3`), else ""."""
    if want is int and isinstance(value, float) and value.is_integer() and abs(value) < 1e18:
        return f"; write it as the integer {int(value)}"
    return ""


MAX_INT = 2**63 - 1  # what a C long holds: torch, numpy and Ray take no bigger count


def save(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML; `load(path)` reads it back to an equal Config."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
