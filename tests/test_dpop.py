"""DPoP proofs (RFC 9449) at the resource server: real keys, real signatures, a real redis-server.

Proofs are signed with EC P-256, RSA and Ed25519 keys generated here; hostile proofs are built
by hand (PyJWT / raw base64url) so each check is reached on its own. The replay cache is
exercised in memory, through one Redis by two cache instances, and by a second OS process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.api_jws import PyJWS
from redis.asyncio import Redis

from gateway.tokens.dpop import (
    DPoPError,
    DPoPProof,
    DPoPSettings,
    NonceSource,
    ProofFailure,
    ProofRequest,
    access_token_hash,
    binding_matches,
    challenge,
    check_proof,
    confirmation,
    jwk_thumbprint,
    key_thumbprint,
    normalize_uri,
    public_jwk,
    replay_key,
    request_uri,
    sign_proof,
    token_jkt,
    verify_proof,
)
from gateway.tokens.replay import MemoryReplayCache, RedisReplayCache, Seen
from tests.helpers import free_port
from tests.test_revocation_redis import Relay

REPO = Path(__file__).resolve().parent.parent
URL = "https://api.example/orders"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
SETTINGS = DPoPSettings(algorithms=frozenset({"ES256", "PS256", "RS256", "EdDSA"}))


# --- keys and proof builders ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def proof(key: Any, method: str = "GET", url: str = URL, token: str | None = TOKEN, **kw: Any) -> str:
    return sign_proof(key, ProofRequest(method=method, url=url, access_token=token, **kw))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(method: str = "GET", url: str = URL, token: str | None = TOKEN, **extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"jti": uuid.uuid4().hex, "htm": method, "htu": url, "iat": int(time.time())}
    if token is not None:
        claims["ath"] = access_token_hash(token)
    return {**claims, **extra}


def hand_signed(key: Any, alg: str, header: dict[str, Any], claims: dict[str, Any] | None = None) -> str:
    """A proof with exactly the header given (PyJWT adds only alg)."""
    return jwt.encode(claims if claims is not None else claims_for(), key, algorithm=alg, headers=header)


def check(value: str | list[str], token: str | None = TOKEN, method: str = "GET", uri: str = URL,
          settings: DPoPSettings = SETTINGS, **kw: Any) -> DPoPProof | DPoPError:
    values = [value] if isinstance(value, str) else value
    return check_proof(values, access_token=token, method=method, uri=uri, settings=settings, **kw)


def refused(outcome: DPoPProof | DPoPError, failure: ProofFailure, words: str) -> None:
    assert isinstance(outcome, DPoPError), outcome
    assert outcome.failure is failure
    assert words in outcome.detail


# --- valid proofs ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ec_key", "rsa_key", "ed_key"])
def test_a_valid_proof_gives_the_thumbprint_of_its_key(which: str, request: pytest.FixtureRequest) -> None:
    key = request.getfixturevalue(which)
    outcome = check(proof(key))
    assert isinstance(outcome, DPoPProof)
    assert outcome.jkt == key_thumbprint(key) == jwk_thumbprint(public_jwk(key))
    assert outcome.alg == {"ec_key": "ES256", "rsa_key": "PS256", "ed_key": "EdDSA"}[which]
    assert binding_matches(confirmation(key)["jkt"], outcome)


def test_rs256_proofs_are_accepted_when_allowed(rsa_key: rsa.RSAPrivateKey) -> None:
    value = sign_proof(rsa_key, ProofRequest("GET", URL, TOKEN), alg="RS256")
    assert isinstance(check(value), DPoPProof)
    refused(check(value, settings=DPoPSettings(algorithms=frozenset({"ES256"}))), ProofFailure.INVALID, "alg")


def test_a_proof_without_a_token_needs_no_ath(ec_key: ec.EllipticCurvePrivateKey) -> None:
    assert isinstance(check(proof(ec_key, token=None), token=None), DPoPProof)


def test_a_proof_for_another_key_does_not_match_the_binding(
    ec_key: ec.EllipticCurvePrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    outcome = check(proof(ec_key))
    assert isinstance(outcome, DPoPProof)
    assert not binding_matches(key_thumbprint(ed_key), outcome)


# --- RFC test vectors ------------------------------------------------------------------------


def test_thumbprint_matches_the_rfc_7638_example() -> None:
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWK"
             "RXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8"
             "KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIq"
             "bw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_ath_matches_the_rfc_9449_example() -> None:
    # RFC 9449 section 7.1: the example access token and its ath
    token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
    assert access_token_hash(token) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


def test_thumbprint_refuses_keys_it_cannot_describe() -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint({"kty": "oct", "k": "c2VjcmV0"})
    with pytest.raises(ValueError):
        jwk_thumbprint({"kty": "EC", "crv": "P-256", "x": "AA"})


# --- request binding: htm, htu, ath ---------------------------------------------------------


def test_wrong_method_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    refused(check(proof(ec_key, method="GET"), method="POST"), ProofFailure.INVALID, "htm")
    refused(check(proof(ec_key, method="get"), method="GET"), ProofFailure.INVALID, "htm")


def test_wrong_htu_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    refused(check(proof(ec_key, url="https://api.example/payouts")), ProofFailure.INVALID, "htu")
    refused(check(proof(ec_key, url="https://evil.example/orders")), ProofFailure.INVALID, "htu")
    refused(check(proof(ec_key, url="http://api.example/orders")), ProofFailure.INVALID, "htu")
    refused(check(proof(ec_key, url="https://api.example:8443/orders")), ProofFailure.INVALID, "htu")


def test_query_and_fragment_are_ignored_on_both_sides(ec_key: ec.EllipticCurvePrivateKey) -> None:
    value = proof(ec_key, extra_claims={"htu": URL + "?page=2#top"})
    assert isinstance(check(value, uri=URL + "?page=3"), DPoPProof)


def test_htu_is_compared_after_normalisation(ec_key: ec.EllipticCurvePrivateKey) -> None:
    value = proof(ec_key, extra_claims={"htu": "HTTPS://API.Example:443/%6Frders"})
    assert isinstance(check(value), DPoPProof)


def test_ath_mismatch_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    refused(check(proof(ec_key, token="another-token")), ProofFailure.INVALID, "ath does not match")


def test_missing_ath_is_refused_when_a_token_is_presented(ec_key: ec.EllipticCurvePrivateKey) -> None:
    refused(check(proof(ec_key, token=None)), ProofFailure.INVALID, "no ath")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("HTTPS://API.EXAMPLE/orders", "https://api.example/orders"),
        ("https://api.example:443/orders", "https://api.example/orders"),
        ("http://api.example:80", "http://api.example/"),
        ("http://api.example:", "http://api.example/"),
        ("https://api.example:08443/a", "https://api.example:8443/a"),
        ("https://api.example/%7euser/%2fx", "https://api.example/~user/%2Fx"),
        ("https://api.example/a/./b/../c", "https://api.example/a/c"),
        ("https://api.example/a/%2E%2E/c", "https://api.example/c"),
        ("https://api.example/a/b/..", "https://api.example/a/"),
        ("https://api.example/../../x", "https://api.example/x"),
        ("https://[::1]:443/x?q#f", "https://[::1]/x"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
    ],
)
def test_uri_normalisation(given: str, expected: str) -> None:
    assert normalize_uri(given) == expected


@pytest.mark.parametrize(
    "given",
    ["ftp://api.example/x", "https://user@api.example/x", "https://api.example:99999/x", "https://api.example:x/x",
     "https:///x", "https://api.example/a b", "https://[::1/x", "https://api.example/%zz", "/orders",
     "https://api.exämple/x", "https://api.example:+80/x", "https://api.example/\t"],
)
def test_malformed_uris_are_not_comparable(given: str) -> None:
    assert normalize_uri(given) is None


def test_reserved_characters_stay_encoded_and_path_case_matters() -> None:
    assert normalize_uri("https://a.example/x%2Fy") != normalize_uri("https://a.example/x/y")
    assert normalize_uri("https://a.example/Orders") != normalize_uri("https://a.example/orders")


def test_request_uri_builds_from_scheme_host_and_path() -> None:
    assert request_uri("https", "API.example:443", "/orders?x=1") == "https://api.example/orders"
    assert request_uri("http", "127.0.0.1:8080", "/a") == "http://127.0.0.1:8080/a"
    assert request_uri("https", "evil.example/x", "/orders") is None
    assert request_uri("https", "user@api.example", "/orders") is None
    assert request_uri("https", "api.example", "orders") is None


# --- the proof's shape: header, algorithm, key ----------------------------------------------


def test_two_dpop_headers_are_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    refused(check([proof(ec_key), proof(ec_key)]), ProofFailure.INVALID, "exactly one")
    refused(check([]), ProofFailure.INVALID, "exactly one")


@pytest.mark.parametrize("value", ["", "not-a-jwt", "a.b", "a.b.c.d.e", "a.b.", "é.b.c", "x" * 9000 + ".a.b"])
def test_garbage_is_not_a_compact_jws(value: str) -> None:
    refused(check(value), ProofFailure.INVALID, "DPoP")


def test_a_header_that_is_not_a_json_object_is_refused() -> None:
    for header in (b"{nope", b"[1]", b"\xff\xfe"):
        refused(check(f"{b64(header)}.{b64(b'{}')}.{b64(b'sig')}"), ProofFailure.INVALID, "not a JSON object")


def test_alg_none_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": public_jwk(ec_key)}
    unsigned = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims_for()).encode())}"
    refused(check(unsigned + "."), ProofFailure.INVALID, "compact JWS")
    refused(check(unsigned + ".AAAA"), ProofFailure.INVALID, "alg is not accepted")


def test_hs256_is_refused_and_cannot_be_configured() -> None:
    secret = b"0123456789abcdef0123456789abcdef"
    value = hand_signed(secret, "HS256", {"typ": "dpop+jwt", "jwk": {"kty": "oct", "k": b64(secret)}})
    refused(check(value), ProofFailure.INVALID, "alg is not accepted")
    with pytest.raises(ValueError, match="non-empty subset"):
        DPoPSettings(algorithms=frozenset({"ES256", "HS256"}))
    with pytest.raises(ValueError, match="non-empty subset"):
        DPoPSettings(algorithms=frozenset({"none"}))


@pytest.mark.parametrize("typ", [None, "JWT", "DPOP+JWT", "at+jwt", "application/dpop+jwt"])
def test_typ_must_be_exactly_dpop_jwt(ec_key: ec.EllipticCurvePrivateKey, typ: str | None) -> None:
    value = hand_signed(ec_key, "ES256", {"typ": typ, "jwk": public_jwk(ec_key)})
    refused(check(value), ProofFailure.INVALID, "typ")


@pytest.mark.parametrize("which", ["ec_key", "rsa_key", "ed_key"])
def test_a_private_key_in_the_jwk_header_is_refused(which: str, request: pytest.FixtureRequest) -> None:
    key = request.getfixturevalue(which)
    alg = {"ec_key": "ES256", "rsa_key": "PS256", "ed_key": "EdDSA"}[which]
    private_jwk = jwt.get_algorithm_by_name(alg).to_jwk(key, as_dict=True)
    assert "d" in private_jwk
    refused(check(hand_signed(key, alg, {"typ": "dpop+jwt", "jwk": private_jwk})), ProofFailure.INVALID, "private")


@pytest.mark.parametrize("member", ["p", "q", "dp", "dq", "qi", "oth", "k"])
def test_any_private_member_is_refused(ec_key: ec.EllipticCurvePrivateKey, member: str) -> None:
    jwk = {**public_jwk(ec_key), member: "AQAB"}
    refused(check(hand_signed(ec_key, "ES256", {"typ": "dpop+jwt", "jwk": jwk})), ProofFailure.INVALID, "private")


def test_a_missing_jwk_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    refused(check(hand_signed(ec_key, "ES256", {"typ": "dpop+jwt"})), ProofFailure.INVALID, "no jwk")
    value = hand_signed(ec_key, "ES256", {"typ": "dpop+jwt", "jwk": "not-an-object"})
    refused(check(value), ProofFailure.INVALID, "no jwk")


def test_a_key_of_another_curve_than_the_alg_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    value = hand_signed(p384, "ES384", {"typ": "dpop+jwt", "jwk": public_jwk(ec_key)})
    refused(check(value, settings=DPoPSettings()), ProofFailure.INVALID, "does not fit its alg")
    value = hand_signed(ec_key, "ES256", {"typ": "dpop+jwt", "jwk": public_jwk(p384)})
    refused(check(value), ProofFailure.INVALID, "does not fit its alg")


def test_a_signature_by_another_key_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    value = hand_signed(other, "ES256", {"typ": "dpop+jwt", "jwk": public_jwk(ec_key)})
    refused(check(value), ProofFailure.INVALID, "signature is invalid")


def test_a_tampered_payload_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    header, _, signature = proof(ec_key).split(".")
    forged = b64(json.dumps(claims_for(url="https://api.example/payouts")).encode())
    refused(check(f"{header}.{forged}.{signature}", uri="https://api.example/payouts"), ProofFailure.INVALID,
            "signature is invalid")


def test_a_jwk_that_is_not_a_point_on_the_curve_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwk = {**public_jwk(ec_key), "y": b64(b"\x01" * 32)}
    refused(check(hand_signed(ec_key, "ES256", {"typ": "dpop+jwt", "jwk": jwk})), ProofFailure.INVALID,
            "cannot be verified")


def test_padded_or_non_string_key_members_are_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwk = public_jwk(ec_key)
    for bad in ({**jwk, "x": jwk["x"] + "="}, {**jwk, "x": 12}):
        refused(check(hand_signed(ec_key, "ES256", {"typ": "dpop+jwt", "jwk": bad})), ProofFailure.INVALID,
                "malformed")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_short_rsa_key_is_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    value = hand_signed(weak, "PS256", {"typ": "dpop+jwt", "jwk": public_jwk(weak)})
    refused(check(value), ProofFailure.INVALID, "RSA key size")


def test_critical_headers_are_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    value = hand_signed(ec_key, "ES256", {"typ": "dpop+jwt", "jwk": public_jwk(ec_key), "crit": ["exp"], "exp": 1})
    refused(check(value), ProofFailure.INVALID, "critical")


def test_a_payload_that_is_not_an_object_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    header = {"typ": "dpop+jwt", "jwk": public_jwk(ec_key)}
    value = PyJWS().encode(b'["GET"]', ec_key, algorithm="ES256", headers=header)
    refused(check(value), ProofFailure.INVALID, "not a JSON object")


# --- claims: iat, jti --------------------------------------------------------------------------


def test_iat_window(ec_key: ec.EllipticCurvePrivateKey) -> None:
    now = time.time()
    refused(check(proof(ec_key, iat=now - 61), now=now), ProofFailure.INVALID, "too old")
    refused(check(proof(ec_key, iat=now + 6), now=now), ProofFailure.INVALID, "future")
    assert isinstance(check(proof(ec_key, iat=now - 59), now=now), DPoPProof)
    assert isinstance(check(proof(ec_key, iat=now + 4), now=now), DPoPProof)


@pytest.mark.parametrize("iat", ["1700000000", True, None, [1]])
def test_iat_must_be_a_number(ec_key: ec.EllipticCurvePrivateKey, iat: Any) -> None:
    value = hand_signed(ec_key, "ES256", {"typ": "dpop+jwt", "jwk": public_jwk(ec_key)}, claims_for(iat=iat))
    refused(check(value), ProofFailure.INVALID, "iat")


def test_nan_iat_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    header = {"typ": "dpop+jwt", "jwk": public_jwk(ec_key)}
    payload = json.dumps(claims_for(iat=float("nan"))).encode()  # json writes NaN, which Python reads back
    refused(check(PyJWS().encode(payload, ec_key, algorithm="ES256", headers=header)), ProofFailure.INVALID, "iat")


@pytest.mark.parametrize("jti", [None, "", 7, "x" * 513])
def test_jti_must_be_a_short_string(ec_key: ec.EllipticCurvePrivateKey, jti: Any) -> None:
    value = hand_signed(ec_key, "ES256", {"typ": "dpop+jwt", "jwk": public_jwk(ec_key)}, claims_for(jti=jti))
    refused(check(value), ProofFailure.INVALID, "jti")


# --- server nonces -------------------------------------------------------------------------------


NONCE_SETTINGS = DPoPSettings(nonce=True)


def test_a_missing_nonce_asks_for_one(ec_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = check(proof(ec_key), settings=NONCE_SETTINGS, nonces=NonceSource(b"k" * 32))
    refused(outcome, ProofFailure.USE_NONCE, "must carry")
    assert isinstance(outcome, DPoPError)
    assert outcome.failure.error == "use_dpop_nonce" and outcome.failure.status == 401


def test_current_and_previous_nonces_are_accepted(ec_key: ec.EllipticCurvePrivateKey) -> None:
    nonces, now = NonceSource(b"k" * 32, period=60), time.time()
    for issued in (now, now - 60):
        value = proof(ec_key, nonce=nonces.current(issued))
        assert isinstance(check(value, settings=NONCE_SETTINGS, nonces=nonces, now=now), DPoPProof)


def test_a_stale_or_foreign_nonce_asks_for_a_fresh_one(ec_key: ec.EllipticCurvePrivateKey) -> None:
    nonces, now = NonceSource(b"k" * 32, period=60), time.time()
    stale = proof(ec_key, nonce=nonces.current(now - 180))
    refused(check(stale, settings=NONCE_SETTINGS, nonces=nonces, now=now), ProofFailure.USE_NONCE, "stale")
    foreign = proof(ec_key, nonce=NonceSource(b"z" * 32).current(now))
    refused(check(foreign, settings=NONCE_SETTINGS, nonces=nonces, now=now), ProofFailure.USE_NONCE, "stale")


def test_a_non_string_nonce_is_invalid(ec_key: ec.EllipticCurvePrivateKey) -> None:
    value = hand_signed(ec_key, "ES256", {"typ": "dpop+jwt", "jwk": public_jwk(ec_key)}, claims_for(nonce=5))
    refused(check(value, settings=NONCE_SETTINGS, nonces=NonceSource()), ProofFailure.INVALID, "nonce")


def test_replicas_sharing_the_secret_agree_on_nonces() -> None:
    a, b, now = NonceSource(b"s" * 32), NonceSource(b"s" * 32), time.time()
    assert a.current(now) == b.current(now)
    assert b.accepts(a.current(now), now)
    assert not NonceSource().accepts(a.current(now), now)  # no shared secret: per process


def test_nonces_rotate() -> None:
    nonces, now = NonceSource(b"s" * 32, period=60), 1_700_000_000.0
    assert nonces.current(now) != nonces.current(now + 60)
    assert not nonces.accepts(nonces.current(now), now + 120)


def test_a_nonce_is_ignored_when_not_required(ec_key: ec.EllipticCurvePrivateKey) -> None:
    assert isinstance(check(proof(ec_key, nonce="from-the-authorization-server")), DPoPProof)


def test_nonce_settings_need_a_source(ec_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ValueError, match="NonceSource"):
        check(proof(ec_key), settings=NONCE_SETTINGS)


# --- token binding helpers -------------------------------------------------------------------


def test_token_jkt() -> None:
    assert token_jkt({"sub": "a"}) is None
    assert token_jkt({"cnf": {"x5t#S256": "abc"}}) is None
    assert token_jkt({"cnf": {"jkt": "abc"}}) == "abc"
    for bad in ({"cnf": "abc"}, {"cnf": {"jkt": 5}}, {"cnf": {"jkt": ""}}):
        with pytest.raises(ValueError):
            token_jkt(bad)


# --- replay: memory --------------------------------------------------------------------------


async def verify(value: str, replay: Any, uri: str = URL, **kw: Any) -> DPoPProof | DPoPError:
    return await verify_proof([value], access_token=TOKEN, method="GET", uri=uri, settings=SETTINGS, replay=replay,
                              **kw)


async def test_a_replayed_proof_is_refused_in_memory(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cache, value = MemoryReplayCache(), proof(ec_key)
    assert isinstance(await verify(value, cache), DPoPProof)
    refused(await verify(value, cache), ProofFailure.REPLAYED, "already used")
    assert isinstance(await verify(proof(ec_key), cache), DPoPProof)  # a new proof (new jti) is fine


async def test_a_refused_proof_does_not_burn_its_jti(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cache, value = MemoryReplayCache(), proof(ec_key)
    refused(await verify(value, cache, uri="https://api.example/payouts"), ProofFailure.INVALID, "htu")
    assert isinstance(await verify(value, cache), DPoPProof)


async def test_the_same_jti_under_another_key_is_not_a_replay(
    ec_key: ec.EllipticCurvePrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    cache = MemoryReplayCache()
    assert isinstance(await verify(proof(ec_key, jti="same"), cache), DPoPProof)
    assert isinstance(await verify(proof(ed_key, jti="same"), cache), DPoPProof)
    refused(await verify(proof(ec_key, jti="same"), cache), ProofFailure.REPLAYED, "already used")


async def test_memory_cache_forgets_after_the_window_and_refuses_when_full() -> None:
    clock = [0.0]
    cache = MemoryReplayCache(max_entries=2, clock=lambda: clock[0])
    assert [await cache.first_use(k, 10) for k in ("a", "b", "c")] == [Seen.FIRST, Seen.FIRST, Seen.UNAVAILABLE]
    assert await cache.first_use("a", 10) is Seen.REPLAYED
    clock[0] = 10.0
    assert await cache.first_use("a", 10) is Seen.FIRST
    assert await cache.first_use("c", 10) is Seen.FIRST
    assert len(cache) == 2


def test_replay_ttl_covers_the_whole_acceptance_window() -> None:
    settings = DPoPSettings(max_age=60, leeway=5)
    assert settings.replay_ttl >= settings.max_age + settings.leeway


def test_replay_key_holds_no_raw_jti(ec_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = check(proof(ec_key, jti="visible-jti"))
    assert isinstance(outcome, DPoPProof)
    key = replay_key(outcome)
    assert "visible-jti" not in key and len(key) == 43


# --- replay: Redis ---------------------------------------------------------------------------



@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:dpop:"


@pytest.fixture
async def caches(redis_url: str, prefix: str) -> AsyncIterator[list[RedisReplayCache]]:
    """Two caches with their own Redis connections and local copies: two gateway processes."""
    made = [RedisReplayCache.from_url(redis_url, prefix=prefix) for _ in range(2)]
    yield made
    for cache in made:
        await cache.aclose()


async def test_a_replayed_proof_is_refused_through_redis(
    caches: list[RedisReplayCache], redis_url: str, prefix: str, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    value = proof(ec_key)
    first = await verify(value, caches[0])
    assert isinstance(first, DPoPProof)
    refused(await verify(value, caches[0]), ProofFailure.REPLAYED, "already used")
    redis = Redis.from_url(redis_url)
    try:
        ttl_ms = await redis.pttl(prefix + replay_key(first))
        keys = [k.decode() async for k in redis.scan_iter(match=prefix + "*")]
    finally:
        await redis.aclose()
    assert 0 < ttl_ms <= SETTINGS.replay_ttl * 1000  # forgotten when no replica would accept the proof anyway
    assert keys == [prefix + replay_key(first)]  # hashed: neither the jti nor the key appears raw


async def test_a_proof_used_on_one_replica_is_refused_on_another(
    caches: list[RedisReplayCache], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    value = proof(ec_key)
    assert isinstance(await verify(value, caches[0]), DPoPProof)
    refused(await verify(value, caches[1]), ProofFailure.REPLAYED, "already used")


async def test_concurrent_uses_on_two_replicas_let_exactly_one_through(
    caches: list[RedisReplayCache], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    value = proof(ec_key)
    outcomes = await asyncio.gather(*(verify(value, caches[i % 2]) for i in range(10)))
    assert sum(isinstance(o, DPoPProof) for o in outcomes) == 1


CHILD = """
import asyncio, sys
from gateway.tokens.dpop import DPoPSettings, verify_proof
from gateway.tokens.replay import RedisReplayCache

async def main() -> None:
    url, prefix, value, token, uri = sys.argv[1:6]
    cache = RedisReplayCache.from_url(url, prefix=prefix)
    outcome = await verify_proof([value], access_token=token, method="GET", uri=uri,
                                 settings=DPoPSettings(), replay=cache)
    await cache.aclose()
    print(getattr(outcome, "failure", "accepted"))

asyncio.run(main())
"""


async def test_a_proof_used_by_another_gateway_process_is_refused_here(
    caches: list[RedisReplayCache], redis_url: str, prefix: str, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    value = proof(ec_key)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, redis_url, prefix, value, TOKEN, URL,
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert out.decode().strip() == "accepted", err.decode()
    refused(await verify(value, caches[0]), ProofFailure.REPLAYED, "already used")


async def test_unreachable_redis_fails_closed_with_503(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cache = RedisReplayCache.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=2.0)
    try:
        outcome = await verify(proof(ec_key), cache)
    finally:
        await cache.aclose()
    refused(outcome, ProofFailure.UNAVAILABLE, "replay")
    assert isinstance(outcome, DPoPError)
    assert outcome.failure.status == 503 and not cache.up


async def test_a_silent_redis_fails_closed_within_the_timeout(ec_key: ec.EllipticCurvePrivateKey) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass  # reads everything, answers nothing: a partition that keeps the socket open
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cache = RedisReplayCache.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.3)
    started = time.monotonic()
    try:
        outcome = await verify(proof(ec_key), cache)
    finally:
        await cache.aclose()
        server.close()
    refused(outcome, ProofFailure.UNAVAILABLE, "replay")
    assert time.monotonic() - started < 2.0


async def test_a_bounded_outage_falls_back_to_this_process_then_closes(
    redis_proc: Any, prefix: str, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    relay = Relay(redis_proc.host, redis_proc.port)
    await relay.start()
    clock = [0.0]
    cache = RedisReplayCache.from_url(
        f"redis://127.0.0.1:{relay.port}/0", prefix=prefix, timeout=0.5, max_outage=10.0, clock=lambda: clock[0]
    )
    try:
        seen_before = proof(ec_key)
        assert isinstance(await verify(seen_before, cache), DPoPProof)
        await relay.cut()
        during = proof(ec_key)
        assert isinstance(await verify(during, cache), DPoPProof)  # within the bound: this process's copy
        assert not cache.up
        refused(await verify(during, cache), ProofFailure.REPLAYED, "already used")
        refused(await verify(seen_before, cache), ProofFailure.REPLAYED, "already used")
        clock[0] = 10.0
        refused(await verify(proof(ec_key), cache), ProofFailure.UNAVAILABLE, "replay")  # past the bound: closed
        await relay.restore()
        assert isinstance(await verify(proof(ec_key), cache), DPoPProof)
        assert cache.up
    finally:
        await cache.aclose()
        await relay.stop()


# --- tools/dpop_client.py against a real DPoP-enforcing server ----------------------------


class DPoPServer:
    """A token endpoint and a resource on 127.0.0.1, both enforcing DPoP with nonces (RFC 9449 sections 5, 7, 8)."""

    def __init__(self) -> None:
        self.nonces = NonceSource(b"n" * 32)
        self.settings = DPoPSettings(nonce=True)
        self.replay = MemoryReplayCache()
        self.bound: dict[str, str] = {}  # token -> jkt
        self.nonce_challenges = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self.token)
        app.router.add_get("/orders", self.orders)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _verify(self, request: web.Request, token: str | None) -> DPoPProof | DPoPError:
        return await verify_proof(
            request.headers.getall("DPoP", []), access_token=token, method=request.method,
            uri=request_uri("http", request.host, request.raw_path) or "", settings=self.settings,
            replay=self.replay, nonces=self.nonces,
        )

    def _refuse(self, outcome: DPoPError, status: int) -> web.Response:
        headers = {"WWW-Authenticate": f'DPoP error="{outcome.failure.error}"'}
        if outcome.failure is ProofFailure.USE_NONCE:
            self.nonce_challenges += 1
            headers["DPoP-Nonce"] = self.nonces.current()
        return web.json_response({"error": outcome.failure.error}, status=status, headers=headers)

    async def token(self, request: web.Request) -> web.Response:
        outcome = await self._verify(request, None)
        if isinstance(outcome, DPoPError):
            return self._refuse(outcome, 400)
        token = uuid.uuid4().hex
        self.bound[token] = outcome.jkt
        return web.json_response({"access_token": token, "token_type": "DPoP", "expires_in": 60})

    async def orders(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        outcome = await self._verify(request, token)
        if isinstance(outcome, DPoPError):
            return self._refuse(outcome, 401)
        if scheme != "DPoP" or token not in self.bound or not binding_matches(self.bound[token], outcome):
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"jkt": outcome.jkt})


@pytest.fixture
async def dpop_server() -> AsyncIterator[DPoPServer]:
    server = DPoPServer()
    await server.start()
    yield server
    await server.stop()


async def run_client(*args: str) -> tuple[int, str, str]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "tools" / "dpop_client.py"), *args,
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


async def test_the_client_gets_a_bound_token_and_uses_it_answering_nonce_challenges(
    dpop_server: DPoPServer, tmp_path: Path
) -> None:
    key_file = tmp_path / "dpop-key.pem"
    code, out, err = await run_client("--key", str(key_file), "--token-endpoint", f"{dpop_server.url}/token",
                                      f"{dpop_server.url}/orders")
    assert code == 0, err
    assert "HTTP 200" in err
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert json.loads(out) == {"jkt": key_thumbprint(key)}
    assert dpop_server.nonce_challenges == 2  # token endpoint and resource each asked once
    assert key_file.stat().st_mode & 0o077 == 0  # the private key is readable by its owner only
    code, out, _ = await run_client("--key", str(key_file), "--print-jkt")
    assert code == 0 and out.strip() == key_thumbprint(key)


async def test_the_client_with_a_token_bound_to_another_key_is_refused(
    dpop_server: DPoPServer, tmp_path: Path
) -> None:
    code, _, err = await run_client("--key", str(tmp_path / "a.pem"), "--token-endpoint", f"{dpop_server.url}/token",
                                    f"{dpop_server.url}/orders")
    assert code == 0, err
    token = next(iter(dpop_server.bound))
    code, out, err = await run_client("--key", str(tmp_path / "b.pem"), "--token", token, f"{dpop_server.url}/orders")
    assert code == 1 and "HTTP 401" in err and "invalid_token" in out


async def test_the_client_sends_nothing_to_a_non_loopback_host(tmp_path: Path) -> None:
    code, _, err = await run_client("--token", "t", "http://api.example/orders")
    assert code != 0 and "not a loopback address" in err


# --- hostile shapes that must be refused, never crash ------------------------------------------


def test_non_string_alg_kty_and_crv_are_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwk = public_jwk(ec_key)
    for header in ({"typ": "dpop+jwt", "alg": ["ES256"], "jwk": jwk},
                   {"typ": "dpop+jwt", "alg": "ES256", "jwk": {**jwk, "crv": ["P-256"]}},
                   {"typ": "dpop+jwt", "alg": "ES256", "jwk": {**jwk, "kty": ["EC"]}}):
        value = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims_for()).encode())}.AAAA"
        refused(check(value), ProofFailure.INVALID, "DPoP proof")
    with pytest.raises(ValueError):
        jwk_thumbprint({"kty": ["EC"]})


def test_deeply_nested_json_is_refused(ec_key: ec.EllipticCurvePrivateKey) -> None:
    nested = b"[" * 1500 + b"]" * 1500  # deeper than the recursion limit, shorter than the length cap
    refused(check(f"{b64(nested)}.{b64(b'{}')}.AAAA"), ProofFailure.INVALID, "not a JSON object")
    header = {"typ": "dpop+jwt", "jwk": public_jwk(ec_key)}
    value = PyJWS().encode(nested, ec_key, algorithm="ES256", headers=header)
    refused(check(value), ProofFailure.INVALID, "not a JSON object")


def test_a_token_that_is_not_ascii_is_compared_not_crashed(ec_key: ec.EllipticCurvePrivateKey) -> None:
    refused(check(proof(ec_key), token="tök\udcff"), ProofFailure.INVALID, "ath does not match")
    with pytest.raises(ValueError):
        public_jwk(b"not a key")


def test_the_dpop_challenge_names_the_error_and_the_algorithms(ec_key: ec.EllipticCurvePrivateKey) -> None:
    algs = frozenset({"PS256", "ES256"})
    assert challenge(algs, "tokengate") == 'DPoP realm="tokengate", algs="ES256 PS256"'
    nonce_error = check(proof(ec_key), settings=NONCE_SETTINGS, nonces=NonceSource())
    assert isinstance(nonce_error, DPoPError)
    assert challenge(algs, 'a "q"', nonce_error) == (
        'DPoP realm="a \\"q\\"", error="use_dpop_nonce", '
        'error_description="the DPoP proof must carry the server\'s nonce", algs="ES256 PS256"'
    )
    unavailable = DPoPError(ProofFailure.UNAVAILABLE, "x")
    assert challenge(algs, "tokengate", unavailable) == 'DPoP realm="tokengate", algs="ES256 PS256"'
