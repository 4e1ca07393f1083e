"""The route's scope and issuer policy (policy.py), on routes compiled from real route configs."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import RouteConfig
from gateway.policy import check_issuer, missing_scopes, required_scopes
from gateway.reasons import Reason
from gateway.routing import Route, compile_route
from gateway.tokens.token import ValidatedToken

ISSUER = "https://issuer.example"


def route(**settings: Any) -> Route:
    return compile_route(RouteConfig.model_validate({"name": "r", "path": "/r", "upstream": "u", **settings}))


def token(*scopes: str, issuer: str = ISSUER) -> ValidatedToken:
    return ValidatedToken(
        issuer=issuer, subject="alice", client_id="client", scopes=frozenset(scopes), expires_at=2e9,
        fingerprint="0" * 64,
    )


# --- missing_scopes: all of `scopes`, one of `any_scopes` ---------------------------------------


@pytest.mark.parametrize(
    ("held", "missing"),
    [
        ((), {"orders:read", "orders:write"}),
        (("orders:read",), {"orders:write"}),
        (("orders:write",), {"orders:read"}),
        (("orders:read", "orders:write"), set()),
        (("orders:read", "orders:write", "other"), set()),
        (("ORDERS:READ", "orders:write"), {"orders:read"}),  # scopes are case-sensitive (RFC 6749 3.3)
    ],
)
def test_scopes_must_all_be_held(held: tuple[str, ...], missing: set[str]) -> None:
    assert missing_scopes(route(scopes=["orders:read", "orders:write"]), token(*held)) == missing


@pytest.mark.parametrize(
    ("held", "missing"),
    [
        ((), {"orders:read", "orders:admin"}),  # none held: every one of them would do, all are named
        (("orders:read",), set()),
        (("orders:admin",), set()),
        (("orders:read", "orders:admin"), set()),
        (("orders:write",), {"orders:read", "orders:admin"}),
    ],
)
def test_any_scopes_need_one_of_them(held: tuple[str, ...], missing: set[str]) -> None:
    assert missing_scopes(route(any_scopes=["orders:read", "orders:admin"]), token(*held)) == missing


@pytest.mark.parametrize(
    ("held", "missing"),
    [
        (("base", "a"), set()),
        (("base", "b"), set()),
        (("base",), {"a", "b"}),
        (("a",), {"base"}),  # the any-of part passes; only the all-of part is missing
        ((), {"base", "a", "b"}),
    ],
)
def test_all_and_any_scopes_together(held: tuple[str, ...], missing: set[str]) -> None:
    assert missing_scopes(route(scopes=["base"], any_scopes=["a", "b"]), token(*held)) == missing


def test_a_route_without_scopes_needs_none() -> None:
    assert missing_scopes(route(), token()) == frozenset()
    assert missing_scopes(route(), token("anything")) == frozenset()


def test_required_scopes_lists_both_kinds_sorted() -> None:
    assert required_scopes(route(scopes=["z", "b"], any_scopes=["a", "b"])) == ["a", "b", "z"]
    assert required_scopes(route()) == []


# --- check_issuer ----------------------------------------------------------------------------


def test_a_route_without_an_issuer_list_takes_every_issuer() -> None:
    assert check_issuer(route(), token(issuer="https://anyone.example")) is None


def test_a_route_with_an_issuer_list_takes_only_those_issuers() -> None:
    restricted = route(issuers=[ISSUER, "https://second.example"])
    assert check_issuer(restricted, token(issuer=ISSUER)) is None
    assert check_issuer(restricted, token(issuer="https://second.example")) is None
    assert check_issuer(restricted, token(issuer="https://other.example")) is Reason.UNKNOWN_ISSUER
    # exact comparison: no prefix, case or trailing-slash leniency
    assert check_issuer(restricted, token(issuer=ISSUER + "/")) is Reason.UNKNOWN_ISSUER
    assert check_issuer(restricted, token(issuer=ISSUER.upper())) is Reason.UNKNOWN_ISSUER


def test_an_empty_issuer_list_takes_no_issuer() -> None:
    assert check_issuer(route(issuers=[]), token()) is Reason.UNKNOWN_ISSUER
