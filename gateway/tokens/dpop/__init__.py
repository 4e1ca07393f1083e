"""DPoP (RFC 9449) at the resource server: proof checks, server nonces, key thumbprints.

``proof`` verifies the ``DPoP`` header per request, ``jkt`` binds a token to the proof's key,
``htu`` compares the proof's URI with the request's, ``nonce`` issues the server's nonces and
``signing`` makes proofs on the client side (demo client, tests, benchmarks).
"""

from .htu import normalize_uri, request_uri
from .jkt import (
    access_token_hash,
    binding_matches,
    confirmation,
    jwk_thumbprint,
    key_thumbprint,
    public_jwk,
    replay_key,
    token_jkt,
)
from .nonce import NonceSource
from .outcome import DPoPError, DPoPProof, DPoPSettings, ProofFailure, challenge
from .proof import check_proof, verify_proof
from .signing import ProofRequest, sign_proof

__all__ = [
    "DPoPError", "DPoPProof", "DPoPSettings", "NonceSource", "ProofFailure", "ProofRequest", "access_token_hash",
    "binding_matches", "challenge", "check_proof", "confirmation", "jwk_thumbprint", "key_thumbprint",
    "normalize_uri", "public_jwk", "replay_key", "request_uri", "sign_proof", "token_jkt", "verify_proof",
]
