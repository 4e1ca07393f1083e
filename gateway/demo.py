"""The embedded demo: an issuer (discovery, JWKS, token minting, introspection) and an echo upstream.

``gateway demo`` runs both beside a gateway using ``config/demo.yaml``; the test suite uses
the same issuer and upstream as real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

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
    _seen_jtis: set[str] = field(default_factory=set)
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
        """A signed RFC 9068 access token; ``extra`` claims override the defaults (None removes one)."""
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
            "issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks", "token_endpoint": f"{self.issuer}/token",
            "introspection_endpoint": f"{self.issuer}/introspect",
            "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
        }

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
        """client_credentials for the demo: any caller gets a token with the scopes it asks for."""
        self.calls["token"] += 1
        form = await request.post()
        scope = str(form.get("scope", "orders:read"))
        token = self.mint(sub=str(form.get("sub", "demo-user")), scope=scope, sid=str(form.get("sid", "demo-session")))
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": scope})

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

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.issuer = self.issuer or f"http://{host}:{bound}"
        return self.issuer

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


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


async def run_demo(port: int = 8080) -> None:
    """Start issuer, upstream and gateway; print curl commands; run until Ctrl-C."""
    from .config import Address, load_config
    from .logs import setup_logging
    from .runtime import Gateway
    from .server import serve

    os.environ.setdefault("DEMO_AUDIT_PATH", "/tmp/tokengate-demo/audit.jsonl")  # noqa: S108 - a demo default
    setup_logging("warning")
    issuer = DemoIssuer(issuer="http://127.0.0.1:9400")
    await issuer.start(port=9400)
    upstream = EchoUpstream()
    await upstream.start(port=9401)
    config = load_config(DEMO_CONFIG).model_copy(update={"listen": Address("127.0.0.1", port)})
    gateway = Gateway(config, str(DEMO_CONFIG))
    reader, writer = issuer.mint(scope="orders:read"), issuer.mint(scope="profile")
    base = f"http://127.0.0.1:{port}"
    print(f"""
tokengate demo: gateway {base}, issuer {issuer.issuer}, upstream {upstream.url}
metrics: http://127.0.0.1:9090/metrics   audit records: {os.environ["DEMO_AUDIT_PATH"]}

# no token -> 401 with WWW-Authenticate: Bearer realm="tokengate"
curl -i {base}/orders

# a token without orders:read -> 403 insufficient_scope
curl -i -H 'Authorization: Bearer {writer}' {base}/orders

# a token with orders:read -> 200 from the upstream, which sees X-Auth-Subject
curl -i -H 'Authorization: Bearer {reader}' {base}/orders

# mint your own: curl -s -d scope=orders:write {issuer.issuer}/token
# a public route, no token needed: curl -i {base}/public/health
Ctrl-C stops the demo.
""", flush=True)
    try:
        await serve(gateway)
    finally:
        await upstream.stop()
        await issuer.stop()
