"""Real OTLP receivers for the tracing tests: what a collector would get, decoded with the official
``opentelemetry-proto`` messages.

``HttpReceiver`` is an aiohttp server on 127.0.0.1 taking OTLP/HTTP protobuf at ``/v1/traces``;
``GrpcReceiver`` is a grpcio server on 127.0.0.1 implementing the OTLP TraceService. Both keep
every export request as received (raw bytes too, to prove what never appears in them) and the
headers or metadata it came with.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage

KINDS = {SpanMessage.SPAN_KIND_INTERNAL: "internal", SpanMessage.SPAN_KIND_SERVER: "server",
         SpanMessage.SPAN_KIND_CLIENT: "client"}


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass
class Span:
    """One received span, its ids in W3C hex and its attributes as Python values."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status: str  # unset | ok | error
    resource: dict[str, Any]
    trace_state: str = ""

    @classmethod
    def of(cls, message: SpanMessage, resource: dict[str, Any]) -> Span:
        status = {0: "unset", 1: "ok", 2: "error"}[message.status.code]
        return cls(message.name, KINDS.get(message.kind, str(message.kind)), message.trace_id.hex(),
                   message.span_id.hex(), message.parent_span_id.hex(),
                   {a.key: value_of(a.value) for a in message.attributes}, status, resource, message.trace_state)


@dataclass
class Received:
    requests: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, body: bytes, headers: dict[str, str]) -> None:
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(body)  # a body that is not OTLP fails the export, and the test with it
        with self.lock:
            self.requests.append(message)
            self.raw.append(body)
            self.headers.append(headers)

    def spans(self) -> list[Span]:
        with self.lock:
            requests = list(self.requests)
        out: list[Any] = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    out.extend(Span.of(s, resource) for s in scope_spans.spans)
        return out

    async def wait_for(self, found: Callable[[list[Span]], bool], timeout: float = 15.0) -> list[Span]:
        """The spans received, once ``found`` says they are all there (the exporter sends in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if found(spans):
                return spans
            assert time.monotonic() < deadline, f"spans never arrived; got {[(s.name, s.kind) for s in spans]}"
            await asyncio.sleep(0.05)


class HttpReceiver(Received):
    """OTLP/HTTP (protobuf) on 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__()
        self.content_types: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.content_types.append(request.content_type)
        self.add(body, {k.lower(): v for k, v in request.headers.items()})
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.received.add(request.SerializeToString(), metadata)
        return trace_service_pb2.ExportTraceServiceResponse()


class GrpcReceiver(Received):
    """OTLP/gRPC on 127.0.0.1 (grpcio's own server, in its threads)."""

    def __init__(self) -> None:
        super().__init__()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)
