"""The command-line interface: serve, check-config, demo (and revoke, audit, incident).

Every mode builds the same Gateway and runs the same decision path; the commands only
differ in how they are started.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from .config import ConfigError, GatewayConfig, load_config


def load_or_exit(path: str) -> GatewayConfig:
    """The validated config, or the problems on stderr and exit status 1."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)


def run_async(main: object) -> None:
    """Run a coroutine on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main)  # type: ignore[arg-type]
        return
    uvloop.run(main)  # type: ignore[arg-type]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokengate")
def main() -> None:
    """tokengate: an OAuth 2.0 token-enforcing reverse proxy."""


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a configuration file; exit 1 naming file, line and key on error."""
    config = load_or_exit(path)
    click.echo(
        f"{path}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams, {len(config.issuers)} issuers)"
    )


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="gateway YAML")
def serve(config_path: str) -> None:
    """Run the gateway until SIGTERM; SIGHUP or a change of the file reloads it (docs/operations.md)."""
    import os

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
        problems = exc.problems if isinstance(exc, ConfigError) else [f"{config_path}: {exc}"]
        for problem in problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)


@main.command()
@click.option("--port", default=8080, show_default=True, help="public port of the demo gateway")
def demo(port: int) -> None:
    """Run an embedded demo: issuer, upstream and gateway on 127.0.0.1."""
    from .demo import run_demo

    run_async(run_demo(port))


# the flags are the client's own (argparse), passed through untouched, --help included
@main.command("dpop-request", add_help_option=False,
              context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def dpop_request(args: tuple[str, ...]) -> None:
    """Make a DPoP (RFC 9449) request with a fresh proof (--help lists the flags)."""
    from .tokens.dpop_client import main as client_main

    sys.exit(client_main(list(args), prog="gateway dpop-request"))


from .audit.cli import audit_command, incident_command  # noqa: E402 - registered after main exists

main.add_command(audit_command)
main.add_command(incident_command)

from .revocation.cli import revoke as revoke_command  # noqa: E402 - registered after main exists

main.add_command(revoke_command)

if __name__ == "__main__":  # pragma: no cover
    main()
