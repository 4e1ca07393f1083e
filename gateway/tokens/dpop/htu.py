"""The ``htu`` comparison of RFC 9449 section 4.3 step 9, per request.

Both sides are normalised per RFC 3986 sections 6.2.2 and 6.2.3: lowercase scheme and host,
default port dropped, empty path as ``/``, percent-encodings of unreserved characters decoded and
the others upper-cased, dot-segments removed, query and fragment ignored.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

_URI_CHARS: Final = re.compile(r"[!-~]+")  # printable ASCII without space: a URI, nothing urlsplit would tidy
_PERCENT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def normalize_uri(uri: str) -> str | None:
    """``scheme://host[:port]/path`` normalised for comparison, query and fragment dropped; None if malformed."""
    if not _URI_CHARS.fullmatch(uri):
        return None
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    scheme = parts.scheme.lower()
    authority = _authority(scheme, parts.netloc)
    path = _normalize_path(parts.path or "/")
    if authority is None or path is None:
        return None
    return f"{scheme}://{authority}{path}"


def request_uri(scheme: str, host: str, path: str) -> str | None:
    """The normalised URI of a request from its scheme, ``Host`` value and path (query allowed, ignored)."""
    if "/" in host or "?" in host or "#" in host or not path.startswith("/"):
        return None
    return normalize_uri(f"{scheme}://{host}{path}")


def _authority(scheme: str, netloc: str) -> str | None:
    """Lowercase host, default port dropped; None for userinfo, a bad port or a scheme other than http(s)."""
    if scheme not in _DEFAULT_PORTS or not netloc or "@" in netloc:
        return None
    if netloc.startswith("["):
        end = netloc.find("]")
        host, port = (netloc[: end + 1], netloc[end + 1 :]) if end > 0 else ("", "")
    else:
        host, sep, rest = netloc.partition(":")
        port = sep + rest
    if not host or host == "[]" or (port and not port.startswith(":")):
        return None
    digits = port[1:]
    if digits and not (digits.isascii() and digits.isdigit() and int(digits) <= 65535):
        return None
    keep_port = digits and int(digits) != _DEFAULT_PORTS[scheme]
    return host.lower() + (f":{int(digits)}" if keep_port else "")


def _normalize_path(path: str) -> str | None:
    if not path.startswith("/") or _BAD_PERCENT.search(path):
        return None
    return _remove_dot_segments(_PERCENT.sub(_percent_case, path))


def _percent_case(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    trailing = "/" if segments[-1] in (".", "..") and kept else ""
    return "/" + "/".join(kept) + trailing
