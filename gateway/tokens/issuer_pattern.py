"""Templated issuers: one ``issuers[]`` entry for every tenant of a multi-tenant authorization server.

``issuer: https://login.example.com/{tenant}/v2.0`` stands for the issuers
``https://login.example.com/contoso/v2.0``, ``https://login.example.com/fabrikam/v2.0``...
(Entra ID tenants, Keycloak realms ``https://kc.example.com/realms/{tenant}``, Auth0 custom
domains ``https://{tenant}.eu.auth0.com/``). ``{tenant}`` appears once, as a whole path segment
or as the first label of the host. Which tenants are trusted is said explicitly: a ``tenants``
allow-list, a ``tenant_claim`` the token must carry with the same value, or both.

A token's ``iss`` is a *concrete* issuer; it matches the template when the tenant part is a
plain name (letters, digits, and ``.``, ``_``, ``-``, ``~`` after the first character; in the host
one DNS label): never ``..``, ``/``, ``%``, ``?`` or ``#``, so no tenant can steer discovery to
another path or host. This module only parses and matches; the keys live in ``tenants.py``.

``IssuerMap`` looks configured values up by issuer name, templated entries included: the
sender-constraint policy, the step-up leeway and the revocation lifetimes of a tenant's token
are its template's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar
from urllib.parse import urlsplit

PLACEHOLDER = "{tenant}"
_PATH_TENANT = r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}"
_HOST_TENANT = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
TENANT_NAME = re.compile(_PATH_TENANT)


def templated(issuer: str) -> bool:
    """Whether an ``issuers[].issuer`` value is a template."""
    return PLACEHOLDER in issuer


def check_template(issuer: str) -> str:
    """The template itself when it is one the gateway can match safely; ValueError otherwise."""
    if issuer.count(PLACEHOLDER) != 1:
        raise ValueError(f"{PLACEHOLDER} may appear once in a templated issuer")
    if "{" in issuer.replace(PLACEHOLDER, "") or "}" in issuer.replace(PLACEHOLDER, ""):
        raise ValueError(f"{PLACEHOLDER} is the only placeholder a templated issuer may have")
    parts = urlsplit(issuer.replace(PLACEHOLDER, "tenant"))
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("a templated issuer must be an http(s) URL without query or fragment")
    rest = issuer.partition("://")[2]
    host, _, path = rest.partition("/")
    if PLACEHOLDER in host:
        if not host.startswith(PLACEHOLDER + ".") or "@" in host:
            raise ValueError(f"in the host, {PLACEHOLDER} must be the whole first label ({PLACEHOLDER}.example.com)")
    elif PLACEHOLDER not in path.split("/"):
        raise ValueError(f"in the path, {PLACEHOLDER} must be a whole segment (/{PLACEHOLDER}/v2.0)")
    return issuer


@dataclass(frozen=True, slots=True)
class IssuerTemplate:
    """A compiled templated issuer: which concrete issuers it stands for, and which tenants it trusts."""

    template: str
    pattern: re.Pattern[str]
    tenants: frozenset[str] | None  # None: any tenant (then the claim check decides)
    tenant_claim: str | None

    @classmethod
    def of(cls, template: str, tenants: Iterable[str] | None = None, tenant_claim: str | None = None) -> IssuerTemplate:
        check_template(template)
        before, _, after = template.partition(PLACEHOLDER)
        in_host = PLACEHOLDER in template.partition("://")[2].partition("/")[0]
        tenant = _HOST_TENANT if in_host else _PATH_TENANT
        pattern = re.compile(f"{re.escape(before)}(?P<tenant>{tenant}){re.escape(after)}")
        return cls(template, pattern, frozenset(tenants) if tenants is not None else None, tenant_claim)

    def tenant_of(self, issuer: str) -> str | None:
        """The tenant of a concrete issuer this template stands for (whatever the allow-list says), else None."""
        if len(issuer) > 2048:  # the pattern is linear anyway; a made-up iss of megabytes is not worth it
            return None
        match = self.pattern.fullmatch(issuer)
        return match.group("tenant") if match else None

    def allows(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def trusted_tenant(self, issuer: str) -> str | None:
        """The tenant of ``issuer`` when the template matches it and the allow-list admits it."""
        tenant = self.tenant_of(issuer)
        return tenant if tenant is not None and self.allows(tenant) else None

    def concrete(self, tenant: str, text: str | None = None) -> str:
        """``text`` (the issuer, or a templated ``jwks_uri``) for one tenant."""
        return (text if text is not None else self.template).replace(PLACEHOLDER, tenant)


V = TypeVar("V")


class IssuerMap(Mapping[str, V], Generic[V]):
    """Values by issuer: an exact issuer's own, and a concrete tenant issuer's template's.

    Keys are the configured entries (templates as written); a concrete tenant issuer is found
    too. ``entry`` names the entry a concrete issuer belongs to. Lookups of tenant issuers are
    remembered (bounded).
    """

    def __init__(self, entries: Iterable[tuple[str, IssuerTemplate | None, V]]) -> None:
        self._exact: dict[str, V] = {}
        self._templates: list[tuple[IssuerTemplate, V]] = []
        self._entries: dict[str, V] = {}
        for name, template, value in entries:
            self._entries[name] = value
            if template is None:
                self._exact[name] = value
            else:
                self._templates.append((template, value))
        self._resolved: dict[str, tuple[str, V] | None] = {}

    def entry(self, issuer: str) -> str | None:
        """The configured entry ``issuer`` falls under: itself, or the template (with its tenant trusted)."""
        if issuer in self._exact:
            return issuer
        found = self._resolve(issuer)
        return found[0] if found is not None else None

    def _resolve(self, issuer: str) -> tuple[str, V] | None:
        if not self._templates:
            return None
        if issuer in self._resolved:
            return self._resolved[issuer]
        found = next(((t.template, v) for t, v in self._templates if t.trusted_tenant(issuer) is not None), None)
        if len(self._resolved) >= 4096:
            self._resolved.clear()
        self._resolved[issuer] = found
        return found

    def covers(self, issuer: str) -> bool:
        """Whether tokens can name ``issuer``: an exact entry, or a trusted tenant of a template
        (the template as written names no token's issuer)."""
        return issuer in self._exact or self._resolve(issuer) is not None

    def __getitem__(self, issuer: str) -> V:
        if issuer in self._entries:
            return self._entries[issuer]
        found = self._resolve(issuer)
        if found is None:
            raise KeyError(issuer)
        return found[1]

    def __contains__(self, issuer: object) -> bool:
        return isinstance(issuer, str) and (issuer in self._entries or self._resolve(issuer) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def template_of(issuer: str, tenants: Iterable[str] | None, tenant_claim: str | None) -> IssuerTemplate | None:
    """The compiled template of an ``issuers[]`` entry; None for an exact issuer."""
    return IssuerTemplate.of(issuer, tenants, tenant_claim) if templated(issuer) else None


class IssuerEntry(Protocol):
    """What an ``issuers[]`` entry (``config.IssuerConfig``) says about its name."""

    @property
    def issuer(self) -> str: ...

    @property
    def tenants(self) -> list[str] | None: ...

    @property
    def tenant_claim(self) -> str | None: ...


E = TypeVar("E", bound=IssuerEntry)


def issuer_map(issuers: Iterable[E], value: Callable[[E], V]) -> IssuerMap[V]:
    """``value`` of each configured issuer, found by exact or concrete tenant issuer."""
    return IssuerMap((i.issuer, template_of(i.issuer, i.tenants, i.tenant_claim), value(i)) for i in issuers)
