"""DPoP (RFC 9449) at the resource server: proof checks, server nonces, key thumbprints.

``verify_proof`` runs the checks of RFC 9449 section 4.3 on the ``DPoP`` request header and
then records the proof's ``jti`` in the replay cache. The ``jti`` is recorded last, after
every other check passed: a copy of a proof sent first to another URL (or with a bad
signature) must not burn the ``jti`` of the legitimate request.

The outcome is a value, never an exception: a ``DPoPProof`` (the RFC 7638 thumbprint of the
proof key, to be compared with the token's ``cnf.jkt``) or a ``DPoPError`` whose ``failure``
says which RFC 9449 section 7.1 error to send and whose ``detail`` is a fixed, client-safe
sentence (it never echoes a value from the request, so it can go into ``error_description``).

The ``htu`` comparison normalises both sides per RFC 3986 sections 6.2.2 and 6.2.3 (RFC 9449
section 4.3 step 9): lowercase scheme and host, default port dropped, empty path as ``/``,
percent-encodings of unreserved characters decoded and the others upper-cased, dot-segments
removed, query and fragment ignored.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import math
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

from .replay import ReplayCache, Seen

ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
# alg -> (kty, allowed crv): RFC 7518 section 3.4 ties each ES* to one curve
_KEY_SHAPE: Final[dict[str, tuple[str, frozenset[str]]]] = {
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    **{alg: ("RSA", frozenset()) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
}
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_THUMBPRINT_MEMBERS: Final = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}

MAX_PROOF_LENGTH: Final = 8192  # bounds the work a hostile header can ask for (an RSA key is ~700 chars)
MAX_JTI_LENGTH: Final = 512
RSA_BITS: Final = (2048, 8192)  # below: too weak (RFC 7518 section 3.3); above: costly to verify
RSA_MAX_EXPONENT: Final = 2**64  # a huge public exponent makes verification as slow as signing

_COMPACT_JWS: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")
_URI_CHARS: Final = re.compile(r"[!-~]+")  # printable ASCII without space: a URI, nothing urlsplit would tidy
_PERCENT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_VERIFIERS: Final = {alg: get_default_algorithms()[alg] for alg in ASYMMETRIC_ALGORITHMS}
_PRIVATE_KEY_TYPES: Final = (
    ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey,
)


# --- outcome values -------------------------------------------------------------------------


class ProofFailure(str, Enum):
    """Why a proof was refused, with the RFC 9449 section 7.1 error and the HTTP status to send."""

    def __new__(cls, label: str, status: int, error: str) -> ProofFailure:
        member = str.__new__(cls, label)
        member._value_ = label
        member.status = status
        member.error = error
        return member

    status: int
    error: str

    INVALID = ("invalid_dpop_proof", 401, "invalid_dpop_proof")
    REPLAYED = ("dpop_replayed", 401, "invalid_dpop_proof")  # own label: a replayed proof is an incident signal
    USE_NONCE = ("use_dpop_nonce", 401, "use_dpop_nonce")  # send a fresh DPoP-Nonce header with it
    UNAVAILABLE = ("dpop_replay_unavailable", 503, "temporarily_unavailable")


@dataclass(frozen=True, slots=True)
class DPoPProof:
    """A proof that passed every check: ``jkt`` is the RFC 7638 thumbprint of its key."""

    jkt: str
    jti: str
    alg: str
    iat: float


@dataclass(frozen=True, slots=True)
class DPoPError:
    failure: ProofFailure
    detail: str


@dataclass(frozen=True, slots=True)
class DPoPSettings:
    """Per issuer: accepted algorithms, the ``iat`` window and whether the gateway's nonce is required.

    A proof is accepted when ``now - max_age <= iat <= now + leeway``.
    """

    algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS
    max_age: float = 60.0
    leeway: float = 5.0  # future iat tolerated: the client's clock may run ahead of ours
    nonce: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.algorithms) - ASYMMETRIC_ALGORITHMS
        if unknown or not self.algorithms:
            allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
            raise ValueError(f"DPoP algorithms must be a non-empty subset of {allowed}")
        if not (self.max_age > 0 and self.leeway >= 0):
            raise ValueError("DPoP max_age must be positive and leeway not negative")

    @property
    def replay_ttl(self) -> float:
        """How long a jti is remembered: the longest a proof stays acceptable, plus replica clock skew."""
        return self.max_age + 2 * self.leeway


class _Refused(Exception):
    def __init__(self, failure: ProofFailure, detail: str) -> None:
        super().__init__(detail)
        self.error = DPoPError(failure, detail)


def _invalid(detail: str) -> _Refused:
    return _Refused(ProofFailure.INVALID, detail)


def challenge(algorithms: frozenset[str], realm: str, error: DPoPError | None = None) -> str:
    """The ``WWW-Authenticate: DPoP ...`` value (RFC 9449 section 7.1), sent beside the Bearer one.

    ``error`` adds ``error`` and ``error_description`` for a 401 failure; a 503 (UNAVAILABLE)
    is not the client's fault and gets the bare challenge.
    """
    params = [f"realm={_quote(realm)}"]
    if error is not None and error.failure.status == 401:
        params += [f"error={_quote(error.failure.error)}", f"error_description={_quote(error.detail)}"]
    params.append(f"algs={_quote(' '.join(sorted(algorithms)))}")
    return "DPoP " + ", ".join(params)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- server nonces (RFC 9449 section 8) -----------------------------------------------------


class NonceSource:
    """Nonces the gateway issues: base64url(HMAC-SHA256(secret, time bucket)).

    Every replica given the same ``secret`` issues and accepts the same nonces, with no shared
    state. The previous, current and next bucket are accepted: a nonce stays valid for at least
    one full ``period`` after it was issued, and replicas whose clocks differ a little agree.
    Without a secret each process draws its own, so nonces are per process.
    """

    def __init__(self, secret: bytes | None = None, period: float = 60.0) -> None:
        if secret is not None and len(secret) < 16:
            raise ValueError("the DPoP nonce secret must be at least 16 bytes")
        if period <= 0:
            raise ValueError("the DPoP nonce period must be positive")
        self._secret = secret if secret is not None else os.urandom(32)
        self.period = period

    def current(self, now: float | None = None) -> str:
        """The nonce to send in ``DPoP-Nonce`` now."""
        return self._for_bucket(self._bucket(now))

    def accepts(self, nonce: str, now: float | None = None) -> bool:
        bucket = self._bucket(now)
        candidate = nonce.encode("utf-8", "surrogatepass")
        # compare with all three so the time taken does not say which bucket matched
        buckets = (bucket - 1, bucket, bucket + 1)
        return any([hmac.compare_digest(candidate, self._for_bucket(b).encode()) for b in buckets])

    def _bucket(self, now: float | None) -> int:
        return math.floor((time.time() if now is None else now) / self.period)

    def _for_bucket(self, bucket: int) -> str:
        mac = hmac.new(self._secret, b"tokengate-dpop-nonce:" + bucket.to_bytes(8, "big", signed=True), "sha256")
        return _b64(mac.digest())


# --- htu normalisation ----------------------------------------------------------------------


def normalize_uri(uri: str) -> str | None:
    """``scheme://host[:port]/path`` normalised for comparison, query and fragment dropped; None if malformed."""
    if not _URI_CHARS.fullmatch(uri):
        return None
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    scheme = parts.scheme.lower()
    authority = _authority(scheme, parts.netloc)
    path = _normalize_path(parts.path or "/")
    if authority is None or path is None:
        return None
    return f"{scheme}://{authority}{path}"


def request_uri(scheme: str, host: str, path: str) -> str | None:
    """The normalised URI of a request from its scheme, ``Host`` value and path (query allowed, ignored)."""
    if "/" in host or "?" in host or "#" in host or not path.startswith("/"):
        return None
    return normalize_uri(f"{scheme}://{host}{path}")


def _authority(scheme: str, netloc: str) -> str | None:
    """Lowercase host, default port dropped; None for userinfo, a bad port or a scheme other than http(s)."""
    if scheme not in _DEFAULT_PORTS or not netloc or "@" in netloc:
        return None
    if netloc.startswith("["):
        end = netloc.find("]")
        host, port = (netloc[: end + 1], netloc[end + 1 :]) if end > 0 else ("", "")
    else:
        host, sep, rest = netloc.partition(":")
        port = sep + rest
    if not host or host == "[]" or (port and not port.startswith(":")):
        return None
    digits = port[1:]
    if digits and not (digits.isascii() and digits.isdigit() and int(digits) <= 65535):
        return None
    keep_port = digits and int(digits) != _DEFAULT_PORTS[scheme]
    return host.lower() + (f":{int(digits)}" if keep_port else "")


def _normalize_path(path: str) -> str | None:
    if not path.startswith("/") or _BAD_PERCENT.search(path):
        return None
    return _remove_dot_segments(_PERCENT.sub(_percent_case, path))


def _percent_case(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    trailing = "/" if segments[-1] in (".", "..") and kept else ""
    return "/" + "/".join(kept) + trailing


# --- thumbprints and token binding ----------------------------------------------------------


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of a public EC, RSA or OKP JWK."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError("the JWK's kty is not EC, RSA or OKP")
    values = {name: jwk.get(name) for name in members}
    if not all(isinstance(v, str) and v for v in values.values()):
        raise ValueError("the JWK lacks a required member")
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode()).digest())


def public_jwk(key: Any) -> dict[str, str]:
    """The public JWK of a cryptography EC, RSA or Ed25519/Ed448 key (private keys give their public half)."""
    public = key.public_key() if isinstance(key, _PRIVATE_KEY_TYPES) else key
    jwk = _full_jwk(public)
    return {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}


def _full_jwk(public: Any) -> dict[str, Any]:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(public, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return OKPAlgorithm.to_jwk(public, as_dict=True)
    raise ValueError("not an EC, RSA or EdDSA key")


def key_thumbprint(key: Any) -> str:
    """The ``cnf.jkt`` a token bound to this key must carry."""
    return jwk_thumbprint(public_jwk(key))


def confirmation(key: Any) -> dict[str, str]:
    """The ``cnf`` claim of a token bound to ``key`` (RFC 9449 section 6.1): ``{"jkt": ...}``."""
    return {"jkt": key_thumbprint(key)}


def token_jkt(claims: Mapping[str, Any]) -> str | None:
    """The token's ``cnf.jkt`` (JWT claims or introspection answer); None when it is not DPoP-bound.

    Raises ValueError for a malformed binding (``cnf`` not an object, ``jkt`` not a string):
    the caller must refuse such a token rather than treat it as unbound.
    """
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, Mapping):
        raise ValueError("the cnf claim is not an object")
    jkt = cnf.get("jkt")
    if jkt is None:
        return None
    if not isinstance(jkt, str) or not jkt:
        raise ValueError("cnf.jkt is not a string")
    return jkt


def binding_matches(jkt: str, proof: DPoPProof) -> bool:
    """True when the token's ``cnf.jkt`` names the proof's key."""
    return hmac.compare_digest(jkt.encode("utf-8", "surrogatepass"), proof.jkt.encode())


def access_token_hash(access_token: str) -> str:
    """The ``ath`` claim: base64url(SHA-256(access token))."""
    return _b64(hashlib.sha256(access_token.encode("utf-8", "surrogateescape")).digest())


def replay_key(proof: DPoPProof) -> str:
    """The replay-cache key: a hash of the key thumbprint and jti (fixed length, nothing raw stored)."""
    digest = hashlib.sha256(f"{proof.jkt}.{proof.jti}".encode("utf-8", "surrogatepass")).digest()
    return _b64(digest)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- proof verification ---------------------------------------------------------------------


async def verify_proof(
    values: Sequence[str],
    *,
    access_token: str | None,
    method: str,
    uri: str,
    settings: DPoPSettings,
    replay: ReplayCache,
    nonces: NonceSource | None = None,
    now: float | None = None,
) -> DPoPProof | DPoPError:
    """Every check of RFC 9449 section 4.3, then the jti's first use in ``replay`` (one round trip)."""
    outcome = check_proof(
        values, access_token=access_token, method=method, uri=uri, settings=settings, nonces=nonces, now=now
    )
    if isinstance(outcome, DPoPError):
        return outcome
    seen = await replay.first_use(replay_key(outcome), settings.replay_ttl)
    if seen is Seen.FIRST:
        return outcome
    if seen is Seen.REPLAYED:
        return DPoPError(ProofFailure.REPLAYED, "the DPoP proof was already used")
    return DPoPError(ProofFailure.UNAVAILABLE, "DPoP proofs cannot be checked for replay right now")


def check_proof(
    values: Sequence[str],
    *,
    access_token: str | None,
    method: str,
    uri: str,
    settings: DPoPSettings,
    nonces: NonceSource | None = None,
    now: float | None = None,
) -> DPoPProof | DPoPError:
    """The stateless checks (everything but replay).

    ``values``: every ``DPoP`` header value of the request (exactly one is required).
    ``access_token``: the token sent with the proof (its hash must be the proof's ``ath``), None when none.
    ``uri``: the request's ``scheme://host/path`` as the client addressed it (``request_uri`` builds it).
    """
    if settings.nonce and nonces is None:
        raise ValueError("DPoP nonces are required but no NonceSource was given")
    at = time.time() if now is None else now
    try:
        proof = _single_proof(values)
        header = _header(proof, settings)
        claims = _verified_claims(proof, header)
        _check_request(claims, method, uri)
        iat = _check_time(claims, settings, at)
        jti = _check_token_and_jti(claims, access_token)
        _check_nonce(claims, settings, nonces, at)
    except _Refused as refused:
        return refused.error
    return DPoPProof(jkt=jwk_thumbprint(header["jwk"]), jti=jti, alg=header["alg"], iat=iat)


def _single_proof(values: Sequence[str]) -> str:
    if len(values) != 1:
        raise _invalid("exactly one DPoP header is required")
    proof = values[0].strip()
    if len(proof) > MAX_PROOF_LENGTH or not _COMPACT_JWS.fullmatch(proof):
        raise _invalid("the DPoP header is not a compact JWS")
    return proof


def _header(proof: str, settings: DPoPSettings) -> dict[str, Any]:
    header = _json_segment(proof.partition(".")[0])
    if not isinstance(header, dict):
        raise _invalid("the DPoP proof header is not a JSON object")
    if header.get("typ") != "dpop+jwt":
        raise _invalid("the DPoP proof typ must be dpop+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in settings.algorithms:
        raise _invalid("the DPoP proof alg is not accepted")
    if "crit" in header:
        raise _invalid("the DPoP proof has critical header parameters")
    _check_jwk(header.get("jwk"), alg)
    return header


def _json_segment(segment: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):  # bad base64, UTF-8 or JSON; JSON nested deeper than Python recurses
        return None


def _check_jwk(jwk: Any, alg: str) -> None:
    if not isinstance(jwk, dict):
        raise _invalid("the DPoP proof header has no jwk")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise _invalid("the DPoP proof jwk contains private key material")
    kty, curves = _KEY_SHAPE[alg]
    if jwk.get("kty") != kty or (curves and not (isinstance(jwk.get("crv"), str) and jwk["crv"] in curves)):
        raise _invalid("the DPoP proof jwk does not fit its alg")
    members = _THUMBPRINT_MEMBERS[kty]
    if not all(isinstance(jwk.get(m), str) and _BASE64URL.fullmatch(jwk[m]) for m in members if m != "kty"):
        raise _invalid("the DPoP proof jwk is malformed")


def _verified_claims(proof: str, header: dict[str, Any]) -> dict[str, Any]:
    alg = header["alg"]
    signing_input, _, signature = proof.rpartition(".")
    try:
        key = _public_key(alg, _key_members(header["jwk"]))
        valid = _VERIFIERS[alg].verify(signing_input.encode("ascii"), key, _unb64(signature))
    except _Refused:
        raise
    except (jwt.PyJWTError, ValueError, TypeError):
        raise _invalid("the DPoP proof cannot be verified with its jwk") from None
    if not valid:
        raise _invalid("the DPoP proof signature is invalid")
    claims = _json_segment(signing_input.partition(".")[2])
    if not isinstance(claims, dict):
        raise _invalid("the DPoP proof payload is not a JSON object")
    return claims


def _key_members(jwk: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The members that make the key (RFC 7638's): other members cannot change what verifies."""
    return tuple((name, jwk[name]) for name in _THUMBPRINT_MEMBERS[jwk["kty"]])


@functools.lru_cache(maxsize=4096)
def _public_key(alg: str, members: tuple[tuple[str, str], ...]) -> Any:
    """The key object of a proof's jwk. A client signs every proof with the same key, and building
    (and validating) the key is dearer than the signature check: cached by its members."""
    key = jwt.PyJWK(dict(members), algorithm=alg).key
    _check_rsa_size(key)
    return key


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _check_rsa_size(key: Any) -> None:
    if not isinstance(key, rsa.RSAPublicKey):
        return
    if not RSA_BITS[0] <= key.key_size <= RSA_BITS[1] or key.public_numbers().e > RSA_MAX_EXPONENT:
        raise _invalid("the DPoP proof RSA key size is not accepted")


def _check_request(claims: dict[str, Any], method: str, uri: str) -> None:
    if claims.get("htm") != method:
        raise _invalid("the DPoP proof htm does not match the request method")
    htu = claims.get("htu")
    expected = normalize_uri(uri)
    if expected is None:
        raise _invalid("the request URI cannot be compared with the DPoP proof htu")
    if not isinstance(htu, str) or normalize_uri(htu) != expected:
        raise _invalid("the DPoP proof htu does not match the request URI")


def _check_time(claims: dict[str, Any], settings: DPoPSettings, now: float) -> float:
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or not math.isfinite(iat):
        raise _invalid("the DPoP proof iat is missing or not a number")
    if iat < now - settings.max_age:
        raise _invalid("the DPoP proof is too old")
    if iat > now + settings.leeway:
        raise _invalid("the DPoP proof iat is in the future")
    return float(iat)


def _check_token_and_jti(claims: dict[str, Any], access_token: str | None) -> str:
    if access_token is not None:
        ath = claims.get("ath")
        if not isinstance(ath, str):
            raise _invalid("the DPoP proof has no ath for the access token")
        if not hmac.compare_digest(ath.encode("utf-8", "surrogatepass"), access_token_hash(access_token).encode()):
            raise _invalid("the DPoP proof ath does not match the access token")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise _invalid("the DPoP proof jti is missing or malformed")
    return jti


def _check_nonce(claims: dict[str, Any], settings: DPoPSettings, nonces: NonceSource | None, now: float) -> None:
    if not settings.nonce or nonces is None:
        return  # a nonce the gateway did not ask for (e.g. the authorization server's) is not ours to judge
    nonce = claims.get("nonce")
    if nonce is None:
        raise _Refused(ProofFailure.USE_NONCE, "the DPoP proof must carry the server's nonce")
    if not isinstance(nonce, str):
        raise _invalid("the DPoP proof nonce is not a string")
    if not nonces.accepts(nonce, now):
        raise _Refused(ProofFailure.USE_NONCE, "the DPoP proof's nonce is stale or unknown")


# --- client side: making a proof (the demo client, tests, benchmarks) -----------------------


@dataclass(frozen=True, slots=True)
class ProofRequest:
    method: str
    url: str
    access_token: str | None = None
    nonce: str | None = None
    iat: float | None = None
    jti: str | None = None
    extra_claims: dict[str, Any] = field(default_factory=dict)


def default_algorithm(key: Any) -> str:
    """ES256/ES384/ES512 by curve for EC keys, PS256 for RSA, EdDSA for Ed25519/Ed448."""
    jwk = public_jwk(key)
    if jwk["kty"] == "EC":
        return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[jwk["crv"]]
    return "PS256" if jwk["kty"] == "RSA" else "EdDSA"


def sign_proof(private_key: Any, request: ProofRequest, alg: str | None = None) -> str:
    """A DPoP proof for ``request`` signed with ``private_key`` (query and fragment left out of htu)."""
    parts = urlsplit(request.url)
    claims: dict[str, Any] = {
        "jti": request.jti or str(uuid.uuid4()),
        "htm": request.method,
        "htu": f"{parts.scheme}://{parts.netloc}{parts.path or '/'}",
        "iat": int(time.time()) if request.iat is None else request.iat,
        **request.extra_claims,
    }
    if request.access_token is not None:
        claims["ath"] = access_token_hash(request.access_token)
    if request.nonce is not None:
        claims["nonce"] = request.nonce
    headers = {"typ": "dpop+jwt", "jwk": public_jwk(private_key)}
    return jwt.encode(claims, private_key, algorithm=alg or default_algorithm(private_key), headers=headers)
