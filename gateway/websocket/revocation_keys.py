"""The keys that find a live connection from a revocation entry: its token's every revocable form; per connection."""

from __future__ import annotations

import hashlib

from ..revocation.entries import Entry, Kind, Match
from ..tokens.token import ValidatedToken, short_fingerprint


def token_keys(token: ValidatedToken, family_claim: str = "sid") -> tuple[tuple[str, str], ...]:
    """The index keys a token is found by: every form a revocation entry may name it in."""
    keys = [("fp", short_fingerprint(token.fingerprint.lower())), ("iss", token.issuer)]
    presented = getattr(token, "presented_hash", None)
    if presented:
        keys.append(("fp", short_fingerprint(presented.lower())))
    if token.jti is not None:
        keys += [("jti", token.jti), ("fp", short_fingerprint(hashlib.sha256(token.jti.encode()).hexdigest()))]
    family = token.claims.get(family_claim)
    if isinstance(family, str):
        keys.append(("family", family))
    if token.subject is not None:
        keys.append(("sub", token.subject))
    if token.client_id is not None:
        keys.append(("client", token.client_id))
    return tuple(dict.fromkeys(keys))


def entry_keys(entry: Entry) -> list[tuple[str, str]]:
    """The index keys a revocation entry may match (then checked exactly by the revocation list)."""
    value = entry.value
    if entry.kind is Kind.TOKEN:
        if entry.match is Match.JTI:
            return [("jti", value)]
        if entry.match is Match.FINGERPRINT:
            return [("fp", short_fingerprint(value.lower()))]
        return [("jti", value), ("fp", short_fingerprint(value.lower()))]  # schema 1: either
    return [({Kind.FAMILY: "family", Kind.SUBJECT: "sub", Kind.CLIENT: "client"}[entry.kind], value)]
