"""``gateway demo``: issuer, upstream and gateway started together on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import os
import socket
from collections.abc import Collection

from .config import DEFAULT_PORTS, DEMO_CONFIG, DemoPorts, demo_config
from .instructions import demo_instructions
from .issuer import DemoIssuer
from .upstream import EchoUpstream


def free_port(avoid: Collection[int] = ()) -> int:
    """A port on 127.0.0.1 that nothing listens on now (bound once, then released), not in ``avoid``."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


async def run_demo(ports: DemoPorts = DEFAULT_PORTS) -> None:
    """Start issuer, upstream and gateway on ``ports``; print ready commands; run until Ctrl-C."""
    from ..logs import setup_logging
    from ..runtime import Gateway
    from ..server import serve

    os.environ.setdefault("DEMO_AUDIT_PATH", "/tmp/tokengate-demo/audit.jsonl")  # noqa: S108 - a demo default
    setup_logging("warning")
    issuer = DemoIssuer(issuer=f"http://127.0.0.1:{ports.issuer}")
    upstream = EchoUpstream()
    which = "issuer"
    try:
        await issuer.start(port=ports.issuer)
        which = "upstream"
        await upstream.start(port=ports.upstream)
    except OSError as exc:  # most likely another demo still running: one line, not a traceback
        await upstream.stop()
        await issuer.stop()
        raise SystemExit(_cannot_listen(which, getattr(ports, which), exc)) from None
    gateway = Gateway(demo_config(ports), str(DEMO_CONFIG))
    try:
        for which, port in (("proxy", ports.gateway), ("admin", ports.admin)):
            _check_free(port, which)
        print(demo_instructions(issuer, upstream.url, ports, os.environ["DEMO_AUDIT_PATH"]), flush=True)
        await serve(gateway)
    finally:
        await upstream.stop()
        await issuer.stop()


def _check_free(port: int, which: str) -> None:
    """Refuse a gateway port in use before printing commands that would reach something else."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise SystemExit(_cannot_listen(which, port, exc)) from None


def _cannot_listen(which: str, port: int, exc: OSError) -> str:
    # asyncio's bind error puts its own sentence in strerror: the system's words for errno read better
    reason = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)
    return (f"gateway demo: cannot listen on 127.0.0.1:{port} (the {which} port): {reason}; "
            f"choose another with --port-{which}, or --free-ports")
