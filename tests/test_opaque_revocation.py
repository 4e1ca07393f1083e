"""Revoking opaque tokens: a "jti" for an issuer that introspects, and the identity of client tokens.

oidc-provider's opaque token *is* its jti, and its introspection answer names no jti (nor a
``sub`` for a client-credentials token). These tests pin what the gateway does with that.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
import yaml

from gateway.config import parse_config
from gateway.reasons import Reason
from gateway.revocation.api import factory_for
from gateway.revocation.entries import Match, RevocationList
from gateway.revocation.schema import Schema, encode
from gateway.tokens.token import fingerprint, token_from_claims
from tests.helpers import MINIMAL_CONFIG

OPAQUE_AS, JWT_AS = "https://opaque.example", "https://jwt.example"
RAW = "BBvmQKHw4UZVko4X24EsqoRyflxySWHrpfqGnW5A4P5"  # the shape of an oidc-provider opaque token


def config() -> Any:
    data = yaml.safe_load(MINIMAL_CONFIG)
    data["issuers"] = [
        {"issuer": OPAQUE_AS, "audiences": ["api"],
         "introspection": {"client_id": "gw", "client_secret": "s3cret-s3cret-s3cret"}},
        {"issuer": JWT_AS, "audiences": ["api"]},
    ]
    return parse_config(yaml.safe_dump(data))


def token(issuer: str, raw: str | None = None, **claims: Any) -> Any:
    source = "introspection" if raw is not None else "jwt"
    return token_from_claims({"iss": issuer, "exp": time.time() + 60, **claims}, issuer,
                             fingerprint(raw or "header.payload.sig"), source)


def test_a_jti_for_an_issuer_that_introspects_is_kept_as_its_hash_and_matches_the_token() -> None:
    entry = factory_for(config()).jti(RAW, issuer=OPAQUE_AS)
    assert (entry.match, entry.value) == (Match.FINGERPRINT, hashlib.sha256(RAW.encode()).hexdigest())
    stored = encode(entry).decode() + Schema().entry_key(entry)
    assert RAW not in stored  # a live token never goes into Redis, a key name or a log
    revoked = RevocationList()
    revoked.add(entry)
    assert revoked.check(token(OPAQUE_AS, RAW, client_id="c")) is not None  # the opaque token itself
    assert revoked.fingerprint_revoked(OPAQUE_AS, fingerprint(RAW))  # before it is even introspected
    assert revoked.check(token(OPAQUE_AS, "another-token", client_id="c")) is None


def test_a_real_jti_of_an_issuer_that_introspects_still_matches() -> None:
    """Keycloak and Hydra name a jti in their answers: revoking it by that jti keeps working."""
    revoked = RevocationList()
    revoked.add(factory_for(config()).jti("4f1c2b9e-uuid", issuer=OPAQUE_AS))
    assert revoked.check(token(OPAQUE_AS, "some-opaque-token", jti="4f1c2b9e-uuid")) == Reason.REVOKED_TOKEN
    assert revoked.check(token(OPAQUE_AS, "some-opaque-token", jti="another")) is None
    assert revoked.check(token(JWT_AS, None, jti="4f1c2b9e-uuid")) is None  # another issuer's token


@pytest.mark.parametrize("issuer", [JWT_AS])
def test_a_jti_for_an_issuer_that_only_signs_jwts_is_a_plain_jti(issuer: str) -> None:
    entry = factory_for(config()).jti("4f1c2b9e", issuer=issuer)
    assert (entry.match, entry.value) == (Match.JTI, "4f1c2b9e")


def test_a_jti_for_every_issuer_is_hashed_when_one_introspects() -> None:
    entry = factory_for(config()).jti(RAW, issuer="*")
    assert entry.match is Match.FINGERPRINT
    revoked = RevocationList()
    revoked.add(entry)
    assert revoked.check(token(JWT_AS, None, jti=RAW)) is not None
    assert revoked.check(token(OPAQUE_AS, RAW)) is not None


@pytest.mark.parametrize(("claims", "subject"), [
    ({"client_id": "svc"}, "svc"),  # client credentials: RFC 9068 2.2, sub is the client
    ({"client_id": "svc", "sub": None}, "svc"),  # null is absent (RFC 7662 answers)
    ({"client_id": "svc", "sub": "alice"}, "alice"),
    ({"client_id": "svc", "sub": 42}, None),  # a sub of another type is not replaced
    ({"azp": "web"}, "web"),
    ({}, None),
])
def test_the_subject_of_a_token_without_sub_is_its_client(claims: dict[str, Any], subject: str | None) -> None:
    assert token(OPAQUE_AS, "t", **claims).subject == subject
    assert token(JWT_AS, None, **claims).subject == subject


def test_subject_revocation_matches_a_client_token_without_sub() -> None:
    revoked = RevocationList()
    revoked.add(factory_for(config()).subject("svc", issuer=OPAQUE_AS, before=time.time() + 5))
    assert revoked.check(token(OPAQUE_AS, "t", client_id="svc", iat=time.time())) == Reason.REVOKED_SUBJECT
