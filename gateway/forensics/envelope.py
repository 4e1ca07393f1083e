"""Audit records inside the wrappers of the log stores a cluster ships its stdout to.

A line of input may hold a record as the gateway wrote it, or the same record inside
what a log shipper or a log store put around it:

- ``kubectl logs --prefix`` / ``--timestamps``: ``[pod/x/c] {...}`` or ``2026-... {...}``
  (text before the JSON object);
- Loki ``logcli query --output=raw``: the line as it was shipped (the record, or the
  container runtime's ``{"log": "{...}\\n", "stream": ...}``); ``--output=jsonl``:
  ``{"line": "{...}", "labels": ...}``; the default output: ``ts {labels} {...}``;
- Elasticsearch/OpenSearch: a ``_search`` response (``hits.hits[]._source``), one hit
  per line (``{"_index": ..., "_source": {...}}``), the record as an object under
  ``_source`` or as text in ``_source.message``;
- any JSON object holding the record under a field (``--field a.b``), as an object or as
  a JSON string;
- several JSON values one after another (``_search`` pages appended to one file).

``Envelope.auto()`` recognises these by shape; ``Envelope.at("a.b")`` takes the record
from that path only; ``Envelope.none()`` reads the gateway's own lines only (what
``gateway audit`` always did). A record (``"type": "audit"``) is never looked into: a
value inside a real record cannot pass for another record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

Record = dict[str, Any]

# where wrappers put the record: as an object, or as the text of the line that was shipped
_OBJECT_FIELDS = ("_source", "json", "jsonPayload", "record", "audit", "data", "payload", "body", "fields")
_TEXT_FIELDS = ("log", "message", "line", "msg", "textPayload", "body", "_raw")
_MAX_DEPTH = 4  # envelopes nest (a hit, its _source, its message): deeper is not a wrapper anyone makes
_MAX_PREFIX_TRIES = 4  # objects tried along a line: ``ts {labels} {record}`` needs two
_MAX_VALUES = 100_000  # JSON values read from one line or document that holds several


@dataclass(frozen=True)
class Envelope:
    """How to find the audit record in a decoded input line."""

    mode: str  # "none" | "auto" | "field"
    path: tuple[str, ...] = ()

    @classmethod
    def none(cls) -> Envelope:
        return cls("none")

    @classmethod
    def auto(cls) -> Envelope:
        return cls("auto")

    @classmethod
    def at(cls, dotted: str) -> Envelope:
        """The record under ``a.b.c`` (a list on the way is followed item by item)."""
        path = tuple(dotted.split("."))
        if not dotted or any(not part for part in path):
            raise ValueError(f"--field {dotted!r}: a path is field names joined by dots, e.g. _source.log")
        return cls("field", path)

    @property
    def whole_documents(self) -> bool:
        """Whether an input that is one JSON document over many lines (a pretty-printed
        ``_search`` response, a JSON array) is read as a whole."""
        return self.mode != "none"

    def records(self, line: bytes) -> list[Record]:
        """The audit records of one input line (none for a log line, garbage, another app's line)."""
        if self.mode == "none":
            record = _first_object(line, tries=1)
            return [record] if _is_record(record) else []
        value = _first_object(line, tries=_MAX_PREFIX_TRIES, arrays=True)
        if value is None:
            return []
        if self.mode == "auto" and _is_record(value):  # the gateway's own line: the common case
            return [value]
        return list(self.unwrap(value))

    def unwrap(self, value: Any) -> Iterator[Record]:
        """The audit records in an already decoded value."""
        if self.mode == "field":
            yield from _follow(value, self.path)
        elif self.mode == "auto":
            yield from _auto(value, 0)
        elif _is_record(value):
            yield value


def _is_record(value: Any) -> bool:
    return type(value) is dict and value.get("type") == "audit"


def _first_object(line: bytes, tries: int, arrays: bool = False) -> Any:
    """The JSON value starting at the first ``{`` of the line that decodes to the line's end
    (a prefix such as a pod name, a time or Loki's labels is skipped); None when none does."""
    start = line.find(b"{")
    if arrays:
        bracket = line.find(b"[")
        if bracket != -1 and (start == -1 or bracket < start) and not line[:bracket].strip():
            start = bracket  # a JSON array: a whole document, or ``jq -c '[...]'``
    while start != -1 and tries > 0:
        try:
            return orjson.loads(line[start:] if start else line)
        except orjson.JSONDecodeError as exc:
            if arrays and "unexpected content after document" in str(exc):
                return _sequence(line[start:])
            tries -= 1
            start = line.find(b"{", start + 1)
    return None


def _sequence(data: bytes) -> list[Any]:
    """JSON values one after another (``_search`` pages concatenated, ``{...}{...}``), as far
    as they decode."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return []
    decoder = json.JSONDecoder()
    values: list[Any] = []
    end = 0
    while end < len(text) and len(values) < _MAX_VALUES:
        while end < len(text) and text[end] in " \t\r\n":
            end += 1
        if end == len(text):
            break
        try:
            value, end = decoder.raw_decode(text, end)
        except (ValueError, RecursionError):
            break
        values.append(value)
    return values


def _auto(value: Any, depth: int) -> Iterator[Record]:
    """Records found by the shapes of known envelopes; the first wrapper that holds any wins."""
    if _is_record(value):
        yield value
        return
    if depth >= _MAX_DEPTH:
        return
    if type(value) is list:
        for item in value:
            yield from _auto(item, depth + 1)
        return
    if type(value) is not dict:
        return
    hits = value.get("hits")
    if type(hits) is dict and type(hits.get("hits")) is list:  # an Elasticsearch/OpenSearch response
        for hit in hits["hits"]:
            yield from _auto(hit, depth + 1)
        return
    for key in _OBJECT_FIELDS:
        inner = value.get(key)
        if type(inner) is dict or type(inner) is list:
            found = list(_auto(inner, depth + 1))
            if found:
                yield from found
                return
    for key in _TEXT_FIELDS:
        text = value.get(key)
        if type(text) is str and "{" in text:
            found = list(_auto(_decode_text(text), depth + 1))
            if found:
                yield from found
                return


def _follow(value: Any, path: tuple[str, ...]) -> Iterator[Record]:
    """The record at ``path``: an object, or a JSON text; lists on the way are followed."""
    if type(value) is list:
        for item in value:
            yield from _follow(item, path)
        return
    if not path:
        if type(value) is str:
            value = _decode_text(value)
        if _is_record(value):
            yield value
        return
    if type(value) is dict:
        yield from _follow(value.get(path[0]), path[1:])


def _decode_text(text: str) -> Any:
    """A record shipped as text (``"log": "{...}\\n"``), a prefix before it allowed."""
    return _first_object(text.encode("utf-8", "surrogatepass"), tries=_MAX_PREFIX_TRIES)
