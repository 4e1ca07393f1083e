"""The Python API for authorization servers: revoke into the gateways' Redis without a gateway config.

    from gateway.revocation import Revoker

    async with Revoker("redis://redis.internal:6379/0", issuer="https://as.example") as revoker:
        await revoker.revoke_family("8f1c...")                 # refresh-token reuse detected
        await revoker.revoke_token(raw_access_token)           # hashed here, never sent anywhere
        await revoker.revoke_subject("alice")                  # force re-authentication
        await revoker.revoke_jti("4f1c...", issuer="*")        # deliberately: that jti at every issuer

``SyncRevoker`` offers the same methods for synchronous code (Django, Flask). Both write the
schema of ``gateway.revocation.schema``: one key per entry with its TTL plus one stream message.
Every entry belongs to one issuer: the ``issuer=`` of the call, else the revoker's ``issuer``,
else the only issuer of the configuration (``from_config``); a jti, token or family revocation
that names none of these raises ``ValueError`` (``IssuerNeeded``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any, Generic, TypeVar

from ..config import GatewayConfig, RevocationConfig
from ..tokens.issuer_pattern import issuer_map
from .entries import Entry
from .entry_factory import EntryFactory
from .schema import DEFAULT_PREFIX, STREAM_MAXLEN, Schema, write_entry, write_entry_sync

When = float | int | str | datetime | None
Result = TypeVar("Result")


def factory_for(config: GatewayConfig) -> EntryFactory:
    """The TTL policy of a gateway configuration: each issuer's max_token_lifetime, else default_ttl."""
    lifetimes = issuer_map(config.issuers, lambda issuer: issuer.max_token_lifetime)
    return EntryFactory(
        default_ttl=config.revocation.default_ttl,
        # a tenant of a templated issuer has its template's lifetime, and entries name the tenant's issuer
        lifetimes=lifetimes, issuers=tuple(issuer.issuer for issuer in config.issuers), accepts=lifetimes.covers,
        introspected=frozenset(issuer.issuer for issuer in config.issuers if issuer.introspection is not None),
    )


class _Revocations(Generic[Result]):
    """What both revokers share: the schema, the TTL policy, the client and every ``revoke_*``.

    Each ``revoke_*`` builds its entry (ValueError for bad input, raised at the call) and
    hands it to ``revoke``, which the subclass defines as a coroutine or a plain call.
    """

    _asyncio = True

    def __init__(self, redis_url: str | None = None, *, client: Any = None, key_prefix: str = DEFAULT_PREFIX,
                 cluster: bool = False, default_ttl: float = 86400.0, lifetimes: dict[str, float] | None = None,
                 stream_maxlen: int = STREAM_MAXLEN, issuer: str | None = None) -> None:
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise ValueError("issuer must be a non-empty string ('*' for every issuer)")
        self.schema = Schema.for_prefix(key_prefix, cluster)
        # issuer: whose tokens this revoker revokes when a call names none (an authorization server's own)
        self.entries = EntryFactory(default_ttl, lifetimes, default_issuer=issuer)
        self.stream_maxlen = stream_maxlen
        self._owned = client is None
        if client is None:
            if redis_url is None:
                raise ValueError(f"{type(self).__name__} needs a redis_url or a client")
            client = _redis_client(redis_url, cluster, self._asyncio)
        self.client = client

    def revoke(self, entry: Entry) -> Result:
        """Write any entry (key + notification); gives back the entry as written."""
        raise NotImplementedError

    def revoke_jti(self, jti: str, *, issuer: str | None = None, ttl: float | None = None,
                   expires_at: float | None = None, reason: str = "") -> Result:
        return self.revoke(self.entries.jti(jti, issuer=issuer, ttl=ttl, expires_at=expires_at, reason=reason))

    def revoke_fingerprint(self, fingerprint: str, *, issuer: str | None = None, ttl: float | None = None,
                           expires_at: float | None = None, reason: str = "") -> Result:
        return self.revoke(
            self.entries.fingerprint(fingerprint, issuer=issuer, ttl=ttl, expires_at=expires_at, reason=reason)
        )

    def revoke_token(self, token: str, *, issuer: str | None = None, ttl: float | None = None,
                     reason: str = "") -> Result:
        """Revoke a raw token by its SHA-256 fingerprint, computed here."""
        return self.revoke(self.entries.token(token, issuer=issuer, ttl=ttl, reason=reason))

    def revoke_family(self, family: str, *, issuer: str | None = None, ttl: float | None = None,
                      reason: str = "") -> Result:
        return self.revoke(self.entries.family(family, issuer=issuer, ttl=ttl, reason=reason))

    def revoke_subject(self, sub: str, issuer: str | None = None, before: When = None, *,
                       ttl: float | None = None, reason: str = "") -> Result:
        return self.revoke(self.entries.subject(sub, issuer=issuer, before=before, ttl=ttl, reason=reason))

    def revoke_client(self, client_id: str, before: When = None, *, issuer: str | None = None,
                      ttl: float | None = None, reason: str = "") -> Result:
        return self.revoke(self.entries.client(client_id, issuer=issuer, before=before, ttl=ttl, reason=reason))


def _redis_client(redis_url: str, cluster: bool, use_asyncio: bool) -> Any:
    """A redis-py client for a URL: asyncio or synchronous, single node or cluster."""
    if use_asyncio:
        from redis.asyncio import Redis
        from redis.asyncio.cluster import RedisCluster
    else:
        from redis import Redis  # type: ignore[assignment]
        from redis.cluster import RedisCluster  # type: ignore[assignment]
    factory = RedisCluster if cluster else Redis
    return factory.from_url(redis_url, socket_connect_timeout=2.0, socket_timeout=5.0)


class Revoker(_Revocations[Awaitable[Entry]]):
    """Asynchronous revoker (redis.asyncio). Each ``revoke_*`` is awaited and returns the entry it wrote.

    ``ttl`` overrides the entry lifetime (seconds); by default it is ``default_ttl``, or the
    issuer's lifetime from ``lifetimes`` when an issuer is named. ``before`` accepts epoch
    seconds, an ISO-8601 string with a zone, or an aware datetime (default: now). ``issuer``
    (constructor) is the issuer a call without ``issuer=`` revokes for; ``"*"`` is every issuer.
    """

    @classmethod
    def from_config(cls, config: GatewayConfig | RevocationConfig) -> Revoker:
        """A revoker for the Redis deployment of a gateway configuration (URL, Sentinel or Cluster),
        with its issuers: a call without ``issuer=`` means the only one, and an unknown issuer is refused."""
        from .redis_client import connect

        revocation = config.revocation if isinstance(config, GatewayConfig) else config
        revoker = cls(client=connect(revocation, "cli", retries=2), key_prefix=revocation.key_prefix,
                      cluster=revocation.cluster, default_ttl=revocation.default_ttl)
        if isinstance(config, GatewayConfig):
            revoker.entries = factory_for(config)
        revoker._owned = True
        return revoker

    async def revoke(self, entry: Entry) -> Entry:
        await write_entry(self.client, self.schema, entry, self.stream_maxlen)
        return entry

    async def aclose(self) -> None:
        if self._owned:
            await self.client.aclose()

    async def __aenter__(self) -> Revoker:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


class SyncRevoker(_Revocations[Entry]):
    """The same operations with the synchronous redis client."""

    _asyncio = False

    def revoke(self, entry: Entry) -> Entry:
        write_entry_sync(self.client, self.schema, entry, self.stream_maxlen)
        return entry

    def close(self) -> None:
        if self._owned:
            self.client.close()

    def __enter__(self) -> SyncRevoker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
