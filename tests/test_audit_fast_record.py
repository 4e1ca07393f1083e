"""The record of a request on a route (audit_record's fast path) is the field-by-field one, hostile
exchange texts included: same fields, same values, same escaped/truncated lists in the same order."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from gateway.audit.record import LIMITS, Exchange, _record, audit_record
from gateway.config import parse_config
from gateway.decision import Decision
from gateway.reasons import Reason
from gateway.routing import Route, RouteTable
from gateway.tokens.token import ValidatedToken, fingerprint

CONFIG = parse_config(yaml.safe_dump({
    "upstreams": {"o": {"url": "http://127.0.0.1:9"}},
    "issuers": [{"issuer": "https://as.example", "audiences": ["api"]}],
    "routes": [{"name": "r", "path": "/x", "upstream": "o", "scopes": ["orders:read"]}],
}))
ROUTE = RouteTable(CONFIG.routes).routes[0]

CASES = {
    "plain": {},
    "long path": {"raw_path": "/x" + "p" * LIMITS["path"] + "?q=1"},
    "bytes in host": {"host": "h\udcffst.example"},
    "long user agent and a surrogate": {"user_agent": "ua\ud800" + "u" * LIMITS["user_agent"]},
    "long request id, client ip, method": {"request_id": "r" * 200, "client_ip": "1" * 100, "method": "M" * 40},
    "everything": {"raw_path": "/\udc80" * 3000, "host": "é" * 300, "user_agent": "\udcfe", "method": "GÉT"},
}


@pytest.mark.parametrize("with_token", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_record_is_the_field_by_field_record(case: str, with_token: bool) -> None:
    values = {"request_id": "req-1", "client_ip": "198.51.100.7", "method": "GET", "host": "api.example",
              "raw_path": "/x?a=1", "user_agent": "curl/8"} | CASES[case]
    exchange = Exchange(time.time(), time.monotonic(), values["request_id"], values["client_ip"], values["method"],
                        values["host"], values["raw_path"], values["user_agent"], status=200, upstream_ms=1.23456)
    token = ValidatedToken("https://as.example", "alice", "web", frozenset({"orders:read"}), time.time() + 300,
                           fingerprint("raw"), jti="j1", claims={"sid": "fam"}) if with_token else None
    decision = Decision(Reason.ALLOWED, route=ROUTE, token=token,
                        token_fingerprint=token.fingerprint if token is not None else None)
    fast = audit_record(exchange, decision, 2.34567, "sid")
    slow = _record(exchange, decision, 2.34567, "sid", None)
    assert list(fast.items()) == list(slow.items())
    if case != "plain":
        assert fast.get("escaped") or fast.get("truncated")


BINDINGS = [("none", None), ("dpop", "k" * 43), ("dpop\udcff" + "b" * 20, "\ud800" * 200)]


@pytest.mark.parametrize(("binding", "key"), BINDINGS)
@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_binding_and_key_as_field_by_field(reason: Reason, binding: str, key: str | None) -> None:
    exchange = Exchange(time.time(), time.monotonic(), "req-1", "198.51.100.7", "GET", "api.example", "/x", "ua")
    token = ValidatedToken("https://as.example", "alice", "web", frozenset({"orders:read"}), time.time() + 300,
                           fingerprint("raw"), jti="j1", claims={"sid": "fam"})
    decision = Decision(reason, route=ROUTE, token=token, token_fingerprint=token.fingerprint, binding=binding,
                        key_thumbprint=key)
    fast = audit_record(exchange, decision, 1.0, "sid")
    assert list(fast.items()) == list(_record(exchange, decision, 1.0, "sid", None).items())
    assert (fast["decision"], fast["reason"]) == ("allow" if reason.allowed else "deny", reason.value)


def _route(name: str = "r", scopes: tuple[str, ...] = ("orders:read",)) -> Route:
    config = parse_config(yaml.safe_dump({
        "upstreams": {"o": {"url": "http://127.0.0.1:9"}},
        "issuers": [{"issuer": "https://as.example", "audiences": ["api"]}],
        "routes": [{"name": name, "path": "/x", "upstream": "o", "scopes": list(scopes)}],
    }))
    return RouteTable(config.routes).routes[0]


# token and route values that are not clean: the record falls back to field by field for them
HOSTILE_TOKENS: dict[str, dict[str, Any]] = {
    "clean": {"sub": "alice", "cid": "web", "jti": "j1", "claims": {"sid": "fam", "fam": "other"}, "scopes": {"a"}},
    "long sub": {"sub": "s" * 300, "cid": "web", "jti": "j1", "claims": {"sid": "fam"}, "scopes": {"a"}},
    "surrogate jti": {"sub": "a", "cid": "w", "jti": "j\ud800", "claims": {"sid": "f\udcff"}, "scopes": {"a"}},
    "many scopes": {"sub": "a", "cid": "w", "jti": "j", "claims": {"sid": 5}, "scopes": {f"s{i}" for i in range(150)}},
    "long scope": {"sub": "a", "cid": "w", "jti": "j", "claims": {}, "scopes": {"x" * 300}},
    "non-ascii": {"sub": "é", "cid": "ü", "jti": None, "claims": {"sid": "é" * 300}, "scopes": {"é"}},
}
HOSTILE_ROUTES: dict[str, tuple[Any, ...]] = {
    "clean": (), "long name": ("n" * 300,), "many required scopes": ("r", tuple(f"q{i}" for i in range(120))),
}


@pytest.mark.parametrize("mode", ["proxy", "middleware", "decision"])
@pytest.mark.parametrize("token_case", list(HOSTILE_TOKENS))
@pytest.mark.parametrize("route_case", list(HOSTILE_ROUTES))
def test_hostile_tokens_and_routes_fall_back_to_the_same_record(mode: str, token_case: str, route_case: str) -> None:
    """A token or route memo is only kept when clean; whatever the family claim, mode or values, and
    on a second record from the same (memoised) token, the record is the field-by-field one."""
    values = HOSTILE_TOKENS[token_case]
    token = ValidatedToken("https://as.example", values["sub"], values["cid"], frozenset(values["scopes"]),
                           time.time() + 300, fingerprint("raw"), jti=values["jti"], claims=values["claims"])
    route = _route(*HOSTILE_ROUTES[route_case])
    exchange = Exchange(time.time(), time.monotonic(), "r", "1.2.3.4", "GET", "h", "/x", "ua", mode=mode)
    decision = Decision(Reason.INSUFFICIENT_SCOPE, route=route, token=token, token_fingerprint=token.fingerprint,
                        missing_scopes=frozenset({"m\ud800", "z" * 400}))
    for family_claim in ("sid", "fam", "sid", "fam"):  # the memo is per family claim: switching must not leak
        fast = audit_record(exchange, decision, 1.0, family_claim)
        assert list(fast.items()) == list(_record(exchange, decision, 1.0, family_claim, None).items())
