"""What a DPoP proof check answers: the proof, or the RFC 9449 section 7.1 error; the settings it used.

Values made per request; ``challenge`` builds the ``WWW-Authenticate: DPoP`` value of a 401.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)

class ProofFailure(str, Enum):
    """Why a proof was refused, with the RFC 9449 section 7.1 error and the HTTP status to send."""

    def __new__(cls, label: str, status: int, error: str) -> ProofFailure:
        member = str.__new__(cls, label)
        member._value_ = label
        member.status = status
        member.error = error
        return member

    status: int
    error: str

    INVALID = ("invalid_dpop_proof", 401, "invalid_dpop_proof")
    REPLAYED = ("dpop_replayed", 401, "invalid_dpop_proof")  # own label: a replayed proof is an incident signal
    USE_NONCE = ("use_dpop_nonce", 401, "use_dpop_nonce")  # send a fresh DPoP-Nonce header with it
    UNAVAILABLE = ("dpop_replay_unavailable", 503, "temporarily_unavailable")


@dataclass(frozen=True, slots=True)
class DPoPProof:
    """A proof that passed every check: ``jkt`` is the RFC 7638 thumbprint of its key."""

    jkt: str
    jti: str
    alg: str
    iat: float


@dataclass(frozen=True, slots=True)
class DPoPError:
    """A refused proof: ``failure`` says what to answer, ``detail`` is a fixed, client-safe sentence."""

    failure: ProofFailure
    detail: str


@dataclass(frozen=True, slots=True)
class DPoPSettings:
    """Per issuer: accepted algorithms, the ``iat`` window and whether the gateway's nonce is required.

    A proof is accepted when ``now - max_age <= iat <= now + leeway``.
    """

    algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS
    max_age: float = 60.0
    leeway: float = 5.0  # future iat tolerated: the client's clock may run ahead of ours
    nonce: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.algorithms) - ASYMMETRIC_ALGORITHMS
        if unknown or not self.algorithms:
            allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
            raise ValueError(f"DPoP algorithms must be a non-empty subset of {allowed}")
        if not (self.max_age > 0 and self.leeway >= 0):
            raise ValueError("DPoP max_age must be positive and leeway not negative")

    @property
    def replay_ttl(self) -> float:
        """How long a jti is remembered: the longest a proof stays acceptable, plus replica clock skew."""
        return self.max_age + 2 * self.leeway


def challenge(algorithms: frozenset[str], realm: str, error: DPoPError | None = None) -> str:
    """The ``WWW-Authenticate: DPoP ...`` value (RFC 9449 section 7.1), sent beside the Bearer one.

    ``error`` adds ``error`` and ``error_description`` for a 401 failure; a 503 (UNAVAILABLE)
    is not the client's fault and gets the bare challenge.
    """
    params = [f"realm={_quote(realm)}"]
    if error is not None and error.failure.status == 401:
        params += [f"error={_quote(error.failure.error)}", f"error_description={_quote(error.detail)}"]
    params.append(f"algs={_quote(' '.join(sorted(algorithms)))}")
    return "DPoP " + ", ".join(params)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
