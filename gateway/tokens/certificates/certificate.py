"""Client certificates (RFC 8705): the parsed value, why one is refused, and the token's binding to it.

Runs per request: parsing a DER or PEM certificate (results remembered by input), the validity
period check and the comparison of the RFC 8705 thumbprint ``x5t#S256`` with the token's ``cnf``.
Parsing never raises: hostile input yields a ``CertificateRejected`` value, never its content.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ...reasons import Reason
from ..jws import b64url_encode

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
    return b64url_encode(hashlib.sha256(der).digest())


# parsed results by input: a client sends the same certificate on every request. Bounded: emptied when full.
_PARSED: dict[tuple[str, str | bytes], ClientCertificate | CertificateRejected] = {}
_PARSED_MAX = 1024
_CACHED_INPUT_MAX = 8192


def remembered(
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
    return remembered("der", der, lambda: _certificate_from_der(der))


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


def url_decoded(value: str) -> str | None:
    """Percent-decoding that refuses invalid UTF-8 instead of replacing it; ``+`` stays ``+`` (base64)."""
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        return None


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
