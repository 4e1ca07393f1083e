"""What one replica remembers of each token family, bounded; updated per request.

A family is the ``sid`` claim (``revocation.family_claim``), else the jti, else the token
fingerprint: the token then stands for its own family.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..revocation.entries import Kind
from ..tokens.token import short_fingerprint

if TYPE_CHECKING:
    from ..audit.record import Exchange
    from ..decision import Decision

MAX_FAMILIES = 100_000
MAX_IPS_KEPT = 256  # per family: enough to know that more than max_ips_per_token were seen
MAX_PROVING_TOKENS = 16  # per family: tokens whose proof failures are counted (the oldest is dropped first)
MIN_IDLE = 3600.0

Family = tuple[str, Kind, str]  # (state key, revocation kind, revocation value)


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
class Observation:
    """One use of a family, as queued for the replicas' shared state."""

    family: str
    ip: str
    network: str
    when: float
    scope_denial_id: str | None
    proof_failure: tuple[str, str] | None = None  # (token fingerprint, unique id) of a failed proof


def family_of(decision: Decision, family_claim: str) -> Family | None:
    """(state key, revocation kind, revocation value) of the request's token family."""
    token = decision.token
    if token is None:
        return None
    sid = token.claims.get(family_claim)
    if isinstance(sid, str) and sid:
        return f"sid:{token.issuer}|{sid}", Kind.FAMILY, sid
    if token.jti:  # a jti is unique within its issuer at best
        return f"jti:{token.issuer}|{token.jti}", Kind.TOKEN, token.jti
    fp = short_fingerprint(token.fingerprint)
    return f"fp:{fp}", Kind.TOKEN, fp


def use_context(exchange: Exchange, decision: Decision, family: Family, family_claim: str) -> dict[str, Any]:
    """Who used the family, how and where: what a notice and a revocation say of the latest use."""
    token = decision.token
    assert token is not None
    return {
        # family_kind: "sid" when the family claim was found (whatever it is called: family_claim says),
        # else "jti" or "fp" (the token stands for its own family)
        "family": family[2], "family_kind": "sid" if family[1] is Kind.FAMILY else family[0].split(":", 1)[0],
        "family_claim": family_claim if family[1] is Kind.FAMILY else None,
        "revoke_kind": family[1].value, "revoke_value": family[2], "expires_at": token.expires_at,
        "sub": token.subject, "client_id": token.client_id, "iss": token.issuer, "jti": token.jti,
        "token_fingerprint": short_fingerprint(token.fingerprint), "request_id": exchange.request_id,
        "client_ip": exchange.client_ip, "method": exchange.method,
        "path": decision.target.path if decision.target is not None else exchange.raw_path[:512],
        "route": decision.route.name if decision.route is not None else None,
        "decision": decision.reason.decision, "reason": decision.reason.value,
        "binding": decision.binding, "key_thumbprint": decision.key_thumbprint,
    }


def evict(families: OrderedDict[str, FamilyState], now: float, idle: float) -> None:
    """Forget families idle longer than ``idle``, and the least recently seen beyond MAX_FAMILIES."""
    horizon = now - idle
    while families:
        oldest = next(iter(families.values()))
        if len(families) <= MAX_FAMILIES and oldest.last_seen >= horizon:
            break
        families.popitem(last=False)


def proving_times(state: FamilyState, token: str, limit: int) -> deque[float]:
    """The failure times kept for a token new to the family (a family may hold many tokens: bounded)."""
    kept = state.proof_failures
    if len(kept) >= MAX_PROVING_TOKENS:
        del kept[next(iter(kept))]
    failures = kept[token] = deque(maxlen=limit)  # the last ``limit`` failures say whether it is a burst
    return failures
