"""``gateway audit`` and ``gateway incident``: the responder's commands over the audit trail."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from ..progress import scanning
from .query import Query, select, write_records
from .table import write_table

if TYPE_CHECKING:  # the incident modules are imported when the command runs
    from ..config import GatewayConfig
    from .incident import Incident, Target

_FILES = click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True, exists=True))


def _stdin_hint(files: tuple[str, ...]) -> None:
    if (not files or "-" in files) and sys.stdin.isatty():
        click.echo("reading audit records from standard input (Ctrl-D ends)...", err=True)


def _warn(message: str) -> None:
    click.echo(message, err=True)


def _terminal_width(out: IO[str]) -> int | None:
    """The terminal's width when ``out`` is one (COLUMNS first, as shutil reads it); None when piped."""
    try:
        if not out.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size().columns


@click.command("audit")
@_FILES
@click.option("--jti", help="token id (jti claim)")
@click.option("--fingerprint", help="token fingerprint (hex SHA-256 of the token, or a prefix of it)")
@click.option("--token", help="a raw token: hashed here and searched by fingerprint; never printed")
@click.option("--sub", help="subject (sub claim)")
@click.option("--client", help="client id")
@click.option("--family", help="token family (the revocation.family_claim claim, sid by default)")
@click.option("--ip", help="client IP address, or a network in CIDR form")
@click.option("--route", help="route name")
@click.option("--decision", type=click.Choice(["allow", "deny"]), help="what the gateway decided")
@click.option("--reason", help="decision reason, e.g. insufficient_scope")
@click.option("--binding", type=click.Choice(["none", "dpop", "mtls"]),
              help="how the token was bound on the request (sender constraint proven)")
@click.option("--key-thumbprint", help="the DPoP key's jkt or the client certificate's x5t#S256")
@click.option("--trace-id", help="W3C trace id (32 hex digits): the calls of one trace (docs/tracing.md)")
@click.option("--since", help="RFC 3339 time or relative (2h, 30m, 7d)")
@click.option("--until", help="RFC 3339 time or relative (2h, 30m, 7d)")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="a table to read (fitted to the terminal), JSON lines, or CSV for a spreadsheet")
def audit_command(files: tuple[str, ...], fmt: str, **filters: str | None) -> None:
    """Search audit records by token, subject, client, address, route, decision or time.

    Reads plain or gzip JSON lines from FILEs (- or none: standard input) and prints the
    matching records: a table fitted to the terminal (every column when piped), JSON lines
    or CSV; how many matched goes to stderr. Filters combine with AND. A raw --token is
    hashed here and never printed. On a terminal, a long search shows its progress on stderr.

    \b
        gateway audit audit.jsonl audit.jsonl.1.gz --sub alice --since 2h
        gateway audit audit.jsonl --reason insufficient_scope --format csv > escalations.csv
    """
    try:
        query = Query.build(**{k: v for k, v in filters.items() if v is not None})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _stdin_hint(files)
    out = sys.stdout
    try:
        with scanning(list(files)) as progress:  # a bar on a terminal's stderr, lifted for each line printed
            records = select(list(files), query, progress.say(_warn))
            shown = progress.lines(out)
            # a table is fitted to the terminal; piped, every column has its full width
            count = write_table(records, shown, _terminal_width(out)) if fmt == "table" else \
                write_records(records, fmt, shown)
            shown.flush()
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
@click.option("--family", help="a token family (the revocation.family_claim claim, sid by default)")
@click.option("--key-thumbprint", help="a DPoP key (jkt) or client certificate (x5t#S256): every token used with it")
@click.option("--trace-id", help="a W3C trace id (32 hex digits): every token seen in that trace")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True),
              help="also write a self-contained HTML report here")
@click.option("--trace-url-template", envvar="GATEWAY_TRACE_URL_TEMPLATE",
              help="link each call of the HTML report to its trace, e.g. https://tempo.example/trace/{trace_id}"
                   " (default: tracing.trace_url_template of --config)")
@click.option("--revoke", is_flag=True, help="revoke the token and its family (needs --config)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="gateway YAML: where the revocation list and the audit sink are, and the trace URL template")
@click.option("--reason", help="why (with --revoke; recorded in the audit trail)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="the report on standard output: text to read, or one JSON document for tools")
def incident_command(
    files: tuple[str, ...], jti: str | None, fingerprint: str | None, token: str | None, sub: str | None,
    family: str | None, key_thumbprint: str | None, html_path: str | None, revoke: bool, config_path: str | None,
    reason: str | None, fmt: str, trace_id: str | None = None, trace_url_template: str | None = None,
) -> None:
    """The whole story of one token, subject, family or key; optionally cut it off (--revoke).

    Reads plain or gzip JSON lines from FILEs, or stdin, and prints the report: where and
    when it was used, from which addresses and agents, what was refused and why, the other
    tokens of its family or subject, responder actions. --format json prints the same as one
    JSON document; --html also writes a self-contained page (its name goes to stderr).
    --revoke --config FILE then revokes the token and its family and records who did it.
    Exit status 1 when no record of the target is found. On a terminal, reading a large
    input shows its progress on stderr.

    \b
        gateway incident audit.jsonl* --jti J --html report.html
        kubectl logs -l app=gateway | gateway incident --jti J
    """
    from .incident import collect

    target = _incident_target(jti, fingerprint, token, sub, family, key_thumbprint, trace_id)
    config = _revocation_config(revoke, config_path, reason)
    links = _trace_url_template(trace_url_template, config)
    _stdin_hint(files)
    with scanning(list(files)) as progress:  # a bar on a terminal's stderr while the inputs are read
        incident = collect(list(files), target, progress.say(_warn))
    _report(incident, html_path, fmt, links)
    if config is None or not revoke:
        if not incident.calls:
            sys.exit(1)
        return
    _revoke(incident, config, reason or "incident response")


def _incident_target(
    jti: str | None, fingerprint: str | None, token: str | None, sub: str | None, family: str | None,
    key_thumbprint: str | None, trace_id: str | None = None,
) -> Target:
    from .incident import Target

    try:
        return Target.from_options(jti, fingerprint, token, sub, family, key_thumbprint, trace_id)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _revocation_config(revoke: bool, config_path: str | None, reason: str | None) -> GatewayConfig | None:
    """The configuration naming the revocation list and the audit sink (and the trace URL template)."""
    if revoke and not config_path:
        raise click.UsageError("--revoke needs --config FILE (where the revocation list is)")
    if reason and not revoke:
        raise click.UsageError("--reason goes with --revoke")
    if not config_path:
        return None
    from ..cli import load_or_exit

    return load_or_exit(config_path)


def _trace_url_template(given: str | None, config: GatewayConfig | None) -> str | None:
    """The trace viewer's URL template: --trace-url-template (checked as the YAML key is), else the config's."""
    if given is None:
        return config.tracing.trace_url_template if config is not None else None
    from ..tracing import check_trace_url_template

    try:
        return check_trace_url_template(given)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trace-url-template") from None


def _report(incident: Incident, html_path: str | None, fmt: str = "text", trace_links: str | None = None) -> None:
    """The text or JSON report on standard output, and the HTML report when asked for (the notice
    of it on stderr: standard output holds the report alone, ready for a pipe)."""
    from .incident import render_text
    from .report_json import render_json

    sys.stdout.write(render_json(incident) if fmt == "json" else render_text(incident))
    sys.stdout.flush()
    if html_path:
        from .report_html import render_html

        Path(html_path).write_text(render_html(incident, trace_url_template=trace_links), encoding="utf-8")
        click.echo(f"HTML report written to {html_path}", err=True)


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
