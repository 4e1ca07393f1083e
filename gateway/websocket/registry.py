"""The registry of this process's long connections, which cuts them when their token dies; runs in the background.

``LiveConnections`` holds every open WebSocket and long stream with the token that opened it,
indexed by the token's fingerprint, jti, family, subject, client and issuer. A revocation entry
(``revoked``, the listener for ``RevocationStore.on_revoke``, which also hears the other replicas'
revocations) closes exactly the connections it matches, and a timer closes each at its token's
``exp``: WebSockets with ``close_code`` (4401 by default, or 1008) and a reason, streams by ending
the response. Shutdown closes all with 1001 (going away).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from .. import metrics
from ..reasons import Reason
from ..revocation.entries import Entry, RevocationList
from ..tokens.token import ValidatedToken
from .connection import GOING_AWAY, SERVICE_RESTART, UNAUTHORIZED_CLOSE, ConnectionKind, LiveConnection
from .revocation_keys import entry_keys, token_keys

log = logging.getLogger("gateway.websocket")  # the package's logger: one name for operators to filter on


class LiveConnections:
    """Every open long connection of this process, found by what its token can be revoked by."""

    def __init__(
        self, *, close_code: int = UNAUTHORIZED_CLOSE, family_claim: str = "sid", expiry_grace: float = 0.0
    ) -> None:
        self.close_code = close_code
        self.expiry_grace = expiry_grace
        self._probe = RevocationList(family_claim)
        self._family_claim = family_claim
        self._all: set[LiveConnection] = set()
        self._index: dict[tuple[str, str], set[LiveConnection]] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._all)

    def open(
        self, route: str, kind: ConnectionKind, token: ValidatedToken | None, group: object = None
    ) -> LiveConnection:
        """Register a connection (use as a context manager: it is finished on exit). With a token
        that has an ``exp``, it is cut at ``exp + expiry_grace``. ``group``: see ``cut_group``."""
        connection = LiveConnection(route, kind, token, group)
        connection._registry = self
        self._all.add(connection)
        self._empty.clear()
        if token is not None:
            connection._keys = token_keys(token, self._family_claim)
            for key in connection._keys:
                self._index.setdefault(key, set()).add(connection)
            if token.expires_at > 0:
                delay = max(0.0, token.expires_at + self.expiry_grace - time.time())
                connection._timer = asyncio.get_running_loop().call_later(
                    delay, connection.cut, Reason.TOKEN_EXPIRED, self.close_code, "token expired",
                )
        metrics.LONG_CONNECTIONS.labels(route, kind).inc()
        return connection

    def finish(self, connection: LiveConnection) -> None:
        """Unregister (idempotent); counts the close by its reason."""
        if connection not in self._all:
            return
        self._all.discard(connection)
        for key in connection._keys:
            members = self._index.get(key)
            if members is not None:
                members.discard(connection)
                if not members:
                    del self._index[key]
        if connection._timer is not None:
            connection._timer.cancel()
        metrics.LONG_CONNECTIONS.labels(connection.route, connection.kind).dec()
        metrics.LONG_CONNECTION_CLOSES.labels(connection.route, connection.kind, connection.end_reason).inc()
        if not self._all:
            self._empty.set()

    def _cut_all_of(
        self, connections: Iterable[LiveConnection], reason: Reason, code: int | None, message: str
    ) -> int:
        cut = sum(1 for c in list(connections) if c.cut(reason, self.close_code if code is None else code, message))
        if cut:
            log.info("closed %d live connection(s): %s", cut, reason.value,
                     extra={"reason": reason.value, "count": cut})
        return cut

    def revoked(self, entry: Entry) -> int:
        """Cut the connections whose token ``entry`` revokes (a ``RevocationStore.on_revoke`` listener).

        The index narrows the search to tokens carrying the entry's value; the revocation list's
        own matcher then decides (issuer, ``not_before`` cut-off), so a connection is closed
        exactly when a new request with its token would be refused.
        """
        candidates = {c for key in entry_keys(entry) for c in self._index.get(key, ())}
        if not candidates:
            return 0
        matches = self._probe.matcher_for(entry)
        hit = [c for c in candidates if c.token is not None and matches(c.token)]
        return self._cut_all_of(hit, entry.kind.reason, None, "token revoked")

    def cut_where(
        self, predicate: Callable[[ValidatedToken], bool], reason: Reason, code: int | None = None, message: str = ""
    ) -> int:
        """Cut every connection whose token satisfies ``predicate`` (e.g. after a configuration
        reload dropped an issuer or tightened a route)."""
        return self._cut_all_of(
            (c for c in self._all if c.token is not None and predicate(c.token)), reason, code, message,
        )

    def recheck(self, check: Callable[[ValidatedToken], Reason | None]) -> int:
        """Cut every connection whose token ``check`` (the revocation list's) now refuses: the
        safety net for entries that arrived without a notification (a resync after an outage)."""
        refused: dict[Reason, list[LiveConnection]] = {}
        for connection in list(self._all):
            reason = check(connection.token) if connection.token is not None else None
            if reason is not None:
                refused.setdefault(reason, []).append(connection)
        return sum(self._cut_all_of(group, reason, None, "token revoked") for reason, group in refused.items())

    def cut_issuer(self, issuer: str, reason: Reason = Reason.UNKNOWN_ISSUER) -> int:
        """Cut every connection whose token ``issuer`` issued (an issuer no longer trusted)."""
        return self._cut_all_of(self._index.get(("iss", issuer), ()), reason, None, "issuer no longer trusted")

    def cut_all(
        self, reason: Reason = Reason.SHUTTING_DOWN, code: int = GOING_AWAY,
        message: str = "the gateway is shutting down",
    ) -> int:
        """Cut everything (graceful shutdown, after the drain period): WebSockets get ``code``."""
        return self._cut_all_of(self._all, reason, code, message)

    def count(self, group: object) -> int:
        """How many connections of ``group`` are open."""
        return sum(1 for c in self._all if c.group is group)

    def cut_group(
        self, group: object, reason: Reason = Reason.CONFIG_RELOADED, code: int = SERVICE_RESTART,
        message: str = "the configuration changed",
    ) -> int:
        """Cut the connections opened under ``group`` (a replaced pipeline: decided under a
        configuration no longer in force, and proxied through its upstream pools)."""
        return self._cut_all_of([c for c in self._all if c.group is group], reason, code, message)

    async def wait_group_closed(self, group: object, timeout: float) -> bool:
        """Wait until no connection of ``group`` is open; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.count(group):  # a reload's rare wait, polled
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def wait_closed(self, timeout: float) -> bool:
        """Wait until every connection has finished; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True

    def open_by_route(self) -> dict[tuple[str, str], int]:
        """How many connections are open, by (route, kind)."""
        counts: dict[tuple[str, str], int] = {}
        for c in self._all:
            counts[(c.route, c.kind)] = counts.get((c.route, c.kind), 0) + 1
        return counts
