"""The one decision path (decision.py): the bearer token of a request, then ``Decider.decide``.

``_plain_bearer`` is a fast path for the usual ``Bearer <token>``; the RFC 6750 regex
``_BEARER`` is what it must agree with. Both are compared here on many header shapes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.config import RouteConfig, parse_config
from gateway.decision import _BEARER, Decider, Decision, RequestFacts, _plain_bearer, bearer_token
from gateway.demo import DemoIssuer
from gateway.reasons import Reason
from gateway.revocation.entries import Entry, Kind
from gateway.revocation.memory_store import MemoryStore
from gateway.routing import Route, RouteTable, compile_route, normalise_target
from gateway.tokens.token import fingerprint
from gateway.tokens.validator import TokenValidator
from tests.helpers import AUDIENCE

HEADER_ROUTE = compile_route(RouteConfig(name="h", path="/r", upstream="u"))
QUERY_ROUTE = compile_route(RouteConfig(name="q", path="/r", upstream="u", allow_query_token=True))


def token_of(authorization: tuple[str, ...] = (), target: str = "/r", route: Route = HEADER_ROUTE) -> str | Reason:
    facts = RequestFacts(method="GET", raw_target=target, host="api", authorization=authorization)
    return bearer_token(facts, normalise_target(target), route)


def by_regex(value: str) -> str | Reason:
    """What bearer_token answers for one Authorization value, by the RFC 6750 regex alone."""
    match = _BEARER.fullmatch(value)
    if match:
        return match.group(1)
    return Reason.MALFORMED_AUTHORIZATION if value[:7].lower() == "bearer " else Reason.MISSING_TOKEN


# --- the fast path and the regex agree -----------------------------------------------------

SCHEMES = ["Bearer", "bearer", "BEARER", "BeArEr", "bEARER", "Basic", "Bearerx", "Bear", "", "Bearer:", "DPoP"]
SEPARATORS = [" ", "  ", "\t", "", " \t", "\u00a0"]
TOKENS = [
    "abc", "a", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln", "abc=", "abc==", "a=b", "=", "==", "",
    "AZaz09-._~+/", "abc def", "abc,def", 'abc"', "abc\x00", "abcé", "\uff41\uff42\uff43", "abc\\", "a" * 4096,
    "abc=def=", "-", "~", "+/=",
]
TRAILERS = ["", " ", "  ", "\t", "=", "\n", "\r\n", "x"]
SHAPES = ["".join(parts) for parts in itertools.product(SCHEMES, SEPARATORS, TOKENS, TRAILERS)]


def test_the_fast_path_only_ever_answers_what_the_regex_answers() -> None:
    taken = 0
    for value in SHAPES:
        fast = _plain_bearer(value)
        if fast is not None:
            taken += 1
            match = _BEARER.fullmatch(value)
            assert match is not None and match.group(1) == fast, repr(value)
    assert taken > 50  # the usual shapes do take the fast path


def test_bearer_token_answers_as_the_regex_would_on_every_shape() -> None:
    for value in SHAPES:
        assert token_of((value,)) == by_regex(value), repr(value)


@pytest.mark.parametrize(
    ("value", "fast"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer a.b.c", "a.b.c"),
        ("Bearer abc==", "abc=="),
        ("Bearer AZaz09-._~+/", "AZaz09-._~+/"),
        ("BeArEr abc", None),  # other cases of the scheme: left to the regex
        ("Bearer  abc", None),  # more than one space
        ("Bearer abc ", None),  # trailing space
        ("Bearer a=b", None),  # '=' only as padding at the end
        ("Bearer ==", None),
        ("Bearer ", None),
        ("Bearer abcé", None),
    ],
)
def test_fast_path_shapes(value: str, fast: str | None) -> None:
    assert _plain_bearer(value) == fast


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer abc", "abc"),
        ("BeArEr abc", "abc"),  # the scheme is case-insensitive (RFC 9110 11.1)
        ("Bearer   abc  ", "abc"),  # extra spaces around the token
        ("Bearer abc==", "abc=="),
        ("Bearer a=b", Reason.MALFORMED_AUTHORIZATION),
        ("Bearer abc def", Reason.MALFORMED_AUTHORIZATION),
        ("Bearer abc,def", Reason.MALFORMED_AUTHORIZATION),
        ("Bearer ", Reason.MALFORMED_AUTHORIZATION),
        ("Bearer abcé", Reason.MALFORMED_AUTHORIZATION),
        ("Basic dXNlcjpwYXNz", Reason.MISSING_TOKEN),  # another scheme: challenge for a bearer token
        ("Bearer", Reason.MISSING_TOKEN),
        ("", Reason.MISSING_TOKEN),
    ],
)
def test_one_authorization_header(value: str, expected: str | Reason) -> None:
    assert token_of((value,)) == expected


def test_two_authorization_headers_are_malformed() -> None:
    assert token_of(("Bearer abc", "Bearer abc")) is Reason.MALFORMED_AUTHORIZATION
    assert token_of(("Bearer abc", "Basic x")) is Reason.MALFORMED_AUTHORIZATION


def test_no_token_at_all() -> None:
    assert token_of() is Reason.MISSING_TOKEN
    assert token_of(target="/r?x=1") is Reason.MISSING_TOKEN
    assert token_of(target="/r?my_access_token=abc") is Reason.MISSING_TOKEN  # another parameter


def test_a_query_token_only_where_the_route_allows_it() -> None:
    assert token_of(target="/r?access_token=abc") is Reason.TOKEN_NOT_IN_HEADER
    assert token_of(target="/r?x=1&access_token=abc", route=QUERY_ROUTE) == "abc"


def test_a_header_and_a_query_token_together_are_malformed() -> None:
    # RFC 6750 section 2: one method per request, even where the query is allowed
    both = ("Bearer abc",)
    assert token_of(both, target="/r?access_token=abc", route=QUERY_ROUTE) is Reason.MALFORMED_AUTHORIZATION
    assert token_of(both, target="/r?access_token=abc") is Reason.MALFORMED_AUTHORIZATION


# --- Decider on a real route table and a real validator -------------------------------------

OTHER_ISSUER = "https://other.example"


@pytest.fixture
async def decider(issuer: DemoIssuer) -> AsyncIterator[tuple[Decider, MemoryStore]]:
    config = parse_config(yaml.safe_dump({
        "issuers": [{"issuer": issuer.issuer, "audiences": [AUDIENCE]}],
        "upstreams": {"u": {"url": "http://127.0.0.1:1"}},
        "routes": [
            {"name": "read", "path": "/orders", "methods": ["GET"], "upstream": "u", "scopes": ["orders:read"]},
            {"name": "write", "path": "/orders", "methods": ["POST"], "upstream": "u", "scopes": ["orders:write"]},
            {"name": "other-issuer", "path": "/other", "upstream": "u", "issuers": [issuer.issuer]},
            {"name": "public", "path_prefix": "/public", "upstream": "u", "auth": "none"},
        ],
    }), "decision.yaml")
    # a route restricted to an issuer the validator does not know: its tokens cannot pass it
    restricted = config.routes[2].model_copy(update={"issuers": [OTHER_ISSUER]})
    routes = RouteTable([*config.routes[:2], restricted, config.routes[3]])
    async with aiohttp.ClientSession() as session:
        validator = TokenValidator(config, session)
        await validator.start()
        store = MemoryStore()
        try:
            yield Decider(routes, validator, store), store
        finally:
            await validator.stop()


async def decide(decider: Decider, target: str, token: str | None = None, method: str = "GET") -> Decision:
    authorization = (f"Bearer {token}",) if token is not None else ()
    return await decider.decide(RequestFacts(method=method, raw_target=target, host="api", authorization=authorization))


async def test_a_good_token_passes_with_its_facts(decider: Any, issuer: DemoIssuer) -> None:
    token = issuer.mint(scope="orders:read")
    decision = await decide(decider[0], "/orders", token)
    assert decision.reason is Reason.ALLOWED and decision.allowed
    assert decision.route is not None and decision.route.name == "read"
    assert decision.token is not None and decision.token.subject == "alice"
    assert decision.token_fingerprint == fingerprint(token)
    assert decision.target is not None and decision.target.path == "/orders"


async def test_route_shape_decisions(decider: Any) -> None:
    d, _ = decider
    assert (await decide(d, "/nowhere")).reason is Reason.NO_ROUTE
    assert (await decide(d, "/orders%2fx")).reason is Reason.BAD_PATH  # an encoded slash
    assert (await decide(d, "/public/x")).reason is Reason.PUBLIC_ROUTE
    refused = await decide(d, "/orders", method="DELETE")
    assert refused.reason is Reason.METHOD_NOT_ALLOWED
    assert refused.allowed_methods == frozenset({"GET", "HEAD", "POST"})


async def test_token_decisions(decider: Any, issuer: DemoIssuer) -> None:
    d, _ = decider
    assert (await decide(d, "/orders")).reason is Reason.MISSING_TOKEN
    assert (await decide(d, "/orders", "not-a-jwt")).reason is Reason.INVALID_TOKEN
    assert (await decide(d, "/orders", issuer.mint(iss="https://stranger.example"))).reason is Reason.UNKNOWN_ISSUER
    assert (await decide(d, "/orders", issuer.mint(exp=int(time.time()) - 3600))).reason is Reason.TOKEN_EXPIRED
    refused = await decide(d, "/orders", issuer.mint(scope="profile"), method="POST")
    assert refused.reason is Reason.INSUFFICIENT_SCOPE
    assert refused.missing_scopes == frozenset({"orders:write"})
    # the route's issuer list is checked on every request, also for a token the cache holds
    token = issuer.mint(scope="orders:read")
    assert (await decide(d, "/orders", token)).reason is Reason.ALLOWED
    assert (await decide(d, "/other", token)).reason is Reason.UNKNOWN_ISSUER


async def test_a_revocation_applies_to_a_cached_token(decider: Any, issuer: DemoIssuer) -> None:
    d, store = decider
    token = issuer.mint(scope="orders:read", sid="family-1")
    assert (await decide(d, "/orders", token)).reason is Reason.ALLOWED
    await store.revoke(Entry(Kind.FAMILY, "family-1", time.time() + 600))
    assert (await decide(d, "/orders", token)).reason is Reason.REVOKED_FAMILY


def test_a_trailing_newline_is_not_part_of_a_bearer_header() -> None:
    from gateway.decision import _BEARER

    assert _BEARER.fullmatch("Bearer abc\n") is None
    assert _BEARER.fullmatch("Bearer abc") is not None


def test_an_empty_query_token_is_no_token() -> None:
    facts = RequestFacts("GET", "/r?access_token=", "h", ())
    assert bearer_token(facts, normalise_target(facts.raw_target), QUERY_ROUTE) is Reason.MISSING_TOKEN
