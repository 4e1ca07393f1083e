"""The gateway terminating TLS itself: the listener's server context and the peer's certificate.

``server_ssl_context`` is built once per listener at start-up (the TLS layer checks the chain
against the client CA bundle, so a certificate from another CA never completes a handshake);
``peer_certificate`` runs per request.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .certificate import CertificateRejected, ClientCertificate, certificate_from_der

if TYPE_CHECKING:  # aiohttp is not imported at run time here: `gateway serve`'s supervisor never loads it
    from aiohttp import web

ClientCertificateMode = Literal["none", "optional", "required"]
_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """The ``tls:`` section of a listener: file paths and the client certificate policy.

    ``client_certificates``: ``none`` never asks for one; ``optional`` asks, and a certificate
    that is presented must chain to ``client_ca``; ``required`` refuses the handshake without one.
    """

    certificate: str
    key: str
    client_ca: str | None = None
    client_certificates: ClientCertificateMode = "none"
    minimum_version: Literal["1.2", "1.3"] = "1.2"

    def __post_init__(self) -> None:
        if self.client_certificates not in _VERIFY_MODES:
            raise ValueError("client_certificates must be none, optional or required")
        if self.minimum_version not in _TLS_VERSIONS:
            raise ValueError("minimum_version must be 1.2 or 1.3")
        if self.client_certificates != "none" and not self.client_ca:
            raise ValueError(f"client_certificates: {self.client_certificates} needs client_ca (a CA bundle file)")


def server_ssl_context(settings: TLSSettings) -> ssl.SSLContext:
    """The listener's server-side context; ValueError names the file that could not be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _TLS_VERSIONS[settings.minimum_version]
    # no renegotiation: a client could otherwise swap certificates mid-connection
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(settings.certificate, settings.key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"tls: cannot use certificate {settings.certificate} with key {settings.key}: {_os_reason(exc)}"
        ) from None
    if settings.client_ca:
        try:
            context.load_verify_locations(cafile=settings.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"tls: cannot load client_ca {settings.client_ca}: {_os_reason(exc)}") from None
    context.verify_mode = _VERIFY_MODES[settings.client_certificates]
    return context


def _os_reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or "not a valid PEM file (or the key does not match the certificate)"
    return exc.strerror or type(exc).__name__


def peer_certificate_der(request: web.BaseRequest) -> bytes | None:
    """The DER of the certificate the TLS client presented; None on plain HTTP or without one."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der if isinstance(der, bytes) and der else None


def peer_certificate(request: web.BaseRequest) -> ClientCertificate | CertificateRejected | None:
    """The presented certificate parsed (None when none was presented)."""
    der = peer_certificate_der(request)
    return None if der is None else certificate_from_der(der)
