"""Shared fixtures: real servers on 127.0.0.1 (issuer, upstream, gateway) and a real redis-server.

Nothing here is a mock: the issuer signs with real RSA/EC keys, the upstream is an aiohttp
server, the gateway listens on real sockets, and Redis is a redis-server process.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
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
from tests.certs import Issued, issue, make_ca
from tests.helpers import AUDIENCE, GatewayFactory, RunningGateway, base_config
from tests.scripted_upstream import Script, ScriptedUpstream

redis_proc = factories.redis_proc(port=None,  # type: ignore[arg-type]  # None: any free port (pytest-redis)
                                  executable=shutil.which("redis-server") or "/usr/bin/redis-server")



@pytest.fixture
def redis_url(redis_proc: Any) -> str:
    """The session's redis-server (pytest-redis), database 0; each test picks its own key prefix."""
    return f"redis://{redis_proc.host}:{redis_proc.port}/0"

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


# --- a client-certificate PKI (tests/certs.py): one CA and two clients per module -----------------


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


@pytest.fixture(scope="module")
def client(ca: Issued) -> Issued:
    return issue(ca, "client-a")


@pytest.fixture(scope="module")
def other_client(ca: Issued) -> Issued:
    return issue(ca, "client-b")  # same CA, another key: a token bound to ``client`` is not bound to it


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Any]]:
    """Start ``ScriptedUpstream``s: ``await scripted(script, delay=, close_after=)``; stopped after the test."""
    servers: list[ScriptedUpstream] = []

    async def start(script: Script, delay: float = 0.0, close_after: bool = False) -> ScriptedUpstream:
        server = ScriptedUpstream(script, delay, close_after)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
