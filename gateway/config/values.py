"""The value types shared by the sections of the configuration: durations, sizes, addresses, URLs.

Used when the file loads (offline or at start and reload), never per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..durations import parse_duration

__all__ = ["HTTP_METHODS", "Address", "Algorithm", "Duration", "HttpUrl", "ListenAddress", "Method", "Model", "Size",
           "parse_address", "parse_duration", "parse_size"]

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


def parse_size(value: Any) -> int:
    """``10MiB``, ``512KB`` or a number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size like 10MiB or 1048576")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


@dataclass(frozen=True)
class Address:
    """A ``host:port`` listen address (``[::1]:8080`` for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: Any) -> Address:
    """``host:port`` or ``[v6]:port`` -> Address; ValueError otherwise."""
    if isinstance(value, Address):
        return value
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not a host:port address")
    return Address(host.strip("[]") or "0.0.0.0", int(port))


def _absolute_http_url(value: Any) -> str:
    text = str(value)
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"{text!r} is not an absolute http(s) URL")
    return text.rstrip("/") if text.count("/") > 2 else text


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
ListenAddress = Annotated[Address, BeforeValidator(parse_address)]
HttpUrl = Annotated[str, BeforeValidator(_absolute_http_url)]
Algorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
Method = Annotated[
    Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"],
    BeforeValidator(lambda v: str(v).upper()),
]


class Model(BaseModel):
    """A section of the file: unknown keys are refused, and a loaded configuration never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

