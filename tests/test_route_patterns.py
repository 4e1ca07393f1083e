"""``path_regex`` and ``path_glob`` routes.

Compiled when the configuration loads (errors name file, line and key), matched with RE2 (linear
time, whatever the pattern), anchored, against the normalised path only. The end-to-end tests go
through a real gateway with raw requests, so that ``..``, ``%2e`` and friends reach it as sent.
"""

from __future__ import annotations

import json
import time

import pytest

from gateway.config import ConfigError, RouteConfig, parse_config
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.path_patterns import MAX_PATTERN, PatternError, compile_glob, compile_regex, glob_expression
from gateway.routing import RouteTable
from tests.helpers import MINIMAL_CONFIG, GatewayFactory, bearer, raw_request

ROUTES = [
    {"name": "admin", "path_regex": "/api/v[0-9]+/admin(/.*)?", "methods": ["GET"], "upstream": "orders",
     "scopes": ["admin"]},
    {"name": "reports", "path_glob": "/reports/*/q?.csv", "methods": ["GET"], "upstream": "orders",
     "scopes": ["reports"]},
    {"name": "deep", "path_glob": "/files/**/secret", "methods": ["GET"], "upstream": "orders", "scopes": ["secret"]},
    {"name": "shout", "path_glob": "/Shout/**", "case_insensitive": True, "methods": ["GET"], "upstream": "orders",
     "scopes": ["shout"]},
    {"name": "tenant", "path_regex": "/tenants/(?P<tenant>[a-z0-9-]+)/orders", "methods": ["GET"],
     "upstream": "orders", "rules": [{"name": "own-tenant", "expression": "claims.tenant == path.tenant"}]},
    {"name": "public", "path_prefix": "/", "methods": ["GET"], "upstream": "orders", "auth": "none"},
]


def route(**kwargs: object) -> RouteConfig:
    return RouteConfig.model_validate({"name": "r", "upstream": "u", **kwargs})


def table() -> RouteTable:
    return RouteTable([RouteConfig.model_validate(r) for r in ROUTES])


def route_of(path: str) -> str | None:
    match = table().match("api.example", "GET", path)
    return "refused" if match.refused else match.route.name if match.route is not None else None


@pytest.mark.parametrize(("path", "expected"), [
    ("/api/v1/admin", "admin"),
    ("/api/v12/admin/users", "admin"),
    ("/api/v1/adminx", "public"),  # anchored: the whole path must match
    ("/x/api/v1/admin", "public"),
    ("/api/vX/admin", "public"),
    ("/reports/2024/q1.csv", "reports"),
    ("/reports/2024/q12.csv", "public"),  # ? is one character
    ("/reports/2024/x/q1.csv", "public"),  # * stays within a segment
    ("/reports/2024/q1xcsv", "public"),  # . is a dot, not any character
    ("/files/secret", "deep"),  # ** is zero or more segments
    ("/files/a/b/c/secret", "deep"),
    ("/files/a/secretx", "public"),
    ("/shout/LOUD", "shout"),  # case_insensitive folds both sides
    ("/SHOUT", "shout"),
])
def test_patterns_match_whole_normalised_paths(path: str, expected: str) -> None:
    assert route_of(path) == expected


async def test_gateway_matches_the_normalised_path_only(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(routes=ROUTES)
    weak = bearer(issuer.mint(scope="orders:read"))
    # every spelling of /api/v1/admin reaches the protected route, never the public one
    for target in ("/api/v1/admin", "/api/v2/../v1/admin", "/api/v1/./admin", "/api//v1/admin",
                   "/api/v1/%61dmin", "/api/v1/admin/%2e%2e/admin", "/public/../api/v1/admin"):
        response = await raw_request(gw.url, target, headers=weak)
        assert response.status == 403, target
        assert json.loads(response.body)["reason"] == "insufficient_scope"
    # the query is never matched: /files?x=/secret is the public /files
    response = await raw_request(gw.url, "/files?x=/a/secret")
    assert response.status == 200
    # an upstream that trims "admin." to "admin" would see the admin route: refused, not guessed
    response = await raw_request(gw.url, "/api/v1/admin.", headers=weak)
    assert response.status == 400 and json.loads(response.body)["reason"] == "bad_path"
    # the one that passes is forwarded as matched
    response = await raw_request(gw.url, "/api/v1/../v3/admin/x", headers=bearer(issuer.mint(scope="admin")))
    assert response.status == 200 and json.loads(response.body)["path"] == "/api/v3/admin/x"


async def test_named_groups_feed_claims_rules(make_gateway: GatewayFactory, issuer: DemoIssuer) -> None:
    gw = await make_gateway(routes=ROUTES)
    token = bearer(issuer.mint(tenant="acme"))
    assert (await raw_request(gw.url, "/tenants/acme/orders", headers=token)).status == 200
    response = await raw_request(gw.url, "/tenants/globex/orders", headers=token)
    assert response.status == 403 and json.loads(response.body)["reason"] == "rule_failed"


def test_catastrophic_patterns_run_in_linear_time() -> None:
    # with Python's re, (a+)+$ against "aaaa...b" backtracks for ages; RE2 has no backtracking
    pattern = compile_regex("/(a+)+$")
    hostile = "/" + "a" * 50_000 + "b"
    started = time.perf_counter()
    assert not pattern.matches(hostile)
    assert time.perf_counter() - started < 0.5
    nested = compile_regex("/((a|aa)*)*c")
    started = time.perf_counter()
    assert not nested.matches("/" + "a" * 50_000)
    assert time.perf_counter() - started < 0.5


def test_glob_translation() -> None:
    assert glob_expression("/a/*.json") == "/a/[^/]*\\.json"
    assert glob_expression("/a/**") == "/a(?:/[^/]*)*"
    assert compile_glob("/a/(x)+[y]{2}").matches("/a/(x)+[y]{2}")  # regex characters are literal in a glob
    assert not compile_glob("/a/(x)+[y]{2}").matches("/a/xx[y]{2}")
    with pytest.raises(PatternError):
        glob_expression("/a/b**c")
    with pytest.raises(PatternError):
        glob_expression("a/b")


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return caught.value.problems


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("path_regex", "'/a/(x)\\1'", "gw.yaml:10: routes[0].path_regex: path_regex '/a/(x)\\\\1' does not compile: "
     "invalid escape"),
    ("path_regex", "'/a(?=b)'", "gw.yaml:10: routes[0].path_regex: path_regex '/a(?=b)' does not compile: "
     "invalid perl"),
    ("path_regex", "'/a/(b'", "gw.yaml:10: routes[0].path_regex: path_regex '/a/(b' does not compile: missing )"),
    ("path_regex", "'/a{1000}{1000}'", "gw.yaml:10: routes[0].path_regex: path_regex '/a{1000}{1000}' does not "),
    ("path_regex", "'/" + "a" * MAX_PATTERN + "'", f"gw.yaml:10: routes[0].path_regex: path_regex is "
     f"{MAX_PATTERN + 1} characters long; at most {MAX_PATTERN}"),
    ("path_regex", "'/caf\u00e9'", "gw.yaml:10: routes[0].path_regex: path_regex must be printable ASCII"),
    ("path_glob", "'/a/b**'", "gw.yaml:10: routes[0].path_glob: path_glob '/a/b**': ** must be a whole segment"),
    ("path_glob", "'a/*'", "gw.yaml:10: routes[0].path_glob: path_glob must start with /"),
])
def test_bad_patterns_are_configuration_errors(key: str, value: str, expected: str) -> None:
    text = MINIMAL_CONFIG.replace("    path: /r\n", "") + f"    {key}: {value}\n"
    problems = problems_of(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_one_path_kind_per_route() -> None:
    text = MINIMAL_CONFIG + "    path_glob: /r/*\n"
    assert "gw.yaml:8: routes[0]: a route needs exactly one of path, path_prefix, path_regex or path_glob" \
        in problems_of(text)
    text = MINIMAL_CONFIG.replace("    path: /r\n", "") + "    path_regex: /r\n    case_insensitive: true\n"
    assert any("case_insensitive does not apply to path_regex: write (?i)" in p for p in problems_of(text))


def test_a_regex_can_ignore_case_itself() -> None:
    compiled = RouteTable([route(path_regex="(?i)/admin/.*")])
    assert compiled.match("h", "GET", "/ADMIN/x").route is not None
    assert compiled.match("h", "GET", "/admin").route is None
