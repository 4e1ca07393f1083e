"""The draft-ietf-httpapi-ratelimit-headers fields of a verdict (``RateLimit-Policy``, ``RateLimit``,
``Retry-After``); made per request, on 429 refusals and, when configured, on allowed answers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .verdict import Verdict


def sf_string(value: str) -> str:
    """An RFC 8941 sf-string (printable ASCII; backslash and quote escaped); others replaced by ``?``."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in value)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ratelimit_headers(verdict: Verdict, *, retry_after: bool = True) -> list[tuple[str, str]]:
    """The draft-ietf-httpapi-ratelimit-headers fields for a verdict (empty when no limit applied).

    ``RateLimit-Policy`` lists each limit's quota (``q``, the count) and window (``w``, seconds);
    ``RateLimit`` its remaining quota (``r``) and ``t``: for a refusing limit the seconds until
    it admits again (equal to ``Retry-After``, as the draft asks), else the seconds until its
    bucket is full. No ``pk`` is sent: a partition key would echo an identity or its hash.
    """
    limits = verdict.limits or tuple(state.limit for state in verdict.states)
    if not limits:
        return []
    headers = [("RateLimit-Policy", ", ".join([lim.policy for lim in limits]))]
    if verdict.states:
        headers.append(("RateLimit", ", ".join([
            f"{s.limit.quoted};r={s.remaining};t={math.ceil(s.reset_after if s.allowed else s.retry_after)}"
            for s in verdict.states
        ])))
    if retry_after and not verdict.allowed:
        headers.append(("Retry-After", str(verdict.retry_after_seconds)))
    return headers
