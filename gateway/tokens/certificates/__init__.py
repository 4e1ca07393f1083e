"""Client certificates for mutual-TLS certificate-bound access tokens (RFC 8705).

Where the certificate comes from: the gateway terminating TLS itself (``tls``), or an ingress
forwarding it in a header, believed only from a trusted proxy (``forwarded``). What is checked
(``certificate``): that it parses, its validity period, and that its RFC 8705 thumbprint
``x5t#S256`` equals the token's ``cnf``.
"""

from .certificate import (
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
    MAX_HEADER_LENGTH,
    MAX_XFCC_ELEMENTS,
    parse_forwarded_certificate,
    parse_xfcc,
)
from .tls import TLSSettings, peer_certificate, peer_certificate_der, server_ssl_context

__all__ = [
    "MAX_HEADER_LENGTH", "MAX_XFCC_ELEMENTS", "CertificateProblem", "CertificateRejected", "ClientCertificate",
    "TLSSettings", "certificate_from_der", "certificate_from_pem", "check_certificate_binding", "check_validity",
    "is_certificate_bound", "parse_forwarded_certificate", "parse_xfcc", "peer_certificate", "peer_certificate_der",
    "server_ssl_context", "thumbprint",
]
