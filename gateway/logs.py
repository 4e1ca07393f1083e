"""The gateway's own log: JSON lines on stdout, apart from the audit stream by ``"type": "log"``."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}


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
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str = "info", **fields: Any) -> None:
    """JSON lines on stdout; ``fields`` (a worker's number and pid) are added to every line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would repeat the audit trail, and in text
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
