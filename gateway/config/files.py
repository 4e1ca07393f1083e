"""The files a configuration names, loaded now as ``serve`` will load them: a bad file is a
configuration error (``file:line: key: ...``), not a failure of the first request.

Upstream TLS contexts, the listener's certificate and key, the private_key_jwt signing key, the
revocation snapshot's signing key.
Runs when the file loads; the proxy and the introspection client reuse the same loaders at start.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ..tokens.certificates import TLSSettings, server_ssl_context
from .connections import RevocationSnapshotConfig, UpstreamTLSConfig
from .errors import Problem
from .sections import TLSConfig

if TYPE_CHECKING:
    from .document import GatewayConfig

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# --- upstream TLS ----------------------------------------------------------------------------


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


# --- the listener's TLS ---------------------------------------------------------------------


def tls_settings(tls: TLSConfig) -> TLSSettings:
    """The ``certificates.TLSSettings`` of a ``tls:`` section."""
    return TLSSettings(tls.certificate, tls.key, tls.client_ca, tls.client_certificates, tls.minimum_version)


# --- the private_key_jwt key -----------------------------------------------------------------


def load_private_key(path: str) -> Any:
    """The PEM private key for private_key_jwt (unencrypted PKCS#8 or traditional format)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"introspection private_key_file {path}: cannot read: {exc.strerror}") from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"introspection private_key_file {path}: not an unencrypted PEM private key") from None


def _key_kind(key: Any) -> str:
    """What a private key is, in the words of ``_NEEDS``."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "an RSA key"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC {_CURVES.get(key.curve.name, key.curve.name)} key"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return "an Ed25519 or Ed448 key"
    return f"a {type(key).__name__.removeprefix('_')}"


_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_NEEDS = {
    "RS": "an RSA key", "PS": "an RSA key", "ES256": "an EC P-256 key", "ES384": "an EC P-384 key",
    "ES512": "an EC P-521 key", "EdDSA": "an Ed25519 or Ed448 key",
}


class KeyProblem(ValueError):
    """A private_key_jwt key that cannot sign: ``field`` is the configuration key at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def signing_key(path: str, algorithm: str) -> Any:
    """The private_key_jwt key, able to sign ``algorithm``; KeyProblem naming the key at fault otherwise.

    Checked when the configuration is loaded (``gateway check-config`` and ``serve``), so that a
    missing file or an RSA key configured for ES256 is a configuration error, not a failure of
    the first introspection call (PyJWT would say "Expecting a PEM-formatted key").
    """
    try:
        key = load_private_key(path)
    except ValueError as exc:
        raise KeyProblem("private_key_file", str(exc).removeprefix("introspection private_key_file ")) from None
    needs = _NEEDS.get(algorithm) or _NEEDS.get(algorithm[:2], "")
    have = _key_kind(key)
    if have != needs:
        raise KeyProblem("private_key_algorithm", f"{algorithm} needs {needs}, but {path} holds {have}")
    return key


# --- the revocation snapshot's signing key ----------------------------------------------------

SNAPSHOT_KEY_BYTES = 32  # HMAC-SHA256: a key shorter than its output would be the weak part


def snapshot_key(settings: RevocationSnapshotConfig) -> bytes:
    """The secret that signs and checks the revocation snapshot; KeyProblem naming the key at fault.

    From ``key_file`` (its bytes; a final line break is not part of the key) or ``key_env``.
    """
    if settings.key_file is not None:
        field, where = "key_file", settings.key_file
        try:
            secret = Path(settings.key_file).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise KeyProblem(field, f"cannot read {settings.key_file}: {exc.strerror or exc}") from None
    else:
        assert settings.key_env is not None  # the model holds exactly one of them
        field, where = "key_env", f"${settings.key_env}"
        value = os.environ.get(settings.key_env)
        if not value:
            raise KeyProblem(field, f"the environment variable {settings.key_env} is not set")
        secret = value.encode()
    if len(secret) < SNAPSHOT_KEY_BYTES:
        raise KeyProblem(field, f"the key in {where} is {len(secret)} bytes long: it must be at least "
                         f"{SNAPSHOT_KEY_BYTES} (e.g. head -c 48 /dev/urandom | base64)")
    return secret


# --- the checks --------------------------------------------------------------------------------


def check_tls(tls: TLSConfig | None, problem: Problem) -> None:
    """The files must exist and load now: a bad certificate or key is a configuration error, not a crash."""
    if tls is None:
        return
    unreadable = False
    for key in ("certificate", "key", "client_ca"):
        path = getattr(tls, key)
        if path is not None and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            problem(["tls", key], f"cannot read {path}")
            unreadable = True
    if unreadable:
        return
    try:
        server_ssl_context(tls_settings(tls))
    except ValueError as exc:
        message = str(exc).removeprefix("tls: ")
        problem(["tls", "client_ca" if message.startswith("cannot load client_ca") else "certificate"], message)


def check_introspection_keys(config: GatewayConfig, problem: Problem) -> None:
    """A private_key_jwt key must load and suit its algorithm now, as serve will need it."""
    for index, issuer in enumerate(config.issuers):
        settings = issuer.introspection
        if settings is None or settings.auth_method != "private_key_jwt" or settings.private_key_file is None:
            continue
        try:
            signing_key(settings.private_key_file, settings.private_key_algorithm)
        except KeyProblem as exc:
            problem(["issuers", index, "introspection", exc.field], str(exc))


def check_snapshot_key(config: GatewayConfig, problem: Problem) -> None:
    """The revocation snapshot's key loads now, as serve will need it."""
    settings = config.revocation.snapshot
    if settings is None:
        return
    if not config.revocation.shared:
        problem(["revocation", "snapshot"], "applies to a list in Redis only (redis_url or sentinel)")
        return
    try:
        snapshot_key(settings)
    except KeyProblem as exc:
        problem(["revocation", "snapshot", exc.field], str(exc))


def check_upstream_tls(config: GatewayConfig, problem: Problem) -> None:
    """Each upstream's ``tls`` files load now."""
    for name, upstream in config.upstreams.items():
        if upstream.tls is None:
            continue
        try:
            client_context(upstream.tls)
        except TLSFileProblem as exc:
            problem(["upstreams", name, "tls", exc.key], str(exc))
