"""An issuer whose JWTs are verified locally against its JWKS: the ``IssuerValidator`` for ``validation: jwt``.

``validate`` runs per request on a cache miss; ``start`` loads the keys and keeps refreshing them
in the background.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from ..config import IssuerConfig
from .issuer_validator import RawToken, counted
from .jwks import IssuerKeys
from .jwt import JwtValidator
from .token import ValidatedToken


class JwtIssuer:
    """The keys and the JWT verifier of one issuer configured by name."""

    def __init__(
        self, config: IssuerConfig, session: aiohttp.ClientSession, on_withdrawn: Callable[[str], None],
    ) -> None:
        self.issuer = config.issuer
        self.keys = IssuerKeys(config, session, on_withdrawn)
        self.verifier = JwtValidator(config, self.keys)

    async def validate(self, token: RawToken) -> ValidatedToken:
        """Verify a JWT of this issuer with its keys (counted as a validation)."""
        assert token.header is not None  # the validator sends JWT-shaped tokens only
        return await counted(self.issuer, self.verifier.validate(token.raw, token.header, token.fingerprint))

    def ready(self) -> bool:
        """True once the issuer's keys are loaded."""
        return self.keys.loaded

    async def start(self) -> None:
        """Load the keys once (a failure is logged, readiness stays false) and keep refreshing them."""
        await self.keys.start()

    async def stop(self) -> None:
        """Stop the background refresh."""
        await self.keys.stop()
