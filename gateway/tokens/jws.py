"""Compact JWS (RFC 7515) helpers shared by JWT, DPoP, certificate and token-identity code.

Runs per request: base64url without padding, and a token's unverified header and payload. Nothing
here verifies a signature; each caller verifies with its own keys and algorithm rules. It imports
no network code, so that the revocation Python API can read a token's ``exp`` without aiohttp.
"""

from __future__ import annotations

import base64
from typing import Any

import jwt
import orjson


def b64url_decode(segment: str) -> bytes:
    """The bytes of a base64url segment written without its ``=`` padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64url_encode(data: bytes) -> str:
    """base64url without padding: thumbprints, ``ath`` and hashes in JOSE form."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_parts(raw: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Header and unverified payload when ``raw`` is shaped like a JWS compact token, else None."""
    if raw.count(".") != 2:
        return None
    try:
        header = jwt.get_unverified_header(raw)
        payload = orjson.loads(b64url_decode(raw.split(".", 2)[1]))
    except (jwt.PyJWTError, ValueError, TypeError, orjson.JSONDecodeError):
        return None
    if not isinstance(payload, dict):
        return None
    return header, payload
