"""How the incident reports (text and HTML) put a call's scopes, reason and a responder's action in words (offline)."""

from __future__ import annotations

from collections import Counter

from ..query import Record
from .values import text_of


def scopes_text(value: list[str]) -> str:
    """Scopes for a report: space-separated, ``-`` for none."""
    return " ".join(value) if value else "-"


def revoked_text(action: Record) -> str:
    """What a responder's action revoked, as one line, whatever shape ``revoked`` has."""
    revoked = action.get("revoked")
    if not isinstance(revoked, list):
        return text_of(revoked) or ""
    return ", ".join(f"{text_of(r.get('kind')) or ''} {text_of(r.get('value')) or ''}" if isinstance(r, dict)
                     else text_of(r) or "" for r in revoked)


def reason_text(call: Record) -> str:
    """A call's reason, with the claims rule that refused it, the refusal's detail and live detection's flags."""
    text = call["reason"] or ""
    if call["rule"]:
        text += f" (rule {call['rule']})"
    if call["detail"]:
        text += f": {call['detail']}"
    if call["suspicious"]:
        text += f" (suspicious: {scopes_text(call['suspicious'])})"
    return text


def counts_text(counts: Counter[str]) -> str:
    """``dpop x5, none x2``: a counter as one line, most common first."""
    return ", ".join(f"{name} x{n}" for name, n in counts.most_common())
