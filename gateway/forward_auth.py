"""The forward-auth decision endpoint: "may this request pass?" for an ingress that already runs.

A separate listener (``decision_listen``) answers nginx ``auth_request``, ingress-nginx
``auth-url``, Traefik ForwardAuth and Envoy ``ext_authz`` (HTTP service). It never proxies:
it works out the original request from the check request, runs the one decision path
(``Decider.decide``), and answers

- 200 with the identity headers (``identity_headers``) for the ingress to copy upstream, or
- the same denial the proxy would send (RFC 6750 ``WWW-Authenticate`` and a JSON body),

and records the same audit record (``mode: decision``) and metrics as the proxy.

Where the original request comes from, in this order, among the ``decision_sources`` the
operator names (required with ``decision_listen``: each ingress passes client headers that
another ingress's way of asking would believe, e.g. Envoy forwards a client's ``X-Original-URI``):

1. ``nginx``: ``X-Original-URI`` and/or ``X-Original-URL`` (ingress-nginx), with ``X-Original-Method``;
2. ``traefik``: ``X-Forwarded-Uri`` with ``X-Forwarded-Method``;
3. ``envoy``: the check request's own method and path, minus ``decision_path_prefix``.

A DPoP proof (``Authorization: DPoP`` with a ``DPoP`` header, which the ingress must pass on) is
checked against the original request: its method, and ``scheme://host/path`` from
``X-Forwarded-Proto`` (else the scheme of ``X-Original-URL``, else ``http``), the original host
and target. A forwarded client certificate (``client_certificates.header``) is believed only
when the ingress is in ``trusted_proxies``. ``DPoP-Nonce`` rides on both answers, for the
ingress to pass to the client.

Every statement of the original request must agree: an ingress that passes client headers
through (ingress-nginx, Traefik) would otherwise let a client choose the path that gets
authorised by sending ``X-Original-URI: /public/...`` itself. A check request whose headers
disagree, or that names no original method, is refused (400, ``bad_path``), never guessed.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDictProxy

from . import tracing
from .audit.record import Exchange
from .binding import forwarded_certificate, forwarded_scheme
from .claim_headers import claim_header_names, decision_headers
from .config import ConfigError, GatewayConfig
from .decision import Decision, RequestFacts
from .facts import new_exchange
from .proxy import IPNetwork, UnsafeIdentity, client_address, forwarded_for, identity_values, is_trusted
from .reasons import Reason
from .responses import allowed_headers, denial_response
from .runtime import Gateway
from .ws_upgrade import asks_websocket

log = logging.getLogger("gateway.forward_auth")

SOURCES = ("nginx", "traefik", "envoy")
# RFC 9110 5.6.2 token; methods are case-sensitive and never long
_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$")


class CheckRequestError(ValueError):
    """The check request does not say clearly which request is to be decided."""


@dataclass(frozen=True, slots=True)
class OriginalRequest:
    """The request the ingress asks about, as stated by the check request."""

    source: str  # nginx | traefik | envoy
    method: str
    target: str  # raw request target (origin-form), not yet normalised
    host: str
    scheme: str = "http"  # as the client used it: X-Forwarded-Proto, else X-Original-URL's, else http


def _values(headers: CIMultiDictProxy[str], name: str) -> list[str]:
    return [v.strip() for v in headers.getall(name, ())]


def _agreed(claims: Iterable[str], what: str) -> str | None:
    """The one value all claims agree on, None when there is none; disagreement is an error."""
    distinct = set(claims)
    if len(distinct) > 1:
        raise CheckRequestError(f"the check request states more than one original {what}")
    return distinct.pop() if distinct else None


def _split_url(url: str) -> tuple[str, str]:
    """(raw target, host) of an absolute URL such as ingress-nginx's ``X-Original-URL``; no decoding."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.isalpha():
        raise CheckRequestError("X-Original-URL is not an absolute URL")
    end = len(rest)
    for delimiter in "/?#":
        index = rest.find(delimiter)
        if index != -1:
            end = min(end, index)
    host, target = rest[:end], rest[end:]
    if "@" in host:
        raise CheckRequestError("X-Original-URL carries user information")
    if not target.startswith("/"):
        target = "/" + target
    return target, host


def _host_key(host: str) -> str:
    """A host compared without case and port (route matching ignores the port too)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0]


def original_request(
    method: str, raw_path: str, headers: CIMultiDictProxy[str], path_prefix: str = "",
    sources: Iterable[str] | None = SOURCES,
) -> OriginalRequest:
    """Work out the original request from a check request; raise CheckRequestError when unclear.

    ``sources`` None (not configured) accepts no way of asking: every check is refused.
    """
    enabled = frozenset(sources or ())
    targets: list[tuple[str, str]] = []  # (source, raw target)
    methods: list[str] = []
    hosts: list[str] = []
    schemes: list[str] = []  # from X-Original-URL; X-Forwarded-Proto comes first (a TLS-terminating LB's word)
    if "nginx" in enabled:
        targets += [("nginx", v) for v in _values(headers, "X-Original-URI")]
        for url in _values(headers, "X-Original-URL"):
            url_target, url_host = _split_url(url)
            targets.append(("nginx", url_target))
            hosts.append(url_host)
            schemes.append(url.partition("://")[0].lower())
        methods += _values(headers, "X-Original-Method")
    if "traefik" in enabled:
        targets += [("traefik", v) for v in _values(headers, "X-Forwarded-Uri")]
        methods += _values(headers, "X-Forwarded-Method")
    forwarded_host = headers.get("X-Forwarded-Host")
    if forwarded_host:
        hosts.append(forwarded_host.split(",", 1)[0].strip())
    if not hosts:
        hosts.append(headers.get("Host", ""))
    _agreed((_host_key(h) for h in hosts), "host")

    target: str | None
    original_method: str | None
    if targets:
        source = targets[0][0]
        target = _agreed((t for _, t in targets), "target")
        original_method = _agreed(methods, "method")
        if original_method is None:
            raise CheckRequestError("the check request names the original target but not its method")
    elif "envoy" in enabled:
        source, original_method = "envoy", method
        if not raw_path.startswith(path_prefix):
            raise CheckRequestError("the check path does not start with decision_path_prefix")
        target = raw_path[len(path_prefix):]
    else:
        raise CheckRequestError("the check request does not name the original request")
    assert target is not None and original_method is not None
    if not _METHOD.match(original_method):
        raise CheckRequestError("the original method is not an HTTP method token")
    if not target.startswith("/"):
        raise CheckRequestError("the original target is not an absolute path")
    scheme = forwarded_scheme(headers) or next((s for s in schemes if s in ("http", "https")), "http")
    return OriginalRequest(source, original_method, target, hosts[0], scheme)


def check_facts(
    original: OriginalRequest, headers: CIMultiDictProxy[str], config: GatewayConfig, peer: str,
    client_ip: str = "",
) -> RequestFacts:
    """The original request's facts; a forwarded client certificate only when the ingress is trusted.

    An ``Upgrade: websocket`` the ingress passes on is believed (a route without ``websocket: true``
    refuses it), and so is the token in ``Sec-WebSocket-Protocol``; ``client_ip`` is what ``ip``
    rate limits count by."""
    trusted = is_trusted(peer, config.trusted_proxies)
    websocket = asks_websocket(headers)
    return RequestFacts(
        method=original.method, raw_target=original.target, host=original.host,
        authorization=tuple(headers.getall("Authorization", ())), dpop=tuple(headers.getall("DPoP", ())),
        scheme=original.scheme,
        client_certificate=forwarded_certificate(headers, config.client_certificates, trusted),
        client_ip=client_ip or peer, websocket=websocket,
        protocols=tuple(headers.getall("Sec-WebSocket-Protocol", ())) if websocket else (),
        headers=headers,  # the original request's, as the ingress passes them: a route's token_source
    )


def decision_client_ip(peer: str, headers: CIMultiDictProxy[str], trusted: list[IPNetwork]) -> str:
    """The client IP: X-Forwarded-For, else X-Real-IP, believed only when the peer (the ingress) is trusted."""
    if not is_trusted(peer, trusted):
        return peer
    chain = forwarded_for(headers)
    if chain:
        return client_address(peer, chain, trusted)
    real_ip = headers.get("X-Real-IP", "").strip()
    try:
        ipaddress.ip_address(real_ip)
    except ValueError:
        return peer
    return real_ip


def allow_headers(decision: Decision, config: GatewayConfig, request_id_value: str) -> dict[str, str]:
    """Identity headers for the ingress to copy upstream.

    They are always sent, empty on a public route: an ingress that copies them over the
    client's headers (ingress-nginx, Traefik, Envoy) then never lets a client's own
    ``X-Auth-Subject`` through. Raises UnsafeIdentity when a token value cannot be a header.
    """
    headers = dict(identity_values(decision.token, config.identity_headers))
    headers.update(decision_headers(claim_header_names(config), decision.claim_headers))  # claim_headers, likewise
    headers.update({"Cache-Control": "no-store", "X-Request-Id": request_id_value})
    headers.update(allowed_headers(decision))  # DPoP-Nonce: for the ingress to pass to the client
    return headers


_warned: set[str] = set()


class DecisionHandler:
    """The decision port: work out the original request, decide, answer, record."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        gateway = self.gateway
        pipeline = gateway.pipeline
        assert pipeline is not None
        config = pipeline.config
        headers = request.headers
        client_ip = decision_client_ip(request.remote or "", headers, config.trusted_proxies)
        exchange, peer = new_exchange(request, config, "decision", client_ip)
        try:
            original = original_request(
                request.method, request.raw_path, headers, config.decision_path_prefix, config.decision_sources
            )
        except CheckRequestError as exc:
            self._explain(str(exc))
            decision = Decision(Reason.BAD_PATH)
        else:
            exchange.method, exchange.host, exchange.raw_path = original.method, original.host, original.target
            facts = check_facts(original, headers, config, peer, exchange.client_ip)
            pipeline.in_flight += 1  # a reload retires this pipeline only when its requests are done
            try:
                decision = await pipeline.decider.decide(facts)
            finally:
                pipeline.in_flight -= 1
        decision, response = self._answer(decision, config, exchange)
        exchange.status = response.status
        gateway.record(exchange, decision)
        return response

    @staticmethod
    def _answer(decision: Decision, config: GatewayConfig, exchange: Exchange) -> tuple[Decision, web.Response]:
        if decision.allowed:
            try:
                return decision, web.Response(status=200, headers=allow_headers(decision, config, exchange.request_id))
            except UnsafeIdentity:  # never for a token built from claims: they are refused when validated
                decision = Decision(Reason.INVALID_CLAIM, decision.target, decision.route,
                                    token_fingerprint=decision.token_fingerprint)
        response = denial_response(decision, config.realm, exchange.request_id)
        exchange.bytes_out = response.content_length or 0
        return decision, response

    @staticmethod
    def _explain(problem: str) -> None:
        # a misconfigured ingress shows up once as a warning; a client's stray headers do not flood the log
        if problem in _warned:
            log.debug("check request refused", extra={"problem": problem})
            return
        _warned.add(problem)
        log.warning("check request refused (is the ingress configured as in docs/forward-auth.md?)",
                    extra={"problem": problem})


def decision_app(gateway: Gateway) -> web.Server:
    """The low-level server of the decision port (every path is a check, none is routed)."""
    handler = tracing.server_handler(DecisionHandler(gateway), gateway, "decision")
    return web.Server(handler, access_log=None, handler_cancellation=False)


def decision_runner(gateway: Gateway) -> web.ServerRunner:
    """The decision port's runner (server.py ``listeners`` opens it when ``decision_listen`` is set)."""
    config = gateway.config
    if not config.decision_sources:  # parse_config refuses this; a config built in code may not have been parsed
        raise ConfigError(["decision_listen: decision_sources is required with decision_listen (docs/forward-auth.md)"])
    return web.ServerRunner(decision_app(gateway), shutdown_timeout=config.shutdown_grace, handle_signals=False)


def decision_listening(config: GatewayConfig) -> None:
    """Say that the decision port listens."""
    log.info("decision endpoint listening", extra={"decision_listen": str(config.decision_listen)})
