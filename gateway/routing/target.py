"""The raw request target checked and normalised (per request): the one path that is matched,
authorised and forwarded (``/public/health/../../orders``, ``%2e%2e``, ``..%2f`` and friends).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# allowed raw in a path: unreserved, sub-delims, ":" "@" "/" and "%" (checked separately)
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,;=:@/%")
# encoded forms that change how a path splits or ends: "/", "\", NUL, and "%" itself (double encoding)
_FORBIDDEN_ENCODED = frozenset({"2F", "5C", "00", "25"})


class BadTarget(ValueError):
    """The request target is malformed or ambiguous; answered with 400."""


@dataclass(frozen=True, slots=True)
class Target:
    """A normalised request target: the path that is matched, authorised and forwarded."""

    path: str
    query: str

    @property
    def forward(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


def _decode_unreserved(segment: str) -> str:
    """Percent-decode unreserved characters, upper-case the hex of the rest (RFC 3986 6.2.2)."""
    if "%" not in segment:
        return segment
    out: list[str] = []
    i = 0
    while i < len(segment):
        ch = segment[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        code = segment[i + 1 : i + 3]
        if len(code) != 2 or not set(code) <= _HEX:
            raise BadTarget("invalid percent-encoding")
        code = code.upper()
        if code in _FORBIDDEN_ENCODED:
            raise BadTarget("encoded slash, backslash, NUL or percent")
        decoded = chr(int(code, 16))
        out.append(decoded if decoded in _UNRESERVED else f"%{code}")
        i += 3
    return "".join(out)


def _utf8(segment: str) -> bool:
    """Whether the percent-encoded bytes of a segment decode as UTF-8: overlong forms (``%C0%AF``),
    lone continuation bytes and encoded surrogates are what lenient decoders turn into ``/`` or ``.``."""
    try:
        unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# a path parameter starts at ";" (RFC 3986 3.3), and at "%3B" for upstreams that decode before they split
PARAMETERS = re.compile(r";|%3B")


def remove_dot_segments(segments: list[str]) -> list[str]:
    """RFC 3986 5.2.4 on a split path; ``..`` above the root stays at the root."""
    out: list[str] = []
    for segment in segments:
        if segment == ".":
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return out


# raw path -> normalised path, for paths already seen (bounded: emptied when full)
_NORMALISED: dict[str, str] = {}
_NORMALISED_MAX = 4096
# only short keys are cached: a few MiB at most, and long made-up paths cannot push out the real ones
CACHED_KEY_MAX = 256


def _query_ok(query: str) -> bool:
    """Only visible ASCII (0x21-0x7E) in the query."""
    return query.isascii() and query.isprintable() and " " not in query


def normalise_target(raw_target: str) -> Target:
    """Normalise the raw request target as the client sent it (origin-form only)."""
    path, _, query = raw_target.partition("?")
    normalised = _NORMALISED.get(path)
    if normalised is not None:  # the path passed every check below before; the query has not
        if "#" in query:
            raise BadTarget("the request target must be an absolute path")
        if not _query_ok(query):
            raise BadTarget("the query holds control or non-ASCII characters")
        return Target(normalised, query)
    if not path.startswith("/") or "#" in raw_target:
        raise BadTarget("the request target must be an absolute path")
    if not set(path) <= _PATH_CHARS:
        raise BadTarget("the path holds characters that must be percent-encoded")
    if not _query_ok(query):
        raise BadTarget("the query holds control or non-ASCII characters")
    normalised = _normalised_path(path)
    if len(path) <= CACHED_KEY_MAX:
        if len(_NORMALISED) >= _NORMALISED_MAX:
            _NORMALISED.clear()
        _NORMALISED[path] = normalised
    return Target(normalised, query)


def _normalised_path(path: str) -> str:
    """The path, of allowed characters, with its segments decoded and checked and its dot segments removed."""
    ends_with_slash = False  # judged on the decoded last segment: "/a/%2e%2e" is "/a/.." (RFC 3986 6.2.2)
    segments = []
    for segment in path.split("/"):
        decoded = _decode_unreserved(segment)
        ends_with_slash = decoded in ("", ".", "..")
        if (";" in decoded or "%3B" in decoded) and PARAMETERS.split(decoded, 1)[0] in (".", "..", ""):
            raise BadTarget("path parameters on a dot or empty segment")  # Tomcat-style "..;/"
        if "%" in decoded and not _utf8(decoded):
            raise BadTarget("percent-encoded bytes that are not UTF-8")
        if decoded:  # empty segments ("//") collapse
            segments.append(decoded)
    segments = remove_dot_segments(segments)
    normalised = "/" + "/".join(segments)
    if ends_with_slash and segments:
        normalised += "/"
    return normalised
