"""The one decision path: normalise -> route -> ip limits -> token -> revocation -> binding -> scopes
-> rules -> step-up -> identity limits.

The proxy, the forward-auth decision endpoint and the aiohttp middleware all call
``Decider.decide``; none of them holds policy logic of its own. The sender-constraint
check (DPoP proofs, certificate-bound tokens) lives in binding.py, the route's scope,
claims-rule and step-up checks in policy.py, rate limits in ratelimit/hook.py, the WebSocket token in ws_upgrade.py,
a route's token cookie or header in token_source.py, the claims sent upstream in claim_headers.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from multidict import CIMultiDictProxy

from .binding import BEARER_ONLY, Challenges, Presented, PresentedCertificate, ProofServices, SenderCheck
from .claim_headers import NO_CLAIM_HEADERS, ClaimHeaderPolicy, UnsafeClaim
from .config import IssuerConfig
from .policy import check_claims, check_issuer, missing_scopes
from .ratelimit import LocalLimiter, RateLimitingConfig, RateLimits, Verdict, refusal_detail
from .reasons import Reason
from .revocation.store import RevocationStore
from .routing import BadTarget, Route, RouteTable, Target, normalise_target, valid_host
from .token_source import source_token
from .tokens.issuer_pattern import issuer_map
from .tokens.token import TokenError, ValidatedToken, fingerprint
from .tokens.validator import TokenValidator
from .ws_upgrade import websocket_token

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")
# RFC 9449 section 7.1: the DPoP scheme (case-insensitive) with the same token68 syntax
_DPOP = re.compile(r"[Dd][Pp][Oo][Pp] +([A-Za-z0-9\-._~+/]+=*) *")
_D = ("D", "d")


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the decision needs to know about a request, whichever shape it arrived in."""

    method: str
    raw_target: str
    host: str
    authorization: tuple[str, ...]  # every Authorization header value sent
    version: tuple[int, int] = (1, 1)  # of the request line; the decision endpoint cannot know the original's
    dpop: tuple[str, ...] = ()  # every DPoP header value sent (RFC 9449: exactly one goes with the DPoP scheme)
    scheme: str = "http"  # the scheme the client used (a proof's htu): ours, or a trusted proxy's word
    authority: str = ""  # the host[:port] the client addressed, when a trusted proxy names it; "" means ``host``
    client_certificate: PresentedCertificate = None  # from our TLS, or a trusted ingress's header
    client_ip: str = ""  # after trusted_proxies: what ip rate limits count by
    websocket: bool = False  # Upgrade: websocket was asked for
    protocols: tuple[str, ...] = ()  # the Sec-WebSocket-Protocol lines of an upgrade (a token may be in one)
    headers: CIMultiDictProxy[str] | None = None  # all of them: a route's token_source reads its cookie or header


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome, with everything the response, the audit record and the metrics need."""

    reason: Reason
    target: Target | None = None
    route: Route | None = None
    token: ValidatedToken | None = None
    token_fingerprint: str | None = None
    missing_scopes: frozenset[str] = frozenset()
    allowed_methods: frozenset[str] = frozenset()
    # sender constraint proven on this request: none | dpop | mtls, and the key's thumbprint
    # (RFC 7638 jkt for DPoP, x5t#S256 for a certificate); set even when a later check refused
    binding: str = "none"
    key_thumbprint: str | None = None
    failed_rule: str | None = None  # the name of the claims rule that refused (never its inputs)
    # a fixed sentence refining the reason: the DPoP proof or certificate failure (sent to the client),
    # the claims rule's cause or the step-up shortfall (audit only)
    detail: str = ""
    scheme: str = ""  # the Authorization scheme the token came with: bearer | dpop ("" no token)
    challenges: Challenges = BEARER_ONLY  # the schemes a 401 offers (responses.py)
    dpop_nonce: str | None = None  # sent as DPoP-Nonce, on denials and allowed requests alike
    rate_limit: Verdict | None = None  # the rate limits' answer: RateLimit headers (and Retry-After on a 429)
    claim_headers: tuple[tuple[str, str], ...] = ()  # claims for the upstream (claim_headers.py), when allowed

    @property
    def allowed(self) -> bool:
        return self.reason.allowed


def presented_token(facts: RequestFacts, target: Target, route: Route) -> Presented | Reason:
    """The access token and its scheme: ``DPoP`` (RFC 9449 section 7.1) or ``Bearer`` (RFC 6750),
    or on a WebSocket upgrade a ``Sec-WebSocket-Protocol`` value (ws_upgrade.py), where the route allows it,
    or the route's ``token_source`` cookie or header (token_source.py)."""
    if route.token_cookie is not None or route.token_header is not None:
        elsewhere = _source_token(facts, target, route)
        if elsewhere is not None:
            return elsewhere
    if facts.protocols and facts.websocket:
        carried = _protocol_token(facts, target, route)
        if carried is not None:
            return carried
    value = facts.authorization[0] if len(facts.authorization) == 1 else ""
    if value[:1] in _D and value[:5].lower() == "dpop ":
        match = _DPOP.fullmatch(value)
        if match is None or (target.query and _query_tokens(target.query)):
            return Reason.MALFORMED_AUTHORIZATION  # one token, one way of sending it
        return Presented("dpop", match.group(1))
    raw = bearer_token(facts, target, route)
    return raw if isinstance(raw, Reason) else Presented("bearer", raw)


def _protocol_token(facts: RequestFacts, target: Target, route: Route) -> Presented | Reason | None:
    prefix = route.config.websocket_token_protocol_prefix if route.config is not None else None
    token = websocket_token(facts.protocols, prefix) if prefix else None
    if token is None:
        return None
    if isinstance(token, Reason) or facts.authorization or (target.query and _query_tokens(target.query)):
        return Reason.MALFORMED_AUTHORIZATION  # one token, one way of sending it
    return Presented("bearer", token)


def _source_token(facts: RequestFacts, target: Target, route: Route) -> Presented | Reason | None:
    """The token in the route's cookie or header, as a bearer token; refused when it also comes another way."""
    token = source_token(facts.headers, route.token_cookie, route.token_header)
    if token is None or isinstance(token, Reason):
        return token
    if facts.authorization or (target.query and _query_tokens(target.query)) or (
            facts.protocols and facts.websocket and _protocol_token(facts, target, route) is not None):
        return Reason.AMBIGUOUS_TOKEN
    return Presented("bearer", token)


def bearer_token(facts: RequestFacts, target: Target, route: Route) -> str | Reason:
    """The bearer token (RFC 6750 section 2), or the reason there is none usable."""
    query_tokens = _query_tokens(target.query) if target.query else []
    if len(facts.authorization) > 1:
        return Reason.MALFORMED_AUTHORIZATION
    if facts.authorization:
        if query_tokens:
            return Reason.MALFORMED_AUTHORIZATION  # RFC 6750 section 2: one method per request
        value = facts.authorization[0]
        token = _plain_bearer(value)
        if token is not None:
            return token
        match = _BEARER.fullmatch(value)
        if match:
            return match.group(1)
        if value[:7].lower() == "bearer ":
            return Reason.MALFORMED_AUTHORIZATION
        return Reason.MISSING_TOKEN  # another scheme: challenge for a bearer token
    if query_tokens:
        if not route.allow_query_token:
            return Reason.TOKEN_NOT_IN_HEADER
        if len(query_tokens) > 1:
            return Reason.MALFORMED_AUTHORIZATION  # which one would the upstream read?
        return query_tokens[0] or Reason.MISSING_TOKEN
    return Reason.MISSING_TOKEN


def _plain_bearer(value: str) -> str | None:
    """The token of the usual ``Bearer <b64token>`` (one space, nothing after), else None.

    What ``_BEARER`` would find, without running the regex over a token of a kilobyte;
    anything else (more spaces, other cases of the scheme) is left to the regex.
    """
    if value[:7] not in _SCHEMES or not value.isascii():
        return None
    token = value[7:]
    body = token.rstrip("=")
    if not body or body.encode().translate(None, _B64TOKEN):
        return None
    return token


_SCHEMES = frozenset({"Bearer ", "bearer ", "BEARER "})
_B64TOKEN = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"


_QUERY_SEPARATORS = re.compile(r"[&;]")


def _query_tokens(query: str) -> list[str]:
    """Every ``access_token`` parameter, however it is spelled: a name like ``access%5Ftoken`` decodes
    to it, and some frameworks split the query on ";" as well as "&"."""
    if "access_token" not in query and "%" not in query:
        return []
    tokens: list[str] = []
    for pair in _QUERY_SEPARATORS.split(query):
        name, _, value = pair.partition("=")
        if name == "access_token" or ("%" in name and unquote_plus(name) == "access_token"):
            tokens.append(unquote_plus(value))
    return tokens


_HTTP_1 = frozenset({(1, 0), (1, 1)})
_NONE_MISSING: frozenset[str] = frozenset()


class Decider:
    """Applies the policy to one request."""

    def __init__(
        self, routes: RouteTable, validator: TokenValidator, revocation: RevocationStore,
        issuers: Iterable[IssuerConfig] = (), proofs: ProofServices | None = None,
        limits: RateLimits | None = None, claim_headers: ClaimHeaderPolicy = NO_CLAIM_HEADERS,
    ) -> None:
        self.routes = routes
        self.limits = limits if limits is not None else RateLimits(RateLimitingConfig(), (), LocalLimiter())
        self.validator = validator
        self.revocation = revocation
        issuers = list(issuers)
        self.senders = SenderCheck(issuers, proofs)
        # by issuer, a tenant of a templated issuer finding its template's (tokens/issuer_pattern.py)
        self.issuers = issuer_map(issuers, lambda i: i)
        self.leeways = issuer_map(issuers, lambda i: i.leeway)  # step-up's auth_time tolerance
        self.claim_headers = claim_headers

    async def decide(self, facts: RequestFacts) -> Decision:
        if facts.version not in _HTTP_1:
            return Decision(Reason.BAD_HTTP_VERSION)  # HTTP/0.9 has no headers to check; 2.0 is not this parser's
        if not valid_host(facts.host):
            return Decision(Reason.BAD_HOST)  # RFC 9112 3.2; a missing Host is "" here
        try:
            target = normalise_target(facts.raw_target)
        except BadTarget:
            return Decision(Reason.BAD_PATH)
        match = self.routes.match(facts.host, facts.method, target.path)
        if match.refused:
            return Decision(Reason.BAD_PATH, target)
        if match.route is None:
            reason = Reason.METHOD_NOT_ALLOWED if match.allowed_methods else Reason.NO_ROUTE
            return Decision(reason, target, allowed_methods=match.allowed_methods)
        route = match.route
        if facts.websocket and (route.config is None or not route.config.websocket):
            return Decision(Reason.WEBSOCKET_NOT_ALLOWED, target, route)
        plan = self.limits.plan(route.name)
        if plan is None:  # no limits: no round trip
            return await self._decide_route(facts, target, route)
        early = await self.limits.before_auth(plan, facts.client_ip)  # before any signature is checked
        if not early.allowed:
            return Decision(early.reason or Reason.RATE_LIMITED, target, route, rate_limit=early,
                            detail=refusal_detail(early))
        decision = await self._decide_route(facts, target, route)
        return await self.limits.after_auth(plan, decision, facts.client_ip, early)

    async def _decide_route(self, facts: RequestFacts, target: Target, route: Route) -> Decision:
        """Token, validation and authorisation on a matched route."""
        if not route.auth_required:
            return Decision(Reason.PUBLIC_ROUTE, target, route)
        presented = presented_token(facts, target, route)
        if isinstance(presented, Reason):
            return self._refusal(presented, target, route, self.senders.challenges(route))
        try:  # a hot token's fingerprint comes with it from the verified-token cache: not hashed again
            token = await self.validator.validate(presented.token)
        except TokenError as exc:
            return self._refusal(exc.reason, target, route, self.senders.challenges(route), presented.scheme,
                                 fingerprint(presented.token))
        return await self._authorise(facts, target, route, token, presented)

    def _refusal(
        self, reason: Reason, target: Target, route: Route, offer: Challenges, scheme: str = "", fp: str | None = None,
    ) -> Decision:
        """A denial before a token was validated: what the route offers goes into the challenge."""
        return Decision(reason, target, route, token_fingerprint=fp, scheme=scheme, challenges=offer,
                        dpop_nonce=self.senders.nonce() if offer.nonce else None)

    async def _authorise(
        self, facts: RequestFacts, target: Target, route: Route, token: ValidatedToken, presented: Presented,
    ) -> Decision:
        """Checks that depend on the route, the request or the time: never cached.

        Revocation and the sender binding come before the scopes: a stolen token is refused as
        stolen, not as short of a scope.
        """
        offer = self.senders.challenges(route, token.issuer)
        nonce = self.senders.nonce() if offer.nonce else None
        refused = check_issuer(route, token, self.issuers) or self.revocation.check(token)
        if refused is not None:
            return Decision(refused, target, route, token, token.fingerprint, scheme=presented.scheme,
                            challenges=offer, dpop_nonce=nonce)
        bound = self.senders.plain_bearer(route, token, presented) or await self.senders.check(
            facts, route, token, presented)
        reason, missing, claims = bound.reason, _NONE_MISSING, None
        if reason is None:
            missing = missing_scopes(route, token)
            reason = Reason.INSUFFICIENT_SCOPE if missing else None
        if reason is None and route.checks_claims:
            claims = check_claims(route, token, facts.method, target.path, self.leeways.get(token.issuer, 0.0))
            reason = claims.reason if claims is not None else None
        upstream_claims: tuple[tuple[str, str], ...] = ()
        if reason is None:
            try:
                upstream_claims = self.claim_headers.values(route.name, token)
            except UnsafeClaim:  # never forwarded with a value the upstream would read otherwise
                reason = Reason.INVALID_CLAIM
        return Decision(
            reason or Reason.ALLOWED, target, route, token, token.fingerprint, missing,
            binding=bound.binding, key_thumbprint=bound.key_thumbprint,
            failed_rule=claims.rule if claims is not None else None,
            detail=claims.cause if claims is not None else bound.detail,
            scheme=presented.scheme, challenges=offer, dpop_nonce=nonce, claim_headers=upstream_claims,
        )
