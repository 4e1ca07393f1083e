"""The OpenTelemetry half of tracing: imported by ``tracing.start`` only, so never while tracing is off.

Spans (names and attributes after the OpenTelemetry HTTP and database semantic conventions):

- a SERVER span per request on the proxy and decision ports (INTERNAL in middleware mode when the
  application already has a span), named ``GET /orders/{id}`` once the route is known;
- ``tokengate.decision`` (INTERNAL) around the policy, with the route, the reason, the issuer, the
  scopes the route requires, the token fingerprint prefix and never a token or a claim value (the
  subject only with ``include_subject``);
- CLIENT spans for introspection, JWKS and discovery fetches, Redis round trips and the upstream call.

W3C trace context is continued only from a caller the gateway trusts (``trusted_proxies`` or
``trust_incoming``); anyone else's ``traceparent`` starts a new trace and is replaced on the
way upstream, so a client cannot graft its requests onto another trace or pick the sampling.
Exceptions mark a span failed with their type only: their messages may quote URLs or answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import Awaitable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.semconv.attributes import (
    client_attributes,
    db_attributes,
    error_attributes,
    http_attributes,
    network_attributes,
    server_attributes,
    url_attributes,
    user_agent_attributes,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from ..config import ConfigError, TracingConfig
from ..decision import Decider, Decision, RequestFacts
from ..policy import required_scopes
from ..proxy import client_address, forwarded_for, is_trusted
from ..tokens.token import short_fingerprint
from . import Handler

if TYPE_CHECKING:
    from ..audit.record import Exchange
    from ..proxy import Upstream
    from ..runtime import Gateway

log = logging.getLogger("gateway.tracing")

PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_SERVICE_NAME = "tokengate"
ATTRIBUTE_LENGTH = 1024  # characters of one attribute value: a user agent or path is the client's choice
SHUTDOWN_TIMEOUT = 5.0  # seconds stop() waits for queued spans to go out
AnyResponse = TypeVar("AnyResponse", bound=web.StreamResponse)  # a streamed answer, or a WebSocket's
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_TRACE_HEADERS = ("traceparent", "tracestate")


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSettings:
    """Where spans go: the YAML's words first, then the standard ``OTEL_*`` variables, then defaults."""

    protocol: str
    endpoint: str | None  # None: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT or its default
    headers: dict[str, str] | None  # None: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)HEADERS


def export_settings(config: TracingConfig, environ: Mapping[str, str] = os.environ) -> ExportSettings:
    protocol = config.protocol or environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") \
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if protocol not in PROTOCOLS:
        raise ConfigError([f"tracing.protocol: {protocol!r} (from OTEL_EXPORTER_OTLP_PROTOCOL) is not one of "
                           f"{', '.join(PROTOCOLS)}"])
    endpoint = config.endpoint
    if endpoint is not None and protocol == "http/protobuf" and URL(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"  # a collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT
    return ExportSettings(protocol, endpoint, dict(config.headers) if config.headers else None)


def exporter(settings: ExportSettings) -> SpanExporter:
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=settings.endpoint, headers=settings.headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=settings.endpoint, headers=settings.headers)


def resource(config: TracingConfig) -> Resource:
    """service.name from the YAML, else OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, else tokengate."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        attributes: dict[str, str] = {SERVICE_VERSION: version("tokengate")}
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
        attributes = {}
    if config.service_name:
        attributes[SERVICE_NAME] = config.service_name
    created = Resource.create(attributes)
    if str(created.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        created = created.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return created


# --- carriers ------------------------------------------------------------------------------


class _IncomingHeaders(Getter[CIMultiDictProxy[str]]):
    """Request headers as the propagator reads them; two ``traceparent`` lines mean none (W3C 3.2)."""

    def get(self, carrier: CIMultiDictProxy[str], key: str) -> list[str] | None:
        values = carrier.getall(key, ())
        if not values or (key == "traceparent" and len(values) != 1):
            return None
        return list(values)

    def keys(self, carrier: CIMultiDictProxy[str]) -> list[str]:
        return list(carrier.keys())


class _OutgoingHeaders(Setter[MutableMapping[str, str]]):
    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[key] = value


_GETTER = _IncomingHeaders()
_SETTER = _OutgoingHeaders()
_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass
class _Request:
    """The request being served: its server span, its first name (the method) and the mode."""

    span: Span
    name: str
    mode: str


_REQUEST: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("tokengate_request_span", default=None)


class _Call:
    """A client call's span as the call site sees it (``tracing.Call``)."""

    def __init__(self, span: Span, headers: dict[str, str], errors_from: int) -> None:
        self.span = span
        self.headers = headers
        self._errors_from = errors_from

    def status(self, code: int) -> None:
        self.span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, code)
        if code >= self._errors_from:
            _fail(self.span, str(code))


def _fail(span: Span, error_type: str) -> None:
    span.set_attribute(error_attributes.ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR))


def _method(method: str) -> tuple[str, dict[str, Any]]:
    """The method as semantic conventions name it: ``_OTHER`` for one they do not know."""
    if method in _KNOWN_METHODS:
        return method, {http_attributes.HTTP_REQUEST_METHOD: method}
    return "HTTP", {http_attributes.HTTP_REQUEST_METHOD: "_OTHER",
                    http_attributes.HTTP_REQUEST_METHOD_ORIGINAL: method}


def _host_port(host: str) -> tuple[str, int | None]:
    name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not name or not port.isdigit():
        return host, None
    return name, int(port)


def route_template(decision: Decision) -> str | None:
    """``http.route``: the route's path as configured (``/orders/{id}``), a prefix as ``/api/*``."""
    route = decision.route.config if decision.route is not None else None
    if route is None:
        return None
    if route.path is not None:
        return route.path
    if route.path_prefix is not None:
        return route.path_prefix.rstrip("/") + "/*"
    return None


class TracedDecider(Decider):
    """The policy inside a ``tokengate.decision`` span (built instead of ``Decider`` while tracing)."""

    async def decide(self, facts: RequestFacts) -> Decision:
        from . import ACTIVE

        if ACTIVE is None:  # tracing stopped while this pipeline still serves
            return await super().decide(facts)
        return await ACTIVE.decided(super().decide(facts))


# --- the setup -----------------------------------------------------------------------------


class RequestTracing:
    """One process's tracing: the provider, its exporter and the spans of every request."""

    decider_type = TracedDecider

    def __init__(self, config: TracingConfig, provider: TracerProvider) -> None:
        self.config = config
        self.provider = provider
        self.tracer = provider.get_tracer("tokengate", schema_url="https://opentelemetry.io/schemas/1.26.0")

    @classmethod
    def from_config(cls, config: TracingConfig) -> RequestTracing | None:
        """The setup ``config`` asks for; None when OTEL_SDK_DISABLED=true turns the SDK off."""
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            log.info("tracing is enabled in the configuration but OTEL_SDK_DISABLED=true: no spans")
            return None
        settings = export_settings(config)
        sampler = ParentBased(TraceIdRatioBased(config.sample_ratio)) if config.sample_ratio is not None else None
        provider = TracerProvider(
            sampler=sampler, resource=resource(config), shutdown_on_exit=False,
            span_limits=SpanLimits(max_span_attribute_length=ATTRIBUTE_LENGTH),
        )
        # a batch in a thread of its own: an unreachable collector delays no request, spans beyond
        # the queue are dropped (counted by the SDK's own log), never held
        provider.add_span_processor(BatchSpanProcessor(exporter(settings)))
        log.info("tracing on", extra={"protocol": settings.protocol,
                                      "endpoint": settings.endpoint or "(OTEL_EXPORTER_OTLP_* or the default)",
                                      "sample_ratio": config.sample_ratio})
        return cls(config, provider)

    async def aclose(self) -> None:
        """Send what is queued and stop the exporter, waiting SHUTDOWN_TIMEOUT at most.

        In a daemon thread of its own: an exporter retrying an unreachable collector (up to its
        timeout, 10 s by default) neither blocks the event loop nor keeps the process from exiting.
        """
        loop = asyncio.get_running_loop()
        closed = loop.create_future()

        def close() -> None:
            try:
                self.provider.force_flush(int(SHUTDOWN_TIMEOUT * 1000))
                self.provider.shutdown()
            except Exception:  # the exporter's trouble is no reason to fail a shutdown
                log.warning("tracing did not shut down cleanly", exc_info=True)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop may be gone already
                    loop.call_soon_threadsafe(_resolve, closed)

        threading.Thread(target=close, name="tracing-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(closed), SHUTDOWN_TIMEOUT)
        except TimeoutError:
            log.warning("spans still queued after %.0f s are dropped (is the collector reachable?)",
                        SHUTDOWN_TIMEOUT)

    # --- listeners -------------------------------------------------------------------------

    def server_handler(self, handler: Handler, gateway: Gateway, mode: str) -> Handler:
        async def traced(request: web.BaseRequest) -> web.StreamResponse:
            return await self.serve(request, gateway, mode, handler(request))

        return traced

    def _parent(self, request: web.BaseRequest, gateway: Gateway, mode: str) -> tuple[otel_context.Context, SpanKind]:
        """What the request's span continues: a trusted caller's trace, else nothing (a new trace).

        In middleware mode a span of the application's own (its server instrumentation) comes
        first, and ours is an INTERNAL span inside it.
        """
        if mode == "middleware" and trace.get_current_span().get_span_context().is_valid:
            return otel_context.get_current(), SpanKind.INTERNAL
        trusted = self.config.trust_incoming or is_trusted(request.remote or "", gateway.config.trusted_proxies)
        if not trusted:
            return otel_context.Context(), SpanKind.SERVER
        return _PROPAGATOR.extract(request.headers, otel_context.Context(), _GETTER), SpanKind.SERVER

    def _server_attributes(self, request: web.BaseRequest, gateway: Gateway) -> tuple[str, dict[str, Any]]:
        name, attributes = _method(request.method)
        headers = request.headers
        peer = request.remote or ""
        host, port = _host_port(headers.get("Host", ""))
        attributes.update({
            url_attributes.URL_PATH: request.raw_path.partition("?")[0],  # never the query: it may hold a token
            url_attributes.URL_SCHEME: "https" if request.secure else "http",
            server_attributes.SERVER_ADDRESS: host,
            client_attributes.CLIENT_ADDRESS: client_address(peer, forwarded_for(headers),
                                                             gateway.config.trusted_proxies),
            network_attributes.NETWORK_PEER_ADDRESS: peer,
            network_attributes.NETWORK_PROTOCOL_VERSION: f"{request.version.major}.{request.version.minor}",
        })
        if port is not None:
            attributes[server_attributes.SERVER_PORT] = port
        agent = headers.get("User-Agent")
        if agent:
            attributes[user_agent_attributes.USER_AGENT_ORIGINAL] = agent
        return name, attributes

    async def serve(
        self, request: web.BaseRequest, gateway: Gateway, mode: str, answer: Awaitable[web.StreamResponse]
    ) -> web.StreamResponse:
        """Await ``answer`` (the request's handling) inside the request's server span."""
        parent, kind = self._parent(request, gateway, mode)
        name, attributes = self._server_attributes(request, gateway)
        attributes["tokengate.mode"] = mode
        span = self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        state = _REQUEST.set(_Request(span, name, mode))
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                response = await answer
            span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, response.status)
            if response.status >= 500:  # a server span fails on 5xx only: a 4xx is the client's
                _fail(span, str(response.status))
            return response
        except web.HTTPException as exc:  # an application's answer in middleware mode, raised
            span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, exc.status)
            if exc.status >= 500:
                _fail(span, str(exc.status))
            raise
        except BaseException as exc:
            _fail(span, "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__name__)
            raise
        finally:
            _REQUEST.reset(state)
            span.end()

    def note(self, exchange: Exchange) -> None:
        """Give the audit record its request's trace: the server span's ids (or the current span's)."""
        current = _REQUEST.get()
        context = (current.span if current is not None else trace.get_current_span()).get_span_context()
        if context.is_valid:
            exchange.trace_id = trace.format_trace_id(context.trace_id)
            exchange.span_id = trace.format_span_id(context.span_id)

    def log_fields(self) -> dict[str, str]:
        """``trace_id`` and ``span_id`` for a log line written within a span (logs.CONTEXT_FIELDS)."""
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return {}
        return {"trace_id": trace.format_trace_id(context.trace_id), "span_id": trace.format_span_id(context.span_id)}

    # --- the decision ----------------------------------------------------------------------

    async def decided(self, deciding: Awaitable[Decision]) -> Decision:
        """Await ``deciding`` inside the decision span, then describe the outcome on it."""
        with self.tracer.start_as_current_span("tokengate.decision", record_exception=False,
                                               set_status_on_exception=False) as span:
            try:
                decision = await deciding
            except BaseException as exc:
                _fail(span, type(exc).__name__)
                raise
            if span.is_recording():
                span.set_attributes(self.decision_attributes(decision))
                if decision.reason.status >= 500:  # the gateway could not decide (JWKS, introspection...)
                    _fail(span, decision.reason.value)
        current = _REQUEST.get()
        template = route_template(decision)
        if current is not None and current.mode != "decision" and template is not None:
            # the check request of the decision port is not the routed request: its span keeps its name
            current.span.set_attribute(http_attributes.HTTP_ROUTE, template)
            current.span.update_name(f"{current.name} {template}")
        if current is not None and decision.route is not None:
            current.span.set_attribute("tokengate.route", decision.route.name)
        return decision

    def decision_attributes(self, decision: Decision) -> dict[str, Any]:
        """What the decision span says: never a token, never a claim value but ``sub`` when allowed to."""
        reason = decision.reason
        attributes: dict[str, Any] = {"tokengate.decision": reason.decision, "tokengate.reason": reason.value}
        route, token = decision.route, decision.token
        if route is not None:
            attributes["tokengate.route"] = route.name
            attributes["tokengate.required_scopes"] = required_scopes(route)
        if decision.missing_scopes:
            attributes["tokengate.missing_scopes"] = sorted(decision.missing_scopes)
        if decision.token_fingerprint:
            attributes["tokengate.token.fingerprint"] = short_fingerprint(decision.token_fingerprint)
        if decision.scheme:
            attributes["tokengate.token.scheme"] = decision.scheme
            attributes["tokengate.binding"] = decision.binding
        if token is not None:
            attributes["tokengate.issuer"] = token.issuer
            if self.config.include_subject and token.subject:
                attributes["enduser.id"] = token.subject
        if decision.failed_rule is not None:
            attributes["tokengate.rule"] = decision.failed_rule
        return attributes

    # --- calls out -------------------------------------------------------------------------

    async def upstream_call(
        self, call: Awaitable[AnyResponse], headers: CIMultiDict[str], method: str, upstream: Upstream,
    ) -> AnyResponse:
        """Await ``call`` (proxy.forward, not started yet) in a CLIENT span, its traceparent in ``headers``.

        Whatever ``traceparent``/``tracestate`` the client sent is replaced: a trusted caller's
        trace lives on in the span's own context, anyone else's never reaches the upstream.
        """
        name, attributes = _method(method)
        base = upstream.base
        attributes.update({
            server_attributes.SERVER_ADDRESS: base.raw_host or "",
            url_attributes.URL_FULL: str(base.with_user(None).with_query(None).with_fragment(None)),
            "tokengate.upstream": upstream.name,
        })
        if base.port is not None:
            attributes[server_attributes.SERVER_PORT] = base.port
        with self.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes,
                                               record_exception=False, set_status_on_exception=False) as span:
            for header in _TRACE_HEADERS:
                headers.popall(header, None)
            _PROPAGATOR.inject(headers, setter=_SETTER)
            try:
                response = await call
            except BaseException as exc:
                reason = getattr(exc, "reason", None)  # UpstreamFailure and StreamAborted carry a Reason
                _fail(span, str(getattr(reason, "value", None) or type(exc).__name__))
                raise
            _Call(span, {}, 500).status(response.status)  # an upstream's 4xx is the client's business
            return response

    @contextmanager
    def http_call(self, method: str, url: str, issuer: str = "") -> Iterator[_Call]:
        name, attributes = _method(method)
        target = URL(url)
        attributes.update({
            server_attributes.SERVER_ADDRESS: target.raw_host or "",
            url_attributes.URL_FULL: str(target.with_user(None).with_query(None).with_fragment(None)),
        })
        if target.port is not None:
            attributes[server_attributes.SERVER_PORT] = target.port
        if issuer:
            attributes["tokengate.issuer"] = issuer
        with self._client_span(name, attributes) as span:
            headers: dict[str, str] = {}
            _PROPAGATOR.inject(headers, setter=_SETTER)
            yield _Call(span, headers, 400)

    @contextmanager
    def redis_call(self, operation: str, client: Any) -> Iterator[_Call]:
        attributes: dict[str, Any] = {db_attributes.DB_SYSTEM_NAME: "redis",
                                      db_attributes.DB_OPERATION_NAME: operation}
        attributes.update(_redis_server(client))
        with self._client_span(operation, attributes) as span:
            yield _Call(span, {}, 1000)

    @contextmanager
    def _client_span(self, name: str, attributes: dict[str, Any]) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes,
                                               record_exception=False, set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as exc:
                _fail(span, type(exc).__name__)
                raise


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _redis_server(client: Any) -> dict[str, Any]:
    """server.address/port and db.namespace of a redis-py client, as far as it tells (Cluster: none)."""
    pool = getattr(client, "connection_pool", None)
    kwargs: dict[str, Any] = getattr(pool, "connection_kwargs", None) or {}
    attributes: dict[str, Any] = {}
    if isinstance(kwargs.get("host"), str):
        attributes[server_attributes.SERVER_ADDRESS] = kwargs["host"]
        if isinstance(kwargs.get("port"), int):
            attributes[server_attributes.SERVER_PORT] = kwargs["port"]
    elif isinstance(kwargs.get("path"), str):
        attributes[server_attributes.SERVER_ADDRESS] = kwargs["path"]
    if isinstance(kwargs.get("db"), int):
        attributes[db_attributes.DB_NAMESPACE] = str(kwargs["db"])
    return attributes
