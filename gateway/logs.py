"""The gateway's own log: JSON lines on stdout, apart from the audit stream by ``"type": "log"``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}

# fields of the request being served (trace_id, span_id) for every line written within it; set by
# tracing.start while tracing is on, None otherwise
CONTEXT_FIELDS: Callable[[], dict[str, str]] | None = None


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={...}`` fields become keys, ``fields`` go on every line."""

    def __init__(self, fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.fields = fields or {}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "type": "log",
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self.fields,
        }
        if CONTEXT_FIELDS is not None:
            entry.update(CONTEXT_FIELDS())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            if record.name.startswith("gateway"):
                # our own messages never hold a token; a library's may quote a request header, so
                # only the exception type is kept for those
                entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ClientNoiseFilter(logging.Filter):
    """aiohttp logs a malformed request or a vanished client at error level: for a gateway that is
    normal traffic (answered with 400, or nobody left to answer), so it is demoted to debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # aiohttp is not imported for this (the offline commands never load it): an aiohttp
        # exception can only exist once aiohttp has been imported by whoever raised it
        http = sys.modules.get("aiohttp.http_exceptions")
        if isinstance(exc, ConnectionError) or (http is not None and isinstance(exc, http.BadHttpMessage)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def setup_logging(level: str = "info", **fields: Any) -> None:
    """JSON lines on stdout; ``fields`` (a worker's number and pid) are added to every line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would repeat the audit trail, and in text
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientNoiseFilter) for f in server_log.filters):
        server_log.addFilter(ClientNoiseFilter())
