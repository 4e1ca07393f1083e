"""Raw request-target normalisation, route matching, and bypass attempts.

The end-to-end tests send raw request targets over a socket (aiohttp's client would normalise
them first) and check what the real upstream received.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import aiohttp
import pytest

from gateway.config import RouteConfig
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.routing import BadTarget, RouteTable, host_key, normalise_target, trimmed, valid_host, without_parameters
from tests.helpers import GatewayFactory, RunningGateway, bearer, raw_request

# --- normalisation (unit) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        ("/orders", "/orders", ""),
        ("/orders?x=1&y=%2F", "/orders", "x=1&y=%2F"),  # the query is left as sent
        ("/public/health/../../orders", "/orders", ""),
        ("/public/health/%2e%2e/%2e%2e/orders", "/orders", ""),
        ("/public/health/%2E%2e/.%2E/orders", "/orders", ""),
        ("/a/./b/../c", "/a/c", ""),
        ("/../../../orders", "/orders", ""),  # ".." above the root stays at the root
        ("//orders", "/orders", ""),
        ("/orders//1///status", "/orders/1/status", ""),
        ("/a/b/", "/a/b/", ""),
        ("/a/b/..", "/a/", ""),
        ("/a/b/.", "/a/b/", ""),
        ("/a/b/%2e%2e", "/a/", ""),  # same as "/a/b/.." once unreserved characters are decoded
        ("/a/b/%2e", "/a/b/", ""),
        ("/%7Euser/%41%2d%5f", "/~user/A-_", ""),  # unreserved characters decoded
        ("/a%20b/%3f/%c3%a9", "/a%20b/%3F/%C3%A9", ""),  # reserved and non-ASCII stay encoded, hex upper-cased
        ("/", "/", ""),
        ("/..", "/", ""),
        ("/orders;v=1", "/orders;v=1", ""),  # kept by normalisation; the route table refuses it unless allowed
        ("/caf%c3%a9/%F0%9F%98%80", "/caf%C3%A9/%F0%9F%98%80", ""),  # encoded UTF-8 is fine
    ],
)
def test_normalise_target(raw: str, path: str, query: str) -> None:
    target = normalise_target(raw)
    assert (target.path, target.query) == (path, query)
    assert target.forward == (f"{path}?{query}" if query else path)


@pytest.mark.parametrize(
    "raw",
    [
        "/public/health/..%2f..%2forders",  # encoded slash
        "/public/health%2F..%2F..%2Forders",
        "/public/health/..%5c..%5corders",  # encoded backslash
        "/public/health/..\\..\\orders",  # raw backslash
        "/public/health%00",  # NUL
        "/public/health/%00/../../orders",
        "/public/health/%252e%252e/%252e%252e/orders",  # double encoding
        "/public/%25",
        "/public/health/..;/..;/orders",  # Tomcat-style path parameters on dot segments
        "/public/health/.;/orders",
        "/public/health/%2e%2e;x/orders",
        "/public/;/orders",
        "/public/health/..%3B/..%3B/orders",  # the same with an encoded ";" (decoded first by some)
        "/public/health/%2e%2e%3bx/orders",
        "/public/health/%zz",  # broken percent-encoding
        "/public/%C0%AF",  # not UTF-8 once decoded: overlong "/"
        "/public/%C0%AE%C0%AE/orders",  # overlong "."
        "/public/%E0%80%AF",  # three-byte overlong
        "/public/%80",  # lone continuation byte
        "/public/%ED%A0%80",  # encoded surrogate
        "/public/%F4%90%80%80",  # above U+10FFFF
        "/public/%FE",
        "/public/%E2%82",  # truncated
        "/public/health/%2",
        "http://127.0.0.1/orders",  # absolute-form is not accepted
        "orders",
        "*",
        "/public/health#frag",
        "/public/héalth",  # non-ASCII must be percent-encoded
        "/public/health/<script>",
        "/orders?x=\x01",
    ],
)
def test_ambiguous_targets_are_rejected(raw: str) -> None:
    with pytest.raises(BadTarget):
        normalise_target(raw)


# --- route table (unit) --------------------------------------------------------------------


def _table(*routes: Mapping[str, object]) -> RouteTable:
    return RouteTable(RouteConfig.model_validate({"upstream": "u", **r}) for r in routes)


def route_name(table: RouteTable, path: str) -> str | None:
    """The name of the route a GET of ``path`` on host ``h`` matches, None for no route."""
    route = table.match("h", "GET", path).route
    return route.name if route is not None else None


def test_exact_param_and_prefix_routes() -> None:
    table = _table(
        {"name": "list", "path": "/orders", "methods": ["GET"]},
        {"name": "one", "path": "/orders/{id}", "methods": ["PUT", "DELETE"]},
        {"name": "status", "path": "/orders/{id}/status", "methods": ["GET"]},
        {"name": "files", "path_prefix": "/files", "methods": ["*"]},
    )

    def name(method: str, path: str) -> str | None:
        route = table.match("h", method, path).route
        return route.name if route else None

    assert name("GET", "/orders") == "list"
    assert name("HEAD", "/orders") == "list"  # HEAD comes with GET
    assert name("GET", "/orders/") is None  # exact means exact
    assert name("GET", "/orders/x") is None
    assert name("PUT", "/orders/42") == "one"
    assert name("PUT", "/orders/42/extra") is None  # {id} is one segment
    assert name("GET", "/orders/42/status") == "status"
    assert name("GET", "/orders/42/statusx") is None
    assert name("PATCH", "/files") == "files"
    assert name("GET", "/files/a/b") == "files"
    assert name("GET", "/filesystem") is None  # a prefix ends at a segment boundary
    assert name("GET", "/other") is None


def test_method_mismatch_reports_allowed_methods() -> None:
    table = _table(
        {"name": "list", "path": "/orders", "methods": ["GET"]},
        {"name": "create", "path": "/orders", "methods": ["POST"]},
    )
    match = table.match("h", "DELETE", "/orders")
    assert match.route is None
    assert match.allowed_methods == {"GET", "HEAD", "POST"}
    assert table.match("h", "DELETE", "/nothing").allowed_methods == frozenset()


def test_first_matching_route_wins() -> None:
    table = _table(
        {"name": "specific", "path": "/a/b", "methods": ["GET"]},
        {"name": "catch-all", "path_prefix": "/a", "methods": ["GET"]},
    )
    assert route_name(table, "/a/b") == "specific"
    assert route_name(table, "/a/c") == "catch-all"


def test_host_matching() -> None:
    table = _table(
        {"name": "api", "path": "/x", "host": "API.example.com"},
        {"name": "wild", "path": "/x", "host": "*.example.org"},
        {"name": "v6", "path": "/y", "host": "[::1]"},
    )

    def name(host: str, path: str = "/x") -> str | None:
        route = table.match(host, "GET", path).route
        return route.name if route else None

    assert name("api.example.com") == "api"
    assert name("api.example.com:8443") == "api"  # the port is not part of the match
    assert name("Api.Example.Com") == "api"
    assert name("evil.com") is None
    assert name("a.example.org") == "wild"
    assert name("a.b.example.org") == "wild"
    assert name("example.org") is None  # the wildcard needs a label
    assert name("badexample.org") is None
    assert name("[::1]:8080", "/y") == "v6"
    assert name("[::1]", "/y") == "v6"


# --- end to end: raw targets through the real gateway ---------------------------------------

BYPASS_ATTEMPTS_NORMALISED = [  # normalise to the protected /orders: must meet the token check
    "/public/health/../../orders",
    "/public/health/%2e%2e/%2e%2e/orders",
    "/public/health/%2E%2E/%2e%2E/orders",
    "/public/health/.%2e/.%2e/orders",
    "/public/health/./../../orders",
    "/public/files/../../orders",
    "/public/files/a/../../../orders",
    "//orders",
    "///orders",
    "/./orders",
    "/public/health/../../orders/1/status",
]
BYPASS_ATTEMPTS_REJECTED = [  # ambiguous: 400 before any route is considered
    "/public/health/..%2f..%2forders",
    "/public/health/..%2F..%2Forders",
    "/public/health%2F..%2F..%2Forders",
    "/public/health/..%5c..%5corders",
    "/public/health/..%5C..%5Corders",
    "/public/health/..\\..\\orders",
    "/public/health%00/../../orders",
    "/public/health/%00",
    "/public/health/%252e%252e/%252e%252e/orders",
    "/public/health/%252e%252e%252f%252e%252e%252forders",
    "/public/health/..;/..;/orders",
    "/public/files/..;/..;/orders",
    "/public/health/%2e%2e;/%2e%2e;/orders",
]


def _protected_paths_seen(upstream_requests: list[dict[str, object]]) -> list[object]:
    return [r["path"] for r in upstream_requests if str(r["path"]).startswith("/orders")]


@pytest.mark.parametrize("target", BYPASS_ATTEMPTS_NORMALISED)
async def test_dot_segment_bypass_meets_the_token_check(
    gw: RunningGateway, upstream: EchoUpstream, target: str
) -> None:
    response = await raw_request(gw.url, target)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tokengate"'
    assert upstream.requests == []
    records = await gw.audit_records()
    assert records[-1]["path"].startswith("/orders")  # the audited path is the one that was checked
    assert records[-1]["reason"] == "missing_token"


@pytest.mark.parametrize("target", BYPASS_ATTEMPTS_REJECTED)
async def test_ambiguous_bypass_is_refused_with_400(
    gw: RunningGateway, upstream: EchoUpstream, target: str
) -> None:
    response = await raw_request(gw.url, target)
    assert response.status == 400
    assert b'"bad_path"' in response.body
    assert upstream.requests == []


async def test_bypass_with_a_token_lacking_the_scope_is_403(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    token = issuer.mint(scope="profile")
    response = await raw_request(gw.url, "/public/health/%2e%2e/%2e%2e/orders", headers=bearer(token))
    assert response.status == 403
    assert _protected_paths_seen(upstream.requests) == []


async def test_the_upstream_receives_exactly_the_authorised_path(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    token = issuer.mint(scope="orders:read")
    response = await raw_request(gw.url, "/public/health/%2e%2e/./%2E%2E/orders?page=2", headers=bearer(token))
    assert response.status == 200
    assert [r["path"] for r in upstream.requests] == ["/orders?page=2"]


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/public/files/a/./b/../c", "/public/files/a/c"),
        ("/public/files/%7Euser/%41", "/public/files/~user/A"),
        ("/public/files/a%20b/%3f", "/public/files/a%20b/%3F"),
        ("/public/files//x///y", "/public/files/x/y"),
        ("/public/health?q=%2e%2e%2f", "/public/health?q=%2e%2e%2f"),
    ],
)
async def test_public_routes_forward_the_normalised_path(
    gw: RunningGateway, upstream: EchoUpstream, target: str, forwarded: str
) -> None:
    response = await raw_request(gw.url, target)
    assert response.status == 200
    assert [r["path"] for r in upstream.requests] == [forwarded]


async def test_dot_segments_cannot_climb_out_of_a_prefix_into_another_route(
    gw: RunningGateway, upstream: EchoUpstream
) -> None:
    for target in ("/public/files/../health/../../orders", "/public/files/%2e%2e/%2e%2e/download/5"):
        response = await raw_request(gw.url, target)
        assert response.status == 401, target
    assert upstream.requests == []


async def test_absolute_form_target_is_refused(
    gw: RunningGateway, upstream: EchoUpstream
) -> None:
    response = await raw_request(gw.url, "http://127.0.0.1/public/health")
    assert response.status == 400
    assert upstream.requests == []


async def test_unknown_path_is_404_and_never_forwarded(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream, http: aiohttp.ClientSession
) -> None:
    token = issuer.mint(scope="orders:read orders:write orders:admin")
    for path in ("/nothing", "/orders/1/2/3", "/ORDERS", "/public", "/public/health/.."):
        response = await raw_request(gw.url, path, headers=bearer(token))
        assert response.status == 404, path
        assert b'"no_route"' in response.body
    assert upstream.requests == []


async def test_wrong_method_is_405_with_allow(
    gw: RunningGateway, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    token = issuer.mint(scope="orders:read orders:write")
    response = await raw_request(gw.url, "/orders", method="DELETE", headers=bearer(token))
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD, POST"
    response = await raw_request(gw.url, "/orders/7", method="GET", headers=bearer(token))
    assert response.status == 405
    assert response.headers["Allow"] == "DELETE, PUT"
    assert upstream.requests == []


async def test_host_routes_end_to_end(
    make_gateway: GatewayFactory, issuer: DemoIssuer, upstream: EchoUpstream
) -> None:
    gw = await make_gateway(routes=[
        {"name": "api", "path_prefix": "/", "host": "api.example", "upstream": "orders", "auth": "none"},
        {"name": "other", "path": "/only-here", "upstream": "orders", "auth": "none"},
    ])
    ok = await raw_request(gw.url, "/anything", host_header="api.example")
    assert ok.status == 200
    wrong_host = await raw_request(gw.url, "/anything")  # Host: 127.0.0.1:port
    assert wrong_host.status == 404
    assert [r["path"] for r in upstream.requests] == ["/anything"]


# --- Host syntax, parameters, variants, case (unit) -------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.1:8080", "api.example", "API.example:443", "[::1]", "[::1]:8443", "[::ffff:1.2.3.4]",
     "a_b.internal", "api.example.", "localhost:1", "x:65535", "a" * 254],
)
def test_valid_host(host: str) -> None:
    assert valid_host(host)


@pytest.mark.parametrize(
    "host",
    ["", " ", "a b", "a\tb", "user@a", "u:p@a:80", "a:", "a:x", "a:0", "a:65536", "a:123456", "a:80:80", "::1",
     "[::1", "::1]", "[::1]x", "[::1]:", "[g::1]", "[1.2.3.4]", "[fe80::1%eth0]", "[fe80::1%25eth0]", "a,b", "a;b",
     "a/b", "a?b", "a#b", "a\\b", "a%41", "a..b", ".a", "a.b..", "\u00e9.example", "a\udcff", "a" * 255, "*.a"],
)
def test_invalid_host(host: str) -> None:
    assert not valid_host(host)


def test_host_key() -> None:
    assert host_key("Admin.Example.:443") == "admin.example"
    assert host_key("admin.example") == "admin.example"
    assert host_key("[::1]:80") == "[::1]"


def test_without_parameters() -> None:
    assert without_parameters("/api/admin") is None
    assert without_parameters("/api/admin;x/users") == "/api/admin/users"
    assert without_parameters("/api/admin%3Bx=1;y/users;z") == "/api/admin/users"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/admin", None),
        ("/api/admin.json", None),
        ("/", None),
        ("/api/admin.", "/api/admin"),
        ("/api/admin..%20.", "/api/admin"),
        ("/api/admin%09/x", "/api/admin/x"),
        ("/api/%20admin", "/api/admin"),
        ("/api/admin%C2%A0", "/api/admin"),
        ("/api/admin/", "/api/admin"),
        ("/api/admin%3F/x", "/api/admin"),  # a decoded "?" ends the path
        ("/api/admin%23x", "/api/admin"),
        ("/api/...", ""),  # nothing left of the segment
        ("/api/%20/x", ""),
    ],
)
def test_trimmed(path: str, expected: str | None) -> None:
    assert trimmed(path) == expected


ADMIN = {"name": "admin", "path_prefix": "/api/admin", "methods": ["GET"], "scopes": ["admin"]}
API = {"name": "api", "path_prefix": "/api", "methods": ["GET"], "auth": "none"}


def _outcome(table: RouteTable, path: str, host: str = "h", method: str = "GET") -> str | None:
    match = table.match(host, method, path)
    if match.refused:
        return "refused"
    return match.route.name if match.route else None


def test_path_parameters_are_refused_unless_the_route_allows_them() -> None:
    table = _table(ADMIN, API)
    for path in ("/api/admin;x/users", "/api/x;y", "/api/admin%3Bx/users", "/nothing;x"):
        assert _outcome(table, path) == "refused", path
    lax = _table(ADMIN, {**API, "allow_path_parameters": True})
    assert _outcome(lax, "/api/x;y") == "api"
    assert _outcome(lax, "/api/admin;x/users") == "refused"  # routed as /api/admin/users: not allowed there
    both = _table({**ADMIN, "allow_path_parameters": True}, {**API, "allow_path_parameters": True})
    assert _outcome(both, "/api/admin;x/users") == "admin"
    assert _outcome(both, "/api/admin%3Bx/users") == "admin"


def test_variants_that_change_the_route_are_refused() -> None:
    table = _table(ADMIN, API)
    for path in ("/api/admin.", "/api/admin%20", "/api/%20admin", "/api/admin./x", "/api/admin%3F", "/api/..."):
        assert _outcome(table, path) == "refused", path
    for path in ("/api/x.", "/api/x%20", "/api/admin/", "/api/admin.json", "/api/x/"):
        assert _outcome(table, path) in ("api", "admin"), path
    exact = _table({"name": "admin", "path": "/admin"}, {"name": "site", "path_prefix": "/", "auth": "none"})
    assert _outcome(exact, "/admin/") == "refused"
    assert _outcome(exact, "/about/") == "site"
    only_exact = _table({"name": "admin", "path": "/admin"})
    assert _outcome(only_exact, "/admin/") == "refused"  # was 404, is 400: neither reaches the upstream
    assert _outcome(only_exact, "/other/") is None


def test_case_insensitive_routes() -> None:
    table = _table({**ADMIN, "case_insensitive": True}, API)
    assert _outcome(table, "/api/ADMIN") == "admin"
    assert _outcome(table, "/API/Admin/users") == "admin"
    assert _outcome(table, "/api/%41dmin") == "admin"  # as normalised: "%41" is decoded to "A" anyway
    assert _outcome(table, "/api/ADMIN.") == "refused"
    assert _outcome(table, "/api/administrators") == "api"
    assert _outcome(_table(ADMIN, API), "/api/ADMIN") == "api"  # case-sensitive unless the route says so
    unicode = _table({"name": "cafe", "path": "/caf%C3%A9/{id}", "case_insensitive": True})
    assert _outcome(unicode, "/CAF%C3%89/1") == "cafe"
    assert _outcome(unicode, "/caf%C3%A9") is None


def test_host_with_a_trailing_dot_matches_its_route() -> None:
    table = _table({"name": "admin", "path_prefix": "/", "host": "admin.example"}, {**API, "path_prefix": "/"})
    assert _outcome(table, "/x", host="admin.example.") == "admin"
    assert _outcome(table, "/x", host="ADMIN.example.:8443") == "admin"
    assert _outcome(table, "/x", host="other.example") == "api"
    written_with_dot = _table({"name": "admin", "path_prefix": "/", "host": "Admin.Example."})
    assert _outcome(written_with_dot, "/x", host="admin.example") == "admin"


def test_hostile_long_inputs_are_handled_in_linear_time() -> None:
    """Long runs of dots and encoded spaces (a request line holds 8 KiB) cost milliseconds, not seconds."""
    table = _table(ADMIN, API)
    started = time.perf_counter()
    assert trimmed("/a" + "%20." * 2000) == "/a"
    assert trimmed("/" + ".%20" * 2000 + "x") is None
    assert _outcome(table, "/api/" + "%20." * 2000 + "x") == "api"
    assert _outcome(table, "/api/admin" + "%20." * 2000) == "refused"
    assert not valid_host("a." * 4000 + "!")
    assert not valid_host("a" * 8000)
    assert time.perf_counter() - started < 0.25
