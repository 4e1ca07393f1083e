"""The signed snapshot of the local list in Redis: a start-up reads one key instead of every entry (start-up).

Opt-in (``revocation.snapshot``) and additive to the schema (docs/revocation.md): writers never
read or write it. With prefix P:

    P snapshot          hash    meta = JSON {format, position, added, written, entries}
                                data = JSON, per table: issuers, and columns issuer index, value, expiry
                                mac  = hex HMAC-SHA256 under the fleet's snapshot key (``seal``)
    P snapshot:lock     hash    held (PX) by the one process doing the full load a snapshot is made from
    P snapshot:verify   hash    held (PX) by the one process running a verifying scan

The MAC covers a label, the snapshot's key name, the meta (format version, stream position and
all) and the data, byte for byte: a snapshot written by anything without the key (a Redis
credential alone) is not used. ``position`` is the stream id up to which the list holds every
message (``added``: the stream's entries-added counter there, Redis >= 7): a process that loads
the snapshot follows the stream from ``position``, and a snapshot the stream can no longer catch
up from (trimmed past, recreated, rolled back: ``redis_stream.gap``) is not used at all, so an
older snapshot replayed still gives a complete list (against writers that keep to the contract:
docs/revocation.md says what a Redis credential alone can fake). Entries expired since are left out.
"""

from __future__ import annotations

import hmac
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, groupby, islice, repeat
from operator import itemgetter
from typing import Any

import orjson

from .entries import RevocationList
from .schema import Schema

FORMAT = 2  # 1: unsigned (never used again)
MAX_BYTES = 256 * 1024 * 1024  # a bigger list is loaded key by key (Redis values stop at 512 MiB)
# what the meta and the MAC can be (a meta is about 150 bytes, a MAC 64 hex digits): the sizes are
# asked first, so that a field written by a Redis credential holder alone is never read whole when
# it could not be a snapshot's (the meta is parsed before the MAC can be checked)
MAX_META_BYTES = 1024
MAC_BYTES = 64
LOCK_MS = 6_000  # a holder renews its lock every LOCK_MS / 3: one that died frees it soon
_LABEL = b"tokengate revocation snapshot\n"

# KEYS[1] the lock; ARGV[1] the holder, ARGV[2] PX. 1 when taken, 0 when someone else holds it.
LOCK_SCRIPT = """\
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'holder', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS[1] the lock; ARGV[1] the holder: deleted only by its holder
UNLOCK_SCRIPT = """\
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] the lock; ARGV[1] the holder, ARGV[2] PX: renewed only by its holder
RENEW_SCRIPT = """\
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS[1] the snapshot; ARGV[1..3] the largest meta, the largest data, the MAC's length; ARGV[4]
# "all" or "meta". The three lengths, then the fields asked for when the lengths are a snapshot's:
# sizes and read in one step, so that nothing swapped in between is read whole (``implausible``).
READ_SCRIPT = """\
local meta = redis.call('HSTRLEN', KEYS[1], 'meta')
local data = redis.call('HSTRLEN', KEYS[1], 'data')
local mac = redis.call('HSTRLEN', KEYS[1], 'mac')
if meta == 0 or meta > tonumber(ARGV[1]) or data == 0 or data > tonumber(ARGV[2]) or mac > tonumber(ARGV[3]) then
  return {meta, data, mac}
end
if ARGV[4] == 'all' then
  return {meta, data, mac, redis.call('HGET', KEYS[1], 'meta'), redis.call('HGET', KEYS[1], 'data'),
          redis.call('HGET', KEYS[1], 'mac')}
end
return {meta, data, mac, redis.call('HGET', KEYS[1], 'meta')}
"""

_CUTOFF_TABLES = ("subject", "client")  # (issuer, value) -> (not_before, expiry); the others -> expiry
_first, _second = itemgetter(0), itemgetter(1)


def snapshot_key(schema: Schema) -> str:
    return schema.prefix + "snapshot"


def lock_key(schema: Schema) -> str:
    return schema.prefix + "snapshot:lock"


def verify_lock_key(schema: Schema) -> str:
    return schema.prefix + "snapshot:verify"


def seal(secret: bytes, key: str, meta: bytes, data: bytes) -> bytes:
    """The snapshot's MAC (hex): HMAC-SHA256 over the label, its key name, the meta and the data."""
    mac = hmac.new(secret, _LABEL + key.encode() + b"\n" + len(meta).to_bytes(8, "big") + meta, "sha256")
    mac.update(data)
    return mac.hexdigest().encode()


def implausible(meta: int, data: int, mac: int) -> tuple[str, str]:
    """Why fields of these lengths (HSTRLEN: 0 when absent) are no signed snapshot's, as a load
    result and its reason; ("", "") when they may be one."""
    if not 0 < meta <= MAX_META_BYTES or not 0 < data <= MAX_BYTES:
        return "unreadable", f"meta of {meta} bytes (1 to {MAX_META_BYTES}), data of {data} (1 to {MAX_BYTES})"
    if mac > MAC_BYTES:  # a shorter one (none: unsigned) is read, and fails the MAC check
        return "bad_signature", f"a MAC of {mac} bytes, not {MAC_BYTES}"
    return "", ""


def authentic(secret: bytes, key: str, meta: bytes, data: bytes, mac: bytes | None) -> bool:
    """Whether ``mac`` is the snapshot's MAC under ``secret`` (compared in constant time)."""
    return mac is not None and hmac.compare_digest(seal(secret, key, meta, data), mac)


@dataclass(frozen=True)
class Meta:
    position: str
    added: int | None
    written: float
    entries: int

    @classmethod
    def parse(cls, raw: bytes | None) -> Meta | None:
        """The meta field, or None when absent or of another format (the snapshot is then not used)."""
        if not raw:
            return None
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                return None
            added = data.get("added")
            return cls(str(data["position"]), int(added) if added is not None else None,
                       float(data["written"]), int(data["entries"]))
        except (ValueError, KeyError, TypeError):
            return None

    def dump(self) -> bytes:
        return orjson.dumps({"format": FORMAT, "position": self.position, "added": self.added,
                             "written": self.written, "entries": self.entries})


def copy_tables(revocations: RevocationList) -> dict[str, dict[Any, Any]]:
    """The list's tables as they are now (copies: the live ones change while the copy is encoded)."""
    return {name: dict(table) for name, table in revocations.tables().items()}


def encode_tables(tables: dict[str, dict[Any, Any]]) -> bytes:
    """The tables, column by column, each table's entries grouped by issuer (an issuer written once
    per table, with how many entries follow it): read back without a lookup per entry."""
    out: dict[str, Any] = {}
    for name, table in tables.items():
        if name == "legacy":
            out[name] = {"value": list(table), "expires": list(table.values())}
            continue
        keys = sorted(table, key=_first)  # by issuer only (a stable sort: cheap)
        issuers = [(issuer, sum(1 for _ in group)) for issuer, group in groupby(map(_first, keys))]
        held = list(map(table.__getitem__, keys))
        column: dict[str, Any] = {"issuers": [issuer for issuer, _ in issuers],
                                  "counts": [count for _, count in issuers], "value": list(map(_second, keys))}
        if name in _CUTOFF_TABLES:
            column["not_before"] = list(map(_first, held))
            column["expires"] = list(map(_second, held))
        else:
            column["expires"] = held
        out[name] = column
    return orjson.dumps(out)


def merge_tables(revocations: RevocationList, raw: bytes, now: float | None = None) -> int:
    """Merge a snapshot's tables into ``revocations``, expired entries left out; how many were live.

    ValueError when the data is not a snapshot this version wrote (then nothing was merged).
    """
    now = time.time() if now is None else now
    try:
        data = orjson.loads(raw)
        tables = {name: _table(name, data[name], now) for name in revocations.tables()}
    except (ValueError, KeyError, TypeError, IndexError, OverflowError) as exc:
        raise ValueError(f"not a revocation snapshot: {type(exc).__name__}: {exc}") from None
    for name, items in tables.items():
        _merge(revocations.tables()[name], items)
    return sum(len(items) for items in tables.values())


def _merge(table: dict[Any, Any], items: dict[Any, Any]) -> None:
    """As ``RevocationList.add`` would: the later expiry and the later cut-off win."""
    if not table:
        table.update(items)
        return
    for key, value in items.items():
        old = table.get(key)
        if old is None:
            table[key] = value
        elif isinstance(value, tuple):
            table[key] = (max(value[0], old[0]), max(value[1], old[1]))
        else:
            table[key] = max(value, old)


def _table(name: str, column: dict[str, Any], now: float) -> dict[Any, Any]:
    values, expires = column["value"], _numbers(column["expires"])
    if not all(map(str.__len__, values)):  # TypeError for anything but strings, False for an empty one
        raise ValueError("an empty value")
    if len(values) != len(expires):
        raise ValueError("columns of different lengths")
    keys = values if name == "legacy" else _pairs(column["issuers"], column["counts"], values)
    live = not expires or min(expires) > now  # the common case: nothing to leave out, built at C speed
    if name in _CUTOFF_TABLES:
        cutoffs = _numbers(column["not_before"])
        if len(cutoffs) != len(values):
            raise ValueError("columns of different lengths")
        pairs = zip(cutoffs, expires, strict=True)
        if live:
            return dict(zip(keys, pairs, strict=True))
        return {key: pair for key, pair in zip(keys, pairs, strict=True) if pair[1] > now}
    if live:
        return dict(zip(keys, expires, strict=True))
    return {key: exp for key, exp in zip(keys, expires, strict=True) if exp > now}


def _pairs(issuers: list[Any], counts: list[Any], values: list[str]) -> Iterator[tuple[str, str]]:
    """The (issuer, value) keys: each issuer for the next ``count`` values."""
    if not all(map(str.__len__, issuers)):
        raise ValueError("an empty issuer")
    if len(issuers) != len(counts) or sum(array("q", counts)) != len(values) or min(counts, default=0) < 0:
        raise ValueError("issuers and values do not match")
    following = iter(values)
    return chain.from_iterable(zip(repeat(issuer), islice(following, count))
                               for issuer, count in zip(issuers, counts, strict=True))


def _numbers(column: list[Any]) -> list[float]:
    """The column (TypeError for anything but numbers); ValueError for a NaN or an infinity."""
    total = sum(array("d", column))  # NaN or infinite when any number is (or when they are huge: refused as well)
    if total - total != 0.0:
        raise ValueError("a number that is not finite")
    return column
