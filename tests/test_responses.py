"""Denials as responses (responses.py): RFC 6750 challenges, Allow, Retry-After and the JSON body."""

from __future__ import annotations

import re

import orjson
import pytest

from gateway.config import RouteConfig
from gateway.decision import Decision
from gateway.reasons import Reason
from gateway.responses import challenge, denial_body, denial_headers, denial_response
from gateway.routing import compile_route

ROUTE = compile_route(RouteConfig(name="r", path="/r", upstream="u", scopes=["orders:write"]))

# RFC 7235 / RFC 6750 3: auth-param = token BWS "=" BWS ( token / quoted-string )
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM = re.compile(rf'([a-z_]+)=({_QUOTED})')


def params(value: str) -> dict[str, str]:
    """The auth-params of a Bearer challenge, unquoted; the whole value must be made of them."""
    assert value.startswith("Bearer ")
    rest = value[len("Bearer "):]
    found = _PARAM.findall(rest)
    assert ", ".join(f"{k}={v}" for k, v in found) == rest, f"not a list of quoted auth-params: {value!r}"
    return {k: re.sub(r"\\(.)", r"\1", v[1:-1]) for k, v in found}


# --- WWW-Authenticate ------------------------------------------------------------------------


def test_no_token_gets_a_bare_challenge_without_an_error_code() -> None:
    # RFC 6750 3.1: a request without authentication information gets no error code
    assert challenge(Decision(Reason.MISSING_TOKEN, route=ROUTE), "tokengate") == 'Bearer realm="tokengate"'


@pytest.mark.parametrize(
    "reason",
    [r for r in Reason if r.status == 401 and r is not Reason.MISSING_TOKEN],
)
def test_every_token_error_is_invalid_token_with_its_description(reason: Reason) -> None:
    value = challenge(Decision(reason, route=ROUTE), "tokengate")
    assert value is not None
    assert params(value) == {"realm": "tokengate", "error": "invalid_token", "error_description": reason.message}


@pytest.mark.parametrize("reason", [Reason.MALFORMED_AUTHORIZATION, Reason.TOKEN_IN_QUERY])
def test_a_malformed_request_is_invalid_request(reason: Reason) -> None:
    value = challenge(Decision(reason, route=ROUTE), "tokengate")
    assert value is not None
    assert params(value)["error"] == "invalid_request"
    assert reason.status == 400


def test_insufficient_scope_names_the_missing_scopes_sorted() -> None:
    decision = Decision(Reason.INSUFFICIENT_SCOPE, route=ROUTE, missing_scopes=frozenset({"b:write", "a:read"}))
    value = challenge(decision, "tokengate")
    assert value == (
        'Bearer realm="tokengate", error="insufficient_scope", '
        'error_description="the access token lacks a required scope", scope="a:read b:write"'
    )


def test_quotes_and_backslashes_in_the_realm_are_escaped() -> None:
    realm = 'my "quoted" realm \\ here'
    value = challenge(Decision(Reason.INVALID_TOKEN, route=ROUTE), realm)
    assert value is not None
    assert value.startswith('Bearer realm="my \\"quoted\\" realm \\\\ here", ')
    assert params(value)["realm"] == realm


@pytest.mark.parametrize(
    "reason",
    [Reason.BAD_PATH, Reason.NO_ROUTE, Reason.METHOD_NOT_ALLOWED, Reason.BODY_TOO_LARGE, Reason.JWKS_UNAVAILABLE,
     Reason.INTROSPECTION_UNAVAILABLE, Reason.REVOCATION_UNAVAILABLE, Reason.SHUTTING_DOWN,
     Reason.UPSTREAM_UNAVAILABLE, Reason.UPSTREAM_TIMEOUT, Reason.CLIENT_DISCONNECTED],
)
def test_denials_that_are_not_about_the_token_carry_no_challenge(reason: Reason) -> None:
    decision = Decision(reason, route=ROUTE)
    assert challenge(decision, "tokengate") is None
    assert "WWW-Authenticate" not in denial_headers(decision, "tokengate")


# --- other headers ---------------------------------------------------------------------------


def test_405_lists_the_allowed_methods_sorted() -> None:
    decision = Decision(Reason.METHOD_NOT_ALLOWED, allowed_methods=frozenset({"POST", "GET", "HEAD"}))
    headers = denial_headers(decision, "tokengate")
    assert headers["Allow"] == "GET, HEAD, POST"


@pytest.mark.parametrize("reason", [r for r in Reason if r.status == 503])
def test_503_says_when_to_retry(reason: Reason) -> None:
    headers = denial_headers(Decision(reason), "tokengate")
    assert headers["Retry-After"] == "5"
    assert "Allow" not in headers


def test_other_denials_have_neither_allow_nor_retry_after() -> None:
    for reason in (Reason.INVALID_TOKEN, Reason.INSUFFICIENT_SCOPE, Reason.NO_ROUTE, Reason.UPSTREAM_TIMEOUT):
        headers = denial_headers(Decision(reason, route=ROUTE), "tokengate")
        assert "Allow" not in headers and "Retry-After" not in headers
        assert headers["Content-Type"] == "application/json"
        assert headers["Cache-Control"] == "no-store"


# --- body and response -----------------------------------------------------------------------


def test_the_body_has_the_error_code_the_reason_and_the_request_id() -> None:
    assert orjson.loads(denial_body(Reason.TOKEN_EXPIRED, "req-1")) == {
        "error": "invalid_token", "reason": "token_expired", "request_id": "req-1",
        "error_description": "the access token expired",
    }


def test_a_reason_without_an_error_code_uses_the_reason_as_error() -> None:
    assert orjson.loads(denial_body(Reason.MISSING_TOKEN, "req-2")) == {
        "error": "missing_token", "reason": "missing_token", "request_id": "req-2",
        "error_description": "a bearer token is required",
    }
    # no message: no error_description key at all
    assert orjson.loads(denial_body(Reason.CLIENT_DISCONNECTED, "req-3")) == {
        "error": "client_disconnected", "reason": "client_disconnected", "request_id": "req-3",
    }


def test_denial_response_puts_it_together() -> None:
    decision = Decision(Reason.INSUFFICIENT_SCOPE, route=ROUTE, missing_scopes=frozenset({"orders:write"}))
    response = denial_response(decision, "api", "req-4")
    assert response.status == 403
    assert response.headers["X-Request-Id"] == "req-4"
    assert response.headers["Content-Type"] == "application/json"
    assert params(response.headers["WWW-Authenticate"])["scope"] == "orders:write"
    assert isinstance(response.body, bytes)
    body = orjson.loads(response.body)
    assert (body["error"], body["reason"], body["request_id"]) == ("insufficient_scope", "insufficient_scope", "req-4")
