"""Redis clients for the revocation list: one URL, Sentinel or Cluster (connected at start-up and by the CLI).

redis itself is imported here on first use, so that a gateway without Redis never loads it.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from ..config import RevocationConfig


def client_name(role: str) -> str:
    """CLIENT SETNAME of our connections: an operator (or a test) can find and kill them."""
    return f"tokengate-revocation-{role}-{socket.gethostname()}-{os.getpid()}".replace(" ", "_")[:100]


def connect(config: RevocationConfig, role: str = "rw", retries: int = 2) -> Any:
    """A redis.asyncio client for the configured deployment: URL (redis:// or rediss://), Sentinel or Cluster."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff, NoBackoff

    retry = Retry(ExponentialBackoff(cap=0.5, base=0.02), retries) if retries else Retry(NoBackoff(), 0)
    common: dict[str, Any] = {
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "client_name": client_name(role),
        "retry": retry,
    }
    if config.sentinel is not None:
        from redis.asyncio.connection import parse_url
        from redis.asyncio.sentinel import Sentinel

        # with Sentinel, redis_url only lends its credentials, db and TLS settings (rediss://...?ssl_ca_certs=)
        url_kwargs: dict[str, Any] = dict(parse_url(config.redis_url)) if config.redis_url else {}
        tls = bool(config.redis_url and config.redis_url.startswith("rediss://"))
        tls_options = {k: v for k, v in url_kwargs.items() if k.startswith("ssl_")} if tls else {}
        hosts = [_host_port(h) for h in config.sentinel.hosts]
        password = config.sentinel.password or url_kwargs.get("password")
        sentinel_kwargs: dict[str, Any] = {"password": config.sentinel.password, "socket_connect_timeout": 2.0,
                                           "socket_timeout": 2.0}
        if tls:
            sentinel_kwargs.update(ssl=True, **tls_options)
        sentinel = Sentinel(
            hosts, sentinel_kwargs=sentinel_kwargs, **({"ssl": True, **tls_options} if tls else {}),
        )
        return sentinel.master_for(
            config.sentinel.service_name, password=password, username=url_kwargs.get("username"),
            db=url_kwargs.get("db", 0), **common,
        )
    if config.redis_url is None:
        raise ValueError("revocation.redis_url (or sentinel) is required for the Redis store")
    if config.cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(config.redis_url, **common)
    from redis.asyncio import Redis

    return Redis.from_url(config.redis_url, **common)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, 26379
    return host.strip("[]"), int(port)
