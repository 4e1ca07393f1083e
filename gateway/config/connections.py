"""The sections that name other servers: upstreams (and TLS to them), the revocation list's Redis, DPoP's.

Checked when the file loads; the proxy and the stores connect with the result.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from .values import Duration, HttpUrl, Model


def _verify_on(value: bool) -> bool:
    if value is not True:
        raise ValueError("certificate verification cannot be turned off: give the upstream's CA bundle in ca_file "
                         "(or its self-signed certificate), and server_name when it names another host")
    return value


class UpstreamTLSConfig(Model):
    """TLS to an https:// upstream (gateway/upstream_tls.py): always verified."""

    ca_file: str | None = Field(default=None, min_length=1)  # PEM bundle; none: the system's trust store
    certificate: str | None = Field(default=None, min_length=1)  # client certificate (PEM, chain after it): mTLS
    key: str | None = Field(default=None, min_length=1)  # its private key (PEM, unencrypted)
    server_name: str | None = Field(default=None, min_length=1)  # SNI, and the name the certificate must carry
    minimum_version: Annotated[Literal["1.2", "1.3"], BeforeValidator(str)] = "1.2"
    verify: Annotated[bool, AfterValidator(_verify_on)] = True

    @model_validator(mode="after")
    def _pair(self) -> UpstreamTLSConfig:
        if (self.certificate is None) != (self.key is None):
            raise ValueError("a client certificate needs both certificate and key")
        return self


class UpstreamConfig(Model):
    """One upstream the routes forward to: its URL, timeouts, connection pool and TLS."""

    url: HttpUrl
    timeout: Duration = 30.0
    connect_timeout: Duration = 5.0
    # how long one write of a streamed answer may wait for the client to take it (nginx's send_timeout):
    # a client that stops reading would otherwise hold an upstream connection, a pool slot, for ever
    client_send_timeout: Duration = 60.0
    max_connections: int = Field(default=256, ge=1)
    preserve_host: bool = False
    forward_authorization: bool = True
    tls: UpstreamTLSConfig | None = None  # for an https:// url; without it: verified against the system's CAs

    @model_validator(mode="after")
    def _tls_for_https(self) -> UpstreamConfig:
        if self.tls is not None and not self.url.startswith("https://"):
            raise ValueError("tls: applies to an https:// url only")
        return self


class SentinelConfig(Model):
    """Redis Sentinel in front of the revocation list's Redis."""

    hosts: list[str] = Field(min_length=1)
    service_name: str
    password: str | None = None


class RevocationSnapshotConfig(Model):
    """The signed start-up snapshot of the revocation list in Redis (docs/revocation.md): opt-in.

    The key signs and checks it: a secret of at least 32 bytes that every gateway of the fleet
    shares and nothing else holds, in a file (``key_file``) or an environment variable (``key_env``).
    """

    key_file: str | None = Field(default=None, min_length=1)
    key_env: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_key(self) -> RevocationSnapshotConfig:
        if (self.key_file is None) == (self.key_env is None):
            raise ValueError("the snapshot needs its signing key: key_file or key_env (one of them)")
        return self


class RevocationConfig(Model):
    """Where the revocation list lives; no redis_url means an in-memory list (one instance)."""

    redis_url: str | None = None
    sentinel: SentinelConfig | None = None
    cluster: bool = False
    key_prefix: str = "gateway:revoked:"
    family_claim: str = "sid"
    max_staleness: Duration = 10.0
    default_ttl: Duration = 86400.0
    resync_interval: Duration = 30.0
    snapshot: RevocationSnapshotConfig | None = None  # none: every process loads every key at start

    @property
    def shared(self) -> bool:
        """Whether the list lives in Redis, shared by every worker and replica (else each process has its own)."""
        return self.redis_url is not None or self.sentinel is not None



def _replay_url(value: str | None) -> str | None:
    if value is not None and value != "none" and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{value!r} is not a redis://, rediss:// or unix:// URL (or none: in memory)")
    return value


class DPoPConfig(Model):
    """Where DPoP proofs are remembered (replay) and how the gateway's nonces are made."""

    # the jti replay cache; none given: the revocation list's Redis (else in memory); "none": in memory
    redis_url: Annotated[str | None, AfterValidator(_replay_url)] = None
    key_prefix: str = Field(default="gateway:dpop:jti:", min_length=1)
    timeout: Duration = Field(default=1.0, gt=0)  # waiting for Redis before a proof is refused (503)
    max_outage: Duration = 0.0  # how long this process's own memory stands in for an unreachable Redis
    max_entries: int = Field(default=100_000, ge=1)  # the in-memory cache (and the local copy beside Redis)
    nonce_secret_env: str | None = "GATEWAY_DPOP_NONCE_SECRET"  # shared by replicas; unset: per process
    nonce_period: Duration = Field(default=60.0, gt=0)  # a nonce is accepted for one to two periods

