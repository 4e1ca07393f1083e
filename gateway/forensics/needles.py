"""What a line must hold to be worth decoding, and the fast search for it.

A filter that names a value (a jti, a subject, a family...) implies bytes every matching
line holds: the value as it appears inside a JSON string. JSON encoders differ in what they
escape (orjson writes ``é`` as it is, ``json.dumps`` as ``\\u00e9``, Go as well as ``<>&``,
some write ``/`` as ``\\/``) and a record shipped as text inside another JSON object (a
``log``/``message`` field) is escaped once more; so the needle is the value itself when it
holds none of the characters any encoder escapes, else its longest run of such characters.
Nothing that can hold the value is ever passed over; lines found are decoded and the
filter decides.

Search is StringZilla's SIMD substring search when it is installed (about 10 GB/s whatever
the needle), else ``bytes.find`` (fast on a 32-character jti, three to six times slower on
the short needles of a subject, an address or a route).
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def _stringzilla() -> Any:
    """StringZilla's SIMD substring search when installed (``GATEWAY_SEARCH_BACKEND=python``
    turns it off): three to six times ``bytes.find`` on the short needles of sub, ip, route."""
    if os.environ.get("GATEWAY_SEARCH_BACKEND", "") == "python":
        return None
    try:
        return importlib.import_module("stringzilla")
    except ImportError:
        return None


_SZ = _stringzilla()
SEARCH_BACKEND = "stringzilla" if _SZ is not None else "bytes.find"


class Finder:
    """``find`` over one block: StringZilla on a zero-copy view of it, else the block's own."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.view: memoryview | None = None
        self.text: Any = None
        if _SZ is not None:
            self.view = memoryview(buf)
            self.text = _SZ.Str(self.view)

    def find(self, needle: bytes, start: int, end: int) -> int:
        if self.text is not None and needle.isascii():
            return int(self.text.find(needle.decode("ascii"), start, end))
        return int(self.buf.find(needle, start, end))

    def close(self) -> None:
        """Let go of the view (a memory map cannot close while one is held)."""
        self.text = None
        if self.view is not None:
            self.view.release()
            self.view = None


# characters every JSON encoder writes as they are, inside a string inside a string too
# (not ", \, /, <, >, &, ', control or non-ASCII characters: some encoders escape those)
_PLAIN = re.compile(r"[A-Za-z0-9 !#$%()*+,\-.:;=?@\[\]^_`{|}~]+")
_MIN_RUN = 3  # a shorter plain run finds too many lines to be worth searching


def value_needles(value: str) -> tuple[bytes, ...]:
    """The bytes that every line holding ``value`` as a JSON string holds, however it was
    encoded or wrapped: the value itself when no encoder escapes any of its characters, else
    its longest run of such characters; ``()`` when it has no run long enough (then lines
    cannot be preselected for it and every line is decoded)."""
    if _PLAIN.fullmatch(value):
        return (value.encode(),)
    runs = _PLAIN.findall(value)
    best = max(runs, key=len, default="")
    return (best.encode(),) if len(best) >= _MIN_RUN else ()


@dataclass(frozen=True)
class Needles:
    """What a line must hold to be decoded: one of each group (AND of ORs). The first group
    is searched for; the others are checked on the lines it finds."""

    groups: tuple[tuple[bytes, ...], ...] = ()

    @classmethod
    def of(cls, values: Iterable[str]) -> Needles:
        """Needles for field values that must all appear (those with no needle are left out)."""
        return cls(tuple(n for n in (value_needles(v) for v in values) if n))

    def admits(self, line: bytes) -> bool:
        return all(any(n in line for n in group) for group in self.groups[1:])


# fields in the order of how few lines hold them: the rarest is searched for
_SELECTIVE = ("jti", "fingerprint", "family", "sub", "ip", "client", "route", "reason", "decision")


def needles_for_query(query: Any) -> Needles:
    """The needles a ``query.Query`` implies (every filter that names a value)."""
    values: list[str] = []
    for name in _SELECTIVE:
        value = getattr(query, name, None)
        if not isinstance(value, str) or not value:
            continue
        if name == "ip" and "/" in value:
            prefix = _network_prefix(value)
            if prefix:
                values.append(prefix)
            continue
        values.append(value)
    return Needles.of(values)


def _network_prefix(cidr: str) -> str | None:
    """The text every IPv4 address of the network starts with (``10.1.`` for 10.1.0.0/16)."""
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    if network.version != 4 or network.prefixlen < 8:
        return None
    if network.prefixlen == 32:
        return str(network.network_address)
    octets = str(network.network_address).split(".")[: network.prefixlen // 8]
    return ".".join(octets) + "."


