"""TLS from the gateway to an ``https://`` upstream: verified always, mutual when asked.

The upstream's certificate must chain to ``tls.ca_file`` (else the system's trust store) and
name the upstream's host, or ``tls.server_name`` when set (which is also the SNI sent). There
is no switch to skip verification: an upstream with a self-signed certificate is trusted by
naming that certificate (or its CA) in ``ca_file``. ``tls.certificate`` and ``tls.key`` present
a client certificate to upstreams that require one (mutual TLS).

A handshake that fails verification is answered 502 ``upstream_unavailable`` like any
connection failure, and logged (at most once per ``LOG_INTERVAL`` per upstream) with the reason.
"""

from __future__ import annotations

import logging
import ssl
import time

from .config import UpstreamConfig
from .config.files import TLSFileProblem, client_context

# the contexts are built by the configuration's loader (a bad file is a configuration error there)
__all__ = ["LOG_INTERVAL", "TLSFileProblem", "client_context", "report_failure", "server_name", "upstream_context"]

log = logging.getLogger("gateway.upstream_tls")

LOG_INTERVAL = 10.0
_logged: dict[str, float] = {}  # upstream -> when a TLS failure was last logged (one entry per upstream)


def upstream_context(config: UpstreamConfig) -> ssl.SSLContext | None:
    """The context of an ``https://`` upstream; None for plain HTTP."""
    if not config.url.startswith("https://"):
        return None
    return client_context(config.tls)


def server_name(config: UpstreamConfig) -> str | None:
    """The SNI and certificate name to use instead of the URL's host, when configured."""
    return config.tls.server_name if config.tls is not None else None


def report_failure(upstream: str, error: BaseException) -> None:
    """Log why TLS to ``upstream`` failed (verification, handshake), rate-limited per upstream."""
    now = time.monotonic()
    if now - _logged.get(upstream, float("-inf")) < LOG_INTERVAL:
        return
    _logged[upstream] = now
    log.warning("tls to upstream failed", extra={"upstream": upstream, "error": str(error) or type(error).__name__})
