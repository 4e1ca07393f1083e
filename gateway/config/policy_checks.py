"""Cross-key checks of the policy conveniences, run when the configuration loads (``checks.py``).

Claim headers and token-source headers must not collide with the identity headers (whose
names are configurable), with each other, or with the forwarded client-certificate header; an
exact issuer must not also be a tenant of a templated one (which keys would verify it?).
"""

from __future__ import annotations

from typing import Any

from ..tokens.issuer_pattern import IssuerTemplate, templated
from .document import GatewayConfig
from .errors import Problem
from .headers import ClaimHeaders


def _key(name: str) -> str:
    return name.lower().replace("_", "-")


def tenant_of_document(issuer: str, issuers: list[dict[Any, Any]]) -> bool:
    """Whether ``issuer`` is a tenant a templated entry of the (raw) ``issuers`` list trusts."""
    for entry in issuers:
        template = entry.get("issuer")
        tenants = entry.get("tenants")
        if not isinstance(template, str) or not templated(template):
            continue
        if tenants is not None and not (isinstance(tenants, list) and all(isinstance(t, str) for t in tenants)):
            continue  # the schema reports it
        try:
            compiled = IssuerTemplate.of(template, tenants)
        except ValueError:
            continue
        if compiled.trusted_tenant(issuer) is not None:
            return True
    return False


def check_header_names(config: GatewayConfig, problem: Problem) -> None:
    """Claim and token-source headers collide with no identity header, no certificate header, nor each other."""
    identity = {_key(name) for name in config.identity_headers.names()}
    certificate = _key(config.client_certificates.header) if config.client_certificates is not None else None
    mappings: list[tuple[list[str | int], ClaimHeaders]] = [(["claim_headers"], config.claim_headers)]
    mappings += [(["routes", index, "claim_headers"], route.claim_headers)
                 for index, route in enumerate(config.routes) if route.claim_headers is not None]
    claim_names: set[str] = set()
    for loc, mapping in mappings:
        seen: set[str] = set()
        for name in mapping:
            key = _key(name)
            if key in identity:
                problem([*loc, name], f"{name} is an identity header (identity_headers): it cannot carry a claim")
            elif key == certificate:
                problem([*loc, name], f"{name} is client_certificates.header: it cannot carry a claim")
            elif key in seen:
                problem([*loc, name], f"{name} is named twice (header names ignore case, and _ is -)")
            seen.add(key)
        claim_names |= seen
    for index, route in enumerate(config.routes):
        header = route.token_source.header if route.token_source is not None else None
        if header is None:
            continue
        where: list[str | int] = ["routes", index, "token_source", "header"]
        if _key(header) in identity:
            problem(where, f"{header} is an identity header: it cannot carry the token")
        elif _key(header) in claim_names:
            problem(where, f"{header} is also a claim header: it cannot carry the token")
        elif _key(header) == certificate:
            problem(where, f"{header} is client_certificates.header: it cannot carry the token")


def check_issuers(config: GatewayConfig, problem: Problem) -> None:
    """An exact issuer is not also a tenant of a templated one: one issuer, one entry."""
    templates = [(i, IssuerTemplate.of(e.issuer, e.tenants)) for i, e in enumerate(config.issuers) if e.templated]
    for index, entry in enumerate(config.issuers):
        if entry.templated:
            continue
        for other, template in templates:
            if template.tenant_of(entry.issuer) is not None:
                problem(["issuers", index, "issuer"], f"{entry.issuer} is also a tenant of the templated issuer "
                        f"issuers[{other}] ({template.template}): one issuer, one entry")
