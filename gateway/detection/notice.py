"""The ``suspicious_token_use`` notice a webhook receives: built in the background, once per detection."""

from __future__ import annotations

from typing import Any

from ..audit.fields import rfc3339
from .state import FamilyState

# the identity of the latest use, copied as it is (state.use_context)
_CONTEXT_FIELDS = (
    "family", "family_kind", "family_claim", "sub", "client_id", "iss", "jti", "token_fingerprint",
    "request_id", "client_ip", "method", "path", "route", "decision", "reason", "binding", "key_thumbprint",
)


def notice(
    state: FamilyState, reasons: list[str], actions: list[str], now: float, gateway: str, window: float,
) -> dict[str, Any]:
    """What was detected, on which family, by which gateway (``gateway`` is its host name)."""
    context = state.context
    body: dict[str, Any] = {"type": "suspicious_token_use", "ts": rfc3339(now), "reasons": reasons,
                            "actions": actions, "gateway": gateway}
    body.update((name, context.get(name)) for name in _CONTEXT_FIELDS)
    body.update({
        "proof_failures": recent_proof_failures(state, context.get("token_fingerprint"), now, window),
        "first_network": state.first_network,
        "networks": sorted(state.networks),
        "recent_ips": (sorted(state.ips, key=state.ips.__getitem__)[-20:] if state.ips
                       else [context.get("client_ip")]),
        "first_seen": rfc3339(state.first_seen),
        "window_seconds": window,
    })
    return body


def recent_proof_failures(state: FamilyState, token: Any, now: float, window: float) -> int:
    """The token's proof failures within the window that this replica knows of."""
    failures = state.proof_failures.get(token) if isinstance(token, str) else None
    return sum(1 for when in failures if when >= now - window) if failures else 0
