"""What ``detection.on_detect`` does when a family turns suspicious: metric, log line, revocation, webhook.

Called on the request path (and by the shared state's merges), so it never awaits: revoking
runs as a background task and the webhook has its own queue.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..background import cancel_and_wait
from ..revocation.entries import ANY_ISSUER, Entry, Kind
from ..revocation.entry_factory import MAX_LIFETIME
from .notice import notice

if TYPE_CHECKING:
    from ..revocation.entry_factory import EntryFactory
    from ..revocation.store import RevocationStore
    from .state import FamilyState
    from .webhook import WebhookSender

log = logging.getLogger("gateway.detection")


class Actions:
    """The responses ``on_detect`` asks for, each reason notified once per window and family."""

    def __init__(self, on_detect: frozenset[str], window: float, revocation: RevocationStore,
                 entries: EntryFactory) -> None:
        self.on_detect = on_detect
        self.window = window
        self.revocation = revocation
        self.entries = entries
        self.webhook: WebhookSender | None = None  # set by the detector's start when on_detect says webhook
        self._host = socket.gethostname()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def stop(self) -> None:
        """Send what the webhook has queued (bounded), then end revocations still running."""
        if self.webhook is not None:
            await self.webhook.stop()
        await cancel_and_wait(*self._tasks)

    def detected(self, state: FamilyState, reasons: list[str], now: float) -> None:
        """Act on ``reasons`` found for the family of ``state`` (at ``now``)."""
        if "metric" in self.on_detect:
            for reason in reasons:
                metrics.SUSPICIOUS.labels(reason).inc()
        fresh = [r for r in reasons if now - state.notified.get(r, -math.inf) >= self.window]
        if not fresh:
            return
        for reason in fresh:
            state.notified[reason] = now
        context = state.context
        actions = []
        if "revoke_family" in self.on_detect and not state.revoked:
            state.revoked = True
            entry = self._revocation(context, f"detection: {', '.join(fresh)}", now)
            if entry is not None:
                self._spawn(self._revoke(entry), "detection-revoke")
                actions.append(f"revoke_{context['revoke_kind']}")
        log.warning("suspicious token use", extra={
            "reasons": fresh, "family": context.get("family"), "sub": context.get("sub"),
            "client_ip": context.get("client_ip"), "request_id": context.get("request_id"),
        })
        if self.webhook is not None:
            self.webhook.post(notice(state, fresh, actions, now, self._host, self.window))

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _revocation(self, context: dict[str, Any], note: str, now: float) -> Entry | None:
        """The entry cutting off the family of ``context`` (or its lone token: by jti, else by
        fingerprint), for the token's own issuer only: detection never writes an any-issuer entry."""
        kind, value, issuer = context.get("revoke_kind"), context.get("revoke_value"), context.get("iss")
        if not isinstance(value, str) or not isinstance(issuer, str) or issuer in ("", ANY_ISSUER):
            log.error("detection cannot revoke: the token's issuer is unknown", extra={"family": value})
            return None
        expires = context.get("expires_at")
        if not isinstance(expires, int | float) or not 0 < expires <= now + MAX_LIFETIME:
            expires = None  # no usable exp: the issuer's max token lifetime
        try:
            if kind == Kind.FAMILY.value:  # the family outlives this token: the issuer's max token lifetime
                return self.entries.family(value, issuer=issuer, reason=note, now=now)
            # a token without a family: until it expires
            make = self.entries.fingerprint if context.get("family_kind") == "fp" else self.entries.jti
            return make(value, issuer=issuer, expires_at=expires, reason=note, now=now)
        except ValueError as exc:  # e.g. an issuer no longer configured after a reload
            log.error("detection cannot revoke", extra={"family": value, "error": str(exc)[:300]})
            return None

    async def _revoke(self, entry: Entry) -> None:
        try:
            await self.revocation.revoke(entry)
        except Exception as exc:
            log.error("detection could not revoke", extra={"kind": entry.kind.value, "value": entry.value,
                                                           "error": str(exc)})
        else:
            log.warning("detection revoked", extra={"kind": entry.kind.value, "value": entry.value})
