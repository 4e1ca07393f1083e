"""The detector: fed every audited request that carried a valid token, on the request path.

``Detector.observe`` runs inside ``Gateway.record``. It only touches a few dicts of per-family
state, so it costs microseconds and never awaits: everything slow (revoking the family, the
webhook, sharing state through Redis) is handed to background tasks.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ..audit.fields import PROOF_FAILURES
from ..reasons import Reason
from ..revocation.api import factory_for
from ..tokens.token import short_fingerprint
from .actions import Actions
from .checks import Rules
from .places import Locate, impossible_travel, network_of, open_geoip
from .shared import SharedState
from .state import MIN_IDLE, Family, FamilyState, Observation, evict, family_of, use_context
from .webhook import WebhookSender

if TYPE_CHECKING:
    from ..audit.record import Exchange
    from ..config import GatewayConfig
    from ..decision import Decision
    from ..revocation.store import RevocationStore

log = logging.getLogger("gateway.detection")


def detection_enabled(config: GatewayConfig) -> bool:
    """Whether ``detection:`` asks for anything (else no detector is built)."""
    d = config.detection
    return bool(d.new_network_after_first_use or d.max_ips_per_token or d.insufficient_scope_burst
                or d.proof_failures_per_token or d.geoip_database)


class Detector:
    """Per-request detection with bounded in-memory state; actions run in the background."""

    def __init__(self, config: GatewayConfig, revocation: RevocationStore) -> None:
        self.settings = config.detection
        self.window = max(self.settings.window, 1.0)
        self.idle = max(self.window, MIN_IDLE)
        self.family_claim = config.revocation.family_claim
        self.on_detect = frozenset(self.settings.on_detect)
        self.rules = Rules(self.settings, self.window)
        self.actions = Actions(self.on_detect, self.window, revocation, factory_for(config))
        self.families: OrderedDict[str, FamilyState] = OrderedDict()
        self.locate: Locate | None = None
        self._geo_reader: Any = None
        self.shared: SharedState | None = None
        shared = config.revocation
        if shared.redis_url and not shared.cluster and shared.sentinel is None:
            self.shared = SharedState(self.settings, self.window, self.idle, self.merge,
                                      shared.redis_url, shared.key_prefix)
        elif shared.sentinel is not None or shared.cluster:
            log.warning("detection state is per replica: sharing it needs revocation.redis_url (not sentinel/cluster)")

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the GeoIP database, start the webhook and the shared state, as configured."""
        settings = self.settings
        if settings.geoip_database:
            opened = open_geoip(settings.geoip_database)
            if opened is not None:
                self._geo_reader, self.locate = opened
        if "webhook" in self.on_detect and settings.webhook_url:  # the config refuses webhook without a URL
            self.actions.webhook = WebhookSender(str(settings.webhook_url))
            self.actions.webhook.start()
        if self.shared is not None:
            await self.shared.start()
        log.info("detection on", extra={
            "new_network": settings.new_network_after_first_use, "max_ips_per_token": settings.max_ips_per_token,
            "insufficient_scope_burst": settings.insufficient_scope_burst,
            "proof_failures_per_token": settings.proof_failures_per_token, "window_seconds": self.window,
            "impossible_travel": self.locate is not None, "on_detect": sorted(self.on_detect),
            "shared_state": self.shared is not None,
        })

    async def stop(self) -> None:
        """Flush the shared state, let queued notices go out, end background work."""
        if self.shared is not None:
            await self.shared.stop()
        await self.actions.stop()
        if self._geo_reader is not None:
            self._geo_reader.close()

    # --- the hot path ------------------------------------------------------------------------

    def observe(self, exchange: Exchange, decision: Decision) -> list[str] | None:
        """Update the family's state with this request; the reasons it is suspicious, or None."""
        family = family_of(decision, self.family_claim)
        if family is None:
            return None
        now = exchange.started
        ip = exchange.client_ip
        network = network_of(ip)
        state = self._state(family[0], network, now)
        state.context = use_context(exchange, decision, family, self.family_claim)
        reasons = self.rules.check(state, ip, network, now, decision.reason is Reason.INSUFFICIENT_SCOPE)
        proof_failure = self._proof_failure_of(exchange, decision)
        if proof_failure is not None and self.rules.count_proof_failure(state, proof_failure[0], now):
            reasons.append("proof_failures")
        if self.locate is not None and self._travelled(state, ip, now):
            reasons.append("impossible_travel")
        if self.shared is not None:
            denial = exchange.request_id if decision.reason is Reason.INSUFFICIENT_SCOPE else None
            self.shared.push(Observation(family[0], ip, network, now, denial, proof_failure))
        if not reasons:
            return None
        self.actions.detected(state, reasons, now)
        return reasons if "audit" in self.on_detect else None

    def family_of(self, decision: Decision) -> Family | None:
        """(state key, revocation kind, revocation value) of the request's token family."""
        return family_of(decision, self.family_claim)

    def _state(self, key: str, network: str, now: float) -> FamilyState:
        """The family's state, made the most recently seen (a new one for a family first seen)."""
        families = self.families
        state = families.get(key)
        if state is None:
            state = families[key] = FamilyState(network, now, now)
            state.networks.add(network)
            evict(families, now, self.idle)
        else:
            families.move_to_end(key)
        state.last_seen = now
        return state

    def _travelled(self, state: FamilyState, ip: str, now: float) -> bool:
        """Whether ``ip``'s place is too far from the family's last place for the time between."""
        assert self.locate is not None
        place = self.locate(ip)
        if place is None:
            return False
        previous = state.place
        state.place = (place[0], place[1], now)
        return previous is not None and impossible_travel(previous[:2], previous[2], place, now)

    def _proof_failure_of(self, exchange: Exchange, decision: Decision) -> tuple[str, str] | None:
        """(token fingerprint, id of this failure) when this request is a proof failure being counted.

        The id tells failures apart in the shared sorted set: a client may send its own request id,
        and repeating one must not fold many failures into one."""
        if self.settings.proof_failures_per_token is None or decision.reason not in PROOF_FAILURES:
            return None
        assert decision.token is not None  # observe() looks at requests with a validated token only
        return short_fingerprint(decision.token.fingerprint), f"{exchange.request_id}@{exchange.started!r}"

    # --- merging what other replicas saw (SharedState calls this) -------------------------------

    def merge(self, key: str, first_network: str | None, ips: dict[str, float], denials: list[float],
              now: float, proof_failures: dict[str, list[float]] | None = None) -> None:
        """Fold the replicas' shared view of family ``key`` in; act on what appears only with it."""
        state = self.families.get(key)
        if state is None:
            return
        late = self.rules.merge(state, first_network, ips, denials, now, proof_failures)
        if late:
            self.actions.detected(state, late, now)
