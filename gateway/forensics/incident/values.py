"""Audit record values as the incident reports take them: texts, whatever type a record held (offline)."""

from __future__ import annotations

from typing import Any

import orjson


def text_of(value: Any) -> str | None:
    """A record value as text: a string as it is, None as None, anything else as its JSON."""
    if value is None or isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)


def texts_of(value: Any) -> list[str]:
    """A record value as a list of texts: a list item by item, one text alone, nothing for None."""
    if value is None:
        return []
    if isinstance(value, list):
        return [t for t in map(text_of, value) if t is not None]
    return [text_of(value) or ""]
