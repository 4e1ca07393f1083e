"""The Redis schema of the revocation list: the one module that owns key names, values, TTLs and the feed.

This is a public contract (docs/revocation.md): authorization servers written in any
language write these keys, and every gateway replica reads them.

With the default ``key_prefix`` ``gateway:revoked:`` (P below), schema version 2:

    P v2:jti:<issuer>|<jti>                 string  JSON entry, EX = seconds until expires_at
    P v2:fingerprint:<issuer>|<sha256 hex>  string
    P v2:family:<issuer>|<family id>        string  (the value of ``family_claim``, e.g. sid)
    P v2:subject:<issuer>|<sub>             string
    P v2:client:<issuer>|<client_id>        string
    P stream                                stream  one XADD per write: fields v=2, entry=<the same JSON>

Every entry belongs to one issuer (``*``: every issuer, written deliberately by an operator);
in key names the issuer's ``%`` and ``|`` are written ``%25`` and ``%7C``, so a key names one
(issuer, value) pair only. Schema-1 keys (``P token:<jti or sha256 hex>``, ``P family:<id>``,
``P subject:<issuer>|<sub>``, ``P client:<id>``) are still read, with the meaning they had:
token, family and client entries of schema 1 match every issuer.

Redis Cluster: the prefix is wrapped in a hash tag (``{gateway:revoked:}v2:jti:...``) so that
every key and the stream sit in one slot and one script can write a key and its notification.

A write is one Lua script (``WRITE_SCRIPT``): compare the key's current value with the one
the writer merged from, SET the merged entry with its TTL, XADD it to the stream (MAXLEN ~).
So a key never exists without its notification, and two writers never weaken each other.

Entries are built (expiry and issuer rules) in ``entry_factory``.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from .entries import SCHEMA_VERSION, Entry

DEFAULT_PREFIX = "gateway:revoked:"
STREAM_SUFFIX = "stream"
STREAM_MAXLEN = 100_000  # approximate (MAXLEN ~): a replica disconnected longer than this many writes resyncs

# KEYS[1] entry key, KEYS[2] stream; ARGV[1] the value the writer merged from ("" = no key),
# ARGV[2] the new value, ARGV[3] TTL in seconds, ARGV[4] stream MAXLEN. Returns the stream id,
# or nil when the key changed since the writer read it (the writer merges again and retries).
WRITE_SCRIPT = """\
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'v', '2', 'entry', ARGV[2])
"""


class RevocationWriteError(Exception):
    """A revocation could not be written to Redis (it may still be enforced locally)."""


@dataclass(frozen=True)
class Schema:
    """Key names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    @classmethod
    def for_prefix(cls, key_prefix: str = DEFAULT_PREFIX, cluster: bool = False) -> Schema:
        """In cluster mode the prefix becomes a hash tag unless it already holds one."""
        if cluster and not re.search(r"\{[^}]+\}", key_prefix):
            key_prefix = "{" + key_prefix + "}"
        return cls(key_prefix)

    @property
    def stream_key(self) -> str:
        return self.prefix + STREAM_SUFFIX

    def entry_key(self, entry: Entry) -> str:
        namespace, issuer, value = entry.key()
        return f"{self.prefix}v{SCHEMA_VERSION}:{namespace}:{escape_issuer(issuer)}|{value}"

    def scan_pattern(self) -> str:
        """SCAN MATCH pattern for every key under the prefix (glob characters escaped)."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "*"


def escape_issuer(issuer: str) -> str:
    """The issuer as written in a key name: ``%`` and ``|`` escaped, so the first ``|`` ends it."""
    return issuer.replace("%", "%25").replace("|", "%7C")


# --- values ----------------------------------------------------------------------------------


def encode(entry: Entry) -> bytes:
    return orjson.dumps(entry.to_json())


def decode(raw: bytes | str) -> Entry:
    """The entry in a key or stream value; ValueError when it is not one."""
    try:
        data = orjson.loads(raw)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"not a revocation entry: {exc}") from None
    return entry_of(data)


def entry_of(data: Any) -> Entry:
    """The entry a parsed key or stream value holds; ValueError when it is not one."""
    try:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return Entry.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a revocation entry: {exc}") from None


def decode_or_none(raw: bytes | str | None) -> Entry | None:
    if raw is None:
        return None
    try:
        return decode(raw)
    except ValueError:
        return None


def merge(old: Entry | None, new: Entry) -> Entry:
    """Two writes of one key keep the stronger of each: later expiry, later cut-off.

    Key names are one-to-one with ``Entry.key()``, so ``old`` is another identity only when the
    key holds something a writer outside this contract put there: it is replaced.
    """
    if old is None or old.key() != new.key():
        return new
    not_before = new.not_before
    if old.not_before is not None:
        not_before = old.not_before if not_before is None else max(old.not_before, not_before)
    return replace(new, expires_at=max(old.expires_at, new.expires_at), not_before=not_before)


def ttl_seconds(entry: Entry, now: float | None = None) -> int:
    """The key's EX: whole seconds until the entry expires, at least 1."""
    now = time.time() if now is None else now
    return max(1, math.ceil(entry.expires_at - now))


def stream_id(value: bytes | str) -> tuple[int, int]:
    """A stream id ``ms-seq`` as a comparable pair."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def stream_fields(fields: Mapping[Any, Any]) -> Entry | None:
    """The entry carried by one stream message (None for messages of another kind)."""
    raw = fields.get(b"entry", fields.get("entry"))
    return decode(raw) if raw is not None else None


# --- the write, shared by the gateway's store and the Python API ---------------------------------


def write_args(schema: Schema, old_raw: bytes | None, entry: Entry, maxlen: int = STREAM_MAXLEN,
               now: float | None = None) -> tuple[list[str], list[bytes | int]]:
    """KEYS and ARGV of WRITE_SCRIPT for ``entry`` merged over the key's current value."""
    merged = merge(decode_or_none(old_raw), entry)
    keys = [schema.entry_key(entry), schema.stream_key]
    return keys, [old_raw or b"", encode(merged), ttl_seconds(merged, now), maxlen]


async def announce(client: Any, schema: Schema, values: list[bytes], maxlen: int = STREAM_MAXLEN) -> None:
    """Send stream messages for key values as they are (the notification ``WRITE_SCRIPT`` sends,
    without touching the keys): for keys that were written without theirs."""
    pipe = client.pipeline(transaction=False)
    for value in values:
        pipe.xadd(schema.stream_key, {"v": "2", "entry": value}, maxlen=maxlen, approximate=True)
    await pipe.execute()


WRITE_ATTEMPTS = 50


def _jitter(attempt: int) -> float:
    """A short random pause before retrying a write that lost a race on its key."""
    return random.uniform(0, 0.002 * min(attempt + 1, 10))  # noqa: S311 - not cryptographic


async def write_entry(client: Any, schema: Schema, entry: Entry, maxlen: int = STREAM_MAXLEN) -> str:
    """Write one entry (key + stream notification) with redis.asyncio; returns the stream id."""
    key = schema.entry_key(entry)
    for attempt in range(WRITE_ATTEMPTS):
        old = await client.get(key)
        keys, args = write_args(schema, old, entry, maxlen)
        result = await client.eval(WRITE_SCRIPT, 2, *keys, *args)
        if result is not None:
            return result.decode() if isinstance(result, bytes) else str(result)
        await asyncio.sleep(_jitter(attempt))
    raise RevocationWriteError(f"{key} kept changing under concurrent writers")


def write_entry_sync(client: Any, schema: Schema, entry: Entry, maxlen: int = STREAM_MAXLEN) -> str:
    """The same write with the synchronous redis client."""
    key = schema.entry_key(entry)
    for attempt in range(WRITE_ATTEMPTS):
        old = client.get(key)
        keys, args = write_args(schema, old, entry, maxlen)
        result = client.eval(WRITE_SCRIPT, 2, *keys, *args)
        if result is not None:
            return result.decode() if isinstance(result, bytes) else str(result)
        time.sleep(_jitter(attempt))
    raise RevocationWriteError(f"{key} kept changing under concurrent writers")
