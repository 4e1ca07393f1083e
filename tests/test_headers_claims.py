"""Claims that cannot be header values (on the proxy and on the decision endpoint).

A token whose ``sub``, client id or scopes hold CR, LF, other control characters, non-ASCII text
or edge spaces would be copied into an identity header. Before the fix the HTTP writer raised
(500 on the proxy, a dropped connection on the decision endpoint); a lenient writer would have
split the header. Now the token is refused where it is built (401 ``invalid_token``, reason
``invalid_claim``), audited, in every mode; the header builders keep a check of their own.
Real issuer, real upstream, real sockets; the hostile tokens are properly signed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import IdentityHeaders, parse_config
from gateway.decision import Decision
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.forward_auth import allow_headers
from gateway.middleware import TOKENGATE_KEY
from gateway.proxy import ForwardContext, UnsafeIdentity, Upstream, identity_values, upstream_headers
from gateway.reasons import Reason
from gateway.tokens.token import ValidatedToken, cache_key, fingerprint, header_safe, scope_token
from tests.helpers import GatewayFactory, RunningGateway, base_config, bearer, raw_request
from tests.test_middleware import UNUSED_UPSTREAM, orders_app

# values that must never reach an upstream as a header value
HOSTILE = [
    "alice\r\nX-Auth-Scopes: orders:admin",  # header injection
    "alice\nX-Injected: 1",
    "alice\r",
    "al\x00ice",
    "al\tice",  # HTAB: a control character, and whitespace some upstreams split scopes at
    "al\x7fice",  # DEL
    "al\x85ice",  # C1 NEL
    "alic\u00e9",  # non-ASCII: Latin-1 to one upstream, UTF-8 to another
    "al\u2028ice",
    "\u010d\u010aX-Injected: 1",  # truncated to 8 bits by some clients: CR LF
    " admin",  # trimmed by every parser: would arrive as "admin"
    "admin ",
]
FINE = ["alice", "alice@example.com", "auth0|5f7c8ec7c33c6c004bbafe82", "urn:user:42 (tenant a)", ""]


def test_header_safe_and_scope_token() -> None:
    for value in HOSTILE:
        assert not header_safe(value), repr(value)
        assert not scope_token(value), repr(value)
    for value in FINE:
        assert header_safe(value), repr(value)
    assert scope_token("orders:read") and scope_token("https://api.example/orders.read")
    for bad in ("", "orders read", 'orders"read', "orders\\read"):
        assert not scope_token(bad), repr(bad)


def _hostile_claims() -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = [(f"sub={v!r}", {"sub": v}) for v in HOSTILE]
    cases += [
        ("client_id CRLF", {"client_id": "demo\r\nX-Injected: 1"}),
        ("azp non-ASCII", {"client_id": None, "azp": "cli\u00e9nt"}),
        ("cid control", {"client_id": None, "cid": "c\x01d"}),
        ("scope CRLF", {"scope": "orders:read\r\nX-Injected: 1"}),
        ("scope tab", {"scope": "orders:read\tadmin"}),
        ("scope unit separator", {"scope": "orders:read\x1fadmin"}),  # str.split() would split here
        ("scope no-break space", {"scope": "orders:read\u00a0admin"}),
        ("scp list with a space", {"scp": ["orders:read", "orders:read admin"]}),
        ("scp list with CRLF", {"scp": ["orders:read\r\n"]}),
        ("scp string tab", {"scp": "orders:read\tadmin"}),
    ]
    return cases


HOSTILE_CLAIMS = _hostile_claims()


async def _records(gw: RunningGateway) -> list[dict[str, Any]]:
    return await gw.audit_records()


@pytest.mark.parametrize(("name", "claims"), HOSTILE_CLAIMS, ids=[c[0] for c in HOSTILE_CLAIMS])
async def test_proxy_refuses_the_token_with_invalid_claim(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream, name: str, claims: dict[str, Any]
) -> None:
    token = issuer.mint(**claims)
    response = await raw_request(gw.url, "/orders", headers=bearer(token))
    assert response.status == 401, name
    body = json.loads(response.body)
    assert (body["error"], body["reason"]) == ("invalid_token", "invalid_claim")
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="tokengate", error="invalid_token"')
    assert "Injected" not in response.body.decode() and "X-Injected" not in response.headers
    assert upstream.requests == []
    record = (await _records(gw))[-1]
    assert (record["reason"], record["status"], record["decision"]) == ("invalid_claim", 401, "deny")
    assert record["token_fingerprint"] == fingerprint(token)[:32]
    assert record["sub"] is None  # the hostile value is not what the record is about


async def test_fine_values_still_pass(gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream) -> None:
    for sub in FINE:
        token = issuer.mint(sub=sub, scope="orders:read  profile", client_id="client-1.2_x~y")
        response = await raw_request(gw.url, "/orders", headers=bearer(token))
        assert response.status == 200, repr(sub)
        seen = upstream.requests[-1]["headers"]
        assert seen["X-Auth-Subject"] == sub and seen["X-Auth-Scopes"] == "orders:read profile"
        assert seen["X-Auth-Client-Id"] == "client-1.2_x~y"


async def test_decision_endpoint_answers_and_records(make_gateway: GatewayFactory, issuer: DemoIssuer) -> None:
    """Before the fix the decision port dropped the connection: the allow headers could not be written."""
    gw = await make_gateway(decision_listen="127.0.0.1:0", decision_sources=["traefik"])
    url = f"http://127.0.0.1:{gw.port('decision')}"
    for name, claims in HOSTILE_CLAIMS:
        token = issuer.mint(**claims)
        headers = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/orders", **bearer(token)}
        response = await raw_request(url, "/verify", headers=headers)
        assert response.status == 401, name
        assert json.loads(response.body)["reason"] == "invalid_claim"
        assert "X-Auth-Subject" not in response.headers
        record = (await gw.audit_records())[-1]
        assert (record["mode"], record["reason"], record["path"]) == ("decision", "invalid_claim", "/orders")
        assert record["token_fingerprint"] == fingerprint(token)[:32]


async def test_middleware_refuses_the_token(aiohttp_client: Any, issuer: DemoIssuer, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    audit_path = tmp_path / "audit.jsonl"
    data = base_config(issuer, UNUSED_UPSTREAM, audit_path)
    client = await aiohttp_client(orders_app(parse_config(yaml.safe_dump(data)), seen))
    for name, claims in HOSTILE_CLAIMS:
        resp = await client.get("/orders", headers=bearer(issuer.mint(**claims)))
        assert resp.status == 401, name
        assert (await resp.json())["reason"] == "invalid_claim"
    assert seen == []  # the handler never ran
    await client.app[TOKENGATE_KEY].audit.flush()
    reasons = [json.loads(line)["reason"] for line in audit_path.read_text().splitlines()]
    assert reasons == ["invalid_claim"] * len(HOSTILE_CLAIMS)


async def test_introspected_tokens_are_refused_too(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    introspecting = {"issuer": issuer.issuer, "audiences": [issuer.audience],
                     "introspection": {"endpoint": f"{issuer.issuer}/introspect", "client_id": "gateway",
                                       "client_secret": "gateway-secret", "token_prefix": "demo_"}}
    gw = await make_gateway(issuers=[introspecting])
    for name, claims in HOSTILE_CLAIMS:
        response = await raw_request(gw.url, "/orders", headers=bearer(issuer.mint_opaque(**claims)))
        assert response.status == 401, name
        assert json.loads(response.body)["reason"] == "invalid_claim"
    assert upstream.requests == []
    fine = await raw_request(gw.url, "/orders", headers=bearer(issuer.mint_opaque(sub="dave")))
    assert fine.status == 200


# --- the defensive check at the header builders ------------------------------------------


def _token(subject: str | None = "alice", client_id: str | None = "c", scopes: frozenset[str] = frozenset({"s"}),
           raw: str = "x.y.z") -> ValidatedToken:
    return ValidatedToken(issuer="https://as.example", subject=subject, client_id=client_id, scopes=scopes,
                          expires_at=2e9, fingerprint=fingerprint(raw))


UNSAFE_TOKENS = [
    _token(subject="alice\r\nX-Injected: 1"), _token(client_id="c\n"), _token(subject=" admin"),
    _token(scopes=frozenset({"orders:read admin"})), _token(scopes=frozenset({"orders:read\r\n"})),
]


@pytest.mark.parametrize("token", UNSAFE_TOKENS)
def test_header_builders_refuse_unsafe_values(token: ValidatedToken) -> None:
    with pytest.raises(UnsafeIdentity):
        identity_values(token, IdentityHeaders())
    context = ForwardContext(client_ip="127.0.0.1", peer="127.0.0.1", peer_trusted=False, scheme="http",
                             host="api.example", request_id="r")
    upstream = Upstream("u", parse_config(yaml.safe_dump({
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}}, "routes": [
            {"name": "r", "path": "/r", "upstream": "u", "auth": "none"}]})).upstreams["u"])
    with pytest.raises(UnsafeIdentity):
        upstream_headers(CIMultiDictProxy(CIMultiDict()), context, upstream, token, IdentityHeaders())
    config = parse_config(yaml.safe_dump({"upstreams": {"u": {"url": "http://127.0.0.1:9"}},
                                          "routes": [{"name": "r", "path": "/r", "upstream": "u", "auth": "none"}]}))
    with pytest.raises(UnsafeIdentity):
        allow_headers(Decision(Reason.ALLOWED, token=token), config, "r")


async def _plant(gw_validator: Any, raw: str, planted: ValidatedToken) -> None:
    """Put a token into the verified-token cache as if it had been verified: the header builders are then
    the only line left (a ValidatedToken built by other code than token_from_claims)."""
    gw_validator.cache.put(cache_key(raw), planted)


async def test_every_mode_answers_invalid_claim_for_a_planted_token(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream, aiohttp_client: Any, tmp_path: Path
) -> None:
    gw = await make_gateway(decision_listen="127.0.0.1:0", decision_sources=["traefik"])
    raw = issuer.mint()
    planted = _token(subject="alice\r\nX-Injected: 1", scopes=frozenset({"orders:read"}), raw=raw)
    assert gw.gateway.pipeline is not None
    await _plant(gw.gateway.pipeline.decider.validator, raw, planted)

    proxied = await raw_request(gw.url, "/orders", headers=bearer(raw), extra_lines=["Expect: 100-continue"])
    assert proxied.status == 401 and json.loads(proxied.body)["reason"] == "invalid_claim"
    assert b"100 Continue" not in proxied.body
    assert upstream.requests == []
    assert (await gw.audit_records())[-1]["reason"] == "invalid_claim"

    decision_url = f"http://127.0.0.1:{gw.port('decision')}"
    checked = await raw_request(decision_url, "/verify", headers={
        "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/orders", **bearer(raw)})
    assert checked.status == 401 and json.loads(checked.body)["reason"] == "invalid_claim"
    record = (await gw.audit_records())[-1]
    assert (record["mode"], record["reason"], record["sub"]) == ("decision", "invalid_claim", None)

    seen: list[dict[str, Any]] = []
    data = base_config(issuer, UNUSED_UPSTREAM, tmp_path / "mw.jsonl")
    app: web.Application = orders_app(parse_config(yaml.safe_dump(data)), seen)
    client = await aiohttp_client(app)
    pipeline = client.app[TOKENGATE_KEY].pipeline
    assert pipeline is not None
    await _plant(pipeline.decider.validator, raw, planted)
    resp = await client.get("/orders", headers=bearer(raw))
    assert resp.status == 401 and (await resp.json())["reason"] == "invalid_claim"
    assert seen == []
