"""Header names in the configuration: identity, claim, token-source, certificate and stripped headers.

Checked when the file loads: a name the gateway sets, strips or needs itself is refused there.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, model_validator

from .values import Model

HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an RFC 9110 token
# names the gateway sets or strips for its own reasons; an identity header under one of them would vanish
RESERVED_HEADERS = frozenset(
    {"authorization", "host", "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
     "expect", "content-length", "content-type", "cookie", "forwarded", "x-forwarded-for", "x-forwarded-proto",
     "x-forwarded-host", "x-request-id", "proxy-authorization", "proxy-authenticate", "www-authenticate"}
)


# Request headers that upstream frameworks and authenticating proxies trust for the user, the
# client or the URL, host and method to act on (README "Headers the upstream trusts"). A client
# must never be able to send them through: dropped from every request before it is forwarded,
# whoever the peer is. "Name-*" drops every header whose name starts with "Name-"; "_" and "-"
# and letter case do not matter. Client-address headers a trusted proxy sets itself (X-Real-IP,
# True-Client-IP...) are a separate, fixed rule: they pass from trusted_proxies only (proxy/headers.py).
DEFAULT_STRIP_REQUEST_HEADERS = (
    # the user, as authenticating proxies (oauth2-proxy, Kong, Grafana auth proxy, the Kubernetes
    # front proxy, cloud load balancers and identity-aware proxies) tell the application
    "X-User", "X-User-*", "X-Username", "X-Email", "Remote-User", "X-Remote-User", "X-Remote-Group",
    "X-Remote-Extra-*", "X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Preferred-Username",
    "X-Forwarded-Groups", "X-Forwarded-Access-Token", "X-Auth-Request-*", "X-Auth-User", "X-Auth-Userid",
    "X-Auth-Email", "X-Authenticated-*", "X-Consumer-*", "X-Credential-Identifier", "X-Anonymous-Consumer",
    "X-WebAuth-*", "X-Ms-Client-Principal", "X-Ms-Client-Principal-*", "X-Goog-Authenticated-User-*",
    "X-Amzn-Oidc-*", "Cf-Access-Authenticated-User-Email", "Impersonate-*",
    # client certificates, as TLS-terminating proxies pass them on
    "X-Forwarded-Client-Cert", "X-Client-Cert", "X-Client-Verify", "X-Client-DN", "X-SSL-Client-*",
    "SSL-Client-*", "X-SSL-Cert",
    # client addresses no proxy in front of the gateway sets
    "X-Originating-IP", "Client-IP", "X-Cluster-Client-IP", "X-Remote-IP", "X-Remote-Addr", "X-ProxyUser-IP",
    "X-Forwarded", "Forwarded-For",
    # the URL, host and method the application acts on instead of the request's own
    "X-Original-URL", "X-Original-URI", "X-Rewrite-URL", "X-Override-URL", "X-Forwarded-Path", "X-Forwarded-Uri",
    "X-Envoy-Original-Path", "X-Original-Host", "X-Host", "X-HTTP-Host-Override", "X-HTTP-Method-Override",
    "X-HTTP-Method", "X-Method-Override", "X-Original-Method", "X-Forwarded-Method",
)
STRIP_DEFAULTS = "@defaults"  # in a strip_request_headers list: the whole default list ("@" is no header name)
_STRIP_NAME = re.compile(r"^[A-Za-z0-9!#$%&'+.^_`|~-]+(\*)?$")  # an RFC 9110 token, "*" only at the end
# what the gateway needs to forward a request at all: never stripped
_NEVER_STRIPPED = ("host", "content-length", "transfer-encoding")


def _strip_header(value: Any) -> str:
    name = str(value)
    if name == STRIP_DEFAULTS:
        return name
    if not _STRIP_NAME.match(name):
        raise ValueError(f"{name!r} is not a header name (or a name ending in * to match a prefix)")
    key = name.lower().replace("_", "-")
    if key.endswith("*"):
        matched = [n for n in _NEVER_STRIPPED if n.startswith(key[:-1])]
    else:
        matched = [key] if key in _NEVER_STRIPPED else []
    if matched:
        raise ValueError(f"{name} would strip {matched[0]}, which the gateway needs to forward a request")
    return name


StripHeaderName = Annotated[str, BeforeValidator(_strip_header)]


# what a claim header may not be called: hop-by-hop, Host, Authorization, what the gateway sets or
# strips itself (the identity headers are checked against their configured names when the file loads)
_CLAIM_HEADER_RESERVED = frozenset(
    {"proxy-connection", "dpop", "dpop-nonce", "set-cookie", "x-original-uri", "x-original-url",
     "x-original-method", "x-forwarded-uri", "x-forwarded-method"}
)


def _claim_header(value: Any) -> str:
    name = str(value)
    if not HEADER_NAME.match(name):
        raise ValueError(f"{name[:80]!r} is not a valid header name")
    key = name.lower().replace("_", "-")
    if key in RESERVED_HEADERS or key in _CLAIM_HEADER_RESERVED:
        raise ValueError(f"{name} is hop-by-hop, Host, Authorization or set by the gateway itself: it cannot carry "
                         "a claim")
    return name


def _claim_name(value: str) -> str:
    if not value or len(value) > 256 or not value.isprintable():
        raise ValueError("a claim name is 1-256 printable characters (a.b reads claim b inside claim a)")
    return value


def _separator(value: str) -> str:
    if not 1 <= len(value) <= 8 or not value.isascii() or not value.isprintable():
        raise ValueError("claim_header_separator is 1-8 printable ASCII characters, e.g. ',' or ', '")
    return value


ClaimHeaderName = Annotated[str, BeforeValidator(_claim_header)]
ClaimName = Annotated[str, AfterValidator(_claim_name)]
ClaimHeaders = dict[ClaimHeaderName, ClaimName]  # upstream header -> claim (docs/routes.md)
ClaimSeparator = Annotated[str, AfterValidator(_separator)]
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")  # RFC 6265 cookie-name: an RFC 9110 token


def _cookie_name(value: str) -> str:
    if not _COOKIE_NAME.match(value):
        raise ValueError(f"{value[:80]!r} is not a cookie name (an RFC 6265 token)")
    return value


def _token_header(value: Any) -> str:
    name = str(value)
    if not HEADER_NAME.match(name):
        raise ValueError(f"{name[:80]!r} is not a valid header name")
    key = name.lower().replace("_", "-")
    if key == "authorization":
        raise ValueError("Authorization is where tokens come from anyway: leave token_source out")
    if key in RESERVED_HEADERS or key in _CLAIM_HEADER_RESERVED:
        raise ValueError(f"{name} is set or read by the gateway itself and cannot carry the token (use cookie: for "
                         "a cookie)")
    return name


class TokenSourceConfig(Model):
    """Where a route also takes its access token from, besides Authorization: one cookie or one header."""

    cookie: Annotated[str | None, AfterValidator(_cookie_name)] = None
    header: Annotated[str | None, BeforeValidator(_token_header)] = None

    @model_validator(mode="after")
    def _one_source(self) -> TokenSourceConfig:
        if (self.cookie is None) == (self.header is None):
            raise ValueError("token_source names exactly one of cookie or header")
        return self


def _identity_header(value: Any) -> str:
    name = str(value)
    if not HEADER_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid header name")
    if name.lower().replace("_", "-") in RESERVED_HEADERS:
        raise ValueError(f"{name} is set or removed by the gateway itself and cannot carry identity")
    return name


IdentityHeaderName = Annotated[str, BeforeValidator(_identity_header)]


def _certificate_header(value: Any) -> str:
    name = str(value)
    if not HEADER_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid header name")
    if name.lower().replace("_", "-") in RESERVED_HEADERS | {"dpop"}:
        raise ValueError(f"{name} is set or read by the gateway itself and cannot carry a client certificate")
    return name


class ClientCertificatesConfig(Model):
    """A client certificate forwarded by a TLS-terminating ingress (RFC 8705 behind a proxy).

    Believed only from ``trusted_proxies``; the header is removed from every forwarded request.
    """

    header: Annotated[str, BeforeValidator(_certificate_header)] = "ssl-client-cert"
    format: Literal["pem-urlencoded", "xfcc"] = "pem-urlencoded"


class IdentityHeaders(Model):
    """The headers that tell the upstream who the token's subject and client are, and its scopes."""

    subject: IdentityHeaderName = "X-Auth-Subject"
    client_id: IdentityHeaderName = "X-Auth-Client-Id"
    scopes: IdentityHeaderName = "X-Auth-Scopes"

    @model_validator(mode="after")
    def _distinct(self) -> IdentityHeaders:
        if len({n.lower().replace("_", "-") for n in self.names()}) != 3:
            raise ValueError("the three identity headers need three different names")
        return self

    def names(self) -> tuple[str, str, str]:
        """The three names, in the order subject, client id, scopes."""
        return (self.subject, self.client_id, self.scopes)

