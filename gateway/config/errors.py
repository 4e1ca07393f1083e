"""Configuration errors in plain words (``ConfigError``): what ``gateway check-config`` and ``serve`` print.

pydantic's messages speak of its own types ("Input should be a valid list"); an operator
needs the rule the key breaks and a way to write it ("must be a list, e.g. [GET]"). This
module turns one pydantic error into such a sentence, suggests the closest known key for
a misspelt one (``leway`` -> ``leeway``), and says what a YAML syntax error means. It knows
no model of its own: the caller passes the root model, so new sections are covered as they
are added. Runs when the file loads, never per request.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import yaml
from pydantic import BaseModel

Loc = Sequence[str | int]
Problem = Callable[[list[str | int], str], None]  # reports one problem at a key path (``["routes", 1, "upstream"]``)
_SUGGEST_CUTOFF = 0.6  # difflib's ratio: leway/leeway 0.91, listn/listen 0.91, path/auth 0.5
_SUGGEST_VALUE_CUTOFF = 0.7  # values are short: fle/file 0.86, but FETCH/PATCH (0.6) is no slip of the finger
_LIST_KNOWN_KEYS_UP_TO = 12  # an unknown key in a small section: every key of it is named


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator (file:line: key: message)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# --- values as words -------------------------------------------------------------------------


def describe(value: Any) -> str:
    """A value as a reader of the YAML sees it: ``the text 'GET'``, ``the number 5``, ``a list``."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a yes/no value)"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {_quoted(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a section of key: value lines"
    return type(value).__name__


def _quoted(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(shown)


def _plain(value: Any) -> str:
    """A scalar as written in YAML (``GET``, ``5``, ``true``; ``0`` for a duration of 0.0 seconds)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


# --- the model behind a key ------------------------------------------------------------------


def _unwrap(annotation: Any) -> list[Any]:
    """The types an annotation may hold: ``Annotated`` and ``X | None`` taken apart."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) if arg is not type(None) for t in _unwrap(arg)]
    return [annotation]


def _step(annotation: Any, part: str | int) -> Any:
    """The annotation one key or index below ``annotation`` (None when there is none)."""
    for candidate in _unwrap(annotation):
        origin = typing.get_origin(candidate)
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and isinstance(part, str):
            field = candidate.model_fields.get(part)
            if field is not None:
                return field.annotation
        elif origin in (list, Sequence, tuple, set, frozenset) and isinstance(part, int):
            return typing.get_args(candidate)[0]
        elif origin in (dict, Mapping):
            return typing.get_args(candidate)[1]
    return None


def model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model whose keys are allowed at ``loc`` (``issuers[0]`` -> IssuerConfig)."""
    annotation: Any = root
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    models = [t for t in _unwrap(annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
    return models[0] if models else None


def _sections(root: type[BaseModel], prefix: str = "", seen: frozenset[type] = frozenset()) -> Iterator[
        tuple[str, type[BaseModel]]]:
    """Every section of the configuration and where it is (``issuers[].introspection``)."""
    yield prefix, root
    for name, field in root.model_fields.items():
        for candidate in _unwrap(field.annotation):
            origin, path = typing.get_origin(candidate), f"{prefix}.{name}" if prefix else name
            if origin is list:
                candidate, path = typing.get_args(candidate)[0], path + "[]"
            elif origin is dict:
                candidate, path = typing.get_args(candidate)[1], path + ".<name>"
            for inner in _unwrap(candidate):
                if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in seen:
                    yield from _sections(inner, path, seen | {root})


# --- one error, one sentence ---------------------------------------------------------------

Error = Mapping[str, Any]


def _unknown_key(root: type[BaseModel], loc: Loc) -> str:
    """``unknown key`` and the closest known key of that section, or where the key belongs."""
    key, model = str(loc[-1]), model_at(root, loc[:-1])
    if model is None:
        return "unknown key"
    known = list(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1, cutoff=_SUGGEST_CUTOFF)
    if close:
        return f"unknown key; did you mean {close[0]}?"
    elsewhere = [path or "the top level" for path, section in _sections(root) if key in section.model_fields]
    if elsewhere:
        return f"unknown key here; {key} belongs under {' or '.join(elsewhere[:3])}"
    if len(known) <= _LIST_KNOWN_KEYS_UP_TO:
        return f"unknown key; the keys here are {', '.join(known)}"
    return "unknown key (README.md 'Configuration reference' lists every key)"


_EXPECTED = re.compile(r"'((?:[^'\\]|\\.)*)'")


def _one_of(error: Error) -> str:
    """``literal_error``/``enum``: the allowed values, and the closest one to what was written."""
    expected = _EXPECTED.findall(str(error.get("ctx", {}).get("expected", "")))
    given = error.get("input")
    sentence = f"must be one of {', '.join(expected)}, not {describe(given)}"
    close = difflib.get_close_matches(str(given), expected, n=1, cutoff=_SUGGEST_VALUE_CUTOFF)
    if not close:  # case aside (Sink: File): the value differs in letter case only
        close = [value for value in expected if value.lower() == str(given).lower()]
    return f"{sentence}; did you mean {close[0]}?" if close else sentence


def _list_example(given: Any) -> str:
    if isinstance(given, str):
        items = [item.strip() for item in given.split(",") if item.strip()]
        return f"[{', '.join(items)}]" if items else "[]"
    if isinstance(given, int | float | bool):
        return f"[{_plain(given)}]"
    return "[a, b] or lines starting with '- '"


def _must_be_text(given: Any, written: str | None = None) -> str:
    if isinstance(given, bool | int | float):  # YAML read `5`, `yes` or `1.0` as a number or yes/no
        as_written = written if written is not None else _plain(given)
        read_as = "a yes/no value" if isinstance(given, bool) else "a number"
        return f"must be text, not {as_written} (YAML reads it as {read_as}); quote it: '{as_written}'"
    return f"must be text, not {describe(given)}"


def _too_short(error: Error) -> str:
    ctx = error.get("ctx", {})
    minimum = ctx.get("min_length", 1)
    if minimum == 1:
        return "must not be empty: give at least one item"
    return f"must have at least {_count(minimum, 'item')}, not {ctx.get('actual_length', 0)}"


def _too_long(error: Error) -> str:
    ctx = error.get("ctx", {})
    return f"must have at most {_count(ctx.get('max_length', 0), 'item')}, not {ctx.get('actual_length')}"


def _text_length(error: Error, bound: str) -> str:
    limit = error.get("ctx", {}).get(f"{bound}_length", 1)
    if bound == "min" and limit == 1:
        return "must not be empty"
    return f"must be at {'least' if bound == 'min' else 'most'} {_count(limit, 'character')} long"


def _section(error: Error) -> str:
    given = error.get("input")
    if given is None:
        return "is empty; it must be a section of key: value lines"
    return f"must be a section of key: value lines, not {describe(given)}"


def _bound(word: str, key: str) -> Callable[[Error], str]:
    def sentence(error: Error) -> str:
        return f"must be {word} {_plain(error.get('ctx', {}).get(key))}, not {_plain(error.get('input'))}"
    return sentence


def _simple(text: str) -> Callable[[Error], str]:
    def sentence(error: Error) -> str:
        return f"{text}, not {describe(error.get('input'))}"
    return sentence


_NETWORK = "must be an IP network like 10.0.0.0/8 or fd00::/8 (an address alone is one host)"
_ADDRESS = "must be an IP address like 10.0.0.1 or ::1"

# pydantic-core error type -> the sentence (after the key); value_error keeps the validator's own words
_SENTENCES: dict[str, Callable[[Error], str]] = {
    "missing": lambda e: "is required but missing",
    "list_type": lambda e: f"must be a list, e.g. {_list_example(e.get('input'))}",
    "tuple_type": lambda e: f"must be a list, e.g. {_list_example(e.get('input'))}",
    "set_type": lambda e: f"must be a list, e.g. {_list_example(e.get('input'))}",
    "dict_type": _simple("must be a section of name: settings lines"),
    "model_type": _section,
    "model_attributes_type": _section,
    "string_type": lambda e: _must_be_text(e.get("input"), e.get("written")),
    "string_sub_type": lambda e: _must_be_text(e.get("input"), e.get("written")),
    "string_unicode": lambda e: "must be text (valid UTF-8)",
    "string_too_short": lambda e: _text_length(e, "min"),
    "string_too_long": lambda e: _text_length(e, "max"),
    "string_pattern_mismatch": lambda e: f"does not have the expected form ({e.get('ctx', {}).get('pattern')})",
    "int_type": _simple("must be a whole number"),
    "int_parsing": _simple("must be a whole number"),
    "int_from_float": _simple("must be a whole number"),
    "int_parsing_size": lambda e: "is too large a number",
    "float_type": _simple("must be a number"),
    "float_parsing": _simple("must be a number"),
    "finite_number": lambda e: "must be a finite number",
    "bool_type": _simple("must be true or false"),
    "bool_parsing": _simple("must be true or false"),
    "greater_than_equal": _bound("at least", "ge"),
    "greater_than": _bound("more than", "gt"),
    "less_than_equal": _bound("at most", "le"),
    "less_than": _bound("less than", "lt"),
    "multiple_of": _bound("a multiple of", "multiple_of"),
    "too_short": _too_short,
    "too_long": _too_long,
    "literal_error": _one_of,
    "enum": _one_of,
    "none_required": _simple("must be empty"),
    "ip_v4_network": lambda e: f"{_NETWORK}, not {describe(e.get('input'))}",
    "ip_v6_network": lambda e: f"{_NETWORK}, not {describe(e.get('input'))}",
    "ip_any_network": lambda e: f"{_NETWORK}, not {describe(e.get('input'))}",
    "ip_v4_address": lambda e: f"{_ADDRESS}, not {describe(e.get('input'))}",
    "ip_v6_address": lambda e: f"{_ADDRESS}, not {describe(e.get('input'))}",
    "ip_any_address": lambda e: f"{_ADDRESS}, not {describe(e.get('input'))}",
    "url_type": lambda e: "must be a URL like https://host/path",
    "url_parsing": lambda e: "must be a URL like https://host/path",
    "url_scheme": lambda e: "must be an http:// or https:// URL",
    "value_error": lambda e: str(e.get("msg", "")).removeprefix("Value error, "),
    "assertion_error": lambda e: str(e.get("msg", "")).removeprefix("Assertion failed, "),
}


def data_loc(error: Error) -> list[str | int]:
    """The error's location in the document: pydantic's union member and validator names dropped."""
    return [p for p in error["loc"] if isinstance(p, int) or not str(p).startswith(("function-", "lax-"))]


def plain_message(root: type[BaseModel], error: Error, document: yaml.Node | None = None) -> str:
    """One pydantic error of ``root`` as a sentence about its key (without the key itself).

    ``document``: the YAML node tree, to quote a value as written (``yes``, not ``True``)."""
    loc = data_loc(error)
    scalar = node_at(document, loc)
    if isinstance(scalar, yaml.ScalarNode):
        error = {**error, "written": scalar.value}
    if loc and loc[-1] == "[key]" and error.get("type") != "value_error":  # a dict key of the wrong type
        name = error.get("written") or _plain(error.get("input"))
        return f"the name {name} must be text; quote it: '{name}'"
    if error["type"] == "extra_forbidden":
        return _unknown_key(root, loc)
    render = _SENTENCES.get(error["type"])
    return render(error) if render is not None else str(error.get("msg", "invalid value"))


def node_at(root: yaml.Node | None, loc: Loc) -> yaml.Node | None:
    """The YAML node at ``loc`` (for ``[key]``, the key's node), or None when the path leaves the tree."""
    node = root
    for index, part in enumerate(loc):
        if part == "[key]":
            continue
        wants_key = index + 1 < len(loc) and loc[index + 1] == "[key]"
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            node = None if pair is None else pair[0] if wants_key else pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return None
    return node


def key_path(loc: Loc) -> str:
    """``routes[1].upstream`` for ``("routes", 1, "upstream")``."""
    text = ""
    for index, part in enumerate(loc):
        if part == "[key]":
            continue
        is_key = index + 1 < len(loc) and loc[index + 1] == "[key]"  # a mapping's key, not a list index
        text += f"[{part}]" if isinstance(part, int) and not is_key else (f".{part}" if text else str(part))
    return text or "(top level)"


# --- YAML syntax -----------------------------------------------------------------------------

# what PyYAML says -> what it means for someone editing the file (the first that matches)
_YAML_MEANINGS: tuple[tuple[str, str], ...] = (
    ("found character '\\t'", "a tab character: YAML indents with spaces only"),
    ("mapping values are not allowed here", "a ': ' inside a value; quote the value (\"a: b\") or fix the indentation"),
    ("found undefined alias", "an alias (*name) with no anchor (&name) before it"),
    ("could not determine a constructor", "a tag (!something) the gateway does not accept"),
    ("found unhashable key", "a list or section used as a key"),
    ("expected <block end>, but found '-'", "a list item where a key: value line was expected (check the indentation)"),
    ("expected <block end>, but found ']'", "a ] with no [ open before it"),
    ("expected <block end>, but found '}'", "a } with no { open before it"),
    ("expected <block end>, but found '<scalar>'", "more text after a quoted value: quote the whole value"),
    ("but found '<stream end>'", "the file ends inside an unclosed [, { or quote"),
    ("expected <block end>", "this line does not line up with the lines above it (check the indentation)"),
    ("expected ',' or ']'", "the list opened with [ is not closed with ]"),
    ("expected ',' or '}'", "the section opened with { is not closed with }"),
    ("found unexpected end of stream", "the quote opened here is never closed"),
    ("found unknown escape character", "an unknown escape (\\) in a double-quoted value; use single quotes"),
    ("could not find expected ':'", "a line without ': ' where a key: value line was expected"),
    ("did not find expected key", "a line where a key: value line was expected (check the indentation)"),
    ("did not find expected '-' indicator", "a line where a list item ('- ...') was expected (check the indentation)"),
)
# constructs whose error is found far below where they start: the line that opened them is the one to fix
_OPENED_AT = ("while parsing a flow", "while scanning a quoted scalar", "while scanning a double-quoted scalar",
              "while scanning a single-quoted scalar")


def yaml_syntax_problem(source: str, exc: yaml.MarkedYAMLError) -> str:
    """``file:line: YAML syntax error: <what it means>`` on the line to fix."""
    problem = str(exc.problem or exc)
    mark = exc.problem_mark
    context = str(exc.context or "")
    if exc.context_mark is not None and context.startswith(_OPENED_AT):
        later = mark is not None and mark.line != exc.context_mark.line
        found = f" (found at line {mark.line + 1})" if mark is not None and later else ""
        mark = exc.context_mark
        problem_text = next((m for p, m in _YAML_MEANINGS if p in problem), problem) + found
    else:
        problem_text = next((m for p, m in _YAML_MEANINGS if p in problem), problem)
    where = f"{source}:{mark.line + 1}" if mark is not None else f"{source}:1"
    column = f" (column {mark.column + 1})" if mark is not None else ""
    return f"{where}: YAML syntax error{column}: {problem_text}"
