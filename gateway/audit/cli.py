"""``gateway audit`` and ``gateway incident``: the responder's commands over the audit trail."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ..forensics.envelope import Envelope
from ..forensics.scan import ScanError, ScanStats
from ..progress import scanning
from .query import Query, select, visible, write_records
from .table import write_table

if TYPE_CHECKING:  # the incident modules are imported when the command runs
    from ..config import GatewayConfig
    from .incident import Incident, Target

# files, directories (read whole, hidden files left out), globs quoted for the engine to expand
# (``'audit/*.gz'``: past the shell's argument limit), ``-`` for standard input; a name that
# matches nothing is a warning, not the end of the search
_FILES = click.argument("files", nargs=-1, type=click.Path(allow_dash=True))
F = TypeVar("F", bound=Callable[..., Any])


def _scan_options(command: F) -> F:
    """--field, --no-unwrap and --workers, shared by ``audit`` and ``incident``."""
    for option in reversed((
        click.option("--field", "field_path", metavar="A.B",
                     help="where the audit record sits in each line's JSON (a log store's envelope),"
                          " e.g. _source.log; default: found by itself"),
        click.option("--no-unwrap", is_flag=True, help="read the lines as audit records only: no envelope search"),
        click.option("--workers", type=click.IntRange(min=1),
                     help="processes to scan with (default: every core for a large input, one for a small one)"),
    )):
        command = option(command)
    return command


def _envelope(field_path: str | None, no_unwrap: bool) -> Envelope:
    if field_path and no_unwrap:
        raise click.UsageError("give --field or --no-unwrap, not both")
    if no_unwrap:
        return Envelope.none()
    if not field_path:
        return Envelope.auto()
    try:
        return Envelope.at(field_path)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--field") from None


def _scan_failed(exc: ScanError) -> NoReturn:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


def _say_skipped(stats: ScanStats) -> None:
    """Name the files left unread because they lie outside --since/--until (on stderr)."""
    if not stats.skipped:
        return
    count = len(stats.skipped)
    click.echo(f"skipped {count} file{'s' if count != 1 else ''} outside the time window:", err=True)
    for name, why in stats.skipped[:20]:
        click.echo(f"  {visible(name)}: {visible(why)}", err=True)
    if count > 20:
        click.echo(f"  ... and {count - 20} more", err=True)


def _stdin_hint(files: tuple[str, ...]) -> None:
    if (not files or "-" in files) and sys.stdin.isatty():
        click.echo("reading audit records from standard input (Ctrl-D ends)...", err=True)


def _warn(message: str) -> None:
    # a warning names files, which an archive may name with terminal escapes: shown, never obeyed
    click.echo(visible(message), err=True)


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
@_scan_options
def audit_command(
    files: tuple[str, ...], fmt: str, field_path: str | None, no_unwrap: bool, workers: int | None,
    **filters: str | None,
) -> None:
    """Search audit records by token, subject, client, address, route, decision or time.

    Reads plain or gzip JSON lines from FILEs, directories or quoted globs (- or none:
    standard input), on every core, and prints the matching records: a table fitted to the
    terminal (every column when piped), JSON lines or CSV; how many matched goes to stderr.
    Filters combine with AND. A raw --token is hashed here and never printed. Records inside
    a log store's envelope (Loki, Elasticsearch, kubectl --prefix) are found by themselves.
    Files outside --since/--until are skipped unread where their names or first and last
    records tell. On a terminal, a long search shows its progress on stderr.

    \b
        gateway audit /var/log/gateway/ --sub alice --since 2h
        gateway audit 'archive/*.jsonl.gz' --reason insufficient_scope --format csv > escalations.csv
    """
    try:
        query = Query.build(**{k: v for k, v in filters.items() if v is not None})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    envelope = _envelope(field_path, no_unwrap)
    _stdin_hint(files)
    out, stats = sys.stdout, ScanStats()
    try:
        with scanning(list(files)) as progress:  # a bar on a terminal's stderr, lifted for each line printed
            records = select(list(files), query, progress.say(_warn), workers=workers, envelope=envelope,
                             stats=stats)
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
    except ScanError as exc:
        _scan_failed(exc)
    _say_skipped(stats)
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
@_scan_options
def incident_command(
    files: tuple[str, ...], jti: str | None, fingerprint: str | None, token: str | None, sub: str | None,
    family: str | None, key_thumbprint: str | None, html_path: str | None, revoke: bool, config_path: str | None,
    reason: str | None, fmt: str, trace_id: str | None = None, trace_url_template: str | None = None,
    field_path: str | None = None, no_unwrap: bool = False, workers: int | None = None,
) -> None:
    """The whole story of one token, subject, family or key; optionally cut it off (--revoke).

    Reads plain or gzip JSON lines from FILEs, directories, quoted globs or stdin, in one
    scan on every core (envelopes of log stores unwrapped), and prints the report: where and
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
    envelope = _envelope(field_path, no_unwrap)
    _stdin_hint(files)
    stats = ScanStats()
    try:
        with scanning(list(files)) as progress:  # a bar on a terminal's stderr while the inputs are read
            incident = collect(list(files), target, progress.say(_warn), workers=workers, envelope=envelope,
                               stats=stats)
    except ScanError as exc:
        _scan_failed(exc)
    _say_skipped(stats)
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
    from .incident_revoke import RevokeError, action_record, operator_name, plan_revocation, shared_store
    from .incident_revoke import revoke as revoke_entries

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
        import asyncio

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
    from .fields import rfc3339

    return rfc3339(timestamp)
