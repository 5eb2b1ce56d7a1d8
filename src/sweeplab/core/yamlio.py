"""The one YAML dialect of config and sweep files: PyYAML's safe loader, `1e-3` read as a number, no key twice.

PyYAML reads YAML 1.1, whose floats need a dot and a signed exponent (`1.0e-3`): there `1e-3`, `4E-1`
and `1e3` are strings, while YAML 1.2 (https://yaml.org/spec/1.2.2/#10214-floating-point), JSON and
every reader of a config take them as numbers. Quoted scalars stay strings: quotes are how YAML says text.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# What YAML 1.1 leaves out of its floats: an exponent without a dot before it, or without a sign in it.
SCIENTIFIC = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float and refuses a key given twice in one mapping (plain YAML
    keeps the last, silently)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKey(
                            f"duplicate key '{key}' on line {line} (first on line {seen[key]}); "
                            "YAML would silently keep only the last"
                        )
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeLoader's own error names it
                    continue
        return super().construct_mapping(node, deep)


# Implicit resolvers apply to plain (unquoted) scalars only, so '1e-3' in quotes stays a string.
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", SCIENTIFIC, list("-+0123456789."))


class DuplicateKey(yaml.YAMLError):
    """A mapping with one key twice."""


def load_text(text: str) -> Any:
    """The YAML document in `text`, read by StrictLoader (raises yaml.YAMLError, DuplicateKey among them)."""
    return yaml.load(text, Loader=StrictLoader)


def quoted_number(value: Any) -> bool:
    """Whether `value` is a string YAML would read as a number without its quotes ('1e-3', "0.1")."""
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        number = load_text(value)
    except yaml.YAMLError:
        return False
    return isinstance(number, (int, float)) and not isinstance(number, bool)
