"""Reading the YAML of a configuration: the node tree (for line numbers), ``${ENV}`` substitution,
duplicate keys. Runs when the file loads (check-config, serve, reload), never per request.

``${ENV_VAR}`` is substituted inside string values after parsing, so a secret can never change
the structure of the document.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import ConfigError, describe, yaml_syntax_problem

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Loader(yaml.SafeLoader):
    """A safe loader that substitutes ``${VAR}`` in strings and refuses duplicate keys.

    Both are collected, not raised: every unset variable and duplicate key of the file is
    reported at once, with the schema's problems on the other lines.
    """

    source = "<config>"

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.problems: list[str] = []
        self.unset_lines: set[int] = set()  # lines whose value lacks a variable: their schema errors follow from it


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> str:
    text = str(loader.construct_scalar(node))

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if not value and default is not None:  # as in the shell: ${VAR:-default} when unset or empty
            return default
        if value is None:
            line = node.start_mark.line + 1
            loader.unset_lines.add(line)
            loader.problems.append(f"{loader.source}:{line}: environment variable {name} is not set "
                                   f"(set it, or give a default: ${{{name}:-value}})")
            return match.group(0)  # left as written: a stand-in that fails no check an empty value would
        return value

    return _ENV_REF.sub(replace, text)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool | None):  # a list as a key: PyYAML refuses it next
            continue
        if key in seen:
            loader.problems.append(f"{loader.source}:{key_node.start_mark.line + 1}: {key}: duplicate key "
                                   "(each key may appear once in a section)")
        seen.add(key)
    return dict(loader.construct_mapping(node, deep=True))


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def line_of(root: yaml.Node | None, loc: Sequence[str | int]) -> int:
    """The 1-based line of the deepest YAML node that ``loc`` reaches."""
    node, line = root, (root.start_mark.line + 1 if root else 1)
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    child, line = value_node, key_node.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


@dataclass(frozen=True)
class Document:
    """A configuration's text read as YAML: the mapping, its node tree, and what reading found wrong."""

    data: dict[Any, Any]
    root: yaml.Node | None
    problems: list[str]  # unset variables and duplicate keys, as ``source:line: ...`` sentences
    unset_lines: set[int]  # lines whose value lacks a variable: their schema errors follow from it


def read_document(text: str, source: str) -> Document:
    """The YAML mapping of ``text``; ConfigError for what stops the reading (syntax, not a mapping)."""
    try:
        loader = _Loader(text)  # reads the whole text: a character YAML refuses is found here
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise ConfigError([f"{source}:{line}: YAML syntax error: the control character U+{exc.character:04X} is not "
                           'allowed (write it as an escape in a double-quoted value, e.g. "\\x01")']) from None
    loader.source = source
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([yaml_syntax_problem(source, exc)]) from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError([f"{source}:1: the configuration is empty (it needs at least upstreams and routes)"])
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the configuration must be a YAML mapping (key: value lines), "
                           f"not {describe(data)}"])
    return Document(data, root, loader.problems, loader.unset_lines)
