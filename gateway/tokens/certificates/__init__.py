"""Client certificates for mutual-TLS certificate-bound access tokens (RFC 8705).

Where the certificate comes from: the gateway terminating TLS itself (``tls``), or an ingress
forwarding it in a header, believed only from a trusted proxy (``forwarded``). What is checked
(``certificate``): that it parses, its validity period, and that its RFC 8705 thumbprint
``x5t#S256`` equals the token's ``cnf``.
"""

from .certificate import (
    MAX_CERTIFICATE_DER,
    CertificateProblem,
    CertificateRejected,
    ClientCertificate,
    certificate_from_der,
    certificate_from_pem,
    check_certificate_binding,
    check_validity,
    is_certificate_bound,
    thumbprint,
)
from .forwarded import (
    FORMATS,
    MAX_HEADER_LENGTH,
    MAX_XFCC_ELEMENTS,
    CertificateFormat,
    parse_forwarded_certificate,
    parse_pem_urlencoded,
    parse_xfcc,
    parse_xfcc_certificate,
)
from .tls import ClientCertificateMode, TLSSettings, peer_certificate, peer_certificate_der, server_ssl_context

__all__ = [
    "FORMATS", "MAX_CERTIFICATE_DER", "MAX_HEADER_LENGTH", "MAX_XFCC_ELEMENTS", "CertificateFormat",
    "CertificateProblem", "CertificateRejected", "ClientCertificate", "ClientCertificateMode", "TLSSettings",
    "certificate_from_der", "certificate_from_pem", "check_certificate_binding", "check_validity",
    "is_certificate_bound", "parse_forwarded_certificate", "parse_pem_urlencoded", "parse_xfcc",
    "parse_xfcc_certificate", "peer_certificate", "peer_certificate_der", "server_ssl_context", "thumbprint",
]
