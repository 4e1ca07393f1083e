"""How the gateway authenticates to an authorization server's endpoints (RFC 6749 2.3.1, RFC 7523).

Keys are loaded and checked by the configuration (``config.files.signing_key``, at
``gateway check-config`` and when a pipeline starts); the form and headers of each call
(``ClientAuth.credentials``) are made per introspection call.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

import jwt

from ..config.files import signing_key

if TYPE_CHECKING:
    from ..config import IntrospectionConfig

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60  # seconds; RFC 7523 client assertions are single-use and short-lived


def basic_authorization(client_id: str, secret: str) -> str:
    """RFC 6749 2.3.1: id and secret are form-urlencoded *before* the Basic encoding (RFC 7617)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


class ClientAuth:
    """The configured client authentication of one issuer's introspection client."""

    def __init__(self, settings: IntrospectionConfig) -> None:
        self.settings = settings
        self.method = settings.auth_method
        self._basic = (
            basic_authorization(settings.client_id, settings.client_secret or "")
            if self.method == "client_secret_basic" else None
        )
        self._private_key: Any = None
        if self.method == "private_key_jwt":
            assert settings.private_key_file is not None  # the config model requires it
            self._private_key = signing_key(settings.private_key_file, settings.private_key_algorithm)
            try:
                self.assertion("https://audience.invalid")
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                raise ValueError(
                    f"introspection private_key_file {settings.private_key_file}: cannot sign "
                    f"{settings.private_key_algorithm}: {exc}"
                ) from None

    @property
    def needs_token_endpoint(self) -> bool:
        """private_key_jwt: the assertion's audience is the token endpoint, learnt from discovery."""
        return self.method == "private_key_jwt"

    def credentials(self, data: dict[str, str], headers: dict[str, str], audience: str) -> None:
        """Add the client authentication to a call's form ``data`` and ``headers``.

        ``audience``: the token endpoint, else the issuer (private_key_jwt only).
        """
        if self.method == "client_secret_basic":
            assert self._basic is not None
            headers["Authorization"] = self._basic
        elif self.method == "client_secret_post":
            data["client_id"] = self.settings.client_id
            data["client_secret"] = self.settings.client_secret or ""
        else:
            data["client_id"] = self.settings.client_id
            data["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            data["client_assertion"] = self.assertion(audience)

    def assertion(self, audience: str) -> str:
        """RFC 7523 2.2 / 3: iss = sub = client_id, aud = the token endpoint (else the issuer)."""
        now = int(time.time())
        claims = {
            "iss": self.settings.client_id,
            "sub": self.settings.client_id,
            "aud": audience,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": secrets.token_urlsafe(24),
        }
        return jwt.encode(
            claims, self._private_key, algorithm=self.settings.private_key_algorithm, headers={"typ": "JWT"}
        )
