"""Loading a configuration: read the YAML, validate it against the models, check keys against
each other, and report every problem at once as ``file:line: key: sentence``.

Runs for ``gateway check-config``, at start and on reload; never per request.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from .checks import cross_reference_problems
from .document import GatewayConfig
from .errors import ConfigError, data_loc, key_path, plain_message
from .yaml_source import line_of, read_document


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    """Parse and validate configuration text; raise ConfigError naming file, line and key.

    Every problem of the file is reported at once, in the order of its lines: unset
    variables, duplicate keys, the schema's errors and the names that refer to nothing.
    A YAML syntax error stops the reading, so it is reported alone, on the line to fix.
    """
    document = read_document(text, source)
    root = document.root
    found: list[str] = []
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(document.data)
    except ValidationError as exc:
        found = _validation_problems(source, root, exc)
    found += cross_reference_problems(source, root, config, document.data)
    # a value left empty by an unset variable fails other checks too: that follows, it is not news
    problems = document.problems + [p for p in found if _line(source, p) not in document.unset_lines]
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: _line(source, p)))
    assert config is not None  # no problem: validated
    return config


def _line(source: str, problem: str) -> int:
    """The line a ``source:line: ...`` problem names (0 when it names none)."""
    number = problem[len(source) + 1:].partition(":")[0]
    return int(number) if number.isdigit() else 0


def load_config(path: str | Path) -> GatewayConfig:
    """Read, parse and validate a configuration file."""
    if os.path.isdir(path):
        raise ConfigError([f"{path}: is a directory, not a configuration file"])
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: the file is not valid UTF-8"]) from None
    return parse_config(text, str(path))


def _validation_problems(source: str, root: yaml.Node | None, error: ValidationError) -> list[str]:
    """The schema's problems, one ``source:line: key: sentence`` each."""
    problems = []
    for item in error.errors():
        loc = data_loc(item)  # pydantic adds union members and validators to loc: only data keys stay
        message = plain_message(GatewayConfig, item, root)
        problems.append(f"{source}:{line_of(root, loc)}: {key_path(loc)}: {message}")
    return list(dict.fromkeys(problems))  # the members of a union (IPv4/IPv6 network) fail alike: said once
