"""The audit query: what ``gateway audit`` and ``gateway incident`` look for, and how records are printed (offline).

A ``Query`` is the filter (token, subject, client, family, address, route, decision,
reason, binding, key, trace, time window); ``select`` streams the matching records of
files, directories, globs or standard input through the forensics engine
(``gateway.forensics``: byte-level prefilter, every core, gzip, envelopes, skipped
files outside the window). The writers turn records into JSON lines, CSV or a table.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from ..tokens.token import fingerprint, short_fingerprint
from .envelope import Envelope
from .scan import ScanPlan, ScanStats, scan
from .times import canonical_ts, parse_time, ts_text  # one set of time rules with the scanning engine

Record = dict[str, Any]


def family_of(record: Record) -> Any:
    """The token family of an audit record: ``family``, or ``sid`` in records written before it existed."""
    return record["family"] if "family" in record else record.get("sid")


Warn = Callable[[str], None]
BINDINGS = ("none", "dpop", "mtls")  # Decision.binding: what a request proved its token is bound to
# RFC 7638 / RFC 8705 thumbprints are unpadded base64url of a SHA-256 (43 characters); tolerate padding
_THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{1,128}={0,2}")


# the filters that hold when the record's field equals the query's value: (query attribute, record field)
_EQUALS = (("jti", "jti"), ("sub", "sub"), ("client", "client_id"), ("route", "route"), ("decision", "decision"),
           ("reason", "reason"), ("binding", "binding"), ("key_thumbprint", "key_thumbprint"),
           ("trace_id", "trace_id"))


def stderr_warn(message: str) -> None:
    """The default warning printer: the message on standard error."""
    print(message, file=sys.stderr)


# --- the filter ------------------------------------------------------------------------------


@dataclass
class Query:
    """The filters of ``gateway audit``; all given ones must hold (AND)."""

    jti: str | None = None
    fingerprint: str | None = None  # a prefix of the SHA-256 hex; --token is turned into this
    sub: str | None = None
    client: str | None = None
    family: str | None = None
    ip: str | None = None  # an address, or a network in CIDR form
    route: str | None = None
    decision: str | None = None
    reason: str | None = None
    binding: str | None = None  # none | dpop | mtls: how the token was bound on the request
    key_thumbprint: str | None = None  # the DPoP key's jkt or the client certificate's x5t#S256
    trace_id: str | None = None  # W3C trace id (32 hex digits) of the request, while tracing was on
    since: str | None = None  # canonical ts text
    until: str | None = None
    _network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.fingerprint is not None:
            self.fingerprint = self.fingerprint.strip().lower()
            if not re.fullmatch(r"[0-9a-f]{1,64}", self.fingerprint):
                raise ValueError("a fingerprint is hex digits (a prefix of the token's SHA-256)")
            self.fingerprint = short_fingerprint(self.fingerprint)
        if self.binding is not None and self.binding not in BINDINGS:
            raise ValueError(f"a binding is one of {', '.join(BINDINGS)}")
        if self.key_thumbprint is not None:
            self.key_thumbprint = self.key_thumbprint.strip()
            if not _THUMBPRINT.fullmatch(self.key_thumbprint):
                raise ValueError("a key thumbprint is base64url (a DPoP jkt or a certificate's x5t#S256)")
        if self.trace_id is not None:
            self.trace_id = self.trace_id.strip().lower()
            if not re.fullmatch(r"[0-9a-f]{32}", self.trace_id):
                raise ValueError("a trace id is 32 hex digits (W3C trace context)")
        if self.ip is not None and "/" in self.ip:
            try:
                self._network = ipaddress.ip_network(self.ip, strict=False)
            except ValueError:
                raise ValueError(f"{self.ip!r} is not an IP address or network") from None

    @classmethod
    def build(
        cls, *, token: str | None = None, since: str | None = None, until: str | None = None, **filters: Any
    ) -> Query:
        """A query from CLI values: ``token`` is hashed here and forgotten; times are parsed."""
        if token is not None:
            if filters.get("fingerprint"):
                raise ValueError("give --token or --fingerprint, not both")
            filters["fingerprint"] = token_fingerprint(token)
        return cls(
            since=ts_text(parse_time(since)) if since else None,
            until=ts_text(parse_time(until)) if until else None,
            **filters,
        )

    def matches(self, record: Record) -> bool:
        """Whether ``record`` passes every filter given."""
        get = record.get
        for attribute, key in _EQUALS:
            wanted = getattr(self, attribute)
            if wanted is not None and get(key) != wanted:
                return False
        if self.fingerprint is not None:
            fp = get("token_fingerprint")
            if not isinstance(fp, str) or not fp.startswith(self.fingerprint):
                return False
        if self.family is not None and family_of(record) != self.family:
            return False
        if self.ip is not None and not self._ip_matches(get("client_ip")):
            return False
        if self.since is not None or self.until is not None:
            ts = canonical_ts(get("ts"))
            if ts is None:
                return False
            if self.since is not None and ts < self.since:
                return False
            if self.until is not None and ts > self.until:
                return False
        return True

    def _ip_matches(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if self._network is None:
            return value == self.ip
        try:
            return ipaddress.ip_address(value) in self._network
        except ValueError:
            return False


def token_fingerprint(raw_token: str) -> str:
    """The searchable fingerprint of a raw token (what audit records hold); the token is not kept."""
    raw = raw_token.strip()
    if raw[:7].lower() == "bearer ":
        raw = raw[7:].strip()
    return short_fingerprint(fingerprint(raw))


def select(
    names: Sequence[str], query: Query, warn: Warn = stderr_warn, *, workers: int | None = None,
    envelope: Envelope | None = None, stats: ScanStats | None = None,
) -> Iterator[Record]:
    """The records of the inputs (files, directories, globs, ``-``) that match ``query``, in
    input order, streamed: the forensics engine's scan (``gateway.forensics.scan``)."""
    return scan(names, ScanPlan.for_query(query, envelope=envelope), workers=workers, warn=warn, stats=stats)


# --- output ----------------------------------------------------------------------------------

CSV_FIELDS = (
    "ts", "request_id", "mode", "client_ip", "method", "host", "path", "route", "upstream", "status", "decision",
    "reason", "sub", "client_id", "iss", "jti", "sid", "token_fingerprint", "scopes", "required_scopes",
    "missing_scopes", "user_agent", "duration_ms", "upstream_ms", "bytes_in", "bytes_out", "suspicious",
    "binding", "key_thumbprint", "rule",  # last: spreadsheets made from older exports keep their columns
    "trace_id", "span_id", "family",
)

_TABLE = (  # (header, field, width)
    ("TIME", "ts", 24), ("CLIENT IP", "client_ip", 15), ("METHOD", "method", 6), ("PATH", "path", 32),
    ("ROUTE", "route", 14), ("STATUS", "status", 6), ("REASON", "reason", 18), ("SUB", "sub", 14),
    ("JTI", "jti", 32), ("FINGERPRINT", "token_fingerprint", 12), ("BINDING", "binding", 7),
    ("KEY", "key_thumbprint", 12),
)


def cell(value: Any) -> str:
    """A record value as text: lists joined by spaces, None as empty."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_char(char: str) -> str:
    if char.isprintable():
        return char
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str) -> str:
    """``text`` with every character a reader cannot see written as an escape.

    Control characters (C0, DEL, C1: ``\\x1b`` starts every ANSI escape sequence, so none
    reaches the terminal whole), line and paragraph separators, bidi overrides and other
    format characters, and unassigned code points become ``\\t``, ``\\n``, ``\\r``, ``\\xNN``
    or ``\\uNNNN``: a value from the audit trail is shown, never obeyed by the terminal or
    laid out differently from what it is. A backslash is left as it is.
    """
    if text.isprintable():  # the common case
        return text
    return "".join(map(_escape_char, text))


def _fit(text: str, width: int) -> str:
    text = visible(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def table_header() -> str:
    return "  ".join(h.ljust(w) for h, _, w in _TABLE).rstrip()


def table_row(record: Record) -> str:
    row = "  ".join(_fit(cell(record.get(key)), width).ljust(width) for _, key, width in _TABLE).rstrip()
    suspicious = record.get("suspicious")
    return f"{row}  SUSPICIOUS: {visible(cell(suspicious))}" if suspicious else row


def write_records(records: Iterable[Record], fmt: str, out: IO[str]) -> int:
    """Write records as ``table``, ``json`` (JSON lines) or ``csv`` (RFC 4180); returns how many."""
    count = 0
    if fmt == "json":
        for record in records:
            out.write(orjson.dumps(record).decode())
            out.write("\n")
            count += 1
    elif fmt == "csv":
        out.write(csv_row(CSV_FIELDS))
        for record in records:
            out.write(csv_row(csv_safe(cell(_field(record, k))) for k in CSV_FIELDS))
            count += 1
    else:
        out.write(table_header() + "\n")
        for record in records:
            out.write(table_row(record) + "\n")
            count += 1
    return count


def _field(record: Record, name: str) -> Any:
    return family_of(record) if name == "family" else record.get(name)


def csv_row(fields: Iterable[str]) -> str:
    """One RFC 4180 record: a field holding a comma, a quote, a CR or an LF is quoted (quotes
    doubled), and the record ends with CRLF; no value can end a row or start another."""
    return ",".join(map(_csv_field, fields)) + "\r\n"


_CSV_SPECIAL = re.compile('[,"\r\n]')


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if _CSV_SPECIAL.search(text) else text


# what a spreadsheet takes for the start of a formula (OWASP CSV injection), full-width forms included
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_PLAIN_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?\Z")


def csv_safe(text: str) -> str:
    """Keep a spreadsheet from reading an attacker-chosen path or user agent as a formula: a cell
    starting with = + - @ tab or CR gets a leading ``'`` (a plain negative number is left alone)."""
    return "'" + text if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.match(text) else text
