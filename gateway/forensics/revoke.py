"""``gateway incident --revoke``: cut off what an incident found, through the gateways' shared
revocation list, and record who did it in the audit trail (offline, run by a responder).

The entries: the token by jti, else by fingerprint; its families; for a subject, every token
issued to it so far; for a key or a trace, every token used with it and their families. They
are written with a ``Revoker``, as ``gateway revoke`` does. Apart from the report
(``forensics.incident``) so that reading an incident loads neither the configuration nor the
revocation code: a responder's first question is answered first.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Awaitable, Sequence
from typing import Protocol

from ..audit.fields import rfc3339
from ..audit.writer import AuditWriter
from ..config import GatewayConfig
from ..revocation.api import Revoker, factory_for
from ..revocation.entries import Entry
from ..revocation.entry_factory import EntryFactory, IssuerNeeded
from ..tokens.token import FINGERPRINT_PREFIX, short_fingerprint
from .incident import Incident, TokenSeen
from .query import Record


class RevokeError(Exception):
    """Nothing safe to revoke, or no way to reach the gateways' revocation list."""


def plan_revocation(incident: Incident, config: GatewayConfig, reason: str, now: float | None = None) -> list[Entry]:
    """The entries that cut the target off: the token (jti, else fingerprint) and its families;
    for a subject, every token issued to it until now plus its families; for a family, the family;
    for a key or a trace, every token the records show used with it or in it (by jti, else fingerprint) and
    their families.

    Each entry lives as the revocation schema says (``factory_for``): the issuer's
    ``max_token_lifetime`` plus the expiry margin; the longest lifetime configured when the
    audit records name no single issuer.

    Token and family entries belong to the issuer the audit records name for that token (a
    family: each issuer it was seen with); when they name none, to the only configured issuer,
    and with several the revocation is refused (``gateway revoke --issuer`` then)."""
    now = time.time() if now is None else now
    factory = factory_for(config)
    note = f"incident: {reason}"
    target = incident.target
    issuers = incident.issuers
    issuer = issuers[0] if len(issuers) == 1 else None
    entries: list[Entry] = []
    try:
        if target.is_token:
            tokens = list(incident.tokens.values())
            if target.kind == "fingerprint" and len(tokens) > 1:
                raise RevokeError(f"fingerprint prefix {target.value} matches {len(tokens)} tokens;"
                                  " give the whole fingerprint or the jti")
            entries += _token_entries(tokens, factory, note, now)
            if not tokens and target.kind == "jti":
                entries.append(factory.jti(target.value, reason=note, now=now))
            elif not tokens and len(target.value) == FINGERPRINT_PREFIX:
                entries.append(factory.fingerprint(target.value, reason=note, now=now))
            elif not tokens:
                raise RevokeError("no audit record shows this token and the fingerprint prefix is too short to"
                                  f" revoke by; give all {FINGERPRINT_PREFIX} hex digits or the jti")
        elif target.kind == "sub":
            entries.append(factory.subject(target.value, issuer=issuer, before=now, reason=note, now=now))
        elif target.kind in ("key", "trace"):
            if not incident.tokens:
                raise RevokeError(f"no audit record shows a token {target.tokens_title[7:]}: nothing to revoke")
            entries += _token_entries(list(incident.tokens.values()), factory, note, now)
        for family, family_issuer in _families(incident):
            entries.append(factory.family(family, issuer=family_issuer, reason=note, now=now))
    except IssuerNeeded as exc:
        raise RevokeError(f"the audit records do not name the issuer of these tokens, and {len(exc.issuers)} issuers"
                          " are configured: revoke with `gateway revoke --issuer ISSUER` (or --issuer '*')") from None
    except ValueError as exc:  # a value from the audit trail the revocation schema refuses
        raise RevokeError(str(exc)) from None
    if not entries:
        raise RevokeError("nothing to revoke")
    return entries


def _token_entries(tokens: Sequence[TokenSeen], factory: EntryFactory, note: str, now: float) -> list[Entry]:
    """Each token by its jti, else by its 32-digit fingerprint (a shorter one is not enough to revoke by)."""
    entries = []
    for token in tokens:
        if token.jti:
            entries.append(factory.jti(token.jti, issuer=token.iss, reason=note, now=now))
        elif token.fingerprint and len(token.fingerprint) >= FINGERPRINT_PREFIX:
            entries.append(factory.fingerprint(short_fingerprint(token.fingerprint), issuer=token.iss,
                                               reason=note, now=now))
    return entries


def _families(incident: Incident) -> list[tuple[str, str | None]]:
    """(family, issuer) of every family to revoke: a family belongs to the issuer of the tokens carrying it."""
    target = incident.target
    tokens = list(incident.tokens.values())
    families = [target.value] if target.kind == "family" else incident.families
    pairs: list[tuple[str, str | None]] = []
    for family in families:
        seen = sorted({t.iss for t in tokens if t.family == family and t.iss})
        if not seen:
            pairs.append((family, None))  # None: the only configured issuer, if there is just one
        pairs.extend((family, iss) for iss in seen)
    return pairs


def operator_name() -> str:
    """Who ran the command: the OS user (``$USER`` and friends first)."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def action_record(incident: Incident, entries: Sequence[Entry], reason: str, operator: str,
                  now: float | None = None) -> Record:
    """The audit record of a responder's revocation (``mode: incident``)."""
    now = time.time() if now is None else now
    tokens = list(incident.tokens.values())
    single = tokens[0] if len(tokens) == 1 else None
    target = incident.target
    return {
        "type": "audit",
        "ts": rfc3339(now),
        "request_id": os.urandom(12).hex(),
        "mode": "incident",
        "action": "revoke",
        "operator": operator,
        "operator_host": socket.gethostname(),
        "decision": "revoke",
        "reason": reason,
        "target": {"kind": target.kind, "value": target.value},
        "revoked": [{"kind": e.kind.value, "match": e.match.value if e.match else None, "value": e.value,
                     "issuer": e.issuer, "expires_at": rfc3339(e.expires_at)} for e in entries],
        "sub": target.value if target.kind == "sub" else (single.sub if single else None),
        "client_id": single.client_id if single else None,
        "iss": single.iss if single else None,
        "jti": target.value if target.kind == "jti" else (single.jti if single else None),
        "family": (family := target.value if target.kind == "family" else (single.family if single else None)),
        "sid": family,  # the older name of "family", kept for a release
        "token_fingerprint": target.value if target.kind == "fingerprint" else (single.fingerprint if single else None),
    }


def shared_revoker(config: GatewayConfig) -> Revoker:
    """A writer to the list the gateways share (Redis), as ``gateway revoke`` uses: it writes the
    entries and their notifications without loading the list; refused when the list is in memory."""
    if not config.revocation.shared:
        raise RevokeError(
            "this configuration keeps the revocation list in memory (no revocation.redis_url or sentinel):"
            " a revocation made from the command line would not reach the running gateways"
        )
    return Revoker.from_config(config)


async def revoke(config: GatewayConfig, revoker: Revoker, entries: Sequence[Entry], record: Record) -> None:
    """Write the entries through ``revoker`` (closed here), then the action record to the audit sink."""
    try:
        await apply_revocation(revoker, entries)
    finally:
        await revoker.aclose()
    writer = AuditWriter(config.audit)
    await writer.start()
    writer.write(record)
    await writer.stop()


class _Writes(Protocol):
    def revoke(self, entry: Entry) -> Awaitable[object]: ...


async def apply_revocation(store: _Writes, entries: Sequence[Entry]) -> None:
    """Revoke every entry through ``store``: a ``Revoker``, or a started store (a gateway's own)."""
    for entry in entries:
        await store.revoke(entry)
