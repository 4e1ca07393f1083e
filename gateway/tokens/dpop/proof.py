"""DPoP (RFC 9449) proof verification at the resource server, per request.

``verify_proof`` runs the checks of RFC 9449 section 4.3 on the ``DPoP`` request header and
then records the proof's ``jti`` in the replay cache. The ``jti`` is recorded last, after
every other check passed: a copy of a proof sent first to another URL (or with a bad
signature) must not burn the ``jti`` of the legitimate request.

The outcome is a value, never an exception: a ``DPoPProof`` (the RFC 7638 thumbprint of the
proof key, to be compared with the token's ``cnf.jkt``) or a ``DPoPError`` whose ``failure``
says which RFC 9449 section 7.1 error to send and whose ``detail`` is a fixed, client-safe
sentence (it never echoes a value from the request, so it can go into ``error_description``).
"""

from __future__ import annotations

import functools
import hmac
import json
import math
import re
import time
from collections.abc import Sequence
from typing import Any, Final, NotRequired, TypedDict, Unpack

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import get_default_algorithms

from ..jws import b64url_decode
from ..replay import ReplayCache, Seen
from .htu import normalize_uri
from .jkt import THUMBPRINT_MEMBERS, access_token_hash, jwk_thumbprint, replay_key
from .nonce import NonceSource
from .outcome import ASYMMETRIC_ALGORITHMS, DPoPError, DPoPProof, DPoPSettings, ProofFailure

# alg -> (kty, allowed crv): RFC 7518 section 3.4 ties each ES* to one curve
_KEY_SHAPE: Final[dict[str, tuple[str, frozenset[str]]]] = {
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    **{alg: ("RSA", frozenset()) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
}
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

MAX_PROOF_LENGTH: Final = 8192  # bounds the work a hostile header can ask for (an RSA key is ~700 chars)
MAX_JTI_LENGTH: Final = 512
RSA_BITS: Final = (2048, 8192)  # below: too weak (RFC 7518 section 3.3); above: costly to verify
RSA_MAX_EXPONENT: Final = 2**64  # a huge public exponent makes verification as slow as signing

_COMPACT_JWS: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")
_VERIFIERS: Final = {alg: get_default_algorithms()[alg] for alg in ASYMMETRIC_ALGORITHMS}


class _Refused(Exception):
    def __init__(self, failure: ProofFailure, detail: str) -> None:
        super().__init__(detail)
        self.error = DPoPError(failure, detail)


def _invalid(detail: str) -> _Refused:
    return _Refused(ProofFailure.INVALID, detail)


class ProofCheck(TypedDict):
    """The request a proof must match, and how to check it: ``check_proof``'s keyword arguments."""

    access_token: str | None
    method: str
    uri: str
    settings: DPoPSettings
    nonces: NotRequired[NonceSource | None]
    now: NotRequired[float | None]


async def verify_proof(
    values: Sequence[str], *, replay: ReplayCache, **check: Unpack[ProofCheck]
) -> DPoPProof | DPoPError:
    """Every check of RFC 9449 section 4.3 (``check_proof``), then the jti's first use in ``replay``."""
    outcome = check_proof(values, **check)
    if isinstance(outcome, DPoPError):
        return outcome
    seen = await replay.first_use(replay_key(outcome), check["settings"].replay_ttl)
    if seen is Seen.FIRST:
        return outcome
    if seen is Seen.REPLAYED:
        return DPoPError(ProofFailure.REPLAYED, "the DPoP proof was already used")
    return DPoPError(ProofFailure.UNAVAILABLE, "DPoP proofs cannot be checked for replay right now")


def check_proof(
    values: Sequence[str],
    *,
    access_token: str | None,
    method: str,
    uri: str,
    settings: DPoPSettings,
    nonces: NonceSource | None = None,
    now: float | None = None,
) -> DPoPProof | DPoPError:
    """The stateless checks (everything but replay).

    ``values``: every ``DPoP`` header value of the request (exactly one is required).
    ``access_token``: the token sent with the proof (its hash must be the proof's ``ath``), None when none.
    ``uri``: the request's ``scheme://host/path`` as the client addressed it (``request_uri`` builds it).
    """
    if settings.nonce and nonces is None:
        raise ValueError("DPoP nonces are required but no NonceSource was given")
    at = time.time() if now is None else now
    try:
        proof = _single_proof(values)
        header = _header(proof, settings)
        claims = _verified_claims(proof, header)
        _check_request(claims, method, uri)
        iat = _check_time(claims, settings, at)
        jti = _check_token_and_jti(claims, access_token)
        _check_nonce(claims, settings, nonces, at)
    except _Refused as refused:
        return refused.error
    return DPoPProof(jkt=jwk_thumbprint(header["jwk"]), jti=jti, alg=header["alg"], iat=iat)


def _single_proof(values: Sequence[str]) -> str:
    if len(values) != 1:
        raise _invalid("exactly one DPoP header is required")
    proof = values[0].strip()
    if len(proof) > MAX_PROOF_LENGTH or not _COMPACT_JWS.fullmatch(proof):
        raise _invalid("the DPoP header is not a compact JWS")
    return proof


def _header(proof: str, settings: DPoPSettings) -> dict[str, Any]:
    header = _json_segment(proof.partition(".")[0])
    if not isinstance(header, dict):
        raise _invalid("the DPoP proof header is not a JSON object")
    if header.get("typ") != "dpop+jwt":
        raise _invalid("the DPoP proof typ must be dpop+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in settings.algorithms:
        raise _invalid("the DPoP proof alg is not accepted")
    if "crit" in header:
        raise _invalid("the DPoP proof has critical header parameters")
    _check_jwk(header.get("jwk"), alg)
    return header


def _json_segment(segment: str) -> Any:
    try:
        return json.loads(b64url_decode(segment))
    except (ValueError, RecursionError):  # bad base64, UTF-8 or JSON; JSON nested deeper than Python recurses
        return None


def _check_jwk(jwk: Any, alg: str) -> None:
    if not isinstance(jwk, dict):
        raise _invalid("the DPoP proof header has no jwk")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise _invalid("the DPoP proof jwk contains private key material")
    kty, curves = _KEY_SHAPE[alg]
    if jwk.get("kty") != kty or (curves and not (isinstance(jwk.get("crv"), str) and jwk["crv"] in curves)):
        raise _invalid("the DPoP proof jwk does not fit its alg")
    members = THUMBPRINT_MEMBERS[kty]
    if not all(isinstance(jwk.get(m), str) and _BASE64URL.fullmatch(jwk[m]) for m in members if m != "kty"):
        raise _invalid("the DPoP proof jwk is malformed")


def _verified_claims(proof: str, header: dict[str, Any]) -> dict[str, Any]:
    alg = header["alg"]
    signing_input, _, signature = proof.rpartition(".")
    try:
        key = _public_key(alg, _key_members(header["jwk"]))
        valid = _VERIFIERS[alg].verify(signing_input.encode("ascii"), key, b64url_decode(signature))
    except _Refused:
        raise
    except (jwt.PyJWTError, ValueError, TypeError):
        raise _invalid("the DPoP proof cannot be verified with its jwk") from None
    if not valid:
        raise _invalid("the DPoP proof signature is invalid")
    claims = _json_segment(signing_input.partition(".")[2])
    if not isinstance(claims, dict):
        raise _invalid("the DPoP proof payload is not a JSON object")
    return claims


def _key_members(jwk: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The members that make the key (RFC 7638's): other members cannot change what verifies."""
    return tuple((name, jwk[name]) for name in THUMBPRINT_MEMBERS[jwk["kty"]])


@functools.lru_cache(maxsize=4096)
def _public_key(alg: str, members: tuple[tuple[str, str], ...]) -> Any:
    """The key object of a proof's jwk. A client signs every proof with the same key, and building
    (and validating) the key is dearer than the signature check: cached by its members."""
    key = jwt.PyJWK(dict(members), algorithm=alg).key
    _check_rsa_size(key)
    return key


def _check_rsa_size(key: Any) -> None:
    if not isinstance(key, rsa.RSAPublicKey):
        return
    if not RSA_BITS[0] <= key.key_size <= RSA_BITS[1] or key.public_numbers().e > RSA_MAX_EXPONENT:
        raise _invalid("the DPoP proof RSA key size is not accepted")


def _check_request(claims: dict[str, Any], method: str, uri: str) -> None:
    if claims.get("htm") != method:
        raise _invalid("the DPoP proof htm does not match the request method")
    htu = claims.get("htu")
    expected = normalize_uri(uri)
    if expected is None:
        raise _invalid("the request URI cannot be compared with the DPoP proof htu")
    if not isinstance(htu, str) or normalize_uri(htu) != expected:
        raise _invalid("the DPoP proof htu does not match the request URI")


def _check_time(claims: dict[str, Any], settings: DPoPSettings, now: float) -> float:
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or not math.isfinite(iat):
        raise _invalid("the DPoP proof iat is missing or not a number")
    if iat < now - settings.max_age:
        raise _invalid("the DPoP proof is too old")
    if iat > now + settings.leeway:
        raise _invalid("the DPoP proof iat is in the future")
    return float(iat)


def _check_token_and_jti(claims: dict[str, Any], access_token: str | None) -> str:
    if access_token is not None:
        ath = claims.get("ath")
        if not isinstance(ath, str):
            raise _invalid("the DPoP proof has no ath for the access token")
        if not hmac.compare_digest(ath.encode("utf-8", "surrogatepass"), access_token_hash(access_token).encode()):
            raise _invalid("the DPoP proof ath does not match the access token")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise _invalid("the DPoP proof jti is missing or malformed")
    return jti


def _check_nonce(claims: dict[str, Any], settings: DPoPSettings, nonces: NonceSource | None, now: float) -> None:
    if not settings.nonce or nonces is None:
        return  # a nonce the gateway did not ask for (e.g. the authorization server's) is not ours to judge
    nonce = claims.get("nonce")
    if nonce is None:
        raise _Refused(ProofFailure.USE_NONCE, "the DPoP proof must carry the server's nonce")
    if not isinstance(nonce, str):
        raise _invalid("the DPoP proof nonce is not a string")
    if not nonces.accepts(nonce, now):
        raise _Refused(ProofFailure.USE_NONCE, "the DPoP proof's nonce is stale or unknown")
