"""``path_regex`` and ``path_glob`` routes: compiled once, when the configuration loads.

Both become an RE2 program (google-re2): matching takes time linear in the path, whatever the
pattern, so no route can be written that a crafted path makes slow (no catastrophic
backtracking, as Python's ``re`` has on ``(a+)+$``). RE2 has no backreferences or look-around;
a pattern using them is a configuration error. A pattern is at most ``MAX_PATTERN`` characters
and its compiled program at most ``MAX_PROGRAM_MEMORY`` bytes.

Matching is anchored at both ends (``fullmatch``) and sees the normalised path only: dot
segments resolved, empty segments collapsed, unreserved characters decoded (``%41`` is ``A``),
other percent-encodings kept upper-case (``/caf%C3%A9``), never the query.

Glob syntax (docs/routes.md): ``*`` is any run of characters within one segment, ``?`` one
character other than ``/``, and ``**`` as a whole segment any number of segments, none included
(``/api/**/admin`` matches ``/api/admin`` and ``/api/v1/x/admin``; ``/files/**`` matches
``/files`` and everything below it). Every other character stands for itself.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import re2

MAX_PATTERN = 1024  # characters of a path_regex or path_glob
MAX_PROGRAM_MEMORY = 1 << 20  # bytes RE2 may use for one compiled pattern (its default is 8 MiB)


class PatternError(ValueError):
    """A path pattern that cannot be a route (its message is for the operator)."""


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the error is reported as a configuration problem, not on stderr
    options.max_mem = MAX_PROGRAM_MEMORY
    return options


class PathPattern:
    """A compiled path pattern; ``source`` is what the configuration said."""

    __slots__ = ("_program", "kind", "source")

    def __init__(self, kind: str, source: str, program: Any) -> None:
        self.kind = kind
        self.source = source
        self._program = program

    def matches(self, path: str) -> bool:
        return self._program.fullmatch(path) is not None

    def groups(self, path: str) -> dict[str, str]:
        """The named groups of a matching path (the values a claims rule reads as ``path.<name>``)."""
        match = self._program.fullmatch(path)
        if match is None:
            return {}
        return {name: value for name, value in match.groupdict().items() if isinstance(value, str)}

    def __repr__(self) -> str:
        return f"PathPattern({self.kind}={self.source!r})"


def _compile(kind: str, source: str, expression: str) -> PathPattern:
    try:
        program = re2.compile(expression, _options())
    except re2.error as exc:
        message = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(f"{kind} {source[:80]!r} does not compile: {message}") from None
    return PathPattern(kind, source, program)


def _check_source(kind: str, source: str) -> None:
    if len(source) > MAX_PATTERN:
        raise PatternError(f"{kind} is {len(source)} characters long; at most {MAX_PATTERN} are allowed")
    if not source.isascii() or not source.isprintable():
        raise PatternError(f"{kind} must be printable ASCII (write other characters percent-encoded, as paths are)")


@functools.lru_cache(maxsize=1024)  # the loader checks a pattern and the route table reuses it
def compile_regex(source: str) -> PathPattern:
    """A ``path_regex``: RE2 syntax, matched against the whole normalised path.

    ``^`` and ``$`` may be written but add nothing: the match is anchored anyway.
    """
    _check_source("path_regex", source)
    return _compile("path_regex", source, source)


_GLOB_SPECIAL = re.compile(r"\*\*|\*|\?")


def glob_expression(source: str) -> str:
    """The RE2 expression of a ``path_glob`` (see the module doc)."""
    if not source.startswith("/"):
        raise PatternError("path_glob must start with /")
    out: list[str] = []
    for segment in source[1:].split("/"):
        if segment == "**":
            out.append("(?:/[^/]*)*")  # zero or more whole segments
            continue
        if "**" in segment:
            raise PatternError(f"path_glob {source[:80]!r}: ** must be a whole segment (/a/**/b), not part of one")
        out.append("/")
        position = 0
        for special in _GLOB_SPECIAL.finditer(segment):
            out.append(_literal(segment[position : special.start()]))
            out.append("[^/]*" if special.group() == "*" else "[^/]")
            position = special.end()
        out.append(_literal(segment[position:]))
    return "".join(out)


_RE2_SPECIAL = frozenset("\\.^$|?*+()[]{}")


def _literal(text: str) -> str:
    return "".join(f"\\{ch}" if ch in _RE2_SPECIAL else ch for ch in text)


@functools.lru_cache(maxsize=1024)
def compile_glob(source: str, transform: Callable[[str], str] | None = None) -> PathPattern:
    """A ``path_glob``; ``transform`` (case folding) is applied to its literal text first."""
    _check_source("path_glob", source)
    text = transform(source) if transform is not None else source
    return _compile("path_glob", source, glob_expression(text))
