"""The client side of DPoP: making a proof (the demo client, tests, benchmarks); never run by the gateway."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt

from .jkt import access_token_hash, public_jwk


@dataclass(frozen=True, slots=True)
class ProofRequest:
    """The request a client-side proof is made for; unset ``iat``/``jti`` are filled in when signing."""

    method: str
    url: str
    access_token: str | None = None
    nonce: str | None = None
    iat: float | None = None
    jti: str | None = None
    extra_claims: dict[str, Any] = field(default_factory=dict)


def default_algorithm(key: Any) -> str:
    """ES256/ES384/ES512 by curve for EC keys, PS256 for RSA, EdDSA for Ed25519/Ed448."""
    jwk = public_jwk(key)
    if jwk["kty"] == "EC":
        return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[jwk["crv"]]
    return "PS256" if jwk["kty"] == "RSA" else "EdDSA"


def sign_proof(private_key: Any, request: ProofRequest, alg: str | None = None) -> str:
    """A DPoP proof for ``request`` signed with ``private_key`` (query and fragment left out of htu)."""
    parts = urlsplit(request.url)
    claims: dict[str, Any] = {
        "jti": request.jti or str(uuid.uuid4()),
        "htm": request.method,
        "htu": f"{parts.scheme}://{parts.netloc}{parts.path or '/'}",
        "iat": int(time.time()) if request.iat is None else request.iat,
        **request.extra_claims,
    }
    if request.access_token is not None:
        claims["ath"] = access_token_hash(request.access_token)
    if request.nonce is not None:
        claims["nonce"] = request.nonce
    headers = {"typ": "dpop+jwt", "jwk": public_jwk(private_key)}
    return jwt.encode(claims, private_key, algorithm=alg or default_algorithm(private_key), headers=headers)
