"""The command-line interface: serve, check-config, demo, dpop-request (and revoke, audit, incident).

Every mode builds the same Gateway and runs the same decision path; the commands only
differ in how they are started.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import sys
from typing import TYPE_CHECKING

import click

from .cli_errors import CommandError
from .launch import load_or_exit, run_async

if TYPE_CHECKING:
    from .demo import DemoPorts

# commands whose modules are imported when they run: `gateway audit` starts in a tenth of a
# second instead of loading the configuration models, aiohttp and the token code it never uses
LAZY_COMMANDS = {
    "audit": "gateway.forensics.cli:audit_command",
    "incident": "gateway.forensics.cli:incident_command",
    "revoke": "gateway.revocation.cli:revoke",
}


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 upstream``, ``2 upstreams`` (``nouns`` for an irregular plural)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def version_text() -> str:
    """What ``gateway --version`` prints: this gateway and what it runs on. Two OpenSSLs: Python's
    ``ssl`` (TLS of every connection, through aiohttp) and the one cryptography carries (signatures)."""
    import platform
    import ssl
    from importlib.metadata import PackageNotFoundError, version

    import aiohttp
    from cryptography.hazmat.backends.openssl import backend

    try:
        gateway = version("tokengate")
    except PackageNotFoundError:  # run from a checkout that was never installed
        from . import __version__ as gateway
    return "\n".join([
        f"tokengate {gateway}",
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        f"aiohttp {aiohttp.__version__}",
        f"{ssl.OPENSSL_VERSION} (TLS: Python's ssl module)",
        f"cryptography {version('cryptography')} with {backend.openssl_version_text()} (token signatures)",
    ])


def _print_version(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit(0)


class _Commands(click.Group):
    """A group whose command list shows each command's whole summary (click cuts it at ~45 characters),
    with the ``LAZY_COMMANDS`` loaded when they are asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            module, _, attribute = LAZY_COMMANDS[name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command)
            self.add_command(command, name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.short_help or _summary(command.help or "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _summary(text: str) -> str:
    """The first paragraph of a docstring, as one line."""
    paragraph = text.strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines() if line.strip() != "\b")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print the versions of tokengate, Python, aiohttp and OpenSSL, and exit.")
def main() -> None:
    """tokengate: an OAuth 2.0 token-enforcing reverse proxy.

    Every command takes -h/--help. Exit status: 0 done; 1 it failed (a configuration problem,
    a store that cannot be reached, an incident with no record); 2 the command line is wrong.
    """


@main.command("check-config")
@click.argument("path", required=False, metavar="[FILE]")
@click.option("--config", "config_path", metavar="FILE", help="the configuration file (the same as giving FILE)")
def check_config(path: str | None, config_path: str | None) -> None:
    """Validate a configuration file the way serve loads it, and report every problem at once.

    \b
        gateway check-config gateway.yaml
        gateway check-config --config gateway.yaml

    Prints FILE: ok (the number of routes, upstreams and issuers) and exits 0. Otherwise
    prints each problem on stderr as FILE:LINE: KEY: MESSAGE, in the order of the lines, and
    exits 1: unknown keys (with the closest known one), wrong values, YAML syntax errors,
    routes naming an upstream or issuer that is not there, unset ${VAR}s (all of them), key
    and certificate files that do not load. A missing or unreadable file, or a directory,
    also exits 1.
    """
    if path and config_path and path != config_path:
        raise click.UsageError(f"two files given ({path} and --config {config_path}): check one at a time")
    target = config_path or path
    if not target:
        raise click.UsageError("which file? gateway check-config FILE (or --config FILE)")
    config = load_or_exit(target)
    counts = [plural(len(config.routes), "route"), plural(len(config.upstreams), "upstream"),
              plural(len(config.issuers), "issuer")]
    click.echo(f"{target}: ok ({', '.join(counts)})")


@main.command()
@click.option("--config", "config_path", required=True, metavar="FILE", help="the gateway YAML")
def serve(config_path: str) -> None:
    """Run the gateway until SIGTERM or Ctrl-C, then drain open requests and exit 0.

    SIGHUP, or a change of the file while watch_config is on, reloads it: a file that does
    not validate is refused and the running configuration stays (docs/operations.md). With
    workers above 1, a parent process supervises that many worker processes. A file that
    does not validate at start: every problem on stderr, exit 1 (as check-config).
    """
    from .config import ConfigError
    from .logs import setup_logging
    from .workers import clear_metrics_dir, supervise

    config = load_or_exit(config_path)
    setup_logging(config.log_level)
    if config.workers > 1:
        sys.exit(supervise(config_path))  # a parent process and `workers` worker processes
    from .runtime import Gateway
    from .server import serve as serve_forever

    if multiproc_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        clear_metrics_dir(multiproc_dir, keep_pid=os.getpid())
    try:
        run_async(serve_forever(Gateway(config, config_path)))
    except (ConfigError, ValueError, OSError) as exc:
        # what the configuration asks for but cannot be had at start (a Redis URL redis-py refuses,
        # an address in use, a key that no longer loads): one line, never a traceback
        logging.getLogger("gateway").debug("start-up failed", exc_info=True)
        problems = exc.problems if isinstance(exc, ConfigError) else [start_problem(config_path, exc)]
        raise CommandError(*problems) from None


_BIND = re.compile(r"bind on address \('?\[?([^',\]]*)\]?'?, (\d+)")  # asyncio's words for a failed bind


def start_problem(config_path: str, exc: Exception) -> str:
    """What stopped ``serve`` at start, in one line: for an address in use, which one."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        where = _BIND.search(str(exc))
        host = f"[{where.group(1)}]" if where and ":" in where.group(1) else where.group(1) if where else ""
        address = f" {host}:{where.group(2)}" if where else ""
        return (f"{config_path}: cannot listen on{address}: {os.strerror(exc.errno)} (another process holds it: "
                "stop it or choose another address)")
    return f"{config_path}: {exc}"


def _port(_: click.Context, __: click.Parameter, value: int | None) -> int | None:
    """A TCP port, 0-65535 (0: pick a free one)."""
    if value is not None and not 0 <= value <= 65535:
        raise click.BadParameter(f"{value} is not a port (0-65535; 0 picks a free one)")
    return value


@main.command()
@click.option("--port-proxy", "--port", "proxy", type=int, callback=_port, metavar="PORT",
              help="the demo gateway's public port  [default: 8080]")
@click.option("--port-admin", "admin", type=int, callback=_port, metavar="PORT",
              help="its admin port (/metrics, /readyz)  [default: 9090]")
@click.option("--port-issuer", "issuer", type=int, callback=_port, metavar="PORT",
              help="the demo issuer (discovery, JWKS, /token)  [default: 9400]")
@click.option("--port-upstream", "upstream", type=int, callback=_port, metavar="PORT",
              help="the echo upstream  [default: 9401]")
@click.option("--free-ports", is_flag=True, help="pick a free port for each port not given (0 picks one too)")
def demo(proxy: int | None, admin: int | None, issuer: int | None, upstream: int | None, free_ports: bool) -> None:
    """Run an embedded demo on 127.0.0.1: an issuer, an echo upstream and a gateway in front.

    Prints the demo's tokens as shell variables and a ready-to-paste command for each
    outcome (401, 403, 200, DPoP, claims rules, step-up), all using the ports in use; Ctrl-C
    stops it. Another demo or service on a default port: choose ports with --port-*, or let
    --free-ports pick them.
    """
    from .demo import run_demo

    run_async(run_demo(demo_ports(proxy, admin, issuer, upstream, free_ports)))


def demo_ports(proxy: int | None, admin: int | None, issuer: int | None, upstream: int | None,
               free_ports: bool) -> DemoPorts:
    """The four demo ports: as given, else the default, else (``--free-ports`` or 0) a free one."""
    from .demo import DemoPorts, free_port

    defaults = DemoPorts()
    given = {"proxy": proxy, "admin": admin, "issuer": issuer, "upstream": upstream}
    chosen = {name: port for name, port in given.items() if port}
    if len(set(chosen.values())) < len(chosen):
        raise click.UsageError("the demo ports must differ: "
                               + ", ".join(f"--port-{name} {port}" for name, port in chosen.items()))
    ports: dict[str, int] = {}
    for name, port in given.items():
        default = getattr(defaults, "gateway" if name == "proxy" else name)
        if port:
            ports[name] = port
        elif port == 0 or free_ports:
            ports[name] = free_port(avoid=set(chosen.values()) | set(ports.values()))
        else:
            ports[name] = default
    for name, port in ports.items():  # a default port taken by another one given
        clash = next((other for other, value in ports.items() if other != name and value == port), None)
        if clash is not None and name not in chosen:
            raise click.UsageError(f"--port-{clash} {port} is also the {name} port's default: give --port-{name} "
                                   "too, or --free-ports")
    return DemoPorts(gateway=ports["proxy"], issuer=ports["issuer"], upstream=ports["upstream"], admin=ports["admin"])


# the flags are the client's own (argparse), passed through untouched, --help included
@main.command("dpop-request", add_help_option=False,
              context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def dpop_request(args: tuple[str, ...]) -> None:
    """Make a DPoP (RFC 9449) request with a fresh proof (--help lists the flags)."""
    from .tokens.dpop_client import main as client_main

    sys.exit(client_main(list(args), prog="gateway dpop-request"))


if __name__ == "__main__":  # pragma: no cover
    main()
