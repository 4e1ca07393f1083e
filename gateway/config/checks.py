"""Checks between keys of a configuration, after (or beside) the schema: names that refer to
nothing, duplicates, overrides that would never apply, settings that contradict each other.

Runs when the file loads, never per request. Each problem is reported at the key to fix.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from typing import Any, cast

import yaml

from ..ratelimit.config import compile_limits
from .document import GatewayConfig
from .errors import Problem, key_path
from .files import check_introspection_keys, check_snapshot_key, check_tls, check_upstream_tls
from .policy_checks import check_header_names, check_issuers, tenant_of_document
from .routes import RouteConfig
from .yaml_source import line_of


def cross_reference_problems(
    source: str, root: yaml.Node | None, config: GatewayConfig | None, data: dict[Any, Any]
) -> list[str]:
    """Problems between keys. The names (upstreams, issuers, routes) are checked on the document
    itself, so they are reported with the schema's problems; the rest needs a valid ``config``."""
    problems: list[str] = []

    def problem(loc: list[str | int], message: str) -> None:
        problems.append(f"{source}:{line_of(root, loc)}: {key_path(loc)}: {message}")

    _check_names(data, problem)
    if config is None:
        return problems
    for index, route in enumerate(config.routes):
        _check_rule_names(index, route, problem)
    _check_decision_sources(config, problem)
    check_tls(config.tls, problem)
    check_introspection_keys(config, problem)
    _check_admin_audiences(config, problem)
    _check_redis_urls(config, problem)
    _check_sender_inputs(config, problem)
    _check_rate_limits(config, problem)
    check_header_names(config, problem)  # claim and token-source headers (policy_checks.py)
    check_issuers(config, problem)
    check_upstream_tls(config, problem)
    check_snapshot_key(config, problem)
    return problems


def _items(data: dict[Any, Any], key: str) -> list[tuple[int, dict[Any, Any]]]:
    """The sections of a list in the document (a malformed list or item is the schema's to report)."""
    value = data.get(key)
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)] if isinstance(value, list) else []


def _check_names(data: dict[Any, Any], problem: Problem) -> None:
    """Routes name known upstreams and issuers; route names and issuers are unique. Read from
    the document, so a name that is not text (the schema's to report) is passed over."""
    upstreams = data.get("upstreams")
    known_upstreams = {str(name) for name in upstreams} if isinstance(upstreams, dict) else None
    issuers = [(index, issuer.get("issuer")) for index, issuer in _items(data, "issuers")]
    known_issuers = {name for _, name in issuers if isinstance(name, str)}
    names: set[str] = set()
    for index, route in _items(data, "routes"):
        upstream = route.get("upstream")
        if known_upstreams is not None and isinstance(upstream, str) and upstream not in known_upstreams:
            problem(["routes", index, "upstream"], _unknown_name("upstream", upstream, known_upstreams))
        name = route.get("name")
        if isinstance(name, str) and name in names:
            problem(["routes", index, "name"], f"duplicate route name {name!r}")
        names.add(name if isinstance(name, str) else "")
        route_issuers = route.get("issuers")
        for issuer in route_issuers if isinstance(route_issuers, list) else []:
            if isinstance(issuer, str) and issuer not in known_issuers and not _tenant_issuer(issuer, data):
                problem(["routes", index, "issuers"], _unknown_name("issuer", issuer, known_issuers))
        if route.get("auth", "bearer") == "bearer" and data.get("issuers", []) == []:
            problem(["routes", index, "auth"], "route needs a token but no issuers are configured")
    seen: set[str] = set()
    for index, name in issuers:
        if isinstance(name, str) and name in seen:
            problem(["issuers", index, "issuer"], f"duplicate issuer {name!r}")
        seen.add(name if isinstance(name, str) else "")


def _tenant_issuer(issuer: str, data: dict[Any, Any]) -> bool:
    """Whether a route's ``issuers`` entry is a tenant a templated issuer trusts (docs/issuers.md)."""
    return tenant_of_document(issuer, [item for _, item in _items(data, "issuers")])


def _unknown_name(kind: str, name: str, known: set[str]) -> str:
    """``unknown upstream 'order'; did you mean orders?`` (or the names there are)."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if close:
        return f"unknown {kind} {name!r}; did you mean {close[0]}?"
    if not names:
        return f"unknown {kind} {name!r}: no {kind}s are configured"
    if len(names) == 1:
        return f"unknown {kind} {name!r} (the only {kind} is {names[0]})"
    return f"unknown {kind} {name!r} (the {kind}s are {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"


def _check_rule_names(index: int, route: RouteConfig, problem: Problem) -> None:
    seen: set[str] = set()
    for position, rule in enumerate(route.rules):
        if rule.name in seen:
            problem(["routes", index, "rules", position, "name"], f"rule name {rule.name!r} is used twice")
        seen.add(rule.name)


def _check_redis_urls(config: GatewayConfig, problem: Problem) -> None:
    """Redis URLs parse as redis-py will parse them at start (scheme, port)."""
    from redis import connection

    parse_url = cast(Callable[[str], object], connection.parse_url)  # redis-py leaves it unannotated
    urls: list[tuple[list[str | int], str | None]] = [(["revocation", "redis_url"], config.revocation.redis_url),
                                                     (["rate_limiting", "redis_url"], config.rate_limiting.redis_url)]
    urls += [(["issuers", index, "introspection", "redis_url"], issuer.introspection.redis_url)
             for index, issuer in enumerate(config.issuers) if issuer.introspection is not None]
    for loc, url in urls:
        if url is None:
            continue
        try:
            parse_url(url)
        except ValueError as exc:
            problem(loc, str(exc))


def _check_rate_limits(config: GatewayConfig, problem: Problem) -> None:
    """An override naming a route or a limit that does not exist would never apply: a typo, refused."""
    routes = {route.name for route in config.routes}
    limits = {limit.name for limit in compile_limits(config.rate_limiting.default_limits, "*")}
    for route in config.routes:
        limits |= {limit.name for limit in compile_limits(route.rate_limits, route.name)}
    for index, override in enumerate(config.rate_limiting.overrides):
        for route_name in sorted(set(override.routes or ()) - routes):
            problem(["rate_limiting", "overrides", index, "routes"], f"unknown route {route_name!r}")
        for limit_name in sorted(set(override.limits or ()) - limits):
            problem(["rate_limiting", "overrides", index, "limits"], f"no limit is named {limit_name!r}")


def _check_admin_audiences(config: GatewayConfig, problem: Problem) -> None:
    """An admin audience that an issuer also accepts would make every admin token an API token too."""
    admin = set(config.admin.audiences)
    for index, issuer in enumerate(config.issuers):
        shared = sorted(admin.intersection(issuer.audiences))
        if shared:
            problem(["admin", "audiences"], f"{', '.join(shared)} is also an audience of issuer {issuer.issuer} "
                    f"(issuers[{index}].audiences): admin tokens must have an audience of their own")


def _check_sender_inputs(config: GatewayConfig, problem: Problem) -> None:
    certificates = config.client_certificates
    if certificates is not None:
        header = certificates.header.lower().replace("_", "-")
        if header in {n.lower().replace("_", "-") for n in config.identity_headers.names()}:
            problem(["client_certificates", "header"], f"{certificates.header} is also an identity header")
    name = config.dpop.nonce_secret_env
    secret = os.environ.get(name) if name else None
    if secret is not None and len(secret.encode()) < 16:
        problem(["dpop", "nonce_secret_env"], f"the secret in {name} must be at least 16 bytes long")


def _check_decision_sources(config: GatewayConfig, problem: Problem) -> None:
    """The decision endpoint must be told which ingress asks: each one passes client headers
    that another ingress's shape would believe (docs/forward-auth.md, "decision_sources")."""
    sources = config.decision_sources
    if config.decision_listen is not None and sources is None:
        problem(["decision_listen"], "decision_sources is required with decision_listen: name the ingress that "
                "sends the checks (nginx, traefik or envoy; docs/forward-auth.md)")
    elif sources is not None and "envoy" in sources and len(set(sources)) > 1:
        problem(["decision_sources"], "envoy cannot be combined with another source: Envoy passes the client's "
                "headers, so a client could name another target with nginx's or Traefik's headers")

