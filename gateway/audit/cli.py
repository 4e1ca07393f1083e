"""``gateway audit`` and ``gateway incident``: the responder's commands over the audit trail."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .query import Query, select, write_records

if TYPE_CHECKING:  # the incident modules are imported when the command runs
    from ..config import GatewayConfig
    from .incident import Incident, Target

_FILES = click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True, exists=True))


def _stdin_hint(files: tuple[str, ...]) -> None:
    if (not files or "-" in files) and sys.stdin.isatty():
        click.echo("reading audit records from standard input (Ctrl-D ends)...", err=True)


def _warn(message: str) -> None:
    click.echo(message, err=True)


@click.command("audit")
@_FILES
@click.option("--jti", help="token id (jti claim)")
@click.option("--fingerprint", help="token fingerprint (hex SHA-256 of the token, or a prefix of it)")
@click.option("--token", help="a raw token: hashed here and searched by fingerprint; never printed")
@click.option("--sub", help="subject (sub claim)")
@click.option("--client", help="client id")
@click.option("--family", help="token family (sid claim)")
@click.option("--ip", help="client IP address, or a network in CIDR form")
@click.option("--route", help="route name")
@click.option("--decision", type=click.Choice(["allow", "deny"]))
@click.option("--reason", help="decision reason, e.g. insufficient_scope")
@click.option("--binding", type=click.Choice(["none", "dpop", "mtls"]),
              help="how the token was bound on the request (sender constraint proven)")
@click.option("--key-thumbprint", help="the DPoP key's jkt or the client certificate's x5t#S256")
@click.option("--since", help="RFC 3339 time or relative (2h, 30m, 7d)")
@click.option("--until", help="RFC 3339 time or relative (2h, 30m, 7d)")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def audit_command(files: tuple[str, ...], fmt: str, **filters: str | None) -> None:
    """Search audit records (plain or gzip JSON lines; FILE - or none reads stdin).

    Filters combine with AND. A raw --token is hashed locally and never printed.
    """
    try:
        query = Query.build(**{k: v for k, v in filters.items() if v is not None})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _stdin_hint(files)
    out = sys.stdout
    try:
        count = write_records(select(list(files), query, _warn), fmt, out)
        out.flush()
    except BrokenPipeError:  # `gateway audit ... | head`
        sys.stderr.close()
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)
    click.echo(f"{count} record{'s' if count != 1 else ''} matched", err=True)


@click.command("incident")
@_FILES
@click.option("--jti", help="token id (jti claim)")
@click.option("--fingerprint", help="token fingerprint (hex SHA-256 of the token, or a prefix of it)")
@click.option("--token", help="a raw token: hashed here; never printed")
@click.option("--sub", help="a subject: every token issued to it")
@click.option("--family", help="a token family (sid claim)")
@click.option("--key-thumbprint", help="a DPoP key (jkt) or client certificate (x5t#S256): every token used with it")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True),
              help="also write a self-contained HTML report here")
@click.option("--revoke", is_flag=True, help="revoke the token and its family (needs --config)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="gateway YAML: where the revocation list and the audit sink are")
@click.option("--reason", help="why (with --revoke; recorded in the audit trail)")
def incident_command(
    files: tuple[str, ...], jti: str | None, fingerprint: str | None, token: str | None, sub: str | None,
    family: str | None, key_thumbprint: str | None, html_path: str | None, revoke: bool, config_path: str | None,
    reason: str | None,
) -> None:
    """The whole story of one token, subject, family or key; optionally cut it off (--revoke).

    Reads plain or gzip JSON lines from FILEs, or stdin:

    \b
        kubectl logs -l app=gateway | gateway incident --jti J
    """
    from .incident import collect

    target = _incident_target(jti, fingerprint, token, sub, family, key_thumbprint)
    config = _revocation_config(revoke, config_path, reason)
    _stdin_hint(files)
    incident = collect(list(files), target, _warn)
    _report(incident, html_path)
    if config is None:
        if not incident.calls:
            sys.exit(1)
        return
    _revoke(incident, config, reason or "incident response")


def _incident_target(
    jti: str | None, fingerprint: str | None, token: str | None, sub: str | None, family: str | None,
    key_thumbprint: str | None,
) -> Target:
    from .incident import Target

    try:
        return Target.from_options(jti, fingerprint, token, sub, family, key_thumbprint)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _revocation_config(revoke: bool, config_path: str | None, reason: str | None) -> GatewayConfig | None:
    """The configuration naming the revocation list and the audit sink: with --revoke only."""
    if revoke and not config_path:
        raise click.UsageError("--revoke needs --config FILE (where the revocation list is)")
    if (config_path or reason) and not revoke:
        raise click.UsageError("--config and --reason go with --revoke")
    if not config_path:
        return None
    from ..cli import load_or_exit

    return load_or_exit(config_path)


def _report(incident: Incident, html_path: str | None) -> None:
    """The text report on standard output, and the HTML report when asked for."""
    from .incident import render_text

    sys.stdout.write(render_text(incident))
    sys.stdout.flush()
    if html_path:
        from .report_html import render_html

        Path(html_path).write_text(render_html(incident), encoding="utf-8")
        click.echo(f"\nHTML report written to {html_path}")


def _revoke(incident: Incident, config: GatewayConfig, text: str) -> None:
    """Revoke what the incident found through the shared list, record the action, and say what was done."""
    from .incident import RevokeError, action_record, operator_name, plan_revocation, shared_store
    from .incident import revoke as revoke_entries

    try:
        entries = plan_revocation(incident, config, text)
    except RevokeError as exc:
        click.echo(f"error: cannot revoke: {exc}", err=True)
        sys.exit(1)
    operator = operator_name()
    record = action_record(incident, entries, text, operator)
    try:
        store = shared_store(config)
    except RevokeError as exc:
        click.echo(f"error: cannot revoke: {exc}", err=True)
        sys.exit(1)
    try:
        asyncio.run(revoke_entries(config, store, entries, record))
    except Exception as exc:  # the store's own errors (redis, network): say so, revoke nothing more
        click.echo(f"error: revocation failed, nothing may have been revoked: {exc}", err=True)
        sys.exit(1)
    sys.stdout.flush()
    click.echo("")
    for entry in entries:
        click.echo(f"revoked {entry.kind.value} {entry.value} (until {record_time(entry.expires_at)})")
    sink = config.audit.sink
    where = {"file": f"audit file {config.audit.path}", "stdout": "standard output (the audit sink)",
             "none": "nowhere: the audit sink is none"}[sink]
    click.echo(f"recorded the action (operator {operator}, reason {text!r}) in {where}")


def record_time(timestamp: float) -> str:
    from .record import rfc3339

    return rfc3339(timestamp)
