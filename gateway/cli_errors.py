"""Errors of the command-line interface: click exceptions carrying the message and the exit status.

A command raises one instead of printing and calling ``sys.exit``: click prints
``error: MESSAGE`` on standard error and exits with the class's status. Offline: imports only click.
"""

from __future__ import annotations

from typing import IO, Any

import click


class CommandError(click.ClickException):
    """The command failed: ``error: MESSAGE`` (one line per message) on stderr, exit status 1."""

    exit_code = 1

    def __init__(self, message: str, *more: str) -> None:
        super().__init__(message)
        self.messages = (message, *more)

    def show(self, file: IO[Any] | None = None) -> None:
        """Each message on its own line, as the gateway's commands have always printed errors."""
        for message in self.messages:
            click.echo(f"error: {message}", file=file, err=file is None)


class UnavailableError(CommandError):
    """What the command needs is not there (no input to read, no shared revocation list): exit status 2."""

    exit_code = 2


class ActionError(CommandError):
    """The command tried to act and the store or the gateway it acted on failed: exit status 3."""

    exit_code = 3

