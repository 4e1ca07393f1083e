"""Token validation: the validated-token value, JWKS + discovery, JWT, introspection, caches."""

from .token import TokenError, ValidatedToken, fingerprint

__all__ = ["TokenError", "ValidatedToken", "fingerprint"]
