"""Templated issuers for multi-tenant authorization servers.

One HTTP server on 127.0.0.1 plays a multi-tenant authorization server (Entra ID style,
``/{tenant}/v2.0``): each tenant is a real ``DemoIssuer`` with its own signing keys, discovery
and JWKS, mounted under its own path. Tokens are properly signed; a tenant's keys must never
verify another tenant's token, nothing is fetched for a tenant before its first token, and
unknown tenants cost the authorization server a bounded number of calls.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from gateway.config import ConfigError, parse_config
from gateway.demo import DemoIssuer
from gateway.revocation.api import factory_for
from gateway.tokens.issuer_pattern import IssuerTemplate, issuer_map
from tests.helpers import AUDIENCE, MINIMAL_CONFIG, GatewayFactory, RunningGateway, bearer, metric

TENANTS = ("acme", "globex", "initech")


@dataclass
class TenantServer:
    base: str
    tenants: dict[str, DemoIssuer]
    paths: list[str]  # every request the server got, tenants known or not

    @property
    def template(self) -> str:
        return f"{self.base}/{{tenant}}/v2.0"

    def calls(self, tenant: str) -> int:
        return sum(self.tenants[tenant].calls.values())


@pytest.fixture
async def server() -> AsyncIterator[TenantServer]:
    tenants = {name: DemoIssuer(audience=AUDIENCE) for name in TENANTS}
    paths: list[str] = []

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        paths.append(request.path)
        return await handler(request)  # type: ignore[no-any-return]

    app = web.Application(middlewares=[count])
    for name, demo in tenants.items():
        app.add_subapp(f"/{name}/v2.0", demo.app())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    for name, demo in tenants.items():
        demo.issuer = f"{base}/{name}/v2.0"  # metadata, JWKS and tokens name the concrete issuer
    yield TenantServer(base, tenants, paths)
    await runner.cleanup()


def templated(server: TenantServer, **settings: Any) -> dict[str, Any]:
    return {"issuer": server.template, "audiences": [AUDIENCE], "jwks_min_refresh_interval": "1s", **settings}


async def status(http: aiohttp.ClientSession, gw: RunningGateway, token: str, path: str = "/orders") -> tuple[int, str]:
    async with http.get(f"{gw.url}{path}", headers=bearer(token)) as resp:
        body = await resp.json() if resp.status != 200 else {}
        return resp.status, body.get("reason", "allowed")


async def test_allowed_tenants_each_with_their_own_keys(
    make_gateway: GatewayFactory, server: TenantServer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[templated(server, tenants=["acme", "globex"])])
    assert all(server.calls(t) == 0 for t in TENANTS)  # nothing fetched before a tenant's first token
    acme, globex = server.tenants["acme"], server.tenants["globex"]
    assert await status(http, gw, acme.mint()) == (200, "allowed")
    assert server.calls("globex") == 0
    assert await status(http, gw, globex.mint()) == (200, "allowed")
    assert await status(http, gw, acme.mint(sub="again")) == (200, "allowed")
    assert (acme.calls["jwks"], globex.calls["jwks"]) == (1, 1)  # discovered once each, cached apart
    records = await gw.audit_records()
    assert [r["iss"] for r in records] == [acme.issuer, globex.issuer, acme.issuer]  # the concrete issuer
    # a tenant the server has but the allow-list does not: refused, and never asked about
    assert await status(http, gw, server.tenants["initech"].mint()) == (401, "unknown_issuer")
    assert server.calls("initech") == 0
    assert metric("gateway_token_validations_total", issuer=server.template, result="valid") >= 3
    assert metric("gateway_jwks_refresh_total", issuer=server.template, result="ok") >= 2  # one label for all


async def test_a_tenants_keys_never_verify_another_tenants_token(
    make_gateway: GatewayFactory, server: TenantServer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[templated(server, tenants=["acme", "globex"])])
    acme, globex = server.tenants["acme"], server.tenants["globex"]
    assert await status(http, gw, acme.mint()) == (200, "allowed")
    assert await status(http, gw, globex.mint()) == (200, "allowed")
    # globex's key (and kid) on a token naming acme: acme's keys do not hold it
    forged = jwt.encode(acme.claims(), globex.keys[0].private, algorithm="RS256",
                        headers={"kid": globex.keys[0].kid, "typ": "at+jwt"})
    assert (await status(http, gw, forged))[0] == 401
    # even under a kid acme does publish, the signature is globex's
    forged = jwt.encode(acme.claims(), globex.keys[0].private, algorithm="RS256",
                        headers={"kid": acme.keys[0].kid, "typ": "at+jwt"})
    assert await status(http, gw, forged) == (401, "bad_signature")


@pytest.mark.parametrize("iss", [
    "{base}/../acme/v2.0", "{base}/acme/../globex/v2.0", "{base}/acme%2Fx/v2.0", "{base}/acme/x/v2.0",
    "{base}//v2.0", "{base}/.acme/v2.0", "{base}/acme/v2.0/", "{base}/acme/v2.0?x", "{base}/ACME\n/v2.0",
    "{base}/acme/v2.0#", "http://127.0.0.2:1/acme/v2.0", "{base}/a{{tenant}}/v2.0", "{base}/" + "a" * 200 + "/v2.0",
])
async def test_hostile_issuers_never_reach_the_server(
    make_gateway: GatewayFactory, server: TenantServer, http: aiohttp.ClientSession, iss: str
) -> None:
    gw = await make_gateway(issuers=[templated(server, tenant_claim="tid")])
    acme = server.tenants["acme"]
    issuer = iss.format(base=server.base)
    token = acme.mint(iss=issuer, tid="acme")
    assert await status(http, gw, token) == (401, "unknown_issuer")
    assert all(server.calls(t) == 0 for t in TENANTS)


async def test_tenant_claim_must_name_the_tenant(
    make_gateway: GatewayFactory, server: TenantServer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[templated(server, tenant_claim="tid")])
    acme, globex = server.tenants["acme"], server.tenants["globex"]
    assert await status(http, gw, acme.mint(tid="acme")) == (200, "allowed")
    assert await status(http, gw, globex.mint(tid="acme")) == (401, "unknown_issuer")  # another tenant's
    assert await status(http, gw, globex.mint()) == (401, "unknown_issuer")  # none
    assert await status(http, gw, globex.mint(tid=["globex"])) == (401, "unknown_issuer")  # not a string
    assert server.calls("globex") == 0  # refused before anything was fetched for it


async def test_unknown_tenants_cost_a_bounded_number_of_calls(
    make_gateway: GatewayFactory, server: TenantServer, http: aiohttp.ClientSession
) -> None:
    """With only a claim check, any tenant name can come: the first tokens of new tenants are
    discovered from a bucket, and a tenant that failed is not asked again for a while."""
    gw = await make_gateway(issuers=[templated(server, tenant_claim="tid", jwks_refetch_burst=2,
                                               jwks_min_refresh_interval="1h")])
    acme = server.tenants["acme"]
    answers = []
    for tenant in ("nope-1", "nope-2", "nope-3", "nope-1"):
        token = acme.mint(iss=f"{server.base}/{tenant}/v2.0", tid=tenant)
        answers.append(await status(http, gw, token))
    assert answers == [(503, "jwks_unavailable")] * 4
    # nope-1 and nope-2 were looked up (discovery failed: 404 at both well-known places), nope-3
    # found the bucket empty, and nope-1 again is remembered as failed: no call for the last two
    asked = {tenant for tenant in ("nope-1", "nope-2", "nope-3") if any(tenant in path for path in server.paths)}
    assert asked == {"nope-1", "nope-2"} and len(server.paths) == 4
    assert all(server.calls(t) == 0 for t in TENANTS)


async def test_least_recently_used_tenants_give_way(
    make_gateway: GatewayFactory, server: TenantServer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[templated(server, tenants=list(TENANTS), max_tenants=2, jwks_refetch_burst=10)])
    acme, globex, initech = (server.tenants[t] for t in TENANTS)
    for demo in (acme, globex, acme, initech):  # globex is the least recently used when initech comes
        assert await status(http, gw, demo.mint()) == (200, "allowed")
    [template] = gw.pipeline.validator.templates
    assert template.tenants == [acme.issuer, initech.issuer]
    assert await status(http, gw, globex.mint()) == (200, "allowed")  # discovered again
    assert globex.calls["jwks"] == 2 and acme.calls["jwks"] == 1


async def test_rotation_is_per_tenant(
    make_gateway: GatewayFactory, server: TenantServer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[templated(server, tenants=["acme", "globex"])])
    acme, globex = server.tenants["acme"], server.tenants["globex"]
    assert await status(http, gw, acme.mint()) == (200, "allowed")
    assert await status(http, gw, globex.mint()) == (200, "allowed")
    new = acme.rotate()
    assert await status(http, gw, acme.mint(key=new)) == (200, "allowed")  # unknown kid: acme looked again
    assert (acme.calls["jwks"], globex.calls["jwks"]) == (2, 1)
    # a made-up kid on a globex token costs globex its own budget, never acme's keys
    forged = jwt.encode(globex.claims(), new.private, algorithm="RS256", headers={"kid": new.kid})
    assert await status(http, gw, forged) == (401, "unknown_key")


async def test_route_issuers_name_the_template_or_one_tenant(
    make_gateway: GatewayFactory, server: TenantServer, http: aiohttp.ClientSession
) -> None:
    acme, globex = server.tenants["acme"], server.tenants["globex"]
    routes = [
        {"name": "all-tenants", "path": "/orders", "methods": ["GET"], "upstream": "orders",
         "issuers": [server.template]},
        {"name": "acme-only", "path": "/acme", "methods": ["GET"], "upstream": "orders", "issuers": [acme.issuer]},
    ]
    gw = await make_gateway(issuers=[templated(server, tenants=["acme", "globex"])], routes=routes)
    assert await status(http, gw, acme.mint()) == (200, "allowed")
    assert await status(http, gw, globex.mint()) == (200, "allowed")
    assert await status(http, gw, acme.mint(), "/acme") == (200, "allowed")
    assert await status(http, gw, globex.mint(), "/acme") == (401, "unknown_issuer")


async def test_the_templates_sender_constraint_applies_to_its_tenants(
    make_gateway: GatewayFactory, server: TenantServer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(issuers=[templated(server, tenants=["acme"], sender_constraint="dpop")])
    assert await status(http, gw, server.tenants["acme"].mint()) == (401, "sender_constraint_required")


async def test_revocation_entries_name_the_concrete_issuer(
    make_gateway: GatewayFactory, server: TenantServer, http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "tenant-test-" + uuid.uuid4().hex
    monkeypatch.setenv("GATEWAY_ADMIN_SECRET", secret)
    gw = await make_gateway(issuers=[templated(server, tenants=["acme", "globex"], max_token_lifetime="2h")])
    acme, globex = server.tenants["acme"], server.tenants["globex"]

    async def revoke(body: dict[str, Any]) -> tuple[int, Any]:
        async with http.post(f"{gw.admin_url}/revocation/entries", json=body, headers=bearer(secret)) as resp:
            return resp.status, await resp.json()

    code, answer = await revoke({"subject": "bob", "issuer": acme.issuer})
    assert code == 200 and answer["revoked"]["issuer"] == acme.issuer
    assert await status(http, gw, acme.mint(sub="bob")) == (401, "revoked_subject")
    assert await status(http, gw, globex.mint(sub="bob")) == (200, "allowed")  # another tenant's bob
    for issuer in (server.template, server.tenants["initech"].issuer, f"{server.base}/../acme/v2.0"):
        code, answer = await revoke({"subject": "bob", "issuer": issuer})
        assert code == 400 and "not configured" in answer["error_description"], issuer
    factory = factory_for(gw.gateway.config)
    assert factory.lifetime(acme.issuer) == 7200.0  # the template's max_token_lifetime


# --- matching and configuration, without a server ------------------------------------------


def test_template_matching() -> None:
    path = IssuerTemplate.of("https://login.example.com/{tenant}/v2.0", ["contoso"])
    assert path.tenant_of("https://login.example.com/contoso/v2.0") == "contoso"
    assert path.trusted_tenant("https://login.example.com/fabrikam/v2.0") is None  # not on the list
    assert path.tenant_of("https://login.example.com/fabrikam/v2.0") == "fabrikam"
    for bad in ("https://login.example.com/../v2.0", "https://login.example.com/a/b/v2.0",
                "https://login.example.com/a%2Fb/v2.0", "https://login.example.com/a/v2.0/x",
                "https://login.example.comX/a/v2.0", "https://login.example.com/-a/v2.0"):
        assert path.tenant_of(bad) is None, bad
    host = IssuerTemplate.of("https://{tenant}.eu.auth0.com/", None, "org_id")
    assert host.tenant_of("https://acme.eu.auth0.com/") == "acme"
    for bad in ("https://a.b.eu.auth0.com/", "https://evil.com#.eu.auth0.com/", "https://a_b.eu.auth0.com/",
                "https://evil.com/.eu.auth0.com/", "https://-a.eu.auth0.com/"):
        assert host.tenant_of(bad) is None, bad
    mapped = issuer_map([parse_config(MINIMAL_CONFIG, "x").issuers[0]], lambda i: i.leeway)
    assert mapped.get("https://as.example") == 30.0 and mapped.get("https://other") is None


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return caught.value.problems


def config_with(issuer_lines: str, route_lines: str = "") -> str:
    text = MINIMAL_CONFIG.replace("  - issuer: https://as.example\n    audiences: [api]\n", issuer_lines)
    return text + route_lines


@pytest.mark.parametrize(("issuer_lines", "expected"), [
    ("  - issuer: https://login.example/{tenant}/v2.0\n    audiences: [api]\n",
     "gw.yaml:2: issuers[0]: a templated issuer needs tenants (the allow-list) or tenant_claim"),
    ("  - issuer: https://login.example/{tenant}/{tenant}\n    audiences: [api]\n    tenants: [a]\n",
     "gw.yaml:2: issuers[0].issuer: {tenant} may appear once"),
    ("  - issuer: https://login.example/t{tenant}/v2.0\n    audiences: [api]\n    tenants: [a]\n",
     "gw.yaml:2: issuers[0].issuer: in the path, {tenant} must be a whole segment"),
    ("  - issuer: https://login.{tenant}.example/\n    audiences: [api]\n    tenants: [a]\n",
     "gw.yaml:2: issuers[0].issuer: in the host, {tenant} must be the whole first label"),
    ("  - issuer: https://login.example/{tenant}/{realm}\n    audiences: [api]\n    tenants: [a]\n",
     "gw.yaml:2: issuers[0].issuer: {tenant} is the only placeholder"),
    ("  - issuer: https://login.example/{tenant}?x=1\n    audiences: [api]\n    tenants: [a]\n",
     "gw.yaml:2: issuers[0].issuer: a templated issuer must be an http(s) URL without query or fragment"),
    ("  - issuer: https://login.example/{tenant}\n    audiences: [api]\n    tenants: [../x]\n",
     "gw.yaml:4: issuers[0].tenants[0]: tenant '../x' must be 1-128 letters"),
    ("  - issuer: https://as.example\n    audiences: [api]\n    tenants: [a]\n",
     "gw.yaml:2: issuers[0]: tenants and tenant_claim need a templated issuer"),
    ("  - issuer: https://as.example\n    audiences: [api]\n    jwks_uri: https://as.example/{tenant}/keys\n",
     "gw.yaml:2: issuers[0]: jwks_uri may name {tenant} only for a templated issuer"),
    ("  - issuer: https://login.example/{tenant}\n    audiences: [api]\n    tenants: [a]\n"
     "    validation: introspection\n    introspection: {endpoint: https://x.example/i, client_id: c, "
     "client_secret: s}\n",
     "gw.yaml:2: issuers[0]: a templated issuer validates JWTs with each tenant's keys"),
    ("  - issuer: https://login.example/{tenant}\n    audiences: [api]\n    tenants: [a]\n"
     "  - issuer: https://login.example/common\n    audiences: [api]\n",
     "gw.yaml:5: issuers[1].issuer: https://login.example/common is also a tenant of the templated issuer"),
])
def test_template_configuration_errors(issuer_lines: str, expected: str) -> None:
    problems = problems_of(config_with(issuer_lines))
    assert any(p.startswith(expected) for p in problems), problems


def test_route_issuers_may_name_a_trusted_tenant() -> None:
    lines = "  - issuer: https://login.example/{tenant}/v2.0\n    audiences: [api]\n    tenants: [acme]\n"
    ok = parse_config(config_with(lines, "    issuers: ['https://login.example/{tenant}/v2.0', "
                                         "https://login.example/acme/v2.0]\n"), "gw.yaml")
    assert ok.issuer("https://login.example/acme/v2.0") is ok.issuers[0]
    assert ok.issuer("https://login.example/globex/v2.0") is None
    problems = problems_of(config_with(lines, "    issuers: [https://login.example/globex/v2.0]\n"))
    assert any(p.startswith("gw.yaml:12: routes[0].issuers: unknown issuer 'https://login.example/globex/v2.0'")
               for p in problems), problems
