"""The demo's authorization server on 127.0.0.1: discovery, JWKS, token minting, introspection.

Runs in ``gateway demo`` and in the test suite, never in a gateway serving traffic. The issuer
mints sender-constrained tokens too (docs/sender-constrained.md): a ``POST /token`` with a
``DPoP`` proof gets a token bound to the proof's key (``cnf.jkt``, RFC 9449 section 5), and one
made over mutual TLS (``start(ssl_context=...)``), or naming a ``client_certificate`` (a demo
shortcut for plain HTTP), gets a token bound to that certificate (``cnf.x5t#S256``, RFC 8705
section 3). ``mint(cnf=...)`` binds a token directly.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..tokens.certificates import CertificateRejected, certificate_from_pem, peer_certificate_der, thumbprint
from ..tokens.dpop import DPoPError, DPoPSettings, NonceSource, ProofFailure, verify_proof
from ..tokens.replay import MemoryReplayCache

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class SigningKey:
    """One of the issuer's signing keys: its ``kid``, its JWS algorithm and the private key."""

    kid: str
    alg: str
    private: PrivateKey

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None) -> SigningKey:
        """A new key for ``alg`` (RS*/PS*: RSA 2048, ES256, ES384)."""
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
        """The public half as the JWKS publishes it."""
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

    def claims(
        self, sub: str | None = "alice", scope: str | None = "orders:read", ttl: float = 300, **extra: Any,
    ) -> dict[str, Any]:
        """An access token's claims; ``extra`` overrides the defaults (None removes one)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": sub, "aud": self.audience, "client_id": "demo-client",
            "scope": scope, "iat": now, "exp": now + int(ttl), "jti": uuid.uuid4().hex,
        }
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self, sub: str | None = "alice", scope: str | None = "orders:read", ttl: float = 300,
        key: SigningKey | None = None, headers: dict[str, Any] | None = None, **extra: Any,
    ) -> str:
        """A signed RFC 9068 access token; ``extra`` claims override the defaults (None removes one).

        Bound tokens: ``cnf=dpop.confirmation(private_key)`` (DPoP) or
        ``cnf=certificate_confirmation(der)`` (mutual TLS).
        """
        key = key or self.keys[0]
        header = {"kid": key.kid, "typ": "at+jwt", **(headers or {})}
        return jwt.encode(self.claims(sub, scope, ttl, **extra), key.private, algorithm=key.alg, headers=header)

    def mint_opaque(
        self, sub: str | None = "alice", scope: str | None = "orders:read", ttl: float = 300, **extra: Any,
    ) -> str:
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
        """The issuer's endpoints as an aiohttp application."""
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._openid)
        app.router.add_get("/.well-known/oauth-authorization-server", self._oauth)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/token", self._token)
        app.router.add_post("/introspect", self._introspect)
        return app

    def metadata(self) -> dict[str, Any]:
        """The discovery document (OpenID Connect and RFC 8414 alike)."""
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
        """Stop serving (nothing to do when never started)."""
        if self._runner is not None:
            await self._runner.cleanup()


def certificate_confirmation(der: bytes) -> dict[str, str]:
    """The ``cnf`` claim of a token bound to this DER certificate (RFC 8705 section 3.1)."""
    return {"x5t#S256": thumbprint(der)}

