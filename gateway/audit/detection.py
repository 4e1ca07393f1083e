"""Live detection of suspicious token use (off unless ``detection:`` asks for something).

``Detector.observe`` runs inside ``Gateway.record`` for every request that carried a
valid token. It only touches a few dicts of per-family state (family = the ``sid`` claim,
else the jti, else the token fingerprint), so it costs microseconds and never awaits:
everything slow (revoking the family, the webhook, sharing state through Redis) is handed
to background tasks.

Detections, each a reason string:

* ``new_network``: the family is used from a /24 (IPv4) or /48 (IPv6) other than the one
  of its first use;
* ``too_many_ips``: more than ``max_ips_per_token`` distinct client IPs within ``window``;
* ``insufficient_scope_burst``: ``insufficient_scope_burst`` scope denials within ``window``;
* ``proof_failures``: ``proof_failures_per_token`` proof failures by one token within ``window``
  (``record.PROOF_FAILURES``: a DPoP- or certificate-bound token sent without a valid proof of
  its key, which is what a stolen sender-constrained token replayed without its key looks like);
* ``impossible_travel``: two uses further apart than 1000 km/h allows (needs
  ``geoip_database`` and the optional ``maxminddb`` package).

State is per replica, in memory, bounded (``MAX_FAMILIES``, least recently seen dropped
first; a family idle for ``max(window, 1h)`` is forgotten). With ``revocation.redis_url``
set, observations are also written to Redis in batches off the request path and the
replicas' views are merged, so a token used from two networks through two replicas is
still caught (by the replica that learns it; its next request is marked as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import aiohttp

from .. import metrics
from ..config import GatewayConfig
from ..decision import Decision
from ..reasons import Reason
from ..revocation.api import factory_for
from ..revocation.entries import ANY_ISSUER, Entry, Kind
from ..revocation.schema import MAX_LIFETIME
from ..revocation.store import RevocationStore
from ..tokens.token import FINGERPRINT_PREFIX
from .fields import PROOF_FAILURES, rfc3339
from .record import Exchange

log = logging.getLogger("gateway.detection")

MAX_FAMILIES = 100_000
MAX_IPS_KEPT = 256  # per family: enough to know that more than max_ips_per_token were seen
MAX_PROVING_TOKENS = 16  # per family: tokens whose proof failures are counted (the oldest is dropped first)
MIN_IDLE = 3600.0
WEBHOOK_QUEUE = 1000
WEBHOOK_ATTEMPTS = 4
WEBHOOK_TIMEOUT = 5.0
TRAVEL_KMH = 1000.0
TRAVEL_MIN_KM = 300.0  # geolocation of nearby addresses is too coarse to judge shorter hops
SHARED_FLUSH_INTERVAL = 0.1
SHARED_MAX_PENDING = 50_000

Locate = Callable[[str], "tuple[float, float] | None"]


def detection_enabled(config: GatewayConfig) -> bool:
    d = config.detection
    return bool(d.new_network_after_first_use or d.max_ips_per_token or d.insufficient_scope_burst
                or d.proof_failures_per_token or d.geoip_database)


@lru_cache(maxsize=65536)
def network_of(ip: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) of an address; the text itself when it is not an address."""
    if ":" not in ip:
        head, dot, _ = ip.rpartition(".")
        return f"{head}.0/24" if dot and head.count(".") == 2 else ip
    try:
        address = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return network_of(str(address.ipv4_mapped))
    return str(ipaddress.IPv6Network((int(address) >> 80 << 80, 48)))


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine) between two (latitude, longitude) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def impossible_travel(a: tuple[float, float], t1: float, b: tuple[float, float], t2: float) -> bool:
    """Whether going from ``a`` at ``t1`` to ``b`` at ``t2`` (seconds) needs more than 1000 km/h."""
    km = distance_km(a, b)
    if km < TRAVEL_MIN_KM:
        return False
    hours = abs(t2 - t1) / 3600.0
    return hours <= 0 or km / hours > TRAVEL_KMH


@dataclass(slots=True)
class FamilyState:
    """What one replica knows about one token family."""

    first_network: str
    first_seen: float
    last_seen: float
    ips: dict[str, float] = field(default_factory=dict)  # ip -> last seen
    networks: set[str] = field(default_factory=set)
    scope_denials: deque[float] = field(default_factory=deque)
    proof_failures: dict[str, deque[float]] = field(default_factory=dict)  # token fingerprint -> last failures
    place: tuple[float, float, float] | None = None  # latitude, longitude, when
    notified: dict[str, float] = field(default_factory=dict)  # reason -> when notified
    revoked: bool = False
    context: dict[str, Any] = field(default_factory=dict)  # identity of the latest use (for late detections)


@dataclass(slots=True)
class _Observation:
    family: str
    ip: str
    network: str
    when: float
    scope_denial_id: str | None
    proof_failure: tuple[str, str] | None = None  # (token fingerprint, unique id) of a failed proof


class Detector:
    """Per-request detection with bounded in-memory state; actions run in the background."""

    def __init__(self, config: GatewayConfig, revocation: RevocationStore) -> None:
        self.settings = config.detection
        self.window = max(self.settings.window, 1.0)
        self.idle = max(self.window, MIN_IDLE)
        self.family_claim = config.revocation.family_claim
        self.revocation = revocation
        self.entries = factory_for(config)
        self.on_detect = frozenset(self.settings.on_detect)
        self.families: OrderedDict[str, FamilyState] = OrderedDict()
        self.locate: Locate | None = None
        self._geo_reader: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._webhook_queue: asyncio.Queue[dict[str, Any]] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._host = socket.gethostname()
        self.webhook_sent = 0
        self.webhook_failed = 0
        self.shared: SharedState | None = None
        redis_url = config.revocation.redis_url
        if redis_url and not config.revocation.cluster and config.revocation.sentinel is None:
            self.shared = SharedState(self, redis_url, config.revocation.key_prefix)
        elif config.revocation.sentinel is not None or config.revocation.cluster:
            log.warning("detection state is per replica: sharing it needs revocation.redis_url (not sentinel/cluster)")

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        if settings.geoip_database:
            self._open_geoip(settings.geoip_database)
        if "webhook" in self.on_detect and settings.webhook_url:  # the config refuses webhook without a URL
            self._webhook_queue = asyncio.Queue(WEBHOOK_QUEUE)
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT), cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._spawn(self._webhook_worker(), "detection-webhook")
        if self.shared is not None:
            await self.shared.start()
        log.info("detection on", extra={
            "new_network": settings.new_network_after_first_use, "max_ips_per_token": settings.max_ips_per_token,
            "insufficient_scope_burst": settings.insufficient_scope_burst,
            "proof_failures_per_token": settings.proof_failures_per_token, "window_seconds": self.window,
            "impossible_travel": self.locate is not None, "on_detect": sorted(self.on_detect),
            "shared_state": self.shared is not None,
        })

    def _open_geoip(self, path: str) -> None:
        try:
            import maxminddb  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            log.warning("impossible-travel detection is off: geoip_database is set but the maxminddb package"
                        " is not installed (pip install maxminddb)")
            return
        try:
            reader = maxminddb.open_database(path)
        except (OSError, ValueError) as exc:
            log.warning("impossible-travel detection is off: cannot open geoip_database",
                        extra={"path": path, "error": str(exc)})
            return
        self._geo_reader = reader
        self.locate = _maxmind_locator(reader)

    async def stop(self) -> None:
        if self.shared is not None:
            await self.shared.stop()
        queue = self._webhook_queue
        if queue is not None and not queue.empty():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.join(), 2.0)  # let queued notices go out
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
        if self._geo_reader is not None:
            self._geo_reader.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the hot path ------------------------------------------------------------------------

    def family_of(self, decision: Decision) -> tuple[str, Kind, str] | None:
        """(state key, revocation kind, revocation value) of the request's token family."""
        token = decision.token
        if token is None:
            return None
        sid = token.claims.get(self.family_claim)
        if isinstance(sid, str) and sid:
            return f"sid:{token.issuer}|{sid}", Kind.FAMILY, sid
        if token.jti:  # a jti is unique within its issuer at best
            return f"jti:{token.issuer}|{token.jti}", Kind.TOKEN, token.jti
        fp = token.fingerprint[:FINGERPRINT_PREFIX]
        return f"fp:{fp}", Kind.TOKEN, fp

    def observe(self, exchange: Exchange, decision: Decision) -> list[str] | None:
        """Update the family's state with this request; the reasons it is suspicious, or None."""
        family = self.family_of(decision)
        if family is None:
            return None
        key = family[0]
        now = exchange.started
        ip = exchange.client_ip
        network = network_of(ip)
        families = self.families
        state = families.get(key)
        if state is None:
            state = families[key] = FamilyState(network, now, now)
            state.networks.add(network)
            self._evict(now)
        else:
            families.move_to_end(key)
        state.last_seen = now
        state.context = _context(exchange, decision, family, self.family_claim)
        reasons = self._check(state, ip, network, now, decision.reason is Reason.INSUFFICIENT_SCOPE)
        proof_failure = self._proof_failure_of(exchange, decision)
        if proof_failure is not None and self._count_proof_failure(state, proof_failure[0], now):
            reasons.append("proof_failures")
        if self.locate is not None:
            place = self.locate(ip)
            if place is not None:
                previous = state.place
                if previous is not None and impossible_travel(previous[:2], previous[2], place, now):
                    reasons.append("impossible_travel")
                state.place = (place[0], place[1], now)
        if self.shared is not None:
            denial = exchange.request_id if decision.reason is Reason.INSUFFICIENT_SCOPE else None
            self.shared.push(_Observation(key, ip, network, now, denial, proof_failure))
        if not reasons:
            return None
        self._detected(state, reasons, now)
        return reasons if "audit" in self.on_detect else None

    def _check(self, state: FamilyState, ip: str, network: str, now: float, scope_denial: bool) -> list[str]:
        settings = self.settings
        reasons: list[str] = []
        if len(state.networks) < 16:
            state.networks.add(network)
        if settings.new_network_after_first_use and network != state.first_network:
            reasons.append("new_network")
        limit = settings.max_ips_per_token
        if limit is not None:
            ips = state.ips
            ips[ip] = now
            if len(ips) > limit:
                horizon = now - self.window
                for old in [a for a, seen in ips.items() if seen < horizon]:
                    del ips[old]
                if len(ips) > MAX_IPS_KEPT:
                    for old in sorted(ips, key=ips.__getitem__)[: len(ips) - MAX_IPS_KEPT]:
                        del ips[old]
                if len(ips) > limit:
                    reasons.append("too_many_ips")
        burst = settings.insufficient_scope_burst
        if burst is not None and scope_denial:
            denials = state.scope_denials
            denials.append(now)
            while len(denials) > burst:
                denials.popleft()
            if self._bursting(denials, burst, now):
                reasons.append("insufficient_scope_burst")
        return reasons

    def _proof_failure_of(self, exchange: Exchange, decision: Decision) -> tuple[str, str] | None:
        """(token fingerprint, id of this failure) when this request is a proof failure being counted.

        The id tells failures apart in the shared sorted set: a client may send its own request id,
        and repeating one must not fold many failures into one."""
        if self.settings.proof_failures_per_token is None or decision.reason not in PROOF_FAILURES:
            return None
        assert decision.token is not None  # observe() looks at requests with a validated token only
        return decision.token.fingerprint[:FINGERPRINT_PREFIX], f"{exchange.request_id}@{exchange.started!r}"

    def _count_proof_failure(self, state: FamilyState, token: str, now: float) -> bool:
        """Count one proof failure of ``token``; True from the limit-th within the window on."""
        limit = self.settings.proof_failures_per_token
        assert limit is not None
        failures = state.proof_failures.get(token)
        if failures is None:
            failures = self._proof_failures_of(state, token, limit)
        failures.append(now)
        return self._bursting(failures, limit, now)

    @staticmethod
    def _proof_failures_of(state: FamilyState, token: str, limit: int) -> deque[float]:
        """The failure times kept for a token new to the family (a family may hold many tokens: bounded)."""
        kept = state.proof_failures
        if len(kept) >= MAX_PROVING_TOKENS:
            del kept[next(iter(kept))]
        failures = kept[token] = deque(maxlen=limit)  # the last ``limit`` failures say whether it is a burst
        return failures

    def _bursting(self, times: deque[float], limit: int, now: float) -> bool:
        """Whether the last ``limit`` events (``times``, oldest first) all fall within the window."""
        return len(times) >= limit and times[-limit] >= now - self.window

    def _evict(self, now: float) -> None:
        families = self.families
        horizon = now - self.idle
        while families:
            oldest = next(iter(families.values()))
            if len(families) <= MAX_FAMILIES and oldest.last_seen >= horizon:
                break
            families.popitem(last=False)

    # --- actions -----------------------------------------------------------------------------

    def _detected(self, state: FamilyState, reasons: list[str], now: float) -> None:
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
        if self._webhook_queue is not None:
            notice = self._notice(state, fresh, actions, now)
            try:
                self._webhook_queue.put_nowait(notice)
            except asyncio.QueueFull:
                self.webhook_failed += 1
                log.error("detection webhook queue full: notice dropped", extra={"reasons": fresh})

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

    def _notice(self, state: FamilyState, reasons: list[str], actions: list[str], now: float) -> dict[str, Any]:
        context = state.context
        return {
            "type": "suspicious_token_use",
            "ts": rfc3339(now),
            "reasons": reasons,
            "actions": actions,
            "gateway": self._host,
            "family": context.get("family"),
            "family_kind": context.get("family_kind"),
            "family_claim": context.get("family_claim"),
            "sub": context.get("sub"),
            "client_id": context.get("client_id"),
            "iss": context.get("iss"),
            "jti": context.get("jti"),
            "token_fingerprint": context.get("token_fingerprint"),
            "request_id": context.get("request_id"),
            "client_ip": context.get("client_ip"),
            "method": context.get("method"),
            "path": context.get("path"),
            "route": context.get("route"),
            "decision": context.get("decision"),
            "reason": context.get("reason"),
            "binding": context.get("binding"),
            "key_thumbprint": context.get("key_thumbprint"),
            "proof_failures": self._recent_proof_failures(state, context.get("token_fingerprint"), now),
            "first_network": state.first_network,
            "networks": sorted(state.networks),
            "recent_ips": (sorted(state.ips, key=state.ips.__getitem__)[-20:] if state.ips
                           else [context.get("client_ip")]),
            "first_seen": rfc3339(state.first_seen),
            "window_seconds": self.window,
        }

    def _recent_proof_failures(self, state: FamilyState, token: Any, now: float) -> int:
        """The token's proof failures within the window that this replica knows of."""
        failures = state.proof_failures.get(token) if isinstance(token, str) else None
        return sum(1 for when in failures if when >= now - self.window) if failures else 0

    async def _webhook_worker(self) -> None:
        queue, session, url = self._webhook_queue, self._session, self.settings.webhook_url
        assert queue is not None and session is not None and url is not None
        while True:
            notice = await queue.get()
            try:
                await self._send(session, url, notice)
            finally:
                queue.task_done()

    async def _send(self, session: aiohttp.ClientSession, url: str, notice: dict[str, Any]) -> None:
        delay = 0.25
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                async with session.post(url, json=notice, allow_redirects=False) as response:
                    if 200 <= response.status < 300:
                        self.webhook_sent += 1
                        return
                    retry = response.status >= 500 or response.status in (408, 429)
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                retry, problem = True, type(exc).__name__
            if not retry or attempt == WEBHOOK_ATTEMPTS:
                self.webhook_failed += 1
                log.error("detection webhook failed", extra={"attempts": attempt, "error": problem,
                                                             "reasons": notice.get("reasons")})
                return
            await asyncio.sleep(delay)
            delay *= 2

    # --- merging what other replicas saw (SharedState calls this) -------------------------------

    def merge(self, key: str, first_network: str | None, ips: dict[str, float], denials: list[float],
              now: float, proof_failures: dict[str, list[float]] | None = None) -> None:
        state = self.families.get(key)
        if state is None:
            return
        late: list[str] = []
        settings = self.settings
        if first_network and first_network != state.first_network:
            # another replica saw the family first: this replica's networks other than that one are new
            seen_here = set(state.networks)
            state.first_network = first_network
            state.networks.add(first_network)
            if settings.new_network_after_first_use and seen_here - {first_network}:
                late.append("new_network")
        limit = settings.max_ips_per_token
        if limit is not None and ips:
            horizon = now - self.window
            merged = state.ips
            before = len([s for s in merged.values() if s >= horizon])
            for ip, seen in ips.items():
                if seen >= horizon and seen > merged.get(ip, -math.inf):
                    merged[ip] = seen
            after = len([s for s in merged.values() if s >= horizon])
            if after > limit >= before:
                late.append("too_many_ips")
        burst = settings.insufficient_scope_burst
        if burst is not None and denials:
            local = state.scope_denials
            had = self._bursting(local, burst, now)
            combined = sorted(set(local) | set(denials))[-burst:]
            local.clear()
            local.extend(combined)
            if not had and self._bursting(local, burst, now):
                late.append("insufficient_scope_burst")
        if proof_failures and self._merge_proof_failures(state, proof_failures, now):
            late.append("proof_failures")
        if late:
            self._detected(state, late, now)

    def _merge_proof_failures(self, state: FamilyState, remote: dict[str, list[float]], now: float) -> bool:
        """Fold other replicas' proof failures in; True when a token's burst appears only with them."""
        limit = self.settings.proof_failures_per_token
        if limit is None:
            return False
        appeared = False
        for token, times in remote.items():
            local = state.proof_failures.get(token)
            had = local is not None and self._bursting(local, limit, now)
            if local is None:
                local = self._proof_failures_of(state, token, limit)
            combined = sorted(set(local) | set(times))[-limit:]  # this replica's own failures come back too
            local.clear()
            local.extend(combined)
            appeared = appeared or (not had and self._bursting(local, limit, now))
        return appeared


def _context(
    exchange: Exchange, decision: Decision, family: tuple[str, Kind, str], family_claim: str
) -> dict[str, Any]:
    token = decision.token
    assert token is not None
    return {
        # family_kind: "sid" when the family claim was found (whatever it is called: family_claim says),
        # else "jti" or "fp" (the token stands for its own family)
        "family": family[2], "family_kind": "sid" if family[1] is Kind.FAMILY else family[0].split(":", 1)[0],
        "family_claim": family_claim if family[1] is Kind.FAMILY else None,
        "revoke_kind": family[1].value, "revoke_value": family[2], "expires_at": token.expires_at,
        "sub": token.subject, "client_id": token.client_id, "iss": token.issuer, "jti": token.jti,
        "token_fingerprint": token.fingerprint[:FINGERPRINT_PREFIX], "request_id": exchange.request_id,
        "client_ip": exchange.client_ip, "method": exchange.method,
        "path": decision.target.path if decision.target is not None else exchange.raw_path[:512],
        "route": decision.route.name if decision.route is not None else None,
        "decision": decision.reason.decision, "reason": decision.reason.value,
        "binding": decision.binding, "key_thumbprint": decision.key_thumbprint,
    }


def _maxmind_locator(reader: Any) -> Locate:
    @lru_cache(maxsize=65536)
    def locate(ip: str) -> tuple[float, float] | None:
        try:
            found = reader.get(ip)
        except ValueError:
            return None
        location = found.get("location") if isinstance(found, dict) else None
        if not isinstance(location, dict):
            return None
        lat, lon = location.get("latitude"), location.get("longitude")
        if isinstance(lat, int | float) and isinstance(lon, int | float):
            return float(lat), float(lon)
        return None

    return locate


class SharedState:
    """Per-family detection state shared by the replicas through Redis, updated in batches.

    Keys (all expiring): ``<prefix>detect:<family>:first`` (network of first use),
    ``...:ips`` (sorted set ip -> last seen), ``...:scope`` (sorted set of scope
    denials) and ``...:proof:<token fingerprint>`` (sorted set of one token's proof
    failures). ``<prefix>`` is the revocation key prefix with ``revoked:`` replaced.
    """

    def __init__(self, detector: Detector, redis_url: str, key_prefix: str) -> None:
        self.detector = detector
        self.redis_url = redis_url
        base = key_prefix[: -len("revoked:")] if key_prefix.endswith("revoked:") else key_prefix.rstrip(":") + "-"
        self.prefix = f"{base}detect:"
        self.pending: list[_Observation] = []
        self.dropped = 0
        self.errors = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self.flushed = asyncio.Event()  # set after each successful flush (tests wait on it)

    def push(self, observation: _Observation) -> None:
        if len(self.pending) >= SHARED_MAX_PENDING:
            self.dropped += 1
            return
        self.pending.append(observation)

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.from_url(self.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="detection-shared-state")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SHARED_FLUSH_INTERVAL)
            try:
                await self.flush()
            except Exception as exc:
                self.errors += 1
                if self.errors in (1, 10) or self.errors % 1000 == 0:
                    log.warning("detection shared state: redis error (state stays per replica meanwhile)",
                                extra={"error": str(exc), "errors": self.errors})

    async def flush(self) -> None:
        if not self.pending or self._client is None:
            return
        batch, self.pending = self.pending, []
        detector = self.detector
        window, idle = detector.window, detector.idle
        ttl_window, ttl_idle = max(int(window) + 1, 1), int(idle) + 1
        by_family: dict[str, list[_Observation]] = {}
        for observation in batch:
            by_family.setdefault(observation.family, []).append(observation)
        burst = detector.settings.insufficient_scope_burst or 0
        pipe = self._client.pipeline(transaction=False)
        order: list[tuple[str, list[str]]] = []  # (family, tokens whose proof failures were queued)
        now = max(o.when for o in batch)
        for family, observations in by_family.items():
            base = self.prefix + family
            first = min(observations, key=lambda o: o.when)
            pipe.set(f"{base}:first", first.network, nx=True, ex=ttl_idle)
            pipe.get(f"{base}:first")
            pipe.expire(f"{base}:first", ttl_idle)
            ips: dict[str, float] = {}
            for o in observations:
                ips[o.ip] = max(o.when, ips.get(o.ip, 0.0))
            pipe.zadd(f"{base}:ips", ips)
            pipe.zremrangebyscore(f"{base}:ips", "-inf", now - window)
            pipe.expire(f"{base}:ips", ttl_window)
            pipe.zrange(f"{base}:ips", -MAX_IPS_KEPT, -1, withscores=True)
            denials = {o.scope_denial_id: o.when for o in observations if o.scope_denial_id}
            if denials and burst:
                pipe.zadd(f"{base}:scope", denials)
                pipe.zremrangebyscore(f"{base}:scope", "-inf", now - window)
                pipe.expire(f"{base}:scope", ttl_window)
                pipe.zrange(f"{base}:scope", -burst, -1, withscores=True)
            order.append((family, self._queue_proof_failures(pipe, base, observations, now, ttl_window)))
        results = await pipe.execute()
        index = 0
        for family, proving in order:
            has_scope = bool(burst) and any(o.scope_denial_id for o in by_family[family])
            first_network = results[index + 1]
            remote_ips = results[index + 6]
            index += 7
            remote_denials: list[Any] = []
            if has_scope:
                remote_denials = results[index + 3]
                index += 4
            proof_failures: dict[str, list[float]] = {}
            for token in proving:
                proof_failures[token] = [float(score) for _, score in results[index + 3]]
                index += 4
            detector.merge(
                family,
                first_network.decode() if isinstance(first_network, bytes) else first_network,
                {(ip.decode() if isinstance(ip, bytes) else str(ip)): float(score) for ip, score in remote_ips},
                [float(score) for _, score in remote_denials],
                now,
                proof_failures,
            )
        self.flushed.set()

    def _queue_proof_failures(
        self, pipe: Any, base: str, observations: list[_Observation], now: float, ttl: int,
    ) -> list[str]:
        """Queue the family's proof failures per token (four commands each); the tokens, in order."""
        limit = self.detector.settings.proof_failures_per_token
        by_token: dict[str, dict[str, float]] = {}
        for o in observations:
            if o.proof_failure is not None:
                token, failure_id = o.proof_failure
                by_token.setdefault(token, {})[failure_id] = o.when
        if not limit or not by_token:
            return []
        for token, failures in by_token.items():
            key = f"{base}:proof:{token}"
            pipe.zadd(key, failures)
            pipe.zremrangebyscore(key, "-inf", now - self.detector.window)
            pipe.expire(key, ttl)
            pipe.zrange(key, -limit, -1, withscores=True)
        return list(by_token)
