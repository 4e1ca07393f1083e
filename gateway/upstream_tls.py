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
import os
import ssl
import time

from .config import UpstreamConfig, UpstreamTLSConfig

log = logging.getLogger("gateway.upstream_tls")

LOG_INTERVAL = 10.0
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_logged: dict[str, float] = {}  # upstream -> when a TLS failure was last logged (one entry per upstream)


class TLSFileProblem(ValueError):
    """A file of ``upstreams.<name>.tls`` that cannot be used; ``key`` is the configuration key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _readable(key: str, path: str) -> None:
    if not (os.path.isfile(path) and os.access(path, os.R_OK)):
        raise TLSFileProblem(key, f"cannot read {path}")


def client_context(settings: UpstreamTLSConfig | None) -> ssl.SSLContext:
    """The SSL context for connections to one upstream; TLSFileProblem when a file does not load."""
    settings = settings or UpstreamTLSConfig()
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # CERT_REQUIRED, hostname checked
    context.minimum_version = _VERSIONS[settings.minimum_version]
    if settings.ca_file is not None:
        _readable("ca_file", settings.ca_file)
        try:
            context.load_verify_locations(cafile=settings.ca_file)
        except (ssl.SSLError, ValueError):
            raise TLSFileProblem("ca_file", f"{settings.ca_file} holds no PEM certificate") from None
    if settings.certificate is not None and settings.key is not None:
        _readable("certificate", settings.certificate)
        _readable("key", settings.key)
        try:
            context.load_cert_chain(settings.certificate, settings.key)
        except ssl.SSLError:
            raise TLSFileProblem("certificate", f"{settings.certificate} and {settings.key} are not a PEM "
                                 "certificate and its unencrypted private key") from None
    return context


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
