"""One process's tracing: where spans go (OTLP over HTTP or gRPC), the provider, and its shutdown.

Runs once, at ``tracing.start`` (and ``aclose`` at stop); the span parts it is made of run per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from yarl import URL

from ...config.errors import ConfigError
from .calls import CallSpans
from .decision import DecisionSpans
from .request import RequestSpans

if TYPE_CHECKING:
    from ...config import TracingConfig

log = logging.getLogger("gateway.tracing")

PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_SERVICE_NAME = "tokengate"
ATTRIBUTE_LENGTH = 1024  # characters of one attribute value: a user agent or path is the client's choice
SHUTDOWN_TIMEOUT = 5.0  # seconds stop() waits for queued spans to go out


@dataclass(frozen=True)
class ExportSettings:
    """Where spans go: the YAML's words first, then the standard ``OTEL_*`` variables, then defaults."""

    protocol: str
    endpoint: str | None  # None: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT or its default
    headers: dict[str, str] | None  # None: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)HEADERS


def export_settings(config: TracingConfig, environ: Mapping[str, str] = os.environ) -> ExportSettings:
    """The export settings of ``config`` and ``environ``; ``ConfigError`` for a protocol unknown."""
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
    """The OTLP exporter ``settings`` name (only that protocol's package is imported)."""
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


class RequestTracing(RequestSpans, DecisionSpans, CallSpans):
    """One process's tracing: the provider, its exporter and the spans of every request."""

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

    def log_fields(self) -> dict[str, str]:
        """``trace_id`` and ``span_id`` for a log line written within a span (logs.CONTEXT_FIELDS)."""
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return {}
        return {"trace_id": trace.format_trace_id(context.trace_id), "span_id": trace.format_span_id(context.span_id)}


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
