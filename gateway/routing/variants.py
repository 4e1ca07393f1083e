"""The path as other upstreams read it (per request): without path parameters, or trimmed of
trailing dots and spaces, so that the route table can refuse a path whose readings differ.
"""

from __future__ import annotations

import re

from .target import PARAMETERS


def without_parameters(path: str) -> str | None:
    """The path with every segment's parameters (``;...``, ``%3B...``) removed, as servlet
    containers and JAX-RS route it; None when it has none."""
    if ";" not in path and "%3B" not in path:
        return None
    return "/".join(PARAMETERS.split(segment, 1)[0] for segment in path.split("/"))


# what trimming upstreams drop: trailing dots (Windows, IIS), and whitespace at either end of a
# segment, encoded (C0 controls and space: Java's String.trim; Unicode spaces: .NET's Trim)
_SPACES = frozenset(
    {f"%{byte:02X}" for byte in range(0x01, 0x21)}
    | {"%C2%85", "%C2%A0", "%E1%9A%80", "%E2%80%A8", "%E2%80%A9", "%E2%80%AF", "%E2%81%9F", "%E3%80%80"}
    | {f"%E2%80%8{digit}" for digit in "0123456789A"}
)
_SPACE_LENGTHS = (3, 6, 9)  # one, two or three encoded bytes
# a decoded "?" or "#" ends the path for an upstream that decodes before it parses
_ENDS_PATH = re.compile(r"%3F|%23")


def trimmed(path: str) -> str | None:
    """The path as an upstream that trims would route it; None when that is the path itself,
    "" when a segment would vanish altogether (``/...``, ``/%20``): nothing sensible to route."""
    if "." not in path and "%" not in path and not path.endswith("/"):
        return None  # the common case
    out = _ENDS_PATH.split(path, 1)[0]
    segments = []
    for segment in out.split("/"):
        if segment:
            segment = _trim(segment)
            if not segment:
                return ""
        segments.append(segment)
    out = "/".join(segments)
    if len(out) > 1 and out.endswith("/"):
        out = out[:-1]
    return out if out != path else None


def _trim(segment: str) -> str:
    """The segment without trailing dots and spaces and leading spaces; a loop, not a regex
    anchored at ``$``, which would be quadratic on a long run of them."""
    start, end = 0, len(segment)
    while end > start:
        if segment[end - 1] == ".":
            end -= 1
            continue
        cut = next((n for n in _SPACE_LENGTHS if end - n >= start and segment[end - n : end] in _SPACES), 0)
        if not cut:
            break
        end -= cut
    while start < end:
        cut = next((n for n in _SPACE_LENGTHS if start + n <= end and segment[start : start + n] in _SPACES), 0)
        if not cut:
            break
        start += cut
    return segment[start:end]
