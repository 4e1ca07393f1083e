"""Shared fixtures: real servers on 127.0.0.1 (issuer, upstream, gateway) and a real redis-server.

Nothing here is a mock: the issuer signs with real RSA/EC keys, the upstream is an aiohttp
server, the gateway listens on real sockets, and Redis is a redis-server process.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from pytest_redis import factories

from gateway.config import parse_config
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.runtime import Gateway
from gateway.server import Server

AUDIENCE = "https://api.example/orders"

redis_proc = factories.redis_proc(port=None, executable=shutil.which("redis-server") or "/usr/bin/redis-server")


@pytest.fixture
async def issuer() -> AsyncIterator[DemoIssuer]:
    server = DemoIssuer(audience=AUDIENCE)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[EchoUpstream]:
    server = EchoUpstream()
    await server.start()
    yield server
    await server.stop()


def base_config(issuer: DemoIssuer, upstream: EchoUpstream, audit_path: Path) -> dict[str, Any]:
    """The example configuration pointed at the test servers, on ephemeral ports."""
    return {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "issuers": [{"issuer": issuer.issuer, "audiences": [AUDIENCE], "algorithms": ["RS256", "ES256"],
                     "leeway": "5s", "jwks_min_refresh_interval": "1s"}],
        "upstreams": {"orders": {"url": upstream.url, "timeout": "5s"}},
        "routes": [
            {"name": "list-orders", "path": "/orders", "methods": ["GET"], "upstream": "orders",
             "scopes": ["orders:read"]},
            {"name": "create-order", "path": "/orders", "methods": ["POST"], "upstream": "orders",
             "scopes": ["orders:write"]},
            {"name": "change-order", "path": "/orders/{id}", "methods": ["PUT", "DELETE"], "upstream": "orders",
             "scopes": ["orders:write"]},
            {"name": "order-status", "path": "/orders/{id}/status", "methods": ["GET"], "upstream": "orders",
             "any_scopes": ["orders:read", "orders:admin"]},
            {"name": "health", "path": "/public/health", "upstream": "orders", "auth": "none"},
            {"name": "public-files", "path_prefix": "/public/files", "upstream": "orders", "auth": "none"},
            {"name": "slow", "path_prefix": "/slow", "methods": ["GET"], "upstream": "orders", "auth": "none"},
            {"name": "download", "path_prefix": "/download", "methods": ["GET"], "upstream": "orders",
             "scopes": ["orders:read"]},
        ],
        "audit": {"sink": "file", "path": str(audit_path), "flush_interval": "20ms"},
    }


@dataclass
class RunningGateway:
    server: Server
    gateway: Gateway
    audit_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.ports['proxy']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.server.ports['admin']}"

    def port(self, name: str) -> int:
        return self.server.ports[name]

    async def audit_records(self) -> list[dict[str, Any]]:
        await self.gateway.audit.flush()
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    async def stop(self) -> None:
        if not self.server.stopped.is_set():
            await self.server.stop()


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def make_gateway(
    issuer: DemoIssuer, upstream: EchoUpstream, tmp_path: Path
) -> AsyncIterator[GatewayFactory]:
    """Start gateways: ``await make_gateway(**overrides)`` (top-level keys replace the base config)."""
    started: list[RunningGateway] = []

    async def start(**overrides: Any) -> RunningGateway:
        audit_path = tmp_path / f"audit-{len(started)}.jsonl"
        data = base_config(issuer, upstream, audit_path)
        data.update(overrides)
        config = parse_config(yaml.safe_dump(data), "test.yaml")
        server = Server(Gateway(config))
        await server.start()
        running = RunningGateway(server, server.gateway, audit_path)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
async def gw(make_gateway: GatewayFactory) -> RunningGateway:
    """A gateway on the base configuration."""
    return await make_gateway()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
