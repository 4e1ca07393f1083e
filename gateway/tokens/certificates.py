"""Client certificates for mutual-TLS certificate-bound access tokens (RFC 8705).

Where the certificate comes from:

- the gateway terminates TLS itself: ``server_ssl_context`` builds the listener's context from a
  ``TLSSettings`` (the TLS layer checks the chain against the client CA bundle, so a certificate
  from another CA never completes a handshake), and ``peer_certificate_der`` reads the presented
  certificate from an aiohttp request;
- an ingress terminates TLS and forwards the certificate in a header, believed only from a trusted
  proxy (the caller's job): ``pem-urlencoded`` (ingress-nginx ``ssl-client-cert``, the URL-encoded
  PEM of ``$ssl_client_escaped_cert``) or ``xfcc`` (Envoy ``X-Forwarded-Client-Cert``).

What is checked here: that the certificate parses, its validity period, and that its RFC 8705
thumbprint ``x5t#S256`` (base64url of the SHA-256 of the DER) equals the token's ``cnf``.

Header parsing never raises: hostile input yields a ``CertificateRejected`` value naming the
problem, never an exception and never the header's content.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal
from urllib.parse import unquote

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..reasons import Reason

FORMATS = ("pem-urlencoded", "xfcc")
CertificateFormat = Literal["pem-urlencoded", "xfcc"]

MAX_HEADER_LENGTH = 64 * 1024  # a leaf certificate is 1-3 KiB; a chain in XFCC a few times that
MAX_XFCC_ELEMENTS = 32  # one per proxy hop
MAX_CERTIFICATE_DER = 16 * 1024

_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*)-----END CERTIFICATE-----")
_PEM_ANY_BEGIN = "-----BEGIN "


class CertificateProblem(str, Enum):
    """Why a client certificate was not accepted; the value is safe for audit records and metrics."""

    def __new__(cls, label: str, message: str) -> CertificateProblem:
        member = str.__new__(cls, label)
        member._value_ = label
        member.message = message
        return member

    message: str

    MALFORMED_HEADER = ("malformed_header", "the forwarded client certificate header is malformed")
    NOT_A_CERTIFICATE = ("not_a_certificate", "the client certificate cannot be parsed")
    MISSING = ("missing", "no client certificate was presented")
    EXPIRED = ("expired", "the client certificate has expired")
    NOT_YET_VALID = ("not_yet_valid", "the client certificate is not valid yet")
    MISMATCH = ("mismatch", "the access token is bound to a different client certificate")


@dataclass(frozen=True, slots=True)
class CertificateRejected:
    """A certificate that was not accepted, with a short detail that never quotes the input."""

    problem: CertificateProblem
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.problem.message}: {self.detail}" if self.detail else self.problem.message

    @property
    def reason(self) -> Reason:
        """The shared decision reason (HTTP 401 ``invalid_token`` for all of them, RFC 8705 section 3)."""
        if self.problem is CertificateProblem.MISSING:
            return Reason.UNPROVEN_BINDING
        if self.problem is CertificateProblem.MISMATCH:
            return Reason.CLIENT_CERTIFICATE_MISMATCH
        return Reason.CLIENT_CERTIFICATE_INVALID


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A parsed client certificate: its DER, RFC 8705 thumbprint and validity period."""

    der: bytes
    thumbprint: str  # x5t#S256
    not_before: dt.datetime
    not_after: dt.datetime
    subject: str  # RFC 4514, for audit records


def thumbprint(der: bytes) -> str:
    """RFC 8705 section 3.1 ``x5t#S256``: base64url (no padding) of the SHA-256 of the DER."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


# parsed results by input: a client sends the same certificate on every request. Bounded: emptied when full.
_PARSED: dict[tuple[str, str | bytes], ClientCertificate | CertificateRejected] = {}
_PARSED_MAX = 1024
_CACHED_INPUT_MAX = 8192


def _remembered(
    kind: str, key: str | bytes, parse: Callable[[], ClientCertificate | CertificateRejected]
) -> ClientCertificate | CertificateRejected:
    """Parsing is pure (validity is checked separately, against the clock), so results can be reused."""
    found = _PARSED.get((kind, key))
    if found is None:
        found = parse()
        if len(key) <= _CACHED_INPUT_MAX:
            if len(_PARSED) >= _PARSED_MAX:
                _PARSED.clear()
            _PARSED[(kind, key)] = found
    return found


def certificate_from_der(der: bytes) -> ClientCertificate | CertificateRejected:
    """Parse a DER certificate; the thumbprint is taken over the bytes exactly as presented."""
    return _remembered("der", der, lambda: _certificate_from_der(der))


def _certificate_from_der(der: bytes) -> ClientCertificate | CertificateRejected:
    if not der or len(der) > MAX_CERTIFICATE_DER:
        return CertificateRejected(CertificateProblem.NOT_A_CERTIFICATE, "empty or too large")
    try:
        cert = x509.load_der_x509_certificate(der)
        exact = cert.public_bytes(serialization.Encoding.DER) == der  # no trailing bytes after the certificate
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        subject = cert.subject.rfc4514_string()
    except Exception:  # attacker-supplied bytes: ValueError, InvalidVersion, ... all mean "not a certificate"
        exact = False
    if not exact:
        return CertificateRejected(CertificateProblem.NOT_A_CERTIFICATE, "not a DER X.509 certificate")
    return ClientCertificate(der, thumbprint(der), not_before, not_after, subject)


def certificate_from_pem(pem: str) -> ClientCertificate | CertificateRejected:
    """Exactly one ``CERTIFICATE`` PEM block, base64 checked strictly."""
    blocks = _PEM_BLOCK.findall(pem)
    if len(blocks) != 1 or pem.count(_PEM_ANY_BEGIN) != 1:
        return CertificateRejected(CertificateProblem.NOT_A_CERTIFICATE, "expected exactly one PEM certificate")
    body = "".join(blocks[0].split())
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return CertificateRejected(CertificateProblem.NOT_A_CERTIFICATE, "the PEM body is not valid base64")
    return certificate_from_der(der)


def _url_decoded(value: str) -> str | None:
    """Percent-decoding that refuses invalid UTF-8 instead of replacing it; ``+`` stays ``+`` (base64)."""
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        return None


def parse_pem_urlencoded(value: str) -> ClientCertificate | CertificateRejected:
    """ingress-nginx ``ssl-client-cert``: the client certificate as URL-encoded PEM."""
    pem = _url_decoded(value.strip())
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
    pem = _url_decoded(certs[0])
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
        return _remembered(fmt, joined, lambda: parse_xfcc_certificate(joined))
    if fmt == "pem-urlencoded":
        if len(values) != 1:
            return CertificateRejected(CertificateProblem.MALFORMED_HEADER, "more than one header line")
        return _remembered(fmt, values[0], lambda: parse_pem_urlencoded(values[0]))
    return CertificateRejected(CertificateProblem.MALFORMED_HEADER, "unknown certificate header format")


# --- checks ---------------------------------------------------------------------------------------


def check_validity(
    cert: ClientCertificate, *, now: dt.datetime | None = None, leeway: float = 0.0
) -> CertificateRejected | None:
    """Refuse a certificate outside its validity period (``leeway`` seconds either way)."""
    moment = now or dt.datetime.now(dt.UTC)
    slack = dt.timedelta(seconds=leeway)
    if moment > cert.not_after + slack:
        return CertificateRejected(CertificateProblem.EXPIRED, f"not after {cert.not_after.isoformat()}")
    if moment < cert.not_before - slack:
        return CertificateRejected(CertificateProblem.NOT_YET_VALID, f"not before {cert.not_before.isoformat()}")
    return None


def _cnf(claims: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cnf = claims.get("cnf")
    return cnf if isinstance(cnf, Mapping) else None


def is_certificate_bound(claims: Mapping[str, Any]) -> bool:
    """True when the token's ``cnf`` claim carries ``x5t#S256`` (RFC 8705 section 3.1)."""
    cnf = _cnf(claims)
    return cnf is not None and "x5t#S256" in cnf


def check_certificate_binding(
    claims: Mapping[str, Any], cert: ClientCertificate | None
) -> CertificateRejected | None:
    """None when the certificate is the one the token is bound to.

    A bound token without a certificate is ``MISSING``; a different certificate, or a ``cnf``
    whose ``x5t#S256`` is not a string, is ``MISMATCH``. Call it only for bound tokens
    (``is_certificate_bound``); for an unbound token it reports ``MISMATCH``.
    """
    cnf = _cnf(claims)
    expected = cnf.get("x5t#S256") if cnf is not None else None
    if cert is None:
        return CertificateRejected(CertificateProblem.MISSING)
    if not isinstance(expected, str) or not expected.isascii() or not hmac.compare_digest(
        expected.encode("ascii"), cert.thumbprint.encode("ascii")
    ):
        return CertificateRejected(CertificateProblem.MISMATCH)
    return None


# --- the gateway terminating TLS ----------------------------------------------------------------

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
