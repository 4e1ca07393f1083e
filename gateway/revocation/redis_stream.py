"""The revocation stream as the feed reads it: XINFO STREAM, XREAD replies, and when a resync is due (background)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schema import stream_id


@dataclass(frozen=True)
class StreamInfo:
    """What XINFO STREAM says about the revocation stream."""

    last_generated: str
    length: int
    first_entry: str | None
    max_deleted: str | None  # Redis >= 7
    entries_added: int | None  # Redis >= 7


async def stream_info(client: Any, key: str) -> StreamInfo | None:
    """XINFO STREAM of ``key``; None when the stream does not exist."""
    try:
        info = await client.xinfo_stream(key)
    except Exception as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    first = info.get("first-entry")
    max_deleted = info.get("max-deleted-entry-id")
    added = info.get("entries-added")
    return StreamInfo(
        last_generated=_text(info["last-generated-id"]),
        length=int(info.get("length") or 0),
        first_entry=_text(first[0]) if first else None,
        max_deleted=_text(max_deleted) if max_deleted is not None else None,
        entries_added=int(added) if added is not None else None,
    )


def gap(info: StreamInfo | None, last_id: str, seen_added: int | None) -> str | None:
    """Why messages after ``last_id`` may be lost (the resync cause), or None when none can be.

    ``seen_added`` is the stream's entries-added counter up to ``last_id`` (None on Redis < 7).
    """
    if info is None:
        return "stream_missing" if last_id != "0-0" else None  # deleted, or Redis lost its data
    ours = stream_id(last_id)
    if stream_id(info.last_generated) < ours:
        return "stream_reset"  # a failover or a restore rolled the stream back
    if info.max_deleted is not None and stream_id(info.max_deleted) > ours:
        return "trimmed"  # XDEL of a message we never read
    if info.entries_added is not None and seen_added is not None:
        if info.entries_added < seen_added:
            return "stream_reset"  # recreated since we counted
        unread = info.entries_added - seen_added
        return "trimmed" if info.length < unread else None  # some unread messages are gone
    # Redis < 7 (no entries-added): assume the worst when the oldest message left is newer than ours
    if stream_id(info.last_generated) > ours and (
        info.first_entry is None or stream_id(info.first_entry) > ours
    ):
        return "trimmed"
    return None


def stream_messages(reply: Any) -> list[tuple[Any, list[tuple[Any, Any]]]]:
    """XREAD's reply as (stream, messages) pairs, whether RESP2 (list) or RESP3 (dict) shaped."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(name, list(messages)) for name, messages in reply.items()]
    return [(name, list(messages)) for name, messages in reply]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
