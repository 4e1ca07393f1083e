"""Sender-constrained tokens on every request: DPoP proofs (RFC 9449) and certificate binding (RFC 8705).

What a token is bound to comes from its ``cnf`` claim (RFC 7800), in a JWT's payload or an
introspection answer alike: ``jkt`` names a DPoP key, ``x5t#S256`` a TLS client certificate.
Any other ``cnf`` (a ``jwk``, a ``kid``, an empty object, not an object) binds the token to
something the gateway cannot check: it is refused (``unproven_binding``), never taken as a
bearer token.

``sender_constraint`` (per issuer; a route's value overrides it) says what a token must be bound to:

- ``none``: unbound tokens pass; challenges name Bearer only;
- ``optional`` (the default): unbound tokens pass; challenges name Bearer and DPoP;
- ``dpop``: a DPoP-bound token and its proof (``Authorization: DPoP``); challenges name DPoP only;
- ``mtls``: a certificate-bound token and the certificate it names; challenges name Bearer;
- ``any``: a token bound either way, with its proof; challenges name both.

Under every value a bound token needs its proof: a stolen bound token is never a bearer token.
A DPoP-bound token sent as ``Bearer`` is ``unproven_binding``. A plain token sent as ``DPoP``
passes where unbound tokens do, once its proof checked out: the ``DPoP`` scheme always has its
proof verified (and its ``jti`` spent), bound token or not.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from aiohttp import web
from multidict import CIMultiDictProxy

from . import metrics
from .config import ClientCertificatesConfig, DPoPConfig, GatewayConfig, IssuerConfig
from .reasons import Reason
from .routing import Route, valid_host
from .tokens.certificates import (
    CertificateRejected,
    ClientCertificate,
    check_certificate_binding,
    check_validity,
    parse_forwarded_certificate,
    peer_certificate,
)
from .tokens.dpop import (
    DPoPError,
    DPoPProof,
    DPoPSettings,
    NonceSource,
    ProofFailure,
    binding_matches,
    request_uri,
    verify_proof,
)
from .tokens.issuer_pattern import issuer_map
from .tokens.replay import MemoryReplayCache, RedisReplayCache, ReplayCache
from .tokens.token import ValidatedToken

if TYPE_CHECKING:
    from .decision import RequestFacts

# the client certificate of a request: parsed, refused as unreadable, or none presented
PresentedCertificate = ClientCertificate | CertificateRejected | None

_DPOP: Final = frozenset({"dpop"})
_MTLS: Final = frozenset({"mtls"})
_BOTH: Final = frozenset({"dpop", "mtls"})
_UNBOUND: Final = frozenset[str]()
_ACCEPTS_UNBOUND: Final = frozenset({"none", "optional"})


class Presented(NamedTuple):
    """The access token of a request and the scheme it came with: ``bearer`` or ``dpop``.

    A named tuple: made on every request, and a tuple is the cheapest immutable value to make.
    """

    scheme: str
    token: str


@dataclass(frozen=True, slots=True)
class Challenges:
    """What a 401 offers: the Bearer and/or DPoP scheme (with its ``algs``), and whether to send DPoP-Nonce."""

    bearer: bool = True
    dpop: bool = False
    algorithms: frozenset[str] = frozenset()
    nonce: bool = False


BEARER_ONLY: Final = Challenges()


def challenges_of(constraint: str, settings: DPoPSettings) -> Challenges:
    return Challenges(
        bearer=constraint != "dpop",
        dpop=constraint in ("optional", "dpop", "any"),
        algorithms=settings.algorithms,
        nonce=settings.nonce and constraint != "mtls",
    )


def merged(offers: Iterable[Challenges]) -> Challenges:
    """What a route offers when more than one issuer may have sent its token."""
    items = list(offers)
    return Challenges(
        bearer=any(c.bearer for c in items),
        dpop=any(c.dpop for c in items),
        algorithms=frozenset().union(*(c.algorithms for c in items)),
        nonce=any(c.nonce for c in items),
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """The binding check's answer: ``reason`` None when it holds (or none is needed)."""

    reason: Reason | None = None
    binding: str = "none"  # what this request proved: none | dpop | mtls
    key_thumbprint: str | None = None  # of the proof's key or the presented certificate
    detail: str = ""  # a fixed, client-safe sentence (DPoP and certificate failures)


PASSED: Final = Outcome()
_REQUIRED: Final = Outcome(Reason.SENDER_CONSTRAINT_REQUIRED)
_UNPROVEN: Final = Outcome(Reason.UNPROVEN_BINDING)
_FAILURE_REASONS: Final = {
    ProofFailure.INVALID: Reason.INVALID_DPOP_PROOF,
    ProofFailure.REPLAYED: Reason.DPOP_REPLAYED,
    ProofFailure.USE_NONCE: Reason.USE_DPOP_NONCE,
    ProofFailure.UNAVAILABLE: Reason.DPOP_REPLAY_UNAVAILABLE,
}


@dataclass(frozen=True, slots=True)
class IssuerSenderPolicy:
    constraint: str
    dpop: DPoPSettings


DEFAULT_POLICY: Final = IssuerSenderPolicy("optional", DPoPSettings())


def dpop_settings(issuer: IssuerConfig) -> DPoPSettings:
    dpop = issuer.dpop
    return DPoPSettings(frozenset(dpop.algorithms), dpop.max_age, dpop.leeway, dpop.nonce)


# --- what outlives a reload: the replay cache and the nonces --------------------------------


class ProofServices:
    """The jti replay cache and the nonce source; built once per Gateway, shared by its pipelines."""

    def __init__(self, replay: ReplayCache, nonces: NonceSource) -> None:
        self.replay = replay
        self.nonces = nonces

    @classmethod
    def from_config(cls, config: GatewayConfig) -> ProofServices:
        return cls(replay_cache(config), nonce_source(config.dpop))

    @classmethod
    def in_memory(cls) -> ProofServices:
        return cls(MemoryReplayCache(), NonceSource())

    async def aclose(self) -> None:
        await self.replay.aclose()


def replay_cache(config: GatewayConfig) -> ReplayCache:
    """``dpop.redis_url``, else the revocation list's Redis, else this process's memory."""
    dpop, revocation = config.dpop, config.revocation
    local = MemoryReplayCache(dpop.max_entries)
    if dpop.redis_url == "none" or (dpop.redis_url is None and not revocation.shared):
        return local
    if dpop.redis_url is not None:
        return RedisReplayCache.from_url(
            dpop.redis_url, prefix=dpop.key_prefix, timeout=dpop.timeout, max_outage=dpop.max_outage, local=local,
        )
    from .revocation.redis_client import connect  # redis is only imported when it is used

    return RedisReplayCache(
        connect(revocation, role="dpop", retries=0), prefix=dpop.key_prefix, timeout=dpop.timeout,
        max_outage=dpop.max_outage, local=local, owns_client=True,
    )


def nonce_source(dpop: DPoPConfig) -> NonceSource:
    """Nonces every replica agrees on when they share the secret in ``nonce_secret_env``; else per process."""
    secret = os.environ.get(dpop.nonce_secret_env) if dpop.nonce_secret_env else None
    return NonceSource(secret.encode() if secret else None, dpop.nonce_period)


# --- the check --------------------------------------------------------------------------------


def bound_to(cnf: Any) -> frozenset[str] | None:
    """``dpop`` and/or ``mtls`` for a token's ``cnf``; empty when unbound; None when bound to what cannot be checked."""
    if cnf is None:
        return _UNBOUND
    if not isinstance(cnf, Mapping):
        return None
    jkt = cnf.get("jkt")
    if jkt is not None and not (isinstance(jkt, str) and jkt):
        return None
    dpop, mtls = jkt is not None, "x5t#S256" in cnf
    if dpop and mtls:
        return _BOTH
    return _DPOP if dpop else _MTLS if mtls else None


def meets(constraint: str, bound: frozenset[str]) -> bool:
    """Whether a token bound to ``bound`` may be used under ``constraint`` at all (its proofs come next)."""
    if constraint in _ACCEPTS_UNBOUND:
        return True
    if constraint == "any":
        return bool(bound)
    return constraint in bound


class SenderCheck:
    """Per pipeline: each issuer's sender constraint and DPoP settings; the services it shares."""

    def __init__(self, issuers: Iterable[IssuerConfig] = (), services: ProofServices | None = None) -> None:
        # by issuer; a tenant of a templated issuer has its template's policy (tokens/issuer_pattern.py)
        self.policies = issuer_map(issuers, lambda i: IssuerSenderPolicy(i.sender_constraint, dpop_settings(i)))
        self.services = services if services is not None else ProofServices.in_memory()
        self._offers: dict[tuple[str, str | None], Challenges] = {}  # bounded: routes x configured issuers

    def challenges(self, route: Route, issuer: str | None = None) -> Challenges:
        """What a 401 on ``route`` offers: for the token's issuer, or every issuer the route takes."""
        key = (route.name, self.policies.entry(issuer) if issuer is not None else None)
        offer = self._offers.get(key)
        if offer is None:
            offer = self._offers[key] = self._offer(route, key[1])
        return offer

    def _offer(self, route: Route, issuer: str | None) -> Challenges:
        if issuer is not None:
            policies = [self.policies[issuer]]
        else:
            names = route.issuers if route.issuers is not None else self.policies.keys()
            policies = [self.policies[n] for n in names if n in self.policies] or [DEFAULT_POLICY]
        return merged(challenges_of(route.sender_constraint or p.constraint, p.dpop) for p in policies)

    def nonce(self) -> str:
        return self.services.nonces.current()

    def plain_bearer(self, route: Route, token: ValidatedToken, presented: Presented) -> Outcome | None:
        """The answer for the common case, an unbound token sent as Bearer, without a coroutine; else None."""
        if presented.scheme != "bearer" or token.claims.get("cnf") is not None:
            return None
        constraint = route.sender_constraint or self.policies.get(token.issuer, DEFAULT_POLICY).constraint
        return PASSED if constraint in _ACCEPTS_UNBOUND else _REQUIRED

    async def check(self, facts: RequestFacts, route: Route, token: ValidatedToken, presented: Presented) -> Outcome:
        """Is the token's binding proven on this request, and is it bound as the route requires?"""
        plain = self.plain_bearer(route, token, presented)
        if plain is not None:
            return plain
        policy = self.policies.get(token.issuer, DEFAULT_POLICY)
        constraint = route.sender_constraint or policy.constraint
        bound = bound_to(token.claims.get("cnf"))
        if bound is None:
            return _UNPROVEN
        if not meets(constraint, bound):
            return _REQUIRED
        proof: DPoPProof | None = None
        if presented.scheme == "dpop":
            checked = await self._verify(facts, presented.token, policy.dpop)
            if isinstance(checked, DPoPError):
                _count_proof(checked.failure.value)
                return Outcome(_FAILURE_REASONS[checked.failure], detail=checked.detail)
            proof = checked
        elif "dpop" in bound:
            return _UNPROVEN  # RFC 9449 section 7.1: a DPoP-bound token comes with the DPoP scheme only
        return self._bindings(token, bound, proof, facts.client_certificate)

    def _bindings(
        self, token: ValidatedToken, bound: frozenset[str], proof: DPoPProof | None, certificate: PresentedCertificate,
    ) -> Outcome:
        if proof is not None:
            if "dpop" in bound and not binding_matches(token.claims["cnf"]["jkt"], proof):
                _count_proof(Reason.DPOP_KEY_MISMATCH.value)
                return Outcome(Reason.DPOP_KEY_MISMATCH, key_thumbprint=proof.jkt)
            _count_proof("valid")
        if "mtls" in bound:
            refused = certificate_refusal(token.claims, certificate)
            if refused is not None:
                return refused
        if "dpop" in bound:
            assert proof is not None
            return Outcome(binding="dpop", key_thumbprint=proof.jkt)
        if "mtls" in bound:
            assert isinstance(certificate, ClientCertificate)
            return Outcome(binding="mtls", key_thumbprint=certificate.thumbprint)
        return Outcome(key_thumbprint=proof.jkt if proof is not None else None)  # a plain token sent as DPoP

    async def _verify(self, facts: RequestFacts, token: str, settings: DPoPSettings) -> DPoPProof | DPoPError:
        uri = request_uri(facts.scheme, facts.authority or facts.host, facts.raw_target) or ""
        return await verify_proof(
            facts.dpop, access_token=token, method=facts.method, uri=uri, settings=settings,
            replay=self.services.replay, nonces=self.services.nonces if settings.nonce else None,
        )


def certificate_refusal(claims: Mapping[str, Any], certificate: PresentedCertificate) -> Outcome | None:
    """None when ``certificate`` is valid now and the one the token's ``cnf.x5t#S256`` names."""
    if certificate is None:
        return Outcome(Reason.UNPROVEN_BINDING, detail="no client certificate was presented")
    if isinstance(certificate, CertificateRejected):
        return Outcome(certificate.reason, detail=certificate.problem.message)
    invalid = check_validity(certificate) or check_certificate_binding(claims, certificate)
    if invalid is not None:
        return Outcome(invalid.reason, key_thumbprint=certificate.thumbprint, detail=invalid.problem.message)
    return None


def _count_proof(result: str) -> None:
    metrics.count(metrics.DPOP_PROOFS, result)


# --- what the request presents (proxy, decision port, middleware) ----------------------------


def forwarded_certificate(
    headers: CIMultiDictProxy[str], forwarded: ClientCertificatesConfig | None, peer_trusted: bool
) -> PresentedCertificate:
    """The certificate a trusted ingress forwarded; None from any other peer (the header is ignored)."""
    if forwarded is None or not peer_trusted:
        return None
    values = headers.getall(forwarded.header, ())
    if not any(v.strip() for v in values):  # ingress-nginx sends an empty value when the client sent none
        return None
    return parse_forwarded_certificate(values, forwarded.format)


def presented_certificate(request: web.BaseRequest, config: GatewayConfig, peer_trusted: bool) -> PresentedCertificate:
    """From a trusted ingress (when ``client_certificates`` is set): its header; else the TLS connection's."""
    if config.client_certificates is not None and peer_trusted:
        return forwarded_certificate(request.headers, config.client_certificates, peer_trusted)
    return peer_certificate(request) if request.secure else None  # plain HTTP: no TLS, no certificate


def forwarded_scheme(headers: CIMultiDictProxy[str]) -> str | None:
    """``http`` or ``https`` from the first ``X-Forwarded-Proto`` value; None when absent or anything else."""
    value = headers.get("X-Forwarded-Proto")
    if value is None:
        return None
    scheme = value.split(",", 1)[0].strip().lower()
    return scheme if scheme in ("http", "https") else None


def request_scheme(request: web.BaseRequest, peer_trusted: bool) -> str:
    """The scheme the client used: ours when we terminate TLS, a trusted proxy's word otherwise."""
    if request.secure:
        return "https"
    return (forwarded_scheme(request.headers) if peer_trusted else None) or "http"


def forwarded_authority(headers: CIMultiDictProxy[str], peer_trusted: bool) -> str:
    """The host a trusted proxy says the client addressed (``X-Forwarded-Host``); "" to use ``Host``."""
    if not peer_trusted:
        return ""
    value = headers.get("X-Forwarded-Host")
    if value is None:
        return ""
    host = value.split(",", 1)[0].strip()
    return host if valid_host(host) else ""
