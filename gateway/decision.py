"""The one decision path: normalise -> route -> token -> revocation -> scopes.

The proxy, the forward-auth decision endpoint and the aiohttp middleware all call
``Decider.decide``; none of them holds policy logic of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_plus

from .policy import check_binding, check_issuer, missing_scopes
from .reasons import Reason
from .revocation.store import RevocationStore
from .routing import BadTarget, Route, RouteTable, Target, normalise_target, valid_host
from .tokens.token import TokenError, ValidatedToken, fingerprint
from .tokens.validator import TokenValidator

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the decision needs to know about a request, whichever shape it arrived in."""

    method: str
    raw_target: str
    host: str
    authorization: tuple[str, ...]  # every Authorization header value sent
    version: tuple[int, int] = (1, 1)  # of the request line; the decision endpoint cannot know the original's


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

    @property
    def allowed(self) -> bool:
        return self.reason.allowed


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
            return Reason.TOKEN_IN_QUERY
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


class Decider:
    """Applies the policy to one request."""

    def __init__(self, routes: RouteTable, validator: TokenValidator, revocation: RevocationStore) -> None:
        self.routes = routes
        self.validator = validator
        self.revocation = revocation

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
        if not route.auth_required:
            return Decision(Reason.PUBLIC_ROUTE, target, route)
        raw = bearer_token(facts, target, route)
        if isinstance(raw, Reason):
            return Decision(raw, target, route)
        fp = fingerprint(raw)
        try:
            token = await self.validator.validate(raw, fp)
        except TokenError as exc:
            return Decision(exc.reason, target, route, token_fingerprint=fp)
        return self._authorise(target, route, token)

    def _authorise(self, target: Target, route: Route, token: ValidatedToken) -> Decision:
        """Checks that depend on the route or may change at any time: never cached."""
        refused = check_issuer(route, token) or check_binding(token) or self.revocation.check(token)
        if refused is not None:
            return Decision(refused, target, route, token, token.fingerprint)
        missing = missing_scopes(route, token)
        if missing:
            return Decision(Reason.INSUFFICIENT_SCOPE, target, route, token, token.fingerprint, missing)
        return Decision(Reason.ALLOWED, target, route, token, token.fingerprint)
