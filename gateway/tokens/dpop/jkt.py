"""Key thumbprints (RFC 7638) and what binds a token to a DPoP key: ``cnf.jkt``, ``ath``, the replay key.

Runs per request (thumbprints of proof keys, the token's ``cnf.jkt``), and on the client side.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ..jws import b64url_encode
from .outcome import DPoPProof

THUMBPRINT_MEMBERS: Final = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
_PRIVATE_KEY_TYPES: Final = (
    ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey,
)

def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of a public EC, RSA or OKP JWK."""
    kty = jwk.get("kty")
    members = THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError("the JWK's kty is not EC, RSA or OKP")
    values = {name: jwk.get(name) for name in members}
    if not all(isinstance(v, str) and v for v in values.values()):
        raise ValueError("the JWK lacks a required member")
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


def public_jwk(key: Any) -> dict[str, str]:
    """The public JWK of a cryptography EC, RSA or Ed25519/Ed448 key (private keys give their public half)."""
    public = key.public_key() if isinstance(key, _PRIVATE_KEY_TYPES) else key
    jwk = _full_jwk(public)
    return {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}


def _full_jwk(public: Any) -> dict[str, Any]:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(public, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return OKPAlgorithm.to_jwk(public, as_dict=True)
    raise ValueError("not an EC, RSA or EdDSA key")


def key_thumbprint(key: Any) -> str:
    """The ``cnf.jkt`` a token bound to this key must carry."""
    return jwk_thumbprint(public_jwk(key))


def confirmation(key: Any) -> dict[str, str]:
    """The ``cnf`` claim of a token bound to ``key`` (RFC 9449 section 6.1): ``{"jkt": ...}``."""
    return {"jkt": key_thumbprint(key)}


def token_jkt(claims: Mapping[str, Any]) -> str | None:
    """The token's ``cnf.jkt`` (JWT claims or introspection answer); None when it is not DPoP-bound.

    Raises ValueError for a malformed binding (``cnf`` not an object, ``jkt`` not a string):
    the caller must refuse such a token rather than treat it as unbound.
    """
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, Mapping):
        raise ValueError("the cnf claim is not an object")
    jkt = cnf.get("jkt")
    if jkt is None:
        return None
    if not isinstance(jkt, str) or not jkt:
        raise ValueError("cnf.jkt is not a string")
    return jkt


def binding_matches(jkt: str, proof: DPoPProof) -> bool:
    """True when the token's ``cnf.jkt`` names the proof's key."""
    return hmac.compare_digest(jkt.encode("utf-8", "surrogatepass"), proof.jkt.encode())


def access_token_hash(access_token: str) -> str:
    """The ``ath`` claim: base64url(SHA-256(access token))."""
    return b64url_encode(hashlib.sha256(access_token.encode("utf-8", "surrogateescape")).digest())


def replay_key(proof: DPoPProof) -> str:
    """The replay-cache key: a hash of the key thumbprint and jti (fixed length, nothing raw stored)."""
    digest = hashlib.sha256(f"{proof.jkt}.{proof.jti}".encode("utf-8", "surrogatepass")).digest()
    return b64url_encode(digest)
