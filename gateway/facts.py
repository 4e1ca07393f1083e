"""What the decision and the audit record know of an aiohttp request: its facts and its empty exchange.

Runs per request, for the proxy, the forward-auth decision port and the middleware alike.
"""

from __future__ import annotations

import time

from aiohttp import web

from .audit.record import Exchange
from .binding import forwarded_authority, forwarded_certificate, forwarded_scheme, presented_certificate, request_scheme
from .config import GatewayConfig
from .decision import RequestFacts
from .proxy import client_address, forwarded_for, is_trusted
from .runtime import request_id
from .tokens.certificates import peer_certificate
from .ws_upgrade import asks_websocket


def new_exchange(
    request: web.BaseRequest, config: GatewayConfig, mode: str, client_ip: str | None = None
) -> tuple[Exchange, str]:
    """The exchange record of a request, and its direct peer address.

    ``client_ip``: as the caller worked it out (the decision port also believes ``X-Real-IP``),
    else from ``X-Forwarded-For`` after ``trusted_proxies``."""
    peer = request.remote or ""
    headers = request.headers
    if client_ip is None:
        client_ip = client_address(peer, forwarded_for(headers), config.trusted_proxies)
    exchange = Exchange(
        started=time.time(), started_mono=time.monotonic(),
        request_id=request_id(headers.get("X-Request-Id")),
        client_ip=client_ip,
        method=request.method, host=headers.get("Host", ""), raw_path=request.raw_path,
        user_agent=headers.get("User-Agent", ""), mode=mode,
    )
    return exchange, peer


def facts_of(request: web.BaseRequest, config: GatewayConfig, client_ip: str | None = None) -> RequestFacts:
    """The request as the decision sees it; what the client used and presented, believed from
    a trusted proxy only (``X-Forwarded-Proto``/``-Host``, the forwarded client certificate).
    ``client_ip``: the exchange's (after ``trusted_proxies``), else worked out here."""
    headers = request.headers
    peer = request.remote or ""
    trusted = is_trusted(peer, config.trusted_proxies)
    websocket = "Upgrade" in headers and asks_websocket(headers)
    return RequestFacts(
        method=request.method, raw_target=request.raw_path, host=headers.get("Host", ""),
        authorization=tuple(headers.getall("Authorization", ())), version=request.version,
        dpop=tuple(headers.getall("DPoP", ())), scheme=request_scheme(request, trusted),
        authority=forwarded_authority(headers, trusted),
        client_certificate=presented_certificate(request, config, trusted),
        client_ip=client_address(peer, forwarded_for(headers), config.trusted_proxies) if client_ip is None
        else client_ip,
        websocket=websocket, protocols=tuple(headers.getall("Sec-WebSocket-Protocol", ())) if websocket else (),
        headers=headers,
    )


def exchange_and_facts(
    request: web.BaseRequest, config: GatewayConfig, mode: str
) -> tuple[Exchange, RequestFacts, str, bool]:
    """``new_exchange`` and ``facts_of`` in one pass (the proxy's and the middleware's per-request
    path): the same exchange and facts, each header, the peer and its trust read once. Also
    the direct peer address and whether it is a trusted proxy."""
    headers = request.headers
    peer = request.remote or ""
    trusted_proxies = config.trusted_proxies
    trusted = is_trusted(peer, trusted_proxies)
    client_ip = client_address(peer, forwarded_for(headers), trusted_proxies) if trusted else peer
    method = request.method
    raw_path = request.raw_path
    host = headers.get("Host", "")
    exchange = Exchange(
        started=time.time(), started_mono=time.monotonic(),
        request_id=request_id(headers.get("X-Request-Id")),
        client_ip=client_ip,
        method=method, host=host, raw_path=raw_path,
        user_agent=headers.get("User-Agent", ""), mode=mode,
    )
    websocket = "Upgrade" in headers and asks_websocket(headers)
    secure = request.secure
    if trusted:
        scheme = "https" if secure else forwarded_scheme(headers) or "http"
        certificate = (
            forwarded_certificate(headers, config.client_certificates, True)
            if config.client_certificates is not None else peer_certificate(request) if secure else None
        )
    else:  # the common case: nothing a proxy says is believed
        scheme = "https" if secure else "http"
        certificate = peer_certificate(request) if secure else None  # plain HTTP: no TLS, no certificate
    facts = RequestFacts(
        method=method, raw_target=raw_path, host=host,
        authorization=tuple(headers.getall("Authorization", ())), version=request.version,
        dpop=tuple(headers.getall("DPoP", ())), scheme=scheme,
        authority=forwarded_authority(headers, trusted) if trusted else "",
        client_certificate=certificate, client_ip=client_ip,
        websocket=websocket, protocols=tuple(headers.getall("Sec-WebSocket-Protocol", ())) if websocket else (),
        headers=headers,
    )
    return exchange, facts, peer, trusted
