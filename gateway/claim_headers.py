"""Claims sent upstream as headers: ``claim_headers: {X-Tenant: tenant, X-Groups: groups}``.

A route's ``claim_headers`` (else the top-level one) maps header names to claims of the validated
token. ``a.b`` reads claim ``b`` inside the object claim ``a`` (Keycloak's ``realm_access.roles``)
when the token has no top-level claim named ``a.b`` (Auth0's namespaced claims are URLs with dots).

Values are checked as strictly as the identity headers (``tokens.token.header_safe``): visible
ASCII and inner spaces only, at most ``MAX_VALUE`` bytes. A string goes as it is, a number as
JSON writes it, a boolean as ``true``/``false``, an array as its elements joined with the
separator (``claim_header_separator``, default ``,``). An element that holds the separator, is
empty, or is not a string, number or boolean, and an object claim, cannot be sent faithfully: the
request is refused (401 ``invalid_token``, reason ``invalid_claim``), never forwarded with a value
the upstream would read differently. An absent or null claim, or an empty array, sends no header.

Whatever a client sent under any configured claim header name (of any route, spelled with ``_``
too) is always dropped (``proxy.strip_rule``): the upstream only ever sees the gateway's values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .config import GatewayConfig
from .tokens.token import ValidatedToken, header_safe

MAX_VALUE = 8192  # bytes of one claim header: past that, upstreams (nginx: 8 KiB buffers) refuse the request


class UnsafeClaim(ValueError):
    """A claim that cannot be sent as its header faithfully (the message names the claim, never its value)."""


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """The claim headers of one route: (header name, claim) pairs and the array separator."""

    headers: tuple[tuple[str, str], ...]
    separator: str

    def values(self, claims: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        """The headers for a token's claims; UnsafeClaim when one cannot be sent as it is."""
        out: list[tuple[str, str]] = []
        for header, claim in self.headers:
            value = render(lookup(claims, claim), self.separator)
            if value is None:
                continue
            if not header_safe(value) or len(value) > MAX_VALUE:
                raise UnsafeClaim(f"the {claim} claim cannot be sent as {header}")
            out.append((header, value))
        return tuple(out)


def lookup(claims: Mapping[str, Any], name: str) -> Any:
    """The claim ``name``; failing that, for ``a.b``, claim ``b`` of the object claim ``a``."""
    if name in claims or "." not in name:
        return claims.get(name)
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def render(value: Any, separator: str) -> str | None:
    """The header value of a claim value; None for no header; UnsafeClaim for what cannot be sent."""
    if value is None or value == []:
        return None
    if isinstance(value, list):
        marker = separator.strip() or separator  # ", " splits at "," for most readers
        parts = []
        for item in value:
            text = _scalar(item)
            if not text or marker in text or not header_safe(text):  # " ops" would arrive as "ops"
                raise UnsafeClaim("an array element is empty, holds the separator or edge spaces, or is not a "
                                  "string, number or boolean")
            parts.append(text)
        return separator.join(parts)
    text = _scalar(value)
    if text is None:
        raise UnsafeClaim("an object claim cannot be a header value")
    return text


def _scalar(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return orjson.dumps(value).decode()
    return None


def _key(name: str) -> str:
    return name.lower().replace("_", "-")


class ClaimHeaderPolicy:
    """Every route's claim headers, compiled once per configuration."""

    def __init__(self, routes: Mapping[str, ClaimMapping | None] | None = None, names: tuple[str, ...] = ()) -> None:
        self._routes = dict(routes or {})
        self.names = names  # every configured claim header name, of every route: never passed from a client

    @classmethod
    def from_config(cls, config: GatewayConfig) -> ClaimHeaderPolicy:
        routes: dict[str, ClaimMapping | None] = {}
        names: dict[str, str] = {}
        for mapping in [config.claim_headers, *(r.claim_headers for r in config.routes if r.claim_headers)]:
            names.update({_key(name): name for name in mapping if _key(name) not in names})
        for route in config.routes:
            mapping = route.claim_headers if route.claim_headers is not None else config.claim_headers
            separator = route.claim_header_separator or config.claim_header_separator
            routes[route.name] = ClaimMapping(tuple(mapping.items()), separator) if mapping else None
        return cls(routes, tuple(names.values()))

    def values(self, route: str, token: ValidatedToken) -> tuple[tuple[str, str], ...]:
        """The claim headers of ``route`` for ``token``; UnsafeClaim when a value cannot be sent."""
        mapping = self._routes.get(route)
        return mapping.values(token.claims) if mapping is not None else ()


NO_CLAIM_HEADERS = ClaimHeaderPolicy()


def claim_header_names(config: GatewayConfig) -> tuple[str, ...]:
    """Every claim header name configured anywhere (computed once per configuration object)."""
    cached = _NAMES.get(id(config))
    if cached is None or cached[0] is not config:
        if len(_NAMES) >= 16:
            _NAMES.clear()
        cached = _NAMES[id(config)] = (config, ClaimHeaderPolicy.from_config(config).names)
    return cached[1]


_NAMES: dict[int, tuple[GatewayConfig, tuple[str, ...]]] = {}  # by configuration (the object is kept: ids stay unique)


def decision_headers(names: tuple[str, ...], values: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The claim headers of a decision-port answer: every configured name, empty when the token
    (or a public route) gives it no value, so that an ingress copying them over the client's
    headers never lets a client's own copy through."""
    given = {_key(name): value for name, value in values}
    return {name: given.get(_key(name), "") for name in names}
