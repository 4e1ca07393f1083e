"""The configuration contract: the documented YAML loads as written, defaults, durations, ${ENV}, and
errors that name the file, the line and the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config import (
    Address,
    ConfigError,
    GatewayConfig,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from tests.helpers import MINIMAL_CONFIG

ROOT = Path(__file__).resolve().parent.parent

# the documented configuration shape, verbatim (a contract: users' files look like this)
CONTRACT = """\
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090        # /metrics, /healthz, /readyz; never on the public port
issuers:
  - issuer: http://127.0.0.1:9400   # discovery: {issuer}/.well-known/openid-configuration, then oauth-authorization-server (RFC 8414)
    audiences: [https://api.example/orders]
    algorithms: [RS256, ES256]      # allow-list; jwks_uri: optional, found through discovery
    leeway: 30s
upstreams:
  orders:
    url: http://127.0.0.1:9401
    timeout: 30s
routes:
  - name: list-orders
    path: /orders                   # exact
    methods: [GET]
    upstream: orders
    scopes: [orders:read]           # all of these
  - name: change-order
    path: /orders/{id}              # one path segment
    methods: [PUT, DELETE]
    upstream: orders
    scopes: [orders:write]
  - name: order-status
    path: /orders/{id}/status
    methods: [GET]
    upstream: orders
    any_scopes: [orders:read, orders:admin]   # at least one of these
  - name: health
    path: /public/health
    upstream: orders
    auth: none
audit:
  sink: file                        # or stdout
  path: /var/log/gateway/audit.jsonl
"""  # noqa: E501 - the issue's text, long comment included

MINIMAL = MINIMAL_CONFIG


def problems_of(text: str, source: str = "gw.yaml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), source)
    return caught.value.problems


def test_the_issue_contract_loads_as_written() -> None:
    config = parse_config(CONTRACT, "contract.yaml")
    assert config.listen == Address("127.0.0.1", 8080)
    assert config.admin_listen == Address("127.0.0.1", 9090)
    issuer = config.issuers[0]
    assert (issuer.issuer, issuer.audiences, issuer.algorithms) == (
        "http://127.0.0.1:9400", ["https://api.example/orders"], ["RS256", "ES256"])
    assert issuer.leeway == 30.0
    assert issuer.jwks_uri is None
    assert config.upstreams["orders"].url == "http://127.0.0.1:9401"
    assert config.upstreams["orders"].timeout == 30.0
    assert [r.name for r in config.routes] == ["list-orders", "change-order", "order-status", "health"]
    assert config.routes[1].methods == ["PUT", "DELETE"]
    assert config.routes[2].any_scopes == ["orders:read", "orders:admin"]
    assert config.routes[3].auth == "none"
    assert (config.audit.sink, config.audit.path) == ("file", "/var/log/gateway/audit.jsonl")


@pytest.mark.parametrize(
    "path", ["config/gateway.example.yaml", "config/gateway.full.yaml", "gateway/demo.yaml", "config/demo.yaml"]
)
def test_shipped_configurations_load(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTROSPECTION_SECRET", "s3cret")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not (ROOT / path).exists():
        pytest.skip(f"{path} is not in this checkout")
    assert isinstance(load_config(ROOT / path), GatewayConfig)


def test_the_example_is_the_contract() -> None:
    assert parse_config((ROOT / "config/gateway.example.yaml").read_text()) == parse_config(CONTRACT)


def test_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.listen == Address("127.0.0.1", 8080)
    assert config.admin_listen == Address("127.0.0.1", 9090)
    assert config.realm == "tokengate"
    assert config.max_body_size == 10 * 2**20
    assert config.trusted_proxies == []
    issuer = config.issuers[0]
    assert (issuer.algorithms, issuer.leeway, issuer.require_typ) == (["RS256", "ES256"], 30.0, None)
    route = config.routes[0]
    assert (route.methods, route.auth, route.scopes, route.any_scopes) == (["GET", "HEAD"], "bearer", [], [])
    assert route.allow_query_token is False
    assert config.upstreams["svc"].timeout == 30.0
    assert config.audit.sink == "stdout"
    assert config.identity_headers.names() == ("X-Auth-Subject", "X-Auth-Client-Id", "X-Auth-Scopes")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("250ms", 0.25), ("1h", 3600.0), ("2d", 172800.0), ("1.5s", 1.5),
     (" 10s ", 10.0), (10, 10.0), (0.5, 0.5), ("45", 45.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "abc", "1y", "", True, "s", "-1s"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_negative_duration_is_refused_by_the_schema() -> None:
    problems = problems_of(MINIMAL.replace("audiences: [api]", "audiences: [api]\n    leeway: -5"))
    assert problems == ["gw.yaml:4: issuers[0].leeway: must be at least 0, not -5"]


@pytest.mark.parametrize(
    ("text", "size"), [("10MiB", 10 * 2**20), ("512KB", 512_000), ("1GiB", 2**30), (1024, 1024), ("2048", 2048)]
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_durations_and_sizes_in_the_file() -> None:
    text = MINIMAL.replace("url: http://127.0.0.1:9000", "url: http://127.0.0.1:9000\n    timeout: 250ms")
    text += "max_body_size: 1MiB\n"
    config = parse_config(text)
    assert config.upstreams["svc"].timeout == 0.25
    assert config.max_body_size == 2**20


def test_env_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_UPSTREAM", "http://10.0.0.5:8000")
    monkeypatch.setenv("GW_SECRET", "s3cr3t: [not, yaml]\nroutes: []")
    text = MINIMAL.replace("http://127.0.0.1:9000", "${GW_UPSTREAM}") + textwrap.dedent("""\
        admin:
          shared_secret_env: "${GW_SECRET}"
        realm: ${GW_REALM:-orders-api}
        """)
    config = parse_config(text)
    assert config.upstreams["svc"].url == "http://10.0.0.5:8000"
    assert config.admin.shared_secret_env == "s3cr3t: [not, yaml]\nroutes: []"  # a value, never structure
    assert len(config.routes) == 1
    assert config.realm == "orders-api"  # the default after :-


def test_missing_env_var_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_NOT_SET", raising=False)
    problems = problems_of(MINIMAL.replace("http://127.0.0.1:9000", "${GW_NOT_SET}"))
    assert problems == ["gw.yaml:6: environment variable GW_NOT_SET is not set (set it, or give a default: "
                        "${GW_NOT_SET:-value})"]


def test_unknown_upstream_is_named_with_file_line_and_key() -> None:
    text = MINIMAL + "  - name: second\n    path: /s\n    upstream: billing\n"
    assert problems_of(text, "conf/gw.yaml") == [
        "conf/gw.yaml:13: routes[1].upstream: unknown upstream 'billing' (the only upstream is svc)"]


def test_unknown_key_is_named() -> None:
    problems = problems_of(MINIMAL.replace("    path: /r", "    path: /r\n    scope: [x]"))
    assert problems == ["gw.yaml:10: routes[0].scope: unknown key; did you mean scopes?"]


def test_bad_value_is_named() -> None:
    problems = problems_of(MINIMAL.replace("audiences: [api]", "audiences: [api]\n    leeway: soon"))
    assert problems == ["gw.yaml:4: issuers[0].leeway: 'soon' is not a duration like 30s, 5m or 1h"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("algorithms", "    algorithms: [HS256]"), "gw.yaml:4: issuers[0].algorithms[0]: must be one of RS256,"),
        (("route", "    path_prefix: /p"),
         "gw.yaml:8: routes[0]: a route needs exactly one of path, path_prefix, path_regex or path_glob"),
        (("route", "    auth: none\n    scopes: [a]"), "gw.yaml:8: routes[0]: a route with auth: none cannot"),
        (("route", "    methods: [FETCH]"), "gw.yaml:11: routes[0].methods[0]: must be one of GET,"),
        (("route", "    issuers: [https://other.example]"), "gw.yaml:11: routes[0].issuers: unknown issuer"),
        (("top", "listen: localhost"), "gw.yaml:11: listen: 'localhost' is not a host:port address"),
        (("top", "audit:\n  sink: file"), "gw.yaml:11: audit: audit sink: file needs path"),
        (("top", "routes:\n  - name: r\n    path: /r\n    upstream: svc"), "gw.yaml:11: routes: duplicate key"),
    ],
)
def test_schema_problems_name_line_and_key(change: tuple[str, str], expected: str) -> None:
    where, extra = change  # "algorithms": into the issuer; "route" and "top": appended at line 11
    if where == "algorithms":
        text = MINIMAL.replace("    audiences: [api]", "    audiences: [api]\n" + extra)
    else:
        text = MINIMAL + extra + "\n"
    problems = problems_of(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_duplicate_route_names() -> None:
    text = MINIMAL + "  - name: r\n    path: /other\n    upstream: svc\n"
    assert problems_of(text) == ["gw.yaml:11: routes[1].name: duplicate route name 'r'"]


def test_bearer_route_needs_an_issuer() -> None:
    text = MINIMAL.replace("issuers:\n  - issuer: https://as.example\n    audiences: [api]\n", "")
    assert problems_of(text) == ["gw.yaml:5: routes[0].auth: route needs a token but no issuers are configured"]


def test_all_problems_are_reported_at_once() -> None:
    text = MINIMAL.replace("audiences: [api]", "audiences: []").replace("path: /r", "path: r")
    text += "extra_top_level: 1\n"
    assert problems_of(text) == [
        "gw.yaml:3: issuers[0].audiences: must not be empty: give at least one item",
        "gw.yaml:8: routes[0]: path and path_prefix must start with /",
        "gw.yaml:11: extra_top_level: unknown key (README.md 'Configuration reference' lists every key)",
    ]


def test_missing_sections() -> None:
    problems = problems_of("listen: 127.0.0.1:8080\n")
    assert "gw.yaml:1: upstreams: is required but missing" in problems
    assert "gw.yaml:1: routes: is required but missing" in problems


def test_yaml_syntax_error_names_the_line() -> None:
    problems = problems_of(MINIMAL + "  - name: [unclosed\n")
    assert len(problems) == 1 and problems[0].startswith("gw.yaml:")
    assert "YAML syntax error" in problems[0]


def test_document_must_be_a_mapping() -> None:
    assert problems_of("- just\n- a list\n") == [
        "gw.yaml:1: the configuration must be a YAML mapping (key: value lines), not a list"]
    assert problems_of("") == ["gw.yaml:1: the configuration is empty (it needs at least upstreams and routes)"]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml")
    assert caught.value.problems == [f"{tmp_path / 'absent.yaml'}: no such file"]


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL.replace("upstream: svc", "upstream: gone"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f"{path}:10: routes[0].upstream: unknown upstream 'gone' (the only upstream is svc)"]


def test_route_shapes() -> None:
    text = MINIMAL + textwrap.dedent("""\
          - name: files
            path_prefix: /files
            host: "*.example.com"
            methods: ["*"]
            upstream: svc
            auth: none
        trusted_proxies: [10.0.0.0/8, "::1/128"]
        """)
    config = parse_config(text)
    assert config.routes[1].path_prefix == "/files"
    assert config.routes[1].host == "*.example.com"
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.0/8", "::1/128"]


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"listen: 127.0.0.1:8080\nrealm: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{path}:2: the file is not valid UTF-8"]


def test_detection_webhook_needs_a_url() -> None:
    text = MINIMAL + "detection:\n  on_detect: [audit, webhook]\n"
    problems = problems_of(text)
    assert len(problems) == 1 and problems[0].endswith("detection: on_detect: webhook needs webhook_url")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("{subject: Authorization}", "identity_headers.subject: Authorization is set or removed by the gateway"),
        ("{scopes: X_Forwarded_For}", "identity_headers.scopes: X_Forwarded_For is set or removed by the gateway"),
        ('{client_id: "X Auth"}', "identity_headers.client_id: 'X Auth' is not a valid header name"),
        ("{subject: X-Id, client_id: x-id}", "identity_headers: the three identity headers need three different"),
    ],
)
def test_identity_header_names_are_checked(names: str, message: str) -> None:
    problems = problems_of(MINIMAL + f"identity_headers: {names}\n")
    assert len(problems) == 1 and message in problems[0], problems


def test_no_issuer_may_be_named_star() -> None:
    """``*`` means every issuer in revocation entries: an issuer of that name would be ambiguous."""
    problems = problems_of(textwrap.dedent("""\
        issuers:
          - issuer: "*"
            audiences: [a]
        upstreams: {svc: {url: "http://127.0.0.1:9000"}}
        routes: [{name: r, path: /a, upstream: svc}]
        """))
    assert problems == ["gw.yaml:2: issuers[0].issuer: '*' is reserved for revocation entries that cover every issuer"]
