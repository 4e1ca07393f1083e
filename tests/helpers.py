"""Test helpers: the base gateway configuration and handle, a raw HTTP/1.1 client, free ports, metric samples.

aiohttp's client (and yarl) normalise URLs before sending them, which would hide exactly
the ``..``, ``%2e`` and ``%2f`` forms the gateway has to handle; ``raw_request`` writes the
request target byte for byte as given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from multidict import CIMultiDict
from prometheus_client import REGISTRY

if TYPE_CHECKING:
    from gateway.demo import DemoIssuer
    from gateway.runtime import Gateway, Pipeline
    from gateway.server import Server

# the smallest valid configuration: one issuer, one upstream, one route
MINIMAL_CONFIG = """\
issuers:
  - issuer: https://as.example
    audiences: [api]
upstreams:
  svc:
    url: http://127.0.0.1:9000
routes:
  - name: r
    path: /r
    upstream: svc
"""


class LoopTurns:
    """Counts the turns the event loop gives to other tasks while the ``async with`` body runs:
    a long job that yields between chunks lets it count up, one that blocks leaves it near 0."""

    def __init__(self) -> None:
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def _spin(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._spin())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(name: str, **labels: str) -> float:
    """The current value of one sample in this process's registry (0 when never counted)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes = b""


def _dechunk(data: bytes) -> bytes:
    out, rest = bytearray(), data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)


async def raw_request(
    url: str, target: str | bytes, method: str = "GET", headers: dict[str, str] | None = None,
    extra_lines: list[str] | None = None, body: bytes = b"", timeout: float = 5.0, host_header: str | None = None,
) -> RawResponse:
    """Send one request with the target exactly as given; read the answer until the server closes."""
    host_port = url.split("://", 1)[1]
    host, port = host_port.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        raw_target = target if isinstance(target, bytes) else target.encode("latin-1")
        lines = [f"Host: {host_header or host_port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        lines += extra_lines or []
        if body:
            lines.append(f"Content-Length: {len(body)}")
        head = method.encode() + b" " + raw_target + b" HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in lines).encode()
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    response = RawResponse(int(status_line.split(" ")[1]))
    for line in header_lines:
        name, _, value = line.partition(":")
        response.headers.add(name.strip(), value.strip())
    if "chunked" in response.headers.get("Transfer-Encoding", ""):
        payload = _dechunk(payload)
    response.body = payload
    return response


AUDIENCE = "https://api.example/orders"


class HasUrl(Protocol):
    """What ``base_config`` needs of an upstream: its URL (an ``EchoUpstream`` or an ``UpstreamAddress``)."""

    @property
    def url(self) -> str: ...


@dataclass(frozen=True)
class UpstreamAddress:
    """An upstream known only by its URL, for configurations that never proxy to it (middleware mode)."""

    url: str


def base_config(issuer: DemoIssuer, upstream: HasUrl, audit_path: Path) -> dict[str, Any]:
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

    @property
    def pipeline(self) -> Pipeline:
        """The gateway's current pipeline; set once the server has started."""
        pipeline = self.gateway.pipeline
        assert pipeline is not None, "the gateway has not started"
        return pipeline

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


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
