"""A route's ``token_source``: the access token from a named cookie or a custom header.

By default a token comes in ``Authorization`` only (or ``?access_token=`` where a route allows
it). ``token_source: {cookie: NAME}`` (browser-facing APIs) or ``token_source: {header:
X-Api-Token}`` lets one route also read it there, as a bare token (RFC 6750 ``b64token``;
a cookie value may be in double quotes, RFC 6265). Never two ways at once: a request with a
token in the cookie or header *and* in ``Authorization`` (or the query), the cookie twice or
the header twice is refused (400 ``ambiguous_token``), as the gateway could check one token
while the upstream reads another. An empty cookie or header counts as none.

A token from a cookie or header is a bearer token: a DPoP-bound one is refused
(``unproven_binding``), since its proof goes with the ``DPoP`` scheme of ``Authorization`` only.
The cookie (only that cookie) and the header are removed before the request is forwarded
(``proxy.strip_rule``), and from the handler's view in middleware mode.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from multidict import CIMultiDictProxy

from .reasons import Reason

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 section 2.1


def source_token(headers: CIMultiDictProxy[str] | None, cookie: str | None, header: str | None) -> str | Reason | None:
    """The token in the route's cookie or header; None when there is none; a Reason when unusable."""
    if headers is None:
        return None
    if cookie is not None:
        values = cookie_values(headers.getall("Cookie", ()), cookie)
    else:
        assert header is not None
        values = [value.strip() for value in headers.getall(header, ())]
    values = [value for value in values if value]
    if not values:
        return None
    if len(values) > 1:
        return Reason.AMBIGUOUS_TOKEN
    token = values[0]
    if len(token) >= 2 and token[0] == token[-1] == '"':  # RFC 6265 4.1.1: a quoted cookie-value
        token = token[1:-1]
    return token if _B64TOKEN.fullmatch(token) else Reason.MALFORMED_TOKEN


def cookie_values(lines: Iterable[str], name: str) -> list[str]:
    """Every value of the cookie ``name`` in the ``Cookie`` lines (HTTP/2 may split them)."""
    values = []
    for line in lines:
        if name not in line:
            continue
        for pair in line.split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip() == name:
                values.append(value.strip())
    return values


def without_cookie(line: str, names: frozenset[str]) -> str:
    """A ``Cookie`` line without the cookies ``names`` (the others kept, as sent)."""
    kept = [pair for pair in line.split(";") if pair.partition("=")[0].strip() not in names]
    return ";".join(kept).strip()
