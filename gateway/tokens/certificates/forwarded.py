"""Client certificates forwarded by a trusted ingress: ``pem-urlencoded`` and Envoy's ``xfcc``.

Runs per request. ``pem-urlencoded`` is ingress-nginx ``ssl-client-cert`` (the URL-encoded PEM of
``$ssl_client_escaped_cert``); ``xfcc`` is Envoy ``X-Forwarded-Client-Cert``. Believing the header
only from a trusted proxy is the caller's job. Header parsing never raises.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Literal

from .certificate import (
    CertificateProblem,
    CertificateRejected,
    ClientCertificate,
    certificate_from_pem,
    remembered,
    url_decoded,
)

FORMATS = ("pem-urlencoded", "xfcc")
CertificateFormat = Literal["pem-urlencoded", "xfcc"]

MAX_HEADER_LENGTH = 64 * 1024  # a leaf certificate is 1-3 KiB; a chain in XFCC a few times that
MAX_XFCC_ELEMENTS = 32  # one per proxy hop


def parse_pem_urlencoded(value: str) -> ClientCertificate | CertificateRejected:
    """ingress-nginx ``ssl-client-cert``: the client certificate as URL-encoded PEM."""
    pem = url_decoded(value.strip())
    if pem is None:
        return CertificateRejected(CertificateProblem.MALFORMED_HEADER, "invalid percent-encoding")
    return certificate_from_pem(pem)


# --- Envoy X-Forwarded-Client-Cert ---------------------------------------------------------------

XfccElement = list[tuple[str, str]]  # (lower-cased key, unquoted value) in order; keys may repeat (DNS)


class _XfccSyntaxError(Exception):
    pass


# a quoted value: \" stands for ", any other backslash is literal (Envoy escapes quotes only)
_XFCC_QUOTED = re.compile(r'"([^"\\]*(?:\\(?:"|(?!"))[^"\\]*)*)"')
_XFCC_UNQUOTED = re.compile(r'[^,;="]*')


def _xfcc_value(text: str, i: int) -> tuple[str, int]:
    """Read one value starting at ``i``; return it and the index of the separator that ends it."""
    if text.startswith('"', i):
        quoted = _XFCC_QUOTED.match(text, i)
        if quoted is None:
            raise _XfccSyntaxError("unterminated quoted value")
        end = quoted.end()
        if end < len(text) and text[end] not in ",;":
            raise _XfccSyntaxError("text after a closing quote")
        return quoted.group(1).replace('\\"', '"'), end
    plain = _XFCC_UNQUOTED.match(text, i)
    end = plain.end() if plain is not None else i
    if end < len(text) and text[end] in '="':
        raise _XfccSyntaxError("'=' or '\"' in an unquoted value")
    return text[i:end], end


def parse_xfcc(value: str) -> list[XfccElement] | CertificateRejected:
    """Split an XFCC header into elements of key-value pairs (Envoy's format).

    Elements are separated by ``,``, pairs by ``;``, key from value by ``=``; a value holding
    ``,``, ``;`` or ``=`` is double-quoted with ``"`` escaped as ``\\"``. Keys are case-insensitive.
    """
    if len(value) > MAX_HEADER_LENGTH:
        return CertificateRejected(CertificateProblem.MALFORMED_HEADER, "too long")
    elements: list[XfccElement] = []
    current: XfccElement = []
    i = 0
    try:
        while i < len(value):
            eq = value.find("=", i)
            if eq < 0:
                raise _XfccSyntaxError("a pair without '='")
            key = value[i:eq].strip().lower()
            if not key or not key.isascii() or not key.replace("-", "").isalnum():
                raise _XfccSyntaxError("an empty or invalid key")
            item, i = _xfcc_value(value, eq + 1)
            current.append((key, item))
            if i < len(value) and value[i] == ",":
                elements.append(current)
                current = []
                if len(elements) >= MAX_XFCC_ELEMENTS:
                    raise _XfccSyntaxError("too many elements")
            i += 1
            while i < len(value) and value[i] == " ":  # "a=b, c=d": optional whitespace after a separator
                i += 1
    except _XfccSyntaxError as exc:
        return CertificateRejected(CertificateProblem.MALFORMED_HEADER, f"XFCC: {exc}")
    if not current or value.rstrip().endswith((",", ";")):
        return CertificateRejected(CertificateProblem.MALFORMED_HEADER, "XFCC: an empty element")
    elements.append(current)
    return elements


def parse_xfcc_certificate(value: str) -> ClientCertificate | CertificateRejected:
    """The ``Cert`` of the LAST element: the one the nearest (trusted) Envoy appended.

    Earlier elements come from hops further away, possibly from the client itself; they are
    ignored. When the element also carries ``Hash`` (hex SHA-256 of the DER), it must agree.
    """
    elements = parse_xfcc(value)
    if isinstance(elements, CertificateRejected):
        return elements
    last = elements[-1]
    certs = [v for k, v in last if k == "cert"]
    if len(certs) != 1:
        detail = "no Cert in the last element" if not certs else "more than one Cert in the last element"
        return CertificateRejected(CertificateProblem.MALFORMED_HEADER, f"XFCC: {detail}")
    pem = url_decoded(certs[0])
    if pem is None:
        return CertificateRejected(CertificateProblem.MALFORMED_HEADER, "XFCC: invalid percent-encoding in Cert")
    found = certificate_from_pem(pem)
    hashes = [v for k, v in last if k == "hash"]
    if isinstance(found, ClientCertificate) and hashes:
        digest = hashlib.sha256(found.der).hexdigest()
        if len(hashes) != 1 or not hmac.compare_digest(hashes[0].lower().encode(), digest.encode()):
            return CertificateRejected(CertificateProblem.MALFORMED_HEADER, "XFCC: Hash does not match Cert")
    return found


def parse_forwarded_certificate(
    values: Sequence[str], fmt: CertificateFormat
) -> ClientCertificate | CertificateRejected:
    """The client certificate from the forwarded header's values (all lines of it, in order).

    No line at all is ``MISSING``. ``pem-urlencoded`` allows one line only; ``xfcc`` lines are
    joined with ``,`` as RFC 9110 section 5.3 combines field lines.
    """
    if not values:
        return CertificateRejected(CertificateProblem.MISSING)
    if sum(len(v) for v in values) > MAX_HEADER_LENGTH:
        return CertificateRejected(CertificateProblem.MALFORMED_HEADER, "too long")
    if fmt == "xfcc":
        joined = ",".join(values)
        return remembered(fmt, joined, lambda: parse_xfcc_certificate(joined))
    if fmt == "pem-urlencoded":
        if len(values) != 1:
            return CertificateRejected(CertificateProblem.MALFORMED_HEADER, "more than one header line")
        return remembered(fmt, values[0], lambda: parse_pem_urlencoded(values[0]))
    return CertificateRejected(CertificateProblem.MALFORMED_HEADER, "unknown certificate header format")
