"""The upstream services and their keep-alive connection pools (started and stopped with the gateway)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from ..config import ConfigError
from ..upstream_tls import TLSFileProblem, server_name, upstream_context
from .lean import LeanPool

if TYPE_CHECKING:
    from ..config import GatewayConfig, UpstreamConfig


class Upstream:
    """One upstream service: its base URL and its keep-alive connection pool."""

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        self.base = URL(config.url)
        self.host_header = self.base.raw_host or ""
        if self.base.port is not None and not self.base.is_default_port():
            self.host_header += f":{self.base.port}"
        self._base_path = self.base.raw_path.rstrip("/")
        self.server_name = server_name(config)  # SNI and certificate name instead of the URL's host (https)
        self.session: aiohttp.ClientSession | None = None
        self.lean: LeanPool | None = None  # the hot path's client (plain http): lean.py

    async def start(self) -> None:
        try:
            tls = upstream_context(self.config)  # https: verified, with ca_file and a client certificate if set
        except TLSFileProblem as exc:  # the loader checked the files: one went missing since
            raise ConfigError([f"upstreams.{self.name}.tls.{exc.key}: {exc}"]) from None
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections, limit_per_host=self.config.max_connections,
            keepalive_timeout=30, enable_cleanup_closed=False, ssl=tls if tls is not None else True,
        )
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(  # connect: the wait for a free connection as well (504, not a hang)
                total=None, connect=self.config.connect_timeout or None, sock_connect=self.config.connect_timeout,
                sock_read=self.config.timeout,
            ),
        )

        if self.base.scheme == "http" and self.base.raw_host:
            self.lean = LeanPool(self.base.raw_host, self.base.port or 80, self.config.max_connections,
                                 self.config.connect_timeout, self.config.timeout)

    async def stop(self) -> None:
        if self.lean is not None:
            self.lean.close()
        if self.session is not None:
            await self.session.close()

    def path(self, forward_target: str) -> str:
        """The request target sent upstream: the base URL's path, then the route's target."""
        return f"{self._base_path}{forward_target}"

    def url(self, forward_target: str) -> URL:
        return URL(f"{self.base.scheme}://{self.base.raw_authority}{self._base_path}{forward_target}", encoded=True)


class Upstreams:
    def __init__(self, config: GatewayConfig) -> None:
        self.by_name = {name: Upstream(name, c) for name, c in config.upstreams.items()}

    def __getitem__(self, name: str) -> Upstream:
        return self.by_name[name]

    async def start(self) -> None:
        for upstream in self.by_name.values():
            await upstream.start()

    async def stop(self) -> None:
        for upstream in self.by_name.values():
            await upstream.stop()
