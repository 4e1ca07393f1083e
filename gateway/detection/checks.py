"""The detection rules over one family's state: which reasons a use (or another replica's view) adds.

Runs per request (``check``, ``count_proof_failure``) and in the background (``merge``, for
what the shared state learnt from the other replicas). Never awaits, never acts: the reasons
go back to the detector.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from .state import MAX_IPS_KEPT, FamilyState, proving_times

if TYPE_CHECKING:
    from ..config import DetectionConfig


class Rules:
    """``detection:``'s thresholds applied to a family: ``new_network``, ``too_many_ips``,
    ``insufficient_scope_burst`` and ``proof_failures`` (impossible travel needs places)."""

    def __init__(self, settings: DetectionConfig, window: float) -> None:
        self.settings = settings
        self.window = window

    def bursting(self, times: deque[float], limit: int, now: float) -> bool:
        """Whether the last ``limit`` events (``times``, oldest first) all fall within the window."""
        return len(times) >= limit and times[-limit] >= now - self.window

    # --- one use, on this replica ----------------------------------------------------------------

    def check(self, state: FamilyState, ip: str, network: str, now: float, scope_denial: bool) -> list[str]:
        """The reasons this use makes the family suspicious (the state is updated with it)."""
        reasons: list[str] = []
        if len(state.networks) < 16:
            state.networks.add(network)
        if self.settings.new_network_after_first_use and network != state.first_network:
            reasons.append("new_network")
        if self._too_many_ips(state, ip, now):
            reasons.append("too_many_ips")
        if scope_denial and self._scope_burst(state, now):
            reasons.append("insufficient_scope_burst")
        return reasons

    def _too_many_ips(self, state: FamilyState, ip: str, now: float) -> bool:
        limit = self.settings.max_ips_per_token
        if limit is None:
            return False
        ips = state.ips
        ips[ip] = now
        if len(ips) <= limit:
            return False
        horizon = now - self.window
        for old in [a for a, seen in ips.items() if seen < horizon]:
            del ips[old]
        if len(ips) > MAX_IPS_KEPT:
            for old in sorted(ips, key=ips.__getitem__)[: len(ips) - MAX_IPS_KEPT]:
                del ips[old]
        return len(ips) > limit

    def _scope_burst(self, state: FamilyState, now: float) -> bool:
        burst = self.settings.insufficient_scope_burst
        if burst is None:
            return False
        denials = state.scope_denials
        denials.append(now)
        while len(denials) > burst:
            denials.popleft()
        return self.bursting(denials, burst, now)

    def count_proof_failure(self, state: FamilyState, token: str, now: float) -> bool:
        """Count one proof failure of ``token``; True from the limit-th within the window on."""
        limit = self.settings.proof_failures_per_token
        assert limit is not None
        failures = state.proof_failures.get(token)
        if failures is None:
            failures = proving_times(state, token, limit)
        failures.append(now)
        return self.bursting(failures, limit, now)

    # --- what the other replicas saw -------------------------------------------------------------

    def merge(self, state: FamilyState, first_network: str | None, ips: dict[str, float], denials: list[float],
              now: float, proof_failures: dict[str, list[float]] | None = None) -> list[str]:
        """Fold the replicas' shared view into ``state``; the reasons that appear only with it."""
        late: list[str] = []
        if first_network and first_network != state.first_network and self._merge_first(state, first_network):
            late.append("new_network")
        if ips and self._merge_ips(state, ips, now):
            late.append("too_many_ips")
        if denials and self._merge_denials(state, denials, now):
            late.append("insufficient_scope_burst")
        if proof_failures and self._merge_proof_failures(state, proof_failures, now):
            late.append("proof_failures")
        return late

    def _merge_first(self, state: FamilyState, first_network: str) -> bool:
        # another replica saw the family first: this replica's networks other than that one are new
        seen_here = set(state.networks)
        state.first_network = first_network
        state.networks.add(first_network)
        return bool(self.settings.new_network_after_first_use and seen_here - {first_network})

    def _merge_ips(self, state: FamilyState, ips: dict[str, float], now: float) -> bool:
        limit = self.settings.max_ips_per_token
        if limit is None:
            return False
        horizon = now - self.window
        merged = state.ips
        before = len([s for s in merged.values() if s >= horizon])
        for ip, seen in ips.items():
            if seen >= horizon and seen > merged.get(ip, -math.inf):
                merged[ip] = seen
        after = len([s for s in merged.values() if s >= horizon])
        return after > limit >= before

    def _merge_denials(self, state: FamilyState, denials: list[float], now: float) -> bool:
        burst = self.settings.insufficient_scope_burst
        if burst is None:
            return False
        return self._merge_times(state.scope_denials, denials, burst, now)

    def _merge_proof_failures(self, state: FamilyState, remote: dict[str, list[float]], now: float) -> bool:
        """Fold other replicas' proof failures in; True when a token's burst appears only with them."""
        limit = self.settings.proof_failures_per_token
        if limit is None:
            return False
        appeared = False
        for token, times in remote.items():
            local = state.proof_failures.get(token)
            if local is None:
                local = proving_times(state, token, limit)
            # this replica's own failures come back too: a set folds them
            appeared = self._merge_times(local, times, limit, now) or appeared
        return appeared

    def _merge_times(self, local: deque[float], remote: list[float], limit: int, now: float) -> bool:
        """Keep the last ``limit`` of both; True when they burst together but did not before."""
        had = self.bursting(local, limit, now)
        combined = sorted(set(local) | set(remote))[-limit:]
        local.clear()
        local.extend(combined)
        return not had and self.bursting(local, limit, now)
