"""The embedded demo: an issuer (discovery, JWKS, token minting, introspection) and an echo upstream.

``gateway demo`` runs both beside a gateway using ``config/demo.yaml``; the test suite uses
the same issuer and upstream as real HTTP servers on 127.0.0.1.

The issuer mints sender-constrained tokens too (docs/sender-constrained.md): a ``POST /token``
with a ``DPoP`` proof gets a token bound to the proof's key (``cnf.jkt``, RFC 9449 section 5),
and one made over mutual TLS (``start(ssl_context=...)``), or naming a ``client_certificate``
(a demo shortcut for plain HTTP), gets a token bound to that certificate (``cnf.x5t#S256``,
RFC 8705 section 3). ``mint(cnf=...)`` binds a token directly.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import os
import re
import secrets
import socket
import ssl
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .tokens.certificates import CertificateRejected, certificate_from_pem, peer_certificate_der, thumbprint
from .tokens.dpop import DPoPError, DPoPSettings, NonceSource, ProofFailure, confirmation, verify_proof
from .tokens.replay import MemoryReplayCache

if TYPE_CHECKING:
    from .config import GatewayConfig

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: PrivateKey

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None) -> SigningKey:
        private: PrivateKey
        if alg.startswith(("RS", "PS")):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "ES384":
            private = ec.generate_private_key(ec.SECP384R1())
        else:
            raise ValueError(f"unsupported demo algorithm {alg}")
        return cls(kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}", alg, private)

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk


@dataclass
class DemoIssuer:
    """A small but real authorization server on 127.0.0.1: discovery, JWKS, minting, introspection."""

    audience: str = "https://api.example/orders"
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.generate("RS256"), SigningKey.generate("ES256")])
    clients: dict[str, str] = field(default_factory=lambda: {"gateway": "gateway-secret"})
    discovery: str = "openid"  # "openid", "oauth" (RFC 8414 only) or "none"
    issuer: str = ""
    calls: dict[str, int] = field(default_factory=lambda: {"discovery": 0, "jwks": 0, "introspect": 0, "token": 0})
    opaque: dict[str, dict[str, Any]] = field(default_factory=dict)
    introspection_delay: float = 0.0
    jwks_delay: float = 0.0
    introspection_mode: str = "ok"  # "ok", "error" (500), "html"
    client_keys: dict[str, Any] = field(default_factory=dict)  # private_key_jwt clients: id -> public key
    client_assertions: list[dict[str, Any]] = field(default_factory=list)  # accepted assertions' claims
    # DPoP at the token endpoint (RFC 9449 section 5): proofs checked like a resource server checks them
    dpop_settings: DPoPSettings = field(default_factory=DPoPSettings)
    dpop_nonces: NonceSource | None = None  # set: every proof must carry this nonce (RFC 9449 section 8)
    _seen_jtis: set[str] = field(default_factory=set)
    _dpop_replay: MemoryReplayCache = field(default_factory=MemoryReplayCache)
    _runner: web.AppRunner | None = None

    # --- tokens ----------------------------------------------------------------------------

    def claims(self, sub: str = "alice", scope: str = "orders:read", ttl: float = 300, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": sub, "aud": self.audience, "client_id": "demo-client",
            "scope": scope, "iat": now, "exp": now + int(ttl), "jti": uuid.uuid4().hex,
        }
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self, sub: str = "alice", scope: str = "orders:read", ttl: float = 300, key: SigningKey | None = None,
        headers: dict[str, Any] | None = None, **extra: Any,
    ) -> str:
        """A signed RFC 9068 access token; ``extra`` claims override the defaults (None removes one).

        Bound tokens: ``cnf=dpop.confirmation(private_key)`` (DPoP) or
        ``cnf=certificate_confirmation(der)`` (mutual TLS).
        """
        key = key or self.keys[0]
        header = {"kid": key.kid, "typ": "at+jwt", **(headers or {})}
        return jwt.encode(self.claims(sub, scope, ttl, **extra), key.private, algorithm=key.alg, headers=header)

    def mint_opaque(self, sub: str = "alice", scope: str = "orders:read", ttl: float = 300, **extra: Any) -> str:
        """An opaque token this issuer answers for at its introspection endpoint."""
        token = "demo_" + secrets.token_urlsafe(24)
        self.opaque[token] = {"active": True, "token_type": "Bearer", **self.claims(sub, scope, ttl, **extra)}
        return token

    def rotate(self, alg: str = "RS256") -> SigningKey:
        """Publish a new key first in the JWKS (old keys stay until removed)."""
        key = SigningKey.generate(alg)
        self.keys.insert(0, key)
        return key

    # --- HTTP ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._openid)
        app.router.add_get("/.well-known/oauth-authorization-server", self._oauth)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/token", self._token)
        app.router.add_post("/introspect", self._introspect)
        return app

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks", "token_endpoint": self.token_endpoint,
            "introspection_endpoint": f"{self.issuer}/introspect",
            "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
            "dpop_signing_alg_values_supported": sorted(self.dpop_settings.algorithms),  # RFC 9449 section 5.1
            "tls_client_certificate_bound_access_tokens": True,  # RFC 8705 section 3.3
        }

    @property
    def token_endpoint(self) -> str:
        """The URI a DPoP proof for the token request names in ``htu``."""
        return f"{self.issuer}/token"

    async def _openid(self, _: web.Request) -> web.Response:
        self.calls["discovery"] += 1
        if self.discovery != "openid":
            raise web.HTTPNotFound()
        return web.json_response(self.metadata())

    async def _oauth(self, _: web.Request) -> web.Response:
        self.calls["discovery"] += 1
        if self.discovery == "none":
            raise web.HTTPNotFound()
        return web.json_response(self.metadata())

    async def _jwks(self, _: web.Request) -> web.Response:
        self.calls["jwks"] += 1
        keys = [k.public_jwk() for k in self.keys]  # the keys of when the request arrived, even if delayed
        if self.jwks_delay:
            await asyncio.sleep(self.jwks_delay)
        return web.json_response({"keys": keys})

    async def _token(self, request: web.Request) -> web.Response:
        """client_credentials for the demo: any caller gets a token with the scopes it asks for.

        With a ``DPoP`` proof the token is bound to the proof's key and its type is ``DPoP``; with a
        client certificate (mutual TLS, or the ``client_certificate`` form field) it is bound to it.
        """
        self.calls["token"] += 1
        form = await request.post()
        cnf: dict[str, str] = {}
        for binding in (await self._dpop_binding(request), self._certificate_binding(request, form)):
            if isinstance(binding, web.Response):
                return binding
            cnf.update(binding)
        scope = str(form.get("scope", "orders:read"))
        extra: dict[str, Any] = {name: str(form[name]) for name in ("tenant", "acr") if name in form}
        if "acr" in extra:
            extra["auth_time"] = int(time.time())  # the demo "login" happens now
        token = self.mint(sub=str(form.get("sub", "demo-user")), scope=scope, sid=str(form.get("sid", "demo-session")),
                          cnf=cnf or None, **extra)
        token_type = "DPoP" if "jkt" in cnf else "Bearer"  # RFC 9449 section 5: a DPoP-bound token says so
        return web.json_response({"access_token": token, "token_type": token_type, "expires_in": 300, "scope": scope})

    async def _dpop_binding(self, request: web.Request) -> dict[str, str] | web.Response:
        """``{"jkt": ...}`` for a valid proof, ``{}`` without one, a 400 answer for a bad one (section 5)."""
        values = request.headers.getall("DPoP", [])
        if not values:
            return {}
        settings = self.dpop_settings
        if self.dpop_nonces is not None and not settings.nonce:
            settings = dataclasses.replace(settings, nonce=True)
        outcome = await verify_proof(values, access_token=None, method=request.method, uri=self.token_endpoint,
                                     settings=settings, replay=self._dpop_replay, nonces=self.dpop_nonces)
        if isinstance(outcome, DPoPError):
            return self._dpop_refusal(outcome)
        return {"jkt": outcome.jkt}

    def _dpop_refusal(self, error: DPoPError) -> web.Response:
        headers = {"Cache-Control": "no-store"}
        if error.failure is ProofFailure.USE_NONCE and self.dpop_nonces is not None:
            headers["DPoP-Nonce"] = self.dpop_nonces.current()  # RFC 9449 section 8: retry with this nonce
        status = 503 if error.failure is ProofFailure.UNAVAILABLE else 400
        return web.json_response({"error": error.failure.error, "error_description": error.detail},
                                 status=status, headers=headers)

    @staticmethod
    def _certificate_binding(request: web.Request, form: Any) -> dict[str, str] | web.Response:
        """``{"x5t#S256": ...}`` of the mutual-TLS client certificate, else of ``client_certificate`` (PEM)."""
        der = peer_certificate_der(request)
        if der is not None:
            return certificate_confirmation(der)
        pem = form.get("client_certificate")
        if pem is None:
            return {}
        parsed = certificate_from_pem(str(pem))
        if isinstance(parsed, CertificateRejected):
            return web.json_response({"error": "invalid_request", "error_description": "client_certificate is not "
                                      "one PEM certificate"}, status=400)
        return certificate_confirmation(parsed.der)

    def _client_of(self, request: web.Request, form: Any) -> str | None:
        header = request.headers.get("Authorization", "")
        if "client_assertion" in form:
            return self._asserted_client(form)
        if header.startswith("Basic "):
            # RFC 6749 2.3.1: both halves are form-urlencoded inside the Basic credentials
            encoded_id, _, encoded_secret = base64.b64decode(header[6:]).decode().partition(":")
            client_id, secret = unquote_plus(encoded_id), unquote_plus(encoded_secret)
        else:
            client_id, secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        expected = self.clients.get(client_id)
        if expected is None or not secrets.compare_digest(expected.encode(), secret.encode()):
            return None
        return client_id

    def _asserted_client(self, form: Any) -> str | None:
        """RFC 7523 private_key_jwt: signed by the client's registered key, for us, short-lived, never replayed."""
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return None
        assertion = str(form.get("client_assertion"))
        try:
            client_id = jwt.decode(assertion, options={"verify_signature": False}).get("sub")
            key = self.client_keys.get(str(client_id))
            if key is None:
                return None
            claims = jwt.decode(
                assertion, key, algorithms=["RS256", "PS256", "ES256", "ES384"],
                audience=[self.issuer, f"{self.issuer}/token"], options={"require": ["iss", "sub", "exp", "jti"]},
            )
        except jwt.PyJWTError:
            return None
        if claims["iss"] != client_id or claims["exp"] - time.time() > 300 or claims["jti"] in self._seen_jtis:
            return None
        self._seen_jtis.add(claims["jti"])
        self.client_assertions.append(claims)
        return str(client_id)

    async def _introspect(self, request: web.Request) -> web.StreamResponse:
        self.calls["introspect"] += 1
        form = await request.post()
        if self._client_of(request, form) is None:
            return web.json_response({"error": "invalid_client"}, status=401)
        if self.introspection_delay:
            await asyncio.sleep(self.introspection_delay)
        if self.introspection_mode == "error":
            return web.Response(status=500, text="boom")
        if self.introspection_mode == "html":
            return web.Response(text="<html>login</html>", content_type="text/html")
        answer = self.opaque.get(str(form.get("token", "")), {"active": False})
        exp = answer.get("exp")  # optional (RFC 7662); a malformed one is the gateway's to judge
        if answer.get("active") and isinstance(exp, int | float) and not isinstance(exp, bool) and exp < time.time():
            answer = {"active": False}
        return web.json_response(answer)

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None) -> str:
        """Serve on ``host:port``; with ``ssl_context`` over https (ask for client certificates to bind to them)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        bound = self._runner.addresses[0][1]
        scheme = "https" if ssl_context is not None else "http"
        self.issuer = self.issuer or f"{scheme}://{host}:{bound}"
        return self.issuer

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def certificate_confirmation(der: bytes) -> dict[str, str]:
    """The ``cnf`` claim of a token bound to this DER certificate (RFC 8705 section 3.1)."""
    return {"x5t#S256": thumbprint(der)}


class EchoUpstream:
    """An upstream that answers with what it received (bodies hashed while streaming in)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/slow/"):
            await asyncio.sleep(float(request.path.rsplit("/", 1)[1]))
        if request.path.startswith("/download/"):
            return await self._download(request, int(request.path.rsplit("/", 1)[1]))
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(65536):
            digest.update(chunk)
            size += len(chunk)
        seen = {
            "method": request.method, "path": request.raw_path,
            "headers": {str(k): v for k, v in request.headers.items()},
            "body_bytes": size, "body_sha256": digest.hexdigest(),
        }
        self.requests.append(seen)
        return web.Response(body=orjson.dumps(seen), content_type="application/json")

    async def _download(self, request: web.Request, size: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        block = os.urandom(65536)
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass(frozen=True)
class DemoPorts:
    """Where the demo listens, all on 127.0.0.1; the defaults are the addresses in ``demo.yaml``."""

    gateway: int = 8080
    issuer: int = 9400
    upstream: int = 9401
    admin: int = 9090


_DEMO_ADDRESS = re.compile(r"127\.0\.0\.1:(8080|9400|9401|9090)\b")


def demo_config(ports: DemoPorts = DemoPorts()) -> GatewayConfig:
    """``demo.yaml`` with its four addresses moved to ``ports`` (in one pass: no port is rewritten twice)."""
    from .config import parse_config

    defaults = DemoPorts()
    moved = {str(getattr(defaults, name)): str(getattr(ports, name)) for name in ("gateway", "issuer", "upstream",
                                                                                  "admin")}
    text = _DEMO_ADDRESS.sub(lambda m: f"127.0.0.1:{moved[m.group(1)]}", DEMO_CONFIG.read_text(encoding="utf-8"))
    return parse_config(text, str(DEMO_CONFIG))


STEP_UP_ACR = "urn:example:mfa"  # the acr_values of the demo's /payouts route


def demo_tokens(issuer: DemoIssuer) -> dict[str, str]:
    """The tokens the printed commands use, valid for an hour."""
    hour = 3600
    # bound to a key that is dropped at once: what a thief holds after copying a DPoP-bound token
    absent_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "READER": issuer.mint(scope="orders:read", ttl=hour),
        "WRITER": issuer.mint(scope="profile", ttl=hour),
        "ACME": issuer.mint(scope="orders:read", ttl=hour, tenant="acme"),
        "MFA": issuer.mint(scope="orders:read", ttl=hour, acr=STEP_UP_ACR, auth_time=int(time.time())),
        "STOLEN": issuer.mint(scope="orders:read", ttl=hour, cnf=confirmation(absent_key)),
    }


def demo_instructions(issuer: DemoIssuer, upstream_url: str, ports: DemoPorts, audit_path: str) -> str:
    """What ``gateway demo`` prints: the tokens as shell variables, then one command per outcome.

    Every command follows a comment ending in ``-> <status>``, the answer it gets (tests/test_demo.py
    runs them all and checks).
    """
    base, token_endpoint = f"http://127.0.0.1:{ports.gateway}", issuer.token_endpoint
    variables = "\n".join(f"{name}='{token}'" for name, token in demo_tokens(issuer).items())
    return f"""
tokengate demo: gateway {base}, issuer {issuer.issuer}, upstream {upstream_url}
metrics: http://127.0.0.1:{ports.admin}/metrics   audit records: {audit_path}

# paste these first: the demo's tokens (an hour each) as shell variables
{variables}

# no token: the challenge says WWW-Authenticate: Bearer realm="tokengate" (and DPoP) -> 401
curl -i {base}/orders

# a token without orders:read, insufficient_scope -> 403
curl -i -H "Authorization: Bearer $WRITER" {base}/orders

# a token with orders:read: the upstream answers and sees X-Auth-Subject -> 200
curl -i -H "Authorization: Bearer $READER" {base}/orders

# DPoP (RFC 9449): a token bound to a new key from the issuer, then the API with a fresh proof -> 200
# (from a checkout without installing: python tools/dpop_client.py with the same arguments)
gateway dpop-request --token-endpoint {token_endpoint} --scope orders:read {base}/dpop/orders

# the DPoP-only route refuses a plain bearer token, sender_constraint_required -> 401
curl -i -H "Authorization: Bearer $READER" {base}/dpop/orders

# a stolen DPoP-bound token is useless without its key: as a bearer token, unproven_binding -> 401
curl -i -H "Authorization: Bearer $STOLEN" {base}/orders

# ... and as DPoP without a proof signed by that key, invalid_dpop_proof -> 401
curl -i -H "Authorization: DPoP $STOLEN" {base}/dpop/orders

# claims rule same-tenant (CEL: claims.tenant == path.tenant), the token's tenant is acme -> 200
curl -i -H "Authorization: Bearer $ACME" {base}/tenants/acme/orders

# ... another tenant's orders, access_denied (rule_failed, the rule named in the audit record) -> 403
curl -i -H "Authorization: Bearer $ACME" {base}/tenants/globex/orders

# step-up (RFC 9470): a token without acr, insufficient_user_authentication -> 401
curl -i -H "Authorization: Bearer $READER" {base}/payouts

# a token with acr {STEP_UP_ACR} and auth_time within max_age (5m) -> 200
curl -i -H "Authorization: Bearer $MFA" {base}/payouts

# past 5 minutes, mint a fresh one: curl -s -d acr={STEP_UP_ACR} {token_endpoint}
# mint your own: curl -s -d scope=orders:write {token_endpoint}   (-d tenant=acme adds the claim)
# a public route, no token needed: curl -i {base}/public/health
# what was decided, request by request: gateway audit {audit_path}
Ctrl-C stops the demo.
"""


def free_port(avoid: Collection[int] = ()) -> int:
    """A port on 127.0.0.1 that nothing listens on now (bound once, then released), not in ``avoid``."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


async def run_demo(ports: DemoPorts = DemoPorts()) -> None:
    """Start issuer, upstream and gateway on ``ports``; print ready commands; run until Ctrl-C."""
    from .logs import setup_logging
    from .runtime import Gateway
    from .server import serve

    os.environ.setdefault("DEMO_AUDIT_PATH", "/tmp/tokengate-demo/audit.jsonl")  # noqa: S108 - a demo default
    setup_logging("warning")
    issuer = DemoIssuer(issuer=f"http://127.0.0.1:{ports.issuer}")
    upstream = EchoUpstream()
    which = "issuer"
    try:
        await issuer.start(port=ports.issuer)
        which = "upstream"
        await upstream.start(port=ports.upstream)
    except OSError as exc:  # most likely another demo still running: one line, not a traceback
        await upstream.stop()
        await issuer.stop()
        raise SystemExit(_cannot_listen(which, getattr(ports, which), exc)) from None
    gateway = Gateway(demo_config(ports), str(DEMO_CONFIG))
    try:
        for which, port in (("proxy", ports.gateway), ("admin", ports.admin)):
            _check_free(port, which)
        print(demo_instructions(issuer, upstream.url, ports, os.environ["DEMO_AUDIT_PATH"]), flush=True)
        await serve(gateway)
    finally:
        await upstream.stop()
        await issuer.stop()


def _check_free(port: int, which: str) -> None:
    """Refuse a gateway port in use before printing commands that would reach something else."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise SystemExit(_cannot_listen(which, port, exc)) from None


def _cannot_listen(which: str, port: int, exc: OSError) -> str:
    # asyncio's bind error puts its own sentence in strerror: the system's words for errno read better
    reason = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)
    return (f"gateway demo: cannot listen on 127.0.0.1:{port} (the {which} port): {reason}; "
            f"choose another with --port-{which}, or --free-ports")
