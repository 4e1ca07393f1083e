"""Enforce the gateway's YAML policy inside an aiohttp application.

    from aiohttp import web
    from gateway.middleware import TOKEN_KEY, setup_tokengate

    async def orders(request: web.Request) -> web.Response:
        token = request[TOKEN_KEY]          # the ValidatedToken that passed the policy
        return web.json_response({"sub": token.subject, "scopes": sorted(token.scopes)})

    app = web.Application()
    app.router.add_get("/orders", orders)
    setup_tokengate(app, "gateway.yaml")    # routes, scopes, JWT/introspection, revocation, audit, metrics
    web.run_app(app)

Each request goes through the same ``Decider.decide`` as the proxy and the decision endpoint
(normalised path, route, token, revocation, scopes); a denial is answered here with the
same RFC 6750 response, and every request leaves the same audit record (``mode: middleware``)
and metrics. The routes of the YAML are the allow list: a request no route matches is 404
before any handler runs.

In middleware mode nothing is proxied: ``upstream`` in the routes (and the ``upstreams``
section the schema requires) is not used. ``listen``, ``admin_listen`` and ``decision_listen``
are not opened either; the application exposes ``gateway.metrics.render_latest()`` itself if
it wants a /metrics page.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from urllib.parse import unquote

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from . import tracing
from .audit.record import Exchange
from .config import GatewayConfig, load_config
from .decision import Decision
from .facts import facts_of, new_exchange
from .proxy import HeaderStrip, UnsafeIdentity, drop_cookies, header_key, identity_values, strip_rule
from .reasons import Reason
from .responses import allowed_headers, denial_response
from .runtime import Gateway
from .tokens.token import ValidatedToken

TOKEN_KEY = web.RequestKey("token", ValidatedToken)
"""``request[TOKEN_KEY]``: the validated token (absent on ``auth: none`` routes)."""

TOKENGATE_KEY = web.AppKey("tokengate", Gateway)
"""``app[TOKENGATE_KEY]``: the running Gateway (audit writer, revocation list, pipeline)."""


def token_of(request: web.Request) -> ValidatedToken | None:
    """The validated token of a request, None on a public route."""
    token: ValidatedToken | None = request.get(TOKEN_KEY)
    return token


def setup_tokengate(app: web.Application, config: GatewayConfig | str | os.PathLike[str]) -> Gateway:
    """Enforce ``config`` (a GatewayConfig or the path of a gateway YAML) on every request to ``app``.

    Adds the middleware in front of the application's own middlewares and starts/stops the
    Gateway (audit writer, revocation store, token validation) through ``app.cleanup_ctx``.
    """
    if isinstance(config, GatewayConfig):
        gateway = Gateway(config)
    else:  # a path: a reload-capable Gateway knows where its file is
        path = os.fspath(config)
        gateway = Gateway(load_config(path), path)
    app[TOKENGATE_KEY] = gateway
    app.middlewares.insert(0, tokengate_middleware)
    if gateway.config.tracing.enabled:  # the request's span, around the policy and the handler
        app.middlewares.insert(0, tracing_middleware)
    app.cleanup_ctx.append(_lifecycle(gateway))
    return gateway


def _lifecycle(gateway: Gateway) -> Callable[[web.Application], AsyncIterator[None]]:
    async def tokengate_lifecycle(_: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    return tokengate_lifecycle


@web.middleware
async def tokengate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Decide with ``Decider.decide``; deny here, or call the handler with the token attached."""
    gateway = request.config_dict[TOKENGATE_KEY]
    pipeline = gateway.pipeline
    config = gateway.config
    exchange, _ = new_exchange(request, config, "middleware")
    if pipeline is None:  # not started yet or already stopped: fail closed
        return _deny(gateway, exchange, Decision(Reason.SHUTTING_DOWN))
    pipeline.in_flight += 1  # the pipeline outlives a swap until its decisions are done
    try:
        decision = await pipeline.decider.decide(facts_of(request, pipeline.config, exchange.client_ip))
    finally:
        pipeline.in_flight -= 1
    if not decision.allowed:
        return _deny(gateway, exchange, decision)
    assert decision.target is not None
    if unquote(decision.target.path) != request.rel_url.path:
        # aiohttp routes the path as sent; the policy judged the normalised one. They must be
        # the same handler's path, or "/admin/../public/x" would reach /admin/{tail} as public.
        return _deny(gateway, exchange, replace(decision, reason=Reason.BAD_PATH))
    try:
        strip = strip_rule(decision.route.config if decision.route is not None else None, config)
        handler_request = _with_identity(request, decision.token, config, strip, decision.claim_headers)
    except UnsafeIdentity:  # never for a token built from claims: they are refused when validated
        return _deny(gateway, exchange, replace(decision, reason=Reason.INVALID_CLAIM, token=None))
    try:
        response = await handler(handler_request)
    except web.HTTPException as exc:
        exchange.status = exc.status
        gateway.record(exchange, decision)
        raise
    except asyncio.CancelledError:
        exchange.status = 499
        gateway.record(exchange, replace(decision, reason=Reason.CLIENT_DISCONNECTED))
        raise
    except Exception:
        exchange.status = 500
        gateway.record(exchange, decision)
        raise
    exchange.status = response.status
    if isinstance(response, web.Response) and response.body is not None:
        exchange.bytes_out = response.content_length or 0
    if not response.prepared:  # a streamed answer already sent its head: the nonce waits for the next one
        for name, value in allowed_headers(decision):
            response.headers[name] = value
    gateway.record(exchange, decision)
    return response


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request's span (docs/tracing.md); only installed when the configuration enables tracing."""
    active = tracing.ACTIVE
    if active is None:  # OTEL_SDK_DISABLED, or another gateway of this process owns tracing... and stopped
        return await handler(request)
    return await active.serve(request, request.config_dict[TOKENGATE_KEY], "middleware", handler(request))


def _deny(gateway: Gateway, exchange: Exchange, decision: Decision) -> web.Response:
    response = denial_response(decision, gateway.config.realm, exchange.request_id)
    exchange.status = response.status
    exchange.bytes_out = response.content_length or 0
    gateway.record(exchange, decision)
    return response


def _with_identity(
    request: web.Request, token: ValidatedToken | None, config: GatewayConfig, strip: HeaderStrip,
    claims: tuple[tuple[str, str], ...] = (),
) -> web.Request:
    """The request the handler sees: the token attached, identity headers set by us, never by the client.

    The same rules as in proxy mode: whatever the client sent as ``X-Auth-Subject`` (or the
    configured names), under a ``strip_request_headers`` or claim header name, or in the route's
    ``token_source`` header or cookie is dropped, and the values of the validated token (identity
    and ``claims``) are set instead. Raises UnsafeIdentity when they cannot be header values.
    """
    identity = config.identity_headers
    values = identity_values(token, identity) if token is not None else None
    if token is not None:
        request[TOKEN_KEY] = token
    names = _dropped_names(strip, identity.names())

    def dropped(name: str) -> bool:
        key = header_key(name)
        return key in names or key.startswith(strip.prefixes)

    cookies = bool(strip.cookies) and "Cookie" in request.headers
    if token is None and not cookies and not any(dropped(name) for name in request.headers):
        return request
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in request.headers.items() if not dropped(name)
    )
    if values is not None:
        headers.extend(values)
    headers.extend(claims)
    if cookies:
        drop_cookies(headers, strip.cookies)
    clone = request.clone(headers=headers)
    assert isinstance(clone, web.Request)
    return clone


def _dropped_names(strip: HeaderStrip, identity_names: tuple[str, str, str]) -> frozenset[str]:
    """The names the handler never sees from the client (computed once per rule and identity names)."""
    key = (strip, identity_names)
    names = _DROPPED_NAMES.get(key)
    if names is None:
        if len(_DROPPED_NAMES) >= 256:
            _DROPPED_NAMES.clear()
        names = _DROPPED_NAMES[key] = strip.names | {header_key(name) for name in identity_names}
    return names


_DROPPED_NAMES: dict[tuple[HeaderStrip, tuple[str, str, str]], frozenset[str]] = {}
