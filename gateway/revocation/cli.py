"""``gateway revoke``: write one revocation for every replica (registered in gateway/cli.py).

With ``revocation.redis_url`` (or ``sentinel``) in the configuration, the entry goes straight
into Redis (the same key + stream write as the Python API and the admin endpoints). Without
it the gateway keeps its list in memory, which only its own process can change: then pass
``--admin-url`` to post the revocation to that gateway's admin port, or the command exits 2.
A ``--token`` is hashed here either way: the admin port receives its fingerprint and the
entry's lifetime (the token's own ``exp``, at most the issuer's lifetime), never the token.

Every entry belongs to an issuer: ``--issuer ISS`` (a configured one), ``--issuer '*'`` for
every issuer. Without it a --jti, --token, --fingerprint or --family revocation means the only
configured issuer, and is refused when several are configured; --subject and --client without
it cover every issuer, as they always have.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from typing import Any

import click

from ..cli_errors import ActionError, CommandError, UnavailableError
from ..cli_options import target_options
from .entries import ANY_ISSUER
from .entry_factory import EXPIRY_MARGIN, TARGETS, IssuerNeeded


@click.command("revoke")
@click.option("--config", "config_path", required=True, metavar="FILE", help="gateway YAML")  # missing or a dir: exit 1
@target_options(*TARGETS, notes={
    "token": "'-' reads it from standard input", "fingerprint": "64 hex digits, or the first 32",
    "subject": "only those issued before --before", "client": "only those issued before --before"})
@click.option("--issuer", help="whose tokens: a configured issuer, or '*' for every issuer (needed for --jti, "
              "--token, --fingerprint, --family when several issuers are configured; --subject, --client: "
              "default every issuer)")
@click.option("--before", help="cut-off for --subject/--client: ISO-8601 with zone or epoch seconds (default now)")
@click.option("--ttl", type=float, help="entry lifetime in seconds (default: the issuer's max_token_lifetime)")
@click.option("--reason", default="", help="free text kept with the entry (no secrets)")
@click.option("--admin-url", help="post to this gateway's admin port instead of Redis (in-memory lists)")
def revoke(config_path: str, jti: str | None, token: str | None, fingerprint: str | None, family: str | None,
           subject: str | None, client: str | None, issuer: str | None, before: str | None, ttl: float | None,
           reason: str, admin_url: str | None) -> None:
    """Revoke a token, a family, a subject or a client at every gateway replica."""
    from ..launch import load_or_exit

    given = {name: value for name, value in zip(
        TARGETS, (jti, token, fingerprint, family, subject, client), strict=True) if value is not None}
    if len(given) != 1:
        raise CommandError("name exactly one of --jti, --token, --fingerprint, --family, --subject, --client")
    (target, value), = given.items()
    if target == "token" and value == "-":
        value = sys.stdin.readline().strip()
    config = load_or_exit(config_path)
    store = config.revocation
    if admin_url is None and not store.shared:
        raise UnavailableError(
            f"{config_path}: revocation.redis_url is not set, so each gateway keeps its revocation list in its "
            "own memory and nothing outside that process can change it. Set revocation.redis_url (shared list), "
            "or pass --admin-url http://HOST:ADMIN_PORT to post this revocation to one running gateway."
        )
    from .api import factory_for

    try:
        entry = factory_for(config).build(target, value, issuer=issuer, before=before, ttl=ttl, reason=reason)
    except IssuerNeeded as exc:
        which = f"several issuers are configured ({', '.join(exc.issuers)})" if exc.issuers else "no issuer is set"
        raise CommandError(f"--{target}: {which}: choose whose tokens this revokes with --issuer ISSUER, or "
                           "--issuer '*' for every issuer") from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if admin_url is not None:
        body: dict[str, Any] = {target: value, "reason": reason}
        if target == "token":  # the raw token stays here: post its fingerprint and the lifetime computed here
            body = {"fingerprint": entry.value, "ttl": max(1.0, entry.expires_at - EXPIRY_MARGIN - entry.created_at),
                    "reason": reason}
        elif ttl is not None:
            body["ttl"] = ttl
        body["issuer"] = entry.issuer  # as resolved here: the gateway applies exactly this scope
        if before is not None:
            body["before"] = before
        secret_env = config.admin.shared_secret_env
        secret = os.environ.get(secret_env) if secret_env else None
        if not secret:
            raise CommandError(f"--admin-url needs the admin shared secret in ${secret_env}")
        written = asyncio.run(_post(admin_url, body, str(secret)))
    else:
        written = asyncio.run(_write(config, entry))
    _report(written)


async def _write(config: Any, entry: Any) -> dict[str, Any]:
    from .api import Revoker

    revoker = Revoker.from_config(config)
    try:
        await revoker.revoke(entry)
    except Exception as exc:  # RevocationWriteError, redis errors, OSError
        raise ActionError(f"could not write to Redis: {type(exc).__name__}: {exc}") from None
    finally:
        await revoker.aclose()
    data: dict[str, Any] = entry.to_json()
    return data


async def _post(admin_url: str, body: dict[str, Any], secret: str) -> dict[str, Any]:
    import aiohttp

    url = admin_url.rstrip("/") + "/revocation/entries"
    try:
        async with aiohttp.ClientSession() as session, session.post(
            url, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=aiohttp.ClientTimeout(total=10)
        ) as resp:
            answer = await resp.json(content_type=None)
            if resp.status != 200:
                raise ActionError(f"{url} answered {resp.status}: {answer}")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ActionError(f"{url}: {type(exc).__name__}: {exc}") from None
    revoked: dict[str, Any] = answer["revoked"]
    return revoked


def _report(entry: dict[str, Any]) -> None:
    until = datetime.fromtimestamp(entry["expires_at"], UTC).isoformat(timespec="seconds")
    line = f"revoked {entry.get('match') or entry['kind']} {entry['value']}"
    issuer = entry.get("issuer")
    line += " (every issuer)" if issuer in (None, ANY_ISSUER) else f" (issuer {issuer})"
    if entry.get("not_before") is not None:
        line += f" issued before {datetime.fromtimestamp(entry['not_before'], UTC).isoformat(timespec='seconds')}"
    click.echo(f"{line}; entry expires {until}")
