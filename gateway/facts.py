"""What the decision and the audit record know of an aiohttp request: its facts and its empty exchange.

Runs per request, for the proxy, the forward-auth decision port and the middleware alike.
"""

from __future__ import annotations

import time

from aiohttp import web

from .audit.record import Exchange
from .binding import forwarded_authority, presented_certificate, request_scheme
from .config import GatewayConfig
from .decision import RequestFacts
from .proxy import client_address, forwarded_for, is_trusted
from .runtime import request_id
from .ws_upgrade import asks_websocket


def new_exchange(
    request: web.BaseRequest, config: GatewayConfig, mode: str, client_ip: str | None = None
) -> tuple[Exchange, str]:
    """The exchange record of a request, and its direct peer address.

    ``client_ip``: as the caller worked it out (the decision port also believes ``X-Real-IP``),
    else from ``X-Forwarded-For`` after ``trusted_proxies``."""
    peer = request.remote or ""
    if client_ip is None:
        client_ip = client_address(peer, forwarded_for(request.headers), config.trusted_proxies)
    return _exchange(request, client_ip, mode), peer


def facts_of(request: web.BaseRequest, config: GatewayConfig, client_ip: str | None = None) -> RequestFacts:
    """The request as the decision sees it; what the client used and presented, believed from
    a trusted proxy only (``X-Forwarded-Proto``/``-Host``, the forwarded client certificate).
    ``client_ip``: the exchange's (after ``trusted_proxies``), else worked out here."""
    peer = request.remote or ""
    if client_ip is None:
        client_ip = client_address(peer, forwarded_for(request.headers), config.trusted_proxies)
    return _facts(request, config, is_trusted(peer, config.trusted_proxies), client_ip)


def exchange_and_facts(
    request: web.BaseRequest, config: GatewayConfig, mode: str
) -> tuple[Exchange, RequestFacts, str, bool]:
    """``new_exchange`` and ``facts_of`` in one pass (the proxy's per-request path): the peer and
    its trust worked out once. Also the direct peer address and whether it is a trusted proxy."""
    peer = request.remote or ""
    trusted = is_trusted(peer, config.trusted_proxies)
    client_ip = client_address(peer, forwarded_for(request.headers), config.trusted_proxies) if trusted else peer
    return _exchange(request, client_ip, mode), _facts(request, config, trusted, client_ip), peer, trusted


def _exchange(request: web.BaseRequest, client_ip: str, mode: str) -> Exchange:
    headers = request.headers
    return Exchange(
        started=time.time(), started_mono=time.monotonic(),
        request_id=request_id(headers.get("X-Request-Id")),
        client_ip=client_ip,
        method=request.method, host=headers.get("Host", ""), raw_path=request.raw_path,
        user_agent=headers.get("User-Agent", ""), mode=mode,
    )


def _facts(request: web.BaseRequest, config: GatewayConfig, peer_trusted: bool, client_ip: str) -> RequestFacts:
    headers = request.headers
    websocket = "Upgrade" in headers and asks_websocket(headers)
    return RequestFacts(
        method=request.method, raw_target=request.raw_path, host=headers.get("Host", ""),
        authorization=tuple(headers.getall("Authorization", ())), version=request.version,
        dpop=tuple(headers.getall("DPoP", ())), scheme=request_scheme(request, peer_trusted),
        authority=forwarded_authority(headers, peer_trusted),
        client_certificate=presented_certificate(request, config, peer_trusted),
        client_ip=client_ip,
        websocket=websocket, protocols=tuple(headers.getall("Sec-WebSocket-Protocol", ())) if websocket else (),
        headers=headers,
    )
