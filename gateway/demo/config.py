"""The demo's configuration: ``demo.yaml`` with its addresses moved to the ports asked for. Offline."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import GatewayConfig

DEMO_CONFIG = Path(__file__).parent.parent / "demo.yaml"  # package data beside the gateway's modules


@dataclass(frozen=True)
class DemoPorts:
    """Where the demo listens, all on 127.0.0.1; the defaults are the addresses in ``demo.yaml``."""

    gateway: int = 8080
    issuer: int = 9400
    upstream: int = 9401
    admin: int = 9090


DEFAULT_PORTS = DemoPorts()  # demo.yaml's own addresses
_DEMO_ADDRESS = re.compile(r"127\.0\.0\.1:(8080|9400|9401|9090)\b")


def demo_config(ports: DemoPorts = DEFAULT_PORTS) -> GatewayConfig:
    """``demo.yaml`` with its four addresses moved to ``ports`` (in one pass: no port is rewritten twice)."""
    from ..config import parse_config

    defaults = DEFAULT_PORTS
    moved = {str(getattr(defaults, name)): str(getattr(ports, name)) for name in ("gateway", "issuer", "upstream",
                                                                                  "admin")}
    text = _DEMO_ADDRESS.sub(lambda m: f"127.0.0.1:{moved[m.group(1)]}", DEMO_CONFIG.read_text(encoding="utf-8"))
    return parse_config(text, str(DEMO_CONFIG))

