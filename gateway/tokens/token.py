"""The validated-token value passed along the pipeline, and the token's two hashes.

A token has one *identity* (``fingerprint``): what audit records show, what revocation
matches and what integrators compute. For a JWS compact token it is the SHA-256 of the
signing input ``header.payload`` only, because the signature segment is malleable: an
ECDSA ``s`` may be replaced by ``n - s``, and base64 padding (``==``) may be appended to
the signature, each giving another string that verifies just as well. Every such twin has
the same identity, so revoking one revokes them all.

Caches of verified tokens are keyed by ``cache_key`` instead, the SHA-256 of the token
exactly as presented: an entry then only ever answers for the very bytes that were
verified, never for a forged signature over the same header and payload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..reasons import Reason
from .jws import b64url_decode

# audit records carry this many hex digits of the SHA-256 (128 bits); revoking by them works too
FINGERPRINT_PREFIX = 32


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


_sha256 = sha256_hex


def signing_input(raw_token: str) -> str | None:
    """``header.payload`` of a JWS compact token, else None.

    A JWS compact token is three dot-separated segments whose first is the base64url of a
    JSON object (RFC 7515 section 7.1); an opaque token that merely contains two dots is not one.
    """
    if raw_token.count(".") != 2:
        return None
    head, payload, _ = raw_token.split(".")
    try:
        header = orjson.loads(b64url_decode(head))
    except ValueError:  # also binascii.Error and orjson.JSONDecodeError
        return None
    return f"{head}.{payload}" if isinstance(header, dict) else None


def fingerprint(raw_token: str) -> str:
    """The token's identity, SHA-256 hex: of ``header.payload`` for a JWS compact token, of
    the whole token otherwise. The only form in which a token is ever stored or logged."""
    return _sha256(signing_input(raw_token) or raw_token)


def cache_key(raw_token: str) -> str:
    """SHA-256 hex of the token exactly as presented: the key of every cache of verified tokens."""
    return _sha256(raw_token)


def short_fingerprint(full: str) -> str:
    """The prefix used in audit records: enough to search by, useless to replay."""
    return full[:FINGERPRINT_PREFIX]


class TokenError(Exception):
    """A token was refused; ``reason`` is the shared decision reason."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(detail or reason.value)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ValidatedToken:
    """What the gateway knows about a token whose signature or introspection checked out.

    It holds facts about the token, never a decision: scopes are checked against the
    matched route and the revocation list is consulted on every request.
    """

    issuer: str
    subject: str | None
    client_id: str | None
    scopes: frozenset[str]
    expires_at: float  # 0.0 when the token has no exp (an introspection answer may omit it)
    fingerprint: str  # the identity (see ``fingerprint``), never the cache key
    jti: str | None = None
    issued_at: float | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    source: str = "jwt"  # jwt | introspection
    # SHA-256 of the exact JWT as presented, when that differs from ``fingerprint``: fingerprint
    # entries written before identities hashed ``header.payload`` were computed over it
    presented_hash: str | None = field(default=None, compare=False)
    # SHA-256 of ``jti``: how a jti revoked for an issuer that introspects is kept (revocation/schema.py)
    jti_hash: str | None = field(default=None, compare=False)
    # the audit record's fields taken from this token, per family claim name: worked out on the
    # token's first record and reused while it stays cached (audit/record.py); never compared
    audit_memo: tuple[str, tuple[Any, ...] | None] | None = field(
        default=None, init=False, compare=False, hash=False, repr=False,
    )

    # the identity headers of this token, per header names (proxy/identity.py): checked once, then reused
    identity_memo: tuple[tuple[str, str, str], list[tuple[str, str]]] | None = field(
        default=None, init=False, compare=False, hash=False, repr=False,
    )

    def claim(self, name: str) -> Any:
        return self.claims.get(name)


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """Scopes from ``scope`` (space-separated, RFC 8693/9068) and ``scp`` (array or string)."""
    found: set[str] = set()
    scope = claims.get("scope")
    if isinstance(scope, str):
        found.update(scope.split())
    elif isinstance(scope, list):
        found.update(s for s in scope if isinstance(s, str))
    scp = claims.get("scp")
    if isinstance(scp, list):
        found.update(s for s in scp if isinstance(s, str))
    elif isinstance(scp, str):
        found.update(scp.split())
    return frozenset(found)


def client_of(claims: dict[str, Any]) -> str | None:
    """RFC 9068 ``client_id``, falling back to ``azp`` (OIDC) and ``cid`` (Okta)."""
    for name in ("client_id", "azp", "cid"):
        value = claims.get(name)
        if isinstance(value, str):
            return value
    return None


def as_number(value: Any) -> float | None:
    """A JSON number as a float; None for anything else (booleans, strings, null)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# RFC 9068 section 2.2: the claims a JWT access token must carry
RFC9068_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")
# claims the gateway reads as strings: another type counts as absent, as it does downstream
_STRING_CLAIMS = frozenset({"iss", "sub", "client_id", "jti", "azp", "cid", "sid"})
_DATE_CLAIMS = frozenset({"exp", "iat", "nbf"})  # RFC 7519 NumericDates


def check_required_claims(claims: dict[str, Any], required: Iterable[str]) -> None:
    """Refuse (``missing_claim``) claims that lack one of ``required``: absent, null, empty, or
    not of the type the gateway reads it as (a string, a NumericDate)."""
    for name in required:
        value = claims.get(name)
        if value is None or value == "" or value == []:
            raise TokenError(Reason.MISSING_CLAIM, f"the token has no {name} claim")
        if name in _STRING_CLAIMS and not isinstance(value, str):
            raise TokenError(Reason.MISSING_CLAIM, f"the token's {name} claim is not a string")
        if name in _DATE_CLAIMS and as_number(value) is None:
            raise TokenError(Reason.MISSING_CLAIM, f"the token's {name} claim is not a number")


def header_safe(value: str) -> bool:
    """Whether ``value`` can go into an identity header exactly as it is.

    Visible ASCII and inner spaces only (RFC 9110 5.5: what new fields should carry). Control
    characters (CR, LF, NUL, HTAB...), DEL and non-ASCII text would be refused by the HTTP
    writer, read differently by different upstreams (Latin-1, UTF-8, a byte cut to 8 bits), or
    split a header; a leading or trailing space is trimmed by every parser, so ``" admin"``
    would arrive as ``admin``.
    """
    return value.isascii() and value.isprintable() and value[:1] != " " and value[-1:] != " "


def scope_token(value: str) -> bool:
    """An RFC 6749 3.3 scope-token: ``%x21 / %x23-5B / %x5D-7E``, no space, quote or backslash."""
    return bool(value) and header_safe(value) and not _NOT_IN_SCOPE_TOKEN.intersection(value)


_NOT_IN_SCOPE_TOKEN = frozenset(' "\\')


def _unsafe_identity_claim(claims: dict[str, Any]) -> str | None:
    """The name of a claim that would be copied into an identity header but cannot be one, else None.

    ``scope`` and ``scp`` strings must be scope-tokens separated by spaces only: ``str.split``
    would also split at a tab or U+001F, so that the upstream saw scopes the issuer never wrote.
    """
    subject = claims.get("sub")
    if isinstance(subject, str) and not header_safe(subject):
        return "sub"
    for name in ("client_id", "azp", "cid"):  # client_of takes the first string of these
        value = claims.get(name)
        if isinstance(value, str):
            if not header_safe(value):
                return name
            break
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str) and not all(scope_token(s) for s in value.split(" ") if s):
            return name
        if isinstance(value, list) and not all(scope_token(s) for s in value if isinstance(s, str)):
            return name
    return None


def token_from_claims(claims: dict[str, Any], issuer: str, fp: str, source: str) -> ValidatedToken:
    """Build the value type from verified claims (JWT payload or introspection answer).

    A claim that would be copied into an identity header but cannot be a header value refuses
    the token here (``invalid_claim``), so it never reaches a cache, the header builder or an upstream.
    """
    unsafe = _unsafe_identity_claim(claims)
    if unsafe is not None:
        raise TokenError(Reason.INVALID_CLAIM, f"the {unsafe} claim cannot be sent as a header value")
    jti = claims.get("jti")
    client_id = client_of(claims)
    return ValidatedToken(
        issuer=issuer,
        subject=subject_of(claims, client_id),
        client_id=client_id,
        scopes=scopes_of(claims),
        expires_at=as_number(claims.get("exp")) or 0.0,
        fingerprint=fp,
        jti=jti if isinstance(jti, str) else None,
        issued_at=as_number(claims.get("iat")),
        claims=claims,
        source=source,
        jti_hash=_sha256(jti) if isinstance(jti, str) else None,
    )


def subject_of(claims: dict[str, Any], client_id: str | None) -> str | None:
    """Who the token speaks for: its ``sub``; without one, the client (RFC 9068 section 2.2).

    A client-credentials token has no resource owner, and RFC 9068 makes its ``sub`` the
    client's identifier, as oidc-provider writes it into such a JWT; its introspection answer
    for the same kind of opaque token has no ``sub`` at all. Taking the client then gives one
    identity (``X-Auth-Subject``, the audit record's ``sub``, subject revocation) whichever way
    the token was validated. A ``sub`` of another type than a string stays absent.
    """
    subject = claims.get("sub")
    if isinstance(subject, str):
        return subject
    return client_id if subject is None else None
