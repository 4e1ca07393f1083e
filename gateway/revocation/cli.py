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

from .entries import ANY_ISSUER
from .schema import EXPIRY_MARGIN, TARGETS, IssuerNeeded

EXIT_NO_STORE = 2
EXIT_FAILED = 3


def _fail(message: str, status: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


@click.command("revoke")
@click.option("--config", "config_path", required=True, metavar="FILE", help="gateway YAML")  # missing or a dir: exit 1
@click.option("--jti", help="revoke one token by its jti claim")
@click.option("--token", help="revoke one raw token (hashed locally; '-' reads it from stdin)")
@click.option("--fingerprint", help="revoke one token by its SHA-256 fingerprint (64 or 32 hex digits)")
@click.option("--family", help="revoke a token family (the family_claim value, e.g. sid)")
@click.option("--subject", help="revoke every token of this sub issued before --before")
@click.option("--client", "client_id", help="revoke every token of this client_id issued before --before")
@click.option("--issuer", help="whose tokens: a configured issuer, or '*' for every issuer (needed for --jti, "
              "--token, --fingerprint, --family when several issuers are configured; --subject, --client: "
              "default every issuer)")
@click.option("--before", help="cut-off for --subject/--client: ISO-8601 with zone or epoch seconds (default now)")
@click.option("--ttl", type=float, help="entry lifetime in seconds (default: the issuer's max_token_lifetime)")
@click.option("--reason", default="", help="free text kept with the entry (no secrets)")
@click.option("--admin-url", help="post to this gateway's admin port instead of Redis (in-memory lists)")
def revoke(config_path: str, jti: str | None, token: str | None, fingerprint: str | None, family: str | None,
           subject: str | None, client_id: str | None, issuer: str | None, before: str | None, ttl: float | None,
           reason: str, admin_url: str | None) -> None:
    """Revoke a token, a family, a subject or a client at every gateway replica."""
    from ..cli import load_or_exit

    given = {name: value for name, value in zip(
        TARGETS, (jti, token, fingerprint, family, subject, client_id), strict=True) if value is not None}
    if len(given) != 1:
        _fail("name exactly one of --jti, --token, --fingerprint, --family, --subject, --client", 1)
    (target, value), = given.items()
    if target == "token" and value == "-":
        value = sys.stdin.readline().strip()
    config = load_or_exit(config_path)
    store = config.revocation
    if admin_url is None and store.redis_url is None and store.sentinel is None:
        _fail(
            f"{config_path}: revocation.redis_url is not set, so each gateway keeps its revocation list in its "
            "own memory and nothing outside that process can change it. Set revocation.redis_url (shared list), "
            "or pass --admin-url http://HOST:ADMIN_PORT to post this revocation to one running gateway.",
            EXIT_NO_STORE,
        )
    from .api import factory_for

    try:
        entry = factory_for(config).build(target, value, issuer=issuer, before=before, ttl=ttl, reason=reason)
    except IssuerNeeded as exc:
        which = f"several issuers are configured ({', '.join(exc.issuers)})" if exc.issuers else "no issuer is set"
        _fail(f"--{target}: {which}: choose whose tokens this revokes with --issuer ISSUER, or --issuer '*' for "
              "every issuer", 1)
        return
    except ValueError as exc:
        _fail(str(exc), 1)
        return
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
            _fail(f"--admin-url needs the admin shared secret in ${secret_env}", 1)
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
        _fail(f"could not write to Redis: {type(exc).__name__}: {exc}", EXIT_FAILED)
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
                _fail(f"{url} answered {resp.status}: {answer}", EXIT_FAILED)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        _fail(f"{url}: {type(exc).__name__}: {exc}", EXIT_FAILED)
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
