"""The full load of the revocation list from Redis: every key, read and decoded in bulk (start-up, resync).

A million entries are a million SCAN results, MGET values and JSON documents: the load sends
the next SCAN (with the previous batch's MGET) before it decodes a batch, so Redis and this
process work at the same time, and it adds what a conforming writer wrote straight into the
list's tables, without building an ``Entry`` (anything else goes through ``Entry.from_json``,
which accepts or refuses it as it always did).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import operator
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson

from .. import metrics
from ..tokens.token import FINGERPRINT_PREFIX
from .entries import ANY_ISSUER, RevocationList, is_finite
from .schema import Schema, entry_of

SCAN_BATCH = 5000  # keys per SCAN; their MGET goes out in the same round trip as the next SCAN

# the fields every conforming writer writes (``Entry.to_json``), in one C call
_WRITTEN = operator.itemgetter("v", "kind", "value", "expires_at", "issuer", "not_before", "created_at")
_NEVER = float("-inf")


async def scan_all(client: Any, schema: Schema, revocations: RevocationList, cluster: bool) -> int:
    """Add every live entry under the schema's prefix to ``revocations``; how many were added."""

    async def load(values: list[Any]) -> int:
        return load_values(revocations, values)

    return await scan_values(client, schema, cluster, load)


async def scan_values(client: Any, schema: Schema, cluster: bool, consume: Callable[[list[Any]], Awaitable[int]],
                      count: int = SCAN_BATCH) -> int:
    """Every key value under the schema's prefix, ``count`` at a time, to ``consume`` (None for a key
    that expired meanwhile); what ``consume`` returned, summed. The next batch is on its way
    while ``consume`` works on one."""
    if cluster:
        return await _scan_cluster(client, schema, consume, count)
    pattern, total = schema.scan_pattern(), 0

    async def batch(cursor: Any, keys: list[Any]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        pipe.scan(cursor, match=pattern, count=count, _type="STRING")
        if keys:
            pipe.mget(keys)
        return list(await pipe.execute())

    replies = await batch(0, [])
    while True:
        cursor, keys = replies[0]
        values = replies[1] if len(replies) > 1 else []
        if int(cursor) == 0:
            total += await consume(values)
            if keys:
                total += await consume(await client.mget(keys))
            return total
        following = asyncio.ensure_future(batch(cursor, keys))
        try:
            for _ in range(3):  # let it write its commands before this process decodes
                await asyncio.sleep(0)
            total += await consume(values)
        except BaseException:
            following.cancel()
            raise
        replies = await following


async def _scan_cluster(client: Any, schema: Schema, consume: Callable[[list[Any]], Awaitable[int]],
                        count: int) -> int:
    total = 0
    batch: list[Any] = []
    async for key in client.scan_iter(match=schema.scan_pattern(), count=count, _type="STRING"):
        batch.append(key)
        if len(batch) >= count:
            total += await consume(await client.mget(batch))
            batch = []
    if batch:
        total += await consume(await client.mget(batch))
    return total


def load_values(revocations: RevocationList, values: list[Any]) -> int:
    """Add the live entries among key values (None: a key that expired meanwhile); how many."""
    now = time.time()
    loaded = 0
    add_json, add, loads = json_adder(revocations), revocations.add, orjson.loads
    for raw in values:
        if raw is None:
            continue  # expired between SCAN and MGET
        try:
            data = loads(raw)
        except ValueError:
            metrics.REVOCATION_REDIS_ERRORS.inc()
            continue
        added = add_json(data, now)
        if added is None:
            try:
                entry = entry_of(data)
            except ValueError:
                metrics.REVOCATION_REDIS_ERRORS.inc()
                continue
            added = entry.expires_at > now
            if added:
                add(entry)
        loaded += added
    return loaded


def json_adder(revocations: RevocationList) -> Callable[[Any, float], bool | None]:
    """``add(data, now)``: adds the entry a decoded key value holds as ``RevocationList.add``
    would, when it is exactly what a conforming writer writes (schema 2, JSON numbers and
    strings): True when added, False when it has expired, None when it is anything else."""
    tables = revocations.tables()
    jtis, fingerprints, legacy, families = tables["jti"], tables["fingerprint"], tables["legacy"], tables["family"]
    subjects, clients = tables["subject"], tables["client"]

    def add(data: Any, now: float) -> bool | None:
        try:
            version, kind, value, expires, issuer, not_before, created = _WRITTEN(data)
        except (KeyError, TypeError):  # a field missing, or not a JSON object
            return None
        if version != 2 or type(version) is not int or type(value) is not str or not value:
            return None
        issuer, created, match = issuer or ANY_ISSUER, created or 0.0, data.get("match")
        if type(issuer) is not str or not _finite(expires) or not _finite(created) or not (
            not_before is None or _finite(not_before)
        ):
            return None
        table: dict[Any, float]
        name: Any
        if kind == "token":
            if match == "jti":
                table, name = jtis, (issuer, value)
            elif match == "fingerprint":
                table, name = fingerprints, (issuer, value.lower()[:FINGERPRINT_PREFIX])
            elif match is None:
                table, name = legacy, value
            else:
                return None
        elif match is not None or kind not in ("family", "subject", "client"):
            return None
        elif expires <= now:
            return False
        elif kind == "family":
            table, name = families, (issuer, value)
        else:
            pairs = subjects if kind == "subject" else clients
            pair = (issuer, value)
            cutoff = not_before if not_before is not None else created or time.time()
            old = pairs.get(pair)
            pairs[pair] = (cutoff, expires) if old is None else (max(cutoff, old[0]), max(expires, old[1]))
            return True
        if expires <= now:
            return False
        table[name] = max(expires, table.get(name, _NEVER))
        return True

    return add


def _finite(number: object) -> bool:
    """``is_finite`` for what a JSON parser gives: a float, or an int within float range."""
    kind = type(number)
    if kind is float:
        return bool(number - number == 0.0)  # type: ignore[operator]  # NaN and infinities give NaN
    return kind is int and is_finite(number)


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """No cyclic garbage collection while a bulk load allocates (it creates no cycles)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
