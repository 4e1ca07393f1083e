"""What the span parts share: the tracer, the W3C carriers, the request's server span, failure marks.

Per request; imported only once tracing is on (``tracing.start``).
"""

from __future__ import annotations

import contextvars
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDictProxy
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.semconv.attributes import error_attributes, http_attributes
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from ...config import TracingConfig

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


class Spans:
    """The base of every span part of ``RequestTracing``: its tracer and tracing's configuration."""

    tracer: Tracer
    config: TracingConfig


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


GETTER = _IncomingHeaders()
SETTER = _OutgoingHeaders()
PROPAGATOR = TraceContextTextMapPropagator()


# --- the request being served --------------------------------------------------------------


@dataclass
class ServedRequest:
    """The request being served: its server span, its first name (the method) and the mode."""

    span: Span
    name: str
    mode: str


REQUEST: contextvars.ContextVar[ServedRequest | None] = contextvars.ContextVar(
    "tokengate_request_span", default=None)


# --- outcomes ------------------------------------------------------------------------------


class CallSpan:
    """A client call's span as the call site sees it (``tracing.Call``)."""

    def __init__(self, span: Span, headers: dict[str, str], errors_from: int) -> None:
        self.span = span
        self.headers = headers
        self._errors_from = errors_from

    def status(self, code: int) -> None:
        """Record the answer's status; from ``errors_from`` on, the span failed."""
        self.span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, code)
        if code >= self._errors_from:
            fail(self.span, str(code))


def fail(span: Span, error_type: str) -> None:
    """Mark ``span`` failed with ``error_type`` (a status code, a reason, an exception's type)."""
    span.set_attribute(error_attributes.ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR))


def method_attributes(method: str) -> tuple[str, dict[str, Any]]:
    """The method as semantic conventions name it: ``_OTHER`` for one they do not know."""
    if method in _KNOWN_METHODS:
        return method, {http_attributes.HTTP_REQUEST_METHOD: method}
    return "HTTP", {http_attributes.HTTP_REQUEST_METHOD: "_OTHER",
                    http_attributes.HTTP_REQUEST_METHOD_ORIGINAL: method}
