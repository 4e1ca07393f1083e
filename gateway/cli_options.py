"""The options naming what a command acts on (a token, family, subject, client, key or trace), one
set for ``gateway revoke``, ``gateway audit`` and ``gateway incident``. Offline: imports only click.

Each option has one spelling and one name in Python whatever command takes it (the revocation
targets' names: ``jti``, ``token``, ``fingerprint``, ``family``, ``subject``, ``client``; then
``key_thumbprint``, ``trace_id``) and one description; a command adds what is particular to it
(``notes``). ``--subject`` and ``--sub`` are the same option: both spellings are a contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import click

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TargetOption:
    flags: tuple[str, ...]
    description: str


TARGET_OPTIONS: dict[str, TargetOption] = {
    "jti": TargetOption(("--jti",), "a token, by its jti claim"),
    "token": TargetOption(("--token",), "a raw token: hashed here and used by its fingerprint, never printed"),
    "fingerprint": TargetOption(("--fingerprint",), "a token, by its fingerprint (the hex SHA-256 of the token)"),
    "family": TargetOption(("--family",), "a token family (the revocation.family_claim claim, sid by default)"),
    "subject": TargetOption(("--subject", "--sub"), "a subject (sub claim): every token issued to it"),
    "client": TargetOption(("--client",), "a client (client_id claim): every token issued to it"),
    "key_thumbprint": TargetOption(("--key-thumbprint",), "a DPoP key (jkt) or a client certificate (x5t#S256)"),
    "trace_id": TargetOption(("--trace-id",), "a W3C trace id (32 hex digits; docs/tracing.md)"),
}


def target_options(*names: str, notes: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """The target options ``names`` (keys of ``TARGET_OPTIONS``) in that order in --help; ``notes``
    adds, per option, what it means for this command ("issued before --before")."""
    notes = notes or {}

    def decorate(command: F) -> F:
        decorated: Any = command
        for name in reversed(names):
            option = TARGET_OPTIONS[name]
            text = option.description + (f"; {notes[name]}" if name in notes else "")
            decorated = click.option(*option.flags, name, help=text)(decorated)
        return cast(F, decorated)

    return decorate
