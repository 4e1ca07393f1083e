"""What a limit counts by (``subject``, ``ip``, ``claim:<name>``...) and each request's counters; per request."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import orjson

from ..tokens.token import ValidatedToken

if TYPE_CHECKING:
    from .limits import Limit

_CLAIM_NAME = re.compile(r"^[A-Za-z0-9_.:\-/$]{1,128}$")


class KeyKind(str, Enum):
    """Where a limit's counter identity comes from (the ``key`` of a limit, less a claim's name)."""

    SUBJECT = "subject"
    CLIENT = "client"
    TOKEN = "token"
    ISSUER = "issuer"
    IP = "ip"
    CLAIM = "claim"


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What a limit counts by: ``subject | client | token | issuer | ip | claim:<name>``.

    When the value is missing the counter falls back, so that a request is never left
    unlimited and unrelated callers never share one "unknown" counter:

    - ``subject``: the token's client, else the token itself (client-credentials tokens often
      have no ``sub``: their caller is the client);
    - ``client`` and ``claim:<name>``: the token itself (its fingerprint);
    - any identity key on a request without a token (a public route): the client address.

    A claim that is not a string counts by its canonical JSON text.
    """

    kind: KeyKind
    claim: str | None = None

    @classmethod
    def parse(cls, text: Any) -> KeySpec:
        """A configured ``key``; ValueError (shown as a configuration error) when it names none."""
        if not isinstance(text, str):
            raise ValueError("a limit key is one of subject, client, token, issuer, ip, claim:<name>")
        if text.startswith("claim:"):
            name = text[len("claim:"):]
            if not _CLAIM_NAME.match(name):
                raise ValueError(f"{text[:80]!r}: a claim name is 1-128 letters, digits or _ . : - / $")
            return cls(KeyKind.CLAIM, name)
        try:
            kind = KeyKind(text)
        except ValueError:
            raise ValueError(
                f"{text[:40]!r} is not a limit key: subject, client, token, issuer, ip or claim:<name>"
            ) from None
        if kind is KeyKind.CLAIM:
            raise ValueError("claim needs a name: claim:<name>")
        return cls(kind)

    def __str__(self) -> str:
        return f"claim:{self.claim}" if self.kind is KeyKind.CLAIM else self.kind.value

    @property
    def needs_token(self) -> bool:
        """Whether the value comes from the token (else from the connection: evaluable before validation)."""
        return self.kind is not KeyKind.IP

    def value(self, token: ValidatedToken | None, client_ip: str, ipv6_prefix: int = 64) -> str:
        """The counter's identity for this request, tagged with where it came from (never empty)."""
        kind = self.kind
        if kind is KeyKind.IP or token is None:
            return "ip:" + ip_key(client_ip, ipv6_prefix)
        if kind is KeyKind.SUBJECT:
            if token.subject:
                return "sub:" + token.subject
            if token.client_id:
                return "client:" + token.client_id
        elif kind is KeyKind.CLIENT:
            if token.client_id:
                return "client:" + token.client_id
        elif kind is KeyKind.ISSUER:
            return "iss:" + token.issuer
        elif kind is KeyKind.CLAIM:
            claim = token.claims.get(self.claim or "")
            if isinstance(claim, str) and claim:
                return "claim:" + claim
            if claim is not None and claim != "" and not isinstance(claim, str):
                return "claim-json:" + orjson.dumps(claim, option=orjson.OPT_SORT_KEYS).decode()
        return "fp:" + token.fingerprint


def ip_key(client_ip: str, ipv6_prefix: int = 64) -> str:
    """The address an ``ip`` limit counts by: IPv4 as is (also when IPv4-mapped), IPv6 by its
    /``ipv6_prefix`` network, since one IPv6 subscriber usually holds a whole /64 to rotate through."""
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return client_ip or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


@dataclass(frozen=True, slots=True)
class Hit:
    """A limit bound to this request's counter (``value`` as ``KeySpec.value`` gives it)."""

    limit: Limit
    value: str

    def redis_key(self, prefix: str) -> str:
        """The counter's Redis key: the limit's scope and name, and a hash of the identity."""
        # hashed: a claim value may be long or odd, and identities never sit in Redis in clear
        digest = hashlib.sha256(self.value.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return f"{prefix}{self.limit.scope}:{self.limit.name}:{digest}"


def bind(
    limits: Iterable[Limit], token: ValidatedToken | None, client_ip: str, ipv6_prefix: int = 64
) -> list[Hit]:
    """Each limit with this request's counter."""
    return [Hit(limit, limit.key.value(token, client_ip, ipv6_prefix)) for limit in limits]


def unique_hits(hits: Sequence[Hit]) -> list[Hit]:
    """One hit per counter: the same limit listed twice would otherwise be charged twice."""
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for hit in hits:
        ident = (hit.limit.scope, hit.limit.name, hit.value)
        if ident not in seen:
            seen.add(ident)
            unique.append(hit)
    return unique
