"""The embedded demo: an issuer (discovery, JWKS, token minting, introspection) and an echo upstream.

``gateway demo`` (``runner``) runs both beside a gateway using ``demo.yaml`` (``config``); the
test suite uses the same issuer (``issuer``) and upstream (``upstream``) as real HTTP servers
on 127.0.0.1. Nothing here runs in a gateway serving traffic.
"""

from __future__ import annotations

from .config import DemoPorts, demo_config
from .instructions import demo_instructions
from .issuer import DemoIssuer, SigningKey, certificate_confirmation
from .runner import free_port, run_demo
from .upstream import EchoUpstream

__all__ = [
    "DemoIssuer", "DemoPorts", "EchoUpstream", "SigningKey", "certificate_confirmation", "demo_config",
    "demo_instructions", "free_port", "run_demo",
]
