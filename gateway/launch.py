"""Start-up helpers shared by the commands and the worker processes: load the configuration or
exit, run a coroutine on uvloop. Runs once per process, offline of any request.

Imports nothing of the CLI, and the configuration only when it is asked for: ``gateway --help``
and the offline commands stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cli_errors import CommandError

if TYPE_CHECKING:
    from .config import GatewayConfig


def load_or_exit(path: str) -> GatewayConfig:
    """The validated config; else a CommandError: every problem on stderr, exit status 1 (a missing file too)."""
    from .config import ConfigError, load_config  # the models take a while to import: only when loading

    try:
        return load_config(path)
    except ConfigError as exc:
        raise CommandError(*exc.problems) from None


def run_async(main: object) -> None:
    """Run a coroutine on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        import asyncio

        asyncio.run(main)  # type: ignore[arg-type]
        return
    uvloop.run(main)  # type: ignore[arg-type]
