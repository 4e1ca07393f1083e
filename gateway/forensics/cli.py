"""``gateway audit`` and ``gateway incident``: the responder's commands over the audit trail (offline)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from ..cli_errors import CommandError, UnavailableError
from ..cli_options import target_options
from .envelope import Envelope
from .progress import scanning
from .query import Query, select, visible, write_records
from .scan import ScanError, ScanStats
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
@target_options("jti", "fingerprint", "token", "subject", "client", "family",
                notes={"fingerprint": "a prefix of it is enough"})
@click.option("--ip", help="client IP address, or a network in CIDR form")
@click.option("--route", help="route name")
@click.option("--decision", type=click.Choice(["allow", "deny"]), help="what the gateway decided")
@click.option("--reason", help="decision reason, e.g. insufficient_scope")
@click.option("--binding", type=click.Choice(["none", "dpop", "mtls"]),
              help="how the token was bound on the request (sender constraint proven)")
@target_options("key_thumbprint", "trace_id", notes={
    "key_thumbprint": "the calls that presented it", "trace_id": "the calls of that trace"})
@click.option("--since", help="RFC 3339 time or relative (2h, 30m, 7d)")
@click.option("--until", help="RFC 3339 time or relative (2h, 30m, 7d)")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="a table to read (fitted to the terminal), JSON lines, or CSV for a spreadsheet")
@_scan_options
def audit_command(
    files: tuple[str, ...], fmt: str, field_path: str | None, no_unwrap: bool, workers: int | None,
    subject: str | None, **filters: str | None,
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
        query = Query.build(**{k: v for k, v in {**filters, "sub": subject}.items() if v is not None})
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
        raise click.exceptions.Exit(0) from None
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None
    except ScanError as exc:
        raise UnavailableError(str(exc)) from None
    _say_skipped(stats)
    click.echo(f"{count} record{'s' if count != 1 else ''} matched", err=True)


@click.command("incident")
@_FILES
@target_options("jti", "fingerprint", "token", "subject", "family", "key_thumbprint", "trace_id", notes={
    "fingerprint": "a prefix of it is enough", "key_thumbprint": "every token used with it",
    "trace_id": "every token seen in that trace"})
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
    files: tuple[str, ...], jti: str | None, fingerprint: str | None, token: str | None, subject: str | None,
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

    target = _incident_target(jti, fingerprint, token, subject, family, key_thumbprint, trace_id)
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
        raise UnavailableError(str(exc)) from None
    _say_skipped(stats)
    _report(incident, html_path, fmt, links)
    if config is None or not revoke:
        if not incident.calls:
            raise click.exceptions.Exit(1)  # nothing found: the report says so, the status tells a script
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
    from ..launch import load_or_exit

    return load_or_exit(config_path)


def _trace_url_template(given: str | None, config: GatewayConfig | None) -> str | None:
    """The trace viewer's URL template: --trace-url-template (checked as the YAML key is), else the config's."""
    if given is None:
        return config.tracing.trace_url_template if config is not None else None
    from ..config import check_trace_url_template

    try:
        return check_trace_url_template(given)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trace-url-template") from None


def _report(incident: Incident, html_path: str | None, fmt: str = "text", trace_links: str | None = None) -> None:
    """The text or JSON report on standard output, and the HTML report when asked for (the notice
    of it on stderr: standard output holds the report alone, ready for a pipe)."""
    from .incident import render_text
    from .reports.json import render_json

    sys.stdout.write(render_json(incident) if fmt == "json" else render_text(incident))
    sys.stdout.flush()
    if html_path:
        from .reports.html import render_html

        Path(html_path).write_text(render_html(incident, trace_url_template=trace_links), encoding="utf-8")
        click.echo(f"HTML report written to {html_path}", err=True)


def _revoke(incident: Incident, config: GatewayConfig, text: str) -> None:
    """Revoke what the incident found through the shared list, record the action, and say what was done."""
    import asyncio

    from .revoke import RevokeError, action_record, operator_name, plan_revocation, shared_revoker
    from .revoke import revoke as revoke_entries

    operator = operator_name()
    try:
        entries = plan_revocation(incident, config, text)
        record = action_record(incident, entries, text, operator)
        revoker = shared_revoker(config)
    except RevokeError as exc:
        raise CommandError(f"cannot revoke: {exc}") from None
    try:
        asyncio.run(revoke_entries(config, revoker, entries, record))
    except Exception as exc:  # the store's own errors (redis, network): say so, revoke nothing more
        raise CommandError(f"revocation failed, nothing may have been revoked: {exc}") from None
    sys.stdout.flush()
    click.echo("")
    for entry in entries:
        click.echo(f"revoked {entry.kind.value} {entry.value} (until {record_time(entry.expires_at)})")
    sink = config.audit.sink
    where = {"file": f"audit file {config.audit.path}", "stdout": "standard output (the audit sink)",
             "none": "nowhere: the audit sink is none"}[sink]
    click.echo(f"recorded the action (operator {operator}, reason {text!r}) in {where}")


def record_time(timestamp: float) -> str:
    """An entry's expiry as the audit trail writes times."""
    from ..audit.fields import rfc3339

    return rfc3339(timestamp)
