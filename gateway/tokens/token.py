"""The validated-token value passed along the pipeline, and the token fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ..reasons import Reason

# audit records carry this many hex digits of the SHA-256 (128 bits); revoking by them works too
FINGERPRINT_PREFIX = 32


def fingerprint(raw_token: str) -> str:
    """SHA-256 (hex) of the raw token: the only form in which a token is ever stored or logged."""
    return hashlib.sha256(raw_token.encode("utf-8", "surrogateescape")).hexdigest()


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
    expires_at: float
    fingerprint: str
    jti: str | None = None
    issued_at: float | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    source: str = "jwt"  # jwt | introspection

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


def token_from_claims(claims: dict[str, Any], issuer: str, fp: str, source: str) -> ValidatedToken:
    """Build the value type from verified claims (JWT payload or introspection answer)."""
    subject = claims.get("sub")
    jti = claims.get("jti")
    return ValidatedToken(
        issuer=issuer,
        subject=subject if isinstance(subject, str) else None,
        client_id=client_of(claims),
        scopes=scopes_of(claims),
        expires_at=as_number(claims.get("exp")) or 0.0,
        fingerprint=fp,
        jti=jti if isinstance(jti, str) else None,
        issued_at=as_number(claims.get("iat")),
        claims=claims,
        source=source,
    )
