"""Denials as responses (responses.py): RFC 6750 challenges, Allow, Retry-After and the JSON body."""

from __future__ import annotations

import re

import orjson
import pytest

from gateway.binding import Challenges
from gateway.config import RouteConfig
from gateway.decision import Decision
from gateway.reasons import Reason
from gateway.responses import allowed_headers, challenge, challenges, denial_body, denial_headers, denial_response
from gateway.routing import compile_route

ROUTE = compile_route(RouteConfig(name="r", path="/r", upstream="u", scopes=["orders:write"]))
STEP_UP_ROUTE = compile_route(
    RouteConfig(name="s", path="/s", upstream="u", acr_values=["urn:mfa", "urn:hw"], max_age=300)
)
BOTH = Challenges(bearer=True, dpop=True, algorithms=frozenset({"ES256", "PS256"}))
DPOP_ONLY = Challenges(bearer=False, dpop=True, algorithms=frozenset({"ES256"}))

# RFC 7235 / RFC 6750 3: auth-param = token BWS "=" BWS ( token / quoted-string )
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM = re.compile(rf'([a-z_]+)=({_QUOTED})')


def params(value: str, scheme: str = "Bearer") -> dict[str, str]:
    """The auth-params of a challenge, unquoted; the whole value must be made of them."""
    assert value.startswith(f"{scheme} ")
    rest = value[len(scheme) + 1:]
    found = _PARAM.findall(rest)
    assert ", ".join(f"{k}={v}" for k, v in found) == rest, f"not a list of quoted auth-params: {value!r}"
    return {k: re.sub(r"\\(.)", r"\1", v[1:-1]) for k, v in found}


# --- WWW-Authenticate ------------------------------------------------------------------------


def test_no_token_gets_a_bare_challenge_without_an_error_code() -> None:
    # RFC 6750 3.1: a request without authentication information gets no error code
    assert challenge(Decision(Reason.MISSING_TOKEN, route=ROUTE), "tokengate") == 'Bearer realm="tokengate"'


@pytest.mark.parametrize(
    "reason",
    [r for r in Reason if r.status == 401 and r is not Reason.MISSING_TOKEN and r.error == "invalid_token"],
)
def test_every_token_error_is_invalid_token_with_its_description(reason: Reason) -> None:
    value = challenge(Decision(reason, route=ROUTE), "tokengate")
    assert value is not None
    assert params(value) == {"realm": "tokengate", "error": "invalid_token", "error_description": reason.message}


@pytest.mark.parametrize("reason", [Reason.MALFORMED_AUTHORIZATION, Reason.TOKEN_NOT_IN_HEADER])
def test_a_malformed_request_is_invalid_request(reason: Reason) -> None:
    value = challenge(Decision(reason, route=ROUTE), "tokengate")
    assert value is not None
    assert params(value)["error"] == "invalid_request"
    assert reason.status == 400


def test_the_other_401s_are_the_proof_errors_and_step_up() -> None:
    others = {r for r in Reason if r.status == 401 and r is not Reason.MISSING_TOKEN and r.error != "invalid_token"}
    assert others == {Reason.INVALID_DPOP_PROOF, Reason.DPOP_REPLAYED, Reason.USE_DPOP_NONCE,
                      Reason.INSUFFICIENT_USER_AUTHENTICATION}


@pytest.mark.parametrize("reason", [Reason.INVALID_DPOP_PROOF, Reason.DPOP_REPLAYED, Reason.USE_DPOP_NONCE])
def test_a_proof_error_goes_on_the_dpop_challenge_and_the_bearer_one_stays_bare(reason: Reason) -> None:
    """RFC 9449 section 7.1: the error is the DPoP scheme's; Bearer is offered beside it (section 7.2)."""
    decision = Decision(reason, route=ROUTE, scheme="dpop", challenges=BOTH, detail="the DPoP proof is too old")
    bearer, dpop = challenges(decision, "tokengate")
    assert bearer == 'Bearer realm="tokengate"'
    assert params(dpop, "DPoP") == {
        "realm": "tokengate", "error": reason.error, "error_description": "the DPoP proof is too old",
        "algs": "ES256 PS256",
    }
    assert reason.error in ("invalid_dpop_proof", "use_dpop_nonce")


def test_a_proof_error_gets_a_dpop_challenge_even_where_dpop_is_not_offered() -> None:
    decision = Decision(Reason.INVALID_DPOP_PROOF, route=ROUTE, scheme="dpop")
    assert challenges(decision, "r") == ['Bearer realm="r"', (
        'DPoP realm="r", error="invalid_dpop_proof", error_description="the DPoP proof is invalid"')]


def test_a_token_error_of_a_dpop_request_goes_on_the_dpop_challenge() -> None:
    decision = Decision(Reason.TOKEN_EXPIRED, route=ROUTE, scheme="dpop", challenges=BOTH)
    bearer, dpop = challenges(decision, "r")
    assert bearer == 'Bearer realm="r"'
    assert params(dpop, "DPoP")["error"] == "invalid_token"


def test_a_dpop_only_route_challenges_dpop_only_with_the_error_of_a_bearer_request() -> None:
    decision = Decision(Reason.SENDER_CONSTRAINT_REQUIRED, route=ROUTE, scheme="bearer", challenges=DPOP_ONLY)
    (only,) = challenges(decision, "r")
    assert params(only, "DPoP") == {"realm": "r", "error": "invalid_token",
                                    "error_description": Reason.SENDER_CONSTRAINT_REQUIRED.message, "algs": "ES256"}


def test_no_token_on_a_route_offering_both_gets_two_bare_challenges() -> None:
    decision = Decision(Reason.MISSING_TOKEN, route=ROUTE, challenges=BOTH)
    assert challenges(decision, "r") == ['Bearer realm="r"', 'DPoP realm="r", algs="ES256 PS256"']
    response = denial_response(decision, "r", "req")
    assert response.headers.getall("WWW-Authenticate") == ['Bearer realm="r"', 'DPoP realm="r", algs="ES256 PS256"']


def test_step_up_names_acr_values_and_max_age() -> None:
    """RFC 9470 section 3: error="insufficient_user_authentication" with what the route requires."""
    decision = Decision(Reason.INSUFFICIENT_USER_AUTHENTICATION, route=STEP_UP_ROUTE, detail="acr_missing")
    value = challenge(decision, "r")
    assert value is not None
    assert params(value) == {"realm": "r", "error": "insufficient_user_authentication",
                             "error_description": Reason.INSUFFICIENT_USER_AUTHENTICATION.message,
                             "acr_values": "urn:mfa urn:hw", "max_age": "300"}
    # the shortfall is for the audit record, not the client
    assert orjson.loads(denial_body(decision.reason, "x", decision.detail))["error_description"] == (
        Reason.INSUFFICIENT_USER_AUTHENTICATION.message)


def test_a_failed_rule_is_403_access_denied_without_a_challenge_or_its_name() -> None:
    decision = Decision(Reason.RULE_FAILED, route=ROUTE, failed_rule="same-tenant", detail="false")
    response = denial_response(decision, "r", "req")
    assert response.status == 403
    assert "WWW-Authenticate" not in response.headers
    assert isinstance(response.body, bytes)
    assert b"same-tenant" not in response.body and b"false" not in response.body
    assert orjson.loads(response.body)["error"] == "access_denied"


def test_the_nonce_goes_out_on_denials_and_allowed_requests() -> None:
    denied = Decision(Reason.USE_DPOP_NONCE, route=ROUTE, scheme="dpop", challenges=BOTH, dpop_nonce="n-1")
    assert denial_headers(denied, "r")["DPoP-Nonce"] == "n-1"
    assert allowed_headers(Decision(Reason.ALLOWED, route=ROUTE, dpop_nonce="n-2")) == [("DPoP-Nonce", "n-2")]
    assert allowed_headers(Decision(Reason.ALLOWED, route=ROUTE)) == []
    assert "DPoP-Nonce" not in denial_headers(Decision(Reason.INVALID_TOKEN, route=ROUTE), "r")


def test_the_proof_detail_is_the_body_description_too() -> None:
    detail = "the DPoP proof htu does not match the request URI"
    body = orjson.loads(denial_body(Reason.INVALID_DPOP_PROOF, "x", detail))
    assert body["error_description"] == "the DPoP proof htu does not match the request URI"


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
