"""How audit records spell times and proof failures: shared by the record (written per request)
and the offline readers (incident reports), which must not import the request path to know it."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from ..reasons import Reason

__all__ = ["PROOF_FAILURES", "PROOF_FAILURE_REASONS", "rfc3339"]

# refusals meaning the sender could not prove the key its token is bound to: what a stolen
# DPoP- or certificate-bound token replayed without its key produces. Not among them:
# use_dpop_nonce (every DPoP client meets it on first contact and after each nonce rotation),
# sender_constraint_required (the token is not bound as the route asks: nothing was proven
# wrong) and dpop_replay_unavailable (the gateway's own outage)
PROOF_FAILURES: frozenset[Reason] = frozenset({
    Reason.UNPROVEN_BINDING, Reason.INVALID_DPOP_PROOF, Reason.DPOP_REPLAYED, Reason.DPOP_KEY_MISMATCH,
    Reason.CLIENT_CERTIFICATE_MISMATCH, Reason.CLIENT_CERTIFICATE_INVALID,
})
PROOF_FAILURE_REASONS: frozenset[str] = frozenset(r.value for r in PROOF_FAILURES)  # as records spell them

_SECOND: tuple[int, str] = (0, "1970-01-01T00:00:00")  # the last whole second formatted, reused within it


def rfc3339(timestamp: float) -> str:
    """``2026-01-31T12:00:00.123Z``, as ``datetime.fromtimestamp(timestamp, UTC)`` rounds it.

    One call per request: the date-time of the current second is formatted once.
    """
    global _SECOND
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * 1e6)  # half-even on the same double, as datetime does
    if micros >= 1_000_000:
        micros -= 1_000_000
        whole += 1.0
    elif micros < 0:
        micros += 1_000_000
        whole -= 1.0
    second = int(whole)
    cached = _SECOND
    if cached[0] != second:
        cached = _SECOND = (second, datetime.fromtimestamp(second, UTC).replace(tzinfo=None).isoformat())
    return f"{cached[1]}.{micros // 1000:03d}Z"
