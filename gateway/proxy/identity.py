"""The identity headers the upstream trusts (per request): set from the token, never from the client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..tokens.token import header_safe, scope_token

if TYPE_CHECKING:
    from ..config import IdentityHeaders
    from ..tokens.token import ValidatedToken


class UnsafeIdentity(ValueError):
    """A token value cannot be sent as an identity header as it is (answered ``invalid_claim``).

    Tokens built from claims never get here (``token_from_claims`` refuses them); this is the
    last check before a value would reach the HTTP writer, which would fail with a 500 or, worse,
    a lenient one would split the header.
    """


def identity_values(token: ValidatedToken | None, names: IdentityHeaders) -> list[tuple[str, str]]:
    """The identity headers describing ``token`` (empty values for a public route).

    Raises UnsafeIdentity when a value of the token cannot be a header value.
    """
    if token is None:
        return [(names.subject, ""), (names.client_id, ""), (names.scopes, "")]
    key = (names.subject, names.client_id, names.scopes)
    memo = token.identity_memo
    if memo is not None and memo[0] == key:  # a hot token: checked on its first request (callers never mutate it)
        return memo[1]
    subject, client_id = token.subject or "", token.client_id or ""
    if not (header_safe(subject) and header_safe(client_id)):
        raise UnsafeIdentity("the subject or client id cannot be a header value")
    values = [(names.subject, subject), (names.client_id, client_id), (names.scopes, _scope_header(token.scopes))]
    object.__setattr__(token, "identity_memo", (key, values))  # a cache on a frozen value
    return values


_SCOPE_HEADERS: dict[frozenset[str], str] = {}  # bounded: emptied when full


def _scope_header(scopes: frozenset[str]) -> str:
    """The scopes as one space-separated, sorted header value (computed once per scope set).

    Each scope must be an RFC 6749 scope-token: one holding a space would reach the upstream
    as two scopes the token does not have.
    """
    value = _SCOPE_HEADERS.get(scopes)
    if value is None:
        if not all(scope_token(scope) for scope in scopes):
            raise UnsafeIdentity("a scope is not a scope-token")
        if len(_SCOPE_HEADERS) >= 4096:
            _SCOPE_HEADERS.clear()
        value = _SCOPE_HEADERS[scopes] = " ".join(sorted(scopes))
    return value
