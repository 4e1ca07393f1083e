"""Who may call the admin revocation endpoints (per request): the shared secret or an admin JWT.

Every endpoint needs ``Authorization: Bearer <credential>``: either the shared secret from
the environment variable named by ``admin.shared_secret_env`` (compared in constant time),
or a JWT access token from a configured issuer, validated and checked against the revocation
list as on the proxy, that carries ``admin.scope``. Without one: 401. A credential that is not
JWT-shaped is never sent anywhere (no introspection of a mistyped secret). When the token cannot
be checked now (JWKS or introspection down, the revocation list stale): 503.

Whose tokens a caller may revoke: the shared secret, or a token that also carries
``admin.any_issuer_scope``, any issuer's and ``*`` (every issuer); any other admin token only
its own issuer's (naming another issuer or ``*``: 403).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...reasons import Reason
from ...tokens.jws import jwt_parts
from ...tokens.jwt import JwtValidator
from ...tokens.token import TokenError, ValidatedToken, fingerprint
from ...tokens.validator import TokenValidator
from ..entries import ANY_ISSUER
from .responses import forbidden, refused, unauthorized

if TYPE_CHECKING:
    from ...config import AdminAuthConfig
    from ...runtime import Gateway

log = logging.getLogger("gateway.revocation.intake")

MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class Caller:
    """Who called an admin endpoint, and for whose tokens they may revoke.

    The shared secret, and a token with ``admin.any_issuer_scope``, act for any issuer and for
    ``*``; an issuer's admin token acts for that issuer only.
    """

    issuer: str | None  # the admin token's issuer; None for the shared secret
    any_issuer: bool

    def may_act_for(self, issuer: str) -> bool:
        """Whether this caller may revoke tokens of ``issuer`` (``*``: of every issuer)."""
        return self.any_issuer or (issuer != ANY_ISSUER and issuer == self.issuer)


SHARED_SECRET = Caller(issuer=None, any_issuer=True)


def not_for(admin: AdminAuthConfig, caller: Caller, issuer: str) -> web.Response:
    """403 for an admin token naming another issuer's tokens (or every issuer's)."""
    wanted = admin.any_issuer_scope or admin.scope
    whose = "every issuer's" if issuer == ANY_ISSUER else f"issuer {issuer[:200]!r}'s"
    return forbidden(wanted, f"an admin token of {caller.issuer} may revoke that issuer's tokens only, not "
                             f"{whose}: that needs the shared secret or a token with admin.any_issuer_scope")


class AdminAuth:
    """Authenticates the callers of the admin endpoints against the gateway's current configuration."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._secret_warned = False

    def _shared_secret(self) -> bytes | None:
        name = self.gateway.config.admin.shared_secret_env
        secret = os.environ.get(name) if name else None
        if not secret:
            return None
        if len(secret) < MIN_SECRET_LENGTH:
            if not self._secret_warned:
                self._secret_warned = True
                log.warning("admin shared secret ignored: shorter than 16 characters", extra={"env": name})
            return None
        return secret.encode()

    async def authenticate(self, request: web.Request) -> Caller | web.Response:
        """The caller when they may revoke, else the 401/403 answer (503 when it cannot be checked now)."""
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return unauthorized("")
        secret = self._shared_secret()
        # compare digests: constant time whatever the lengths
        if secret is not None and hmac.compare_digest(
            hashlib.sha256(credential.encode()).digest(), hashlib.sha256(secret).digest()
        ):
            return SHARED_SECRET
        pipeline = self.gateway.pipeline
        # only a JWT can be an admin token: a wrong or unset shared secret is never sent to introspection
        parts = jwt_parts(credential)
        if pipeline is None or parts is None:
            return unauthorized()
        try:
            token = await self._admin_token(pipeline.validator, credential, *parts)
        except TokenError as exc:
            return refused(exc.reason)
        return self._caller(token)

    def _caller(self, token: ValidatedToken) -> Caller | web.Response:
        """The caller a valid admin token stands for, or why it may not call."""
        denied = self.gateway.revocation.check(token)  # the store's check: fails closed when stale
        if denied is not None:
            return refused(denied)
        admin = self.gateway.config.admin
        if admin.scope not in token.scopes:
            return forbidden(admin.scope, f"the token lacks {admin.scope}")
        caller = Caller(token.issuer, admin.any_issuer_scope is not None and admin.any_issuer_scope in token.scopes)
        if not caller.may_act_for(token.issuer):  # an issuer configured as "*" would speak for every issuer
            return not_for(admin, caller, token.issuer)
        return caller

    async def _admin_token(self, validator: TokenValidator, raw: str, header: dict[str, Any],
                           payload: dict[str, Any]) -> ValidatedToken:
        """The admin token, validated as an access token; with ``admin.audiences``, for one of those
        audiences instead of its issuer's (which the configuration keeps apart), so that an admin
        token is not also an API token. Such a token must be a JWT its issuer signs: an issuer that
        introspects cannot say that the token is meant for the admin port."""
        audiences = self.gateway.config.admin.audiences
        if not audiences:
            return await validator.validate(raw)
        issuer = payload.get("iss")
        verifier = validator.jwt.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            raise TokenError(Reason.UNKNOWN_ISSUER, "an admin token must be a JWT of an issuer that signs its tokens")
        admin = JwtValidator(verifier.config.model_copy(update={"audiences": list(audiences)}), verifier.keys)
        return await admin.validate(raw, header, fingerprint(raw))
