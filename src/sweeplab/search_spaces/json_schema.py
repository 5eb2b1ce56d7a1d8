"""JSON Schemas of config and sweep files, for editors' YAML plugins (`sweeplab schema config|sweep`).

Built from the code's own tables, never written by hand: the config's dataclasses (types, defaults and
the comments beside each field as descriptions), the model and optimiser catalogs, the schedule
registry, the sweep file's sections (`spec.py`), its samplers and the scheduler table. So a key added
to `schema.py` or a scheduler added to `SCHEDULERS` is in the schema too. The schema checks shapes,
names and types; ranges and combinations stay with `sweeplab run --dry-run`, which says more.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

from sweeplab import models, reference, schedules
from sweeplab.core.names import METRICS
from sweeplab.models import catalog
from sweeplab.schema import ACTIVATIONS, COMPILE_MODES, DATASETS, PRECISIONS, SECTIONS, WARMUP_KINDS
from sweeplab.search_spaces import settings, spec
from sweeplab.search_spaces.domains import KINDS
from sweeplab.search_spaces.schedulers import SCHEDULERS

DRAFT = "https://json-schema.org/draft/2020-12/schema"
ENUMS: dict[str, tuple[str, ...]] = {
    "data.name": DATASETS,
    "optim.name": catalog.OPTIMIZERS,
    "sched.name": tuple(schedules.names()),
    "sched.warmup_kind": WARMUP_KINDS,
    "train.precision": PRECISIONS,
    "train.activation": ACTIVATIONS,
    "train.compile_mode": COMPILE_MODES,
}
_JSON = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def _of(hint: Any) -> dict[str, Any]:
    """The JSON Schema of a Python type hint: bool, int, float, str, list[...], X | None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list:
        return {"type": "array", "items": _of(args[0])} if args else {"type": "array"}
    if len(args) > 1 or (args and typing.get_origin(hint) is not None and hint not in _JSON):
        return {"anyOf": [_of(a) for a in args]} if len(args) > 1 else _of(args[0])
    return {"type": _JSON[hint]} if hint in _JSON else {}


def _of_value(value: Any) -> dict[str, Any]:
    """The JSON Schema of a default value's type (a model option's): ints are numbers where floats are."""
    if isinstance(value, (list, tuple)):
        return {"type": "array", "items": _of_value(value[0])} if value else {"type": "array"}
    return {"type": _JSON[type(value)]}


def _comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class's source: the one on its line, else the lines just above it."""
    out: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# "))
            continue
        field = re.match(r"(\w+): [^=]+=.*?(?:#\s*(.*))?$", text)
        if field:
            comment = field.group(2) or " ".join(above)
            if comment:
                out[field.group(1)] = comment
        above = []
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def keys() -> dict[str, dict[str, Any]]:
    """Every dotted config key -> its schema (type, default, description, allowed names)."""
    out: dict[str, dict[str, Any]] = {}
    for section, cls in SECTIONS.items():
        if section == "model":
            continue
        hints, notes = typing.get_type_hints(cls), _comments(cls)
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            out[key] = {**_of(hints[f.name]), "default": _default(f)}
            if key in ENUMS:
                out[key]["enum"] = list(ENUMS[key])
            if f.name in notes:
                out[key]["description"] = notes[f.name]
    out["model.name"] = {"type": "string", "enum": models.names(), "description": "a model of `sweeplab models`"}
    takers: dict[str, list[str]] = {}
    for name in models.names():
        for option, default in catalog.MODELS[name].options.items():
            entry = out.setdefault(f"model.{option}", _of_value(default))
            if entry.get("type") != _of_value(default).get("type"):  # an int in one family, a float in another
                entry["type"] = "number"
            takers.setdefault(option, []).append(name)
    for option, names in takers.items():
        out[f"model.{option}"]["description"] = f"an option of the models {', '.join(names)}"
    return out


def _section(props: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "additionalProperties": False}


def config_schema() -> dict[str, Any]:
    """The schema of a config file (configs/*.yaml): the six sections, each key typed; `base` includes."""
    every = keys()
    sections: dict[str, Any] = {}
    for key, entry in every.items():
        section, leaf = key.split(".", 1)
        sections.setdefault(section, {})[leaf] = entry
    model = _section(sections["model"])
    model["allOf"] = [  # each model takes its own options only
        {
            "if": {"properties": {"name": {"const": name}}, "required": ["name"]},
            "then": {"propertyNames": {"enum": ["name", *catalog.MODELS[name].options]}},
        }
        for name in models.names()
    ]
    props = {s: model if s == "model" else _section(p) for s, p in sections.items()}
    props["base"] = {"type": "string", "description": "a config file merged underneath, relative to this one"}
    return {
        "$schema": DRAFT,
        "title": "sweeplab config",
        "description": "A training config of `sweeplab train` (docs/architecture.md, Contracts: config keys).",
        **_section(props),
    }


def _sampler(value: dict[str, Any]) -> dict[str, Any]:
    """One `space` entry for a key whose values have schema `value`."""
    pair = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    values = {"type": "array", "items": value, "minItems": 1}
    kinds = {
        "grid": values,
        "choice": values,
        "uniform": pair,
        "loguniform": {**pair, "items": {"type": "number", "exclusiveMinimum": 0}},
        "quniform": {**pair, "minItems": 3, "maxItems": 3},
        "randint": {**pair, "items": {"type": "integer"}},
        "expr": {"type": "string", "description": "arithmetic over dotted config keys"},
    }
    assert set(kinds) == set(KINDS), "a sampler without a schema"
    return {
        "type": "object",
        "properties": kinds,
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
    }


def _variant() -> dict[str, Any]:
    bundle = {
        "type": "object",
        "properties": {"label": {"type": "string"}, "set": {"$ref": "#/$defs/overrides"}},
        "required": ["label", "set"],
        "additionalProperties": False,
    }
    items = {"type": "array", "items": bundle, "minItems": 1}
    return {"type": "object", "properties": {"grid": items, "choice": items}, "maxProperties": 1}


def _scheduler() -> dict[str, Any]:
    options: dict[str, Any] = {}
    for kind in SCHEDULERS.values():
        for option, types in kind.types.items():
            both = types if isinstance(types, tuple) else (types,)
            options[option] = {"type": "number"} if float in both else {"type": _JSON[both[0]]}
    out = _section({"name": {"enum": list(SCHEDULERS)}, **options})
    out["allOf"] = [  # each scheduler takes its own options only
        {
            "if": {"properties": {"name": {"const": name}}, "required": ["name"]},
            "then": {"propertyNames": {"enum": ["name", *kind.types]}},
        }
        for name, kind in SCHEDULERS.items()
    ]
    return out


def sweep_schema() -> dict[str, Any]:
    """The schema of a sweep file (sweeps/*.yaml, docs/sweeps.md)."""
    every = keys()
    types = {k: {n: v for n, v in s.items() if n not in ("default", "description")} for k, s in every.items()}
    overrides = _section(every)
    space = _section({k: _sampler(types[k]) for k in every} | {"variant": _variant()})
    search = _section({k: {"type": _JSON[t]} for k, t in spec.SEARCH.items()})
    search["properties"]["name"]["enum"] = list(spec.SEARCHES)
    search["properties"]["sampler"]["enum"] = list(settings.SAMPLERS)
    resources = _section({k: {"type": "integer" if t is int else "number"} for k, t in spec.RESOURCES.items()})
    mlflow = _section({k: {"type": _JSON[t]} for k, t in spec.MLFLOW.items()})
    positive = {"type": "integer", "minimum": 1}
    refs = {name: {"$ref": f"#/$defs/{name}"} for name in ("overrides", "space", "search", "scheduler", "resources")}
    table = _section({"match": {"type": "object", "additionalProperties": {"type": "string"}}})
    smoke: dict[str, Any] = {"seeds": positive, "mlflow": {"$ref": "#/$defs/mlflow"}, **refs}
    props: dict[str, Any] = {
        "name": {"type": "string", "description": "the MLflow experiment (default: the file's stem)"},
        "config": {"type": "string", "description": "the base config file (configs/...)"},
        **refs,
        "seeds": positive,
        "metric": {"enum": list(METRICS)},
        "mode": {"enum": ["min", "max"]},
        "max_concurrent": positive,
        "tables": {
            "type": "object",
            "propertyNames": {"enum": list(reference.tables())},
            "additionalProperties": table,
        },
        "mlflow": {"$ref": "#/$defs/mlflow"},
        "smoke": _section({k: smoke[k] for k in spec.SMOKE}),
    }
    assert set(props) == set(spec.TOP), "a sweep-file section without a schema"
    return {
        "$schema": DRAFT,
        "title": "sweeplab sweep",
        "description": "A sweep file of `sweeplab run` (docs/sweeps.md).",
        **_section(props),
        "required": ["config"],
        "$defs": {
            "overrides": overrides,
            "space": space,
            "search": search,
            "scheduler": _scheduler(),
            "resources": resources,
            "mlflow": mlflow,
        },
    }


SCHEMAS = {"config": config_schema, "sweep": sweep_schema}
