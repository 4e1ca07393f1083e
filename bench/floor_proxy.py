"""The benchmark's floor: the simplest correct aiohttp reverse proxy (issue 14).

    .venv/bin/python bench/floor_proxy.py --plain --listen 127.0.0.1:8081 --upstream http://127.0.0.1:8080
    .venv/bin/python bench/floor_proxy.py --jwt-audit --listen 127.0.0.1:8082 --upstream http://127.0.0.1:8080 \\
        --jwks http://127.0.0.1:9000/jwks --issuer http://127.0.0.1:9000 --audience https://api.example/orders \\
        --audit /tmp/floor-audit.jsonl

What any aiohttp proxy has to do, and nothing more: an aiohttp low-level web server, one
aiohttp ClientSession per worker (keep-alive pool, no cookie jar, no added headers, no
decompression), request and response bodies streamed both ways, hop-by-hop headers dropped
(RFC 9110 7.6.1, with those named in Connection), 502 when the upstream cannot be reached.
An answer of at most 64 KiB with a Content-Length is read first and sent with its head in one
write, as the gateway does: the floor should not pay a send(2) per request that it need not.
``--workers`` processes listen on one port with SO_REUSEPORT, as the gateway's ``workers: N``
does, each on uvloop.

``--plain``: no features. ``--jwt-audit``: in addition, a bearer token is required and
verified with PyJWT (signature against the JWKS or PEM public key, ``exp``, and ``iss``/``aud``
when given) the first time a worker sees it; the outcome is cached by the token's SHA-256
until its ``exp`` (a token that fails is 401, never cached); and one JSON audit line per
request is appended to a file through a buffered writer flushed every 50 ms.

Not a product: a yardstick that the gateway's CPU per request is compared with (bench/run.py).
It only listens on, and only talks to, loopback addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import aiohttp
import jwt
import orjson
import uvloop
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from yarl import URL

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade"})
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
CHUNK = 64 * 1024
SMALL_BODY = 64 * 1024  # an answer this short with a Content-Length goes out in one write, head and body
CACHE_LIMIT = 100_000  # verified tokens kept per worker; emptied when full (bounded memory)
FLUSH_EVERY = 0.05  # seconds between flushes of the audit buffer
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def end_to_end(headers: Any, also_drop: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The headers without the hop-by-hop ones (fixed, and any the Connection header names)."""
    named = {name.strip().lower() for value in headers.getall("Connection", ()) for name in value.split(",")}
    drop = HOP_BY_HOP | named | set(also_drop)
    return [(name, value) for name, value in headers.items() if name.lower() not in drop]


class Forwarder:
    """One keep-alive pool to the upstream; streams each request and its answer."""

    def __init__(self, upstream: str, timeout: float) -> None:
        self.base = upstream.rstrip("/")
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30), auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
        )

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        # Host is dropped: the client sets the upstream's, as nginx's proxy_pass does by default
        headers = end_to_end(request.headers, also_drop=("host",))
        data = request.content if request.body_exists else None
        response: web.StreamResponse | None = None
        try:
            async with self.session.request(request.method, URL(self.base + request.raw_path, encoded=True),
                                            headers=headers, data=data, allow_redirects=False) as upstream:
                headers = end_to_end(upstream.headers)
                length = upstream.content_length
                if request.method == "HEAD" or (length is not None and length <= SMALL_BODY):
                    # aiohttp's StreamResponse sends its head at prepare(): a second send(2) per answer
                    small = web.Response(status=upstream.status, reason=upstream.reason, headers=headers)
                    if request.method != "HEAD":
                        small.body = await upstream.read()
                    return small
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError):
            if response is None or not response.prepared:
                return web.Response(status=502, text="bad gateway\n")
            if request.transport is not None:  # the head is out: cutting the connection is the only signal left
                request.transport.close()
            return response


class Verifier:
    """A bearer token verified once per worker, then trusted by its SHA-256 until it expires."""

    def __init__(self, keys: dict[str | None, Any], algorithms: list[str], issuer: str | None,
                 audience: str | None) -> None:
        self.keys, self.algorithms, self.issuer, self.audience = keys, algorithms, issuer, audience
        self.cache: dict[str, tuple[float, str]] = {}  # sha256 hex -> (exp, sub)

    def subject(self, token: str, fingerprint: str) -> str | None:
        """The token's ``sub`` when it is valid; None otherwise."""
        hit = self.cache.get(fingerprint)
        if hit is not None and hit[0] > time.time():
            return hit[1]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys.get(kid, self.keys.get(None))
            if key is None:
                return None
            claims = jwt.decode(token, key, algorithms=self.algorithms, issuer=self.issuer, audience=self.audience,
                                options={"require": ["exp"], "verify_aud": self.audience is not None})
        except (jwt.PyJWTError, ValueError, TypeError):  # fail closed on anything malformed
            self.cache.pop(fingerprint, None)
            return None
        if len(self.cache) >= CACHE_LIMIT:
            self.cache.clear()
        subject = str(claims.get("sub", ""))
        self.cache[fingerprint] = (float(claims["exp"]), subject)
        return subject


class AuditLog:
    """One JSON line per request into a buffered, append-only file (whole lines per write)."""

    def __init__(self, path: Path) -> None:
        self.file: BinaryIO = path.open("ab", buffering=1 << 16)

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(orjson.dumps(record) + b"\n")

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self.file.flush()

    def close(self) -> None:
        self.file.flush()
        self.file.close()


def jwt_audit(forward: Handler, verifier: Verifier, audit: AuditLog) -> Handler:
    """The proxy behind a verified-token cache, with an audit line for every request."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        fingerprint = hashlib.sha256(token.encode()).hexdigest() if token else ""
        subject = verifier.subject(token, fingerprint) if token and scheme.lower() == "bearer" else None
        if subject is None:
            response: web.StreamResponse = web.Response(
                status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        else:
            response = await forward(request)
        audit.write({"ts": time.time(), "method": request.method, "path": request.path, "status": response.status,
                     "sub": subject, "token_sha256": fingerprint, "client": request.remote,
                     "ms": round((time.monotonic() - started) * 1000, 3)})
        return response

    return handle


# --- start-up --------------------------------------------------------------------------------


def loopback(url_or_host: str, what: str) -> str:
    host = urlsplit(url_or_host).hostname if "://" in url_or_host else url_or_host.strip("[]")
    if host not in LOOPBACK:
        sys.exit(f"floor_proxy: {what} {url_or_host!r} is not a loopback address (bench tool: 127.0.0.1 or ::1 only)")
    return url_or_host


def load_keys(args: argparse.Namespace) -> dict[str | None, Any]:
    """Verification keys by kid (None: the one PEM key, whatever the token's kid)."""
    if args.public_key:
        return {None: serialization.load_pem_public_key(Path(args.public_key).read_bytes())}
    with urllib.request.urlopen(loopback(args.jwks, "--jwks"), timeout=10) as resp:  # loopback only (checked)
        jwks = jwt.PyJWKSet.from_dict(json.loads(resp.read()))
    return {key.key_id: key.key for key in jwks.keys}


async def serve_worker(args: argparse.Namespace, keys: dict[str | None, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    forward = Forwarder(args.upstream, args.timeout)
    handler: Handler = forward
    audit, flusher = None, None
    if args.jwt_audit:
        audit = AuditLog(Path(args.audit))
        flusher = asyncio.create_task(audit.flush_forever())
        handler = jwt_audit(forward, Verifier(keys, args.algorithms.split(","), args.issuer, args.audience), audit)
    runner = web.ServerRunner(web.Server(handler, access_log=None), handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    host, _, port = args.listen.rpartition(":")
    await web.TCPSite(runner, host.strip("[]"), int(port), reuse_port=True).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await forward.session.close()
        if flusher is not None and audit is not None:
            flusher.cancel()
            audit.close()


def supervise(children: list[int]) -> int:
    """Wait for SIGTERM/SIGINT or a worker's death, then stop every worker."""
    signal.sigwait({signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    status = 0
    for pid in children:
        _, code = os.waitpid(pid, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return 1 if status else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plain", action="store_true", help="a proxy and nothing else")
    mode.add_argument("--jwt-audit", action="store_true", help="verified-token cache and one audit line per request")
    parser.add_argument("--listen", required=True, help="127.0.0.1:PORT (a fixed port: the workers share it)")
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0, help="upstream connect and read timeout, seconds")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--jwks", help="JWKS URL on 127.0.0.1, fetched once at start")
    keys.add_argument("--public-key", help="PEM public key file")
    parser.add_argument("--algorithms", default="RS256")
    parser.add_argument("--issuer", help="required iss (not checked when absent)")
    parser.add_argument("--audience", help="required aud (not checked when absent)")
    parser.add_argument("--audit", help="audit file (--jwt-audit)")
    args = parser.parse_args(argv)
    loopback(args.listen.rpartition(":")[0], "--listen")
    loopback(args.upstream, "--upstream")
    if args.jwt_audit and not (args.audit and (args.jwks or args.public_key)):
        parser.error("--jwt-audit needs --audit and one of --jwks, --public-key")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main() -> None:
    args = parse()
    keys = load_keys(args) if args.jwt_audit else {}
    # blocked before forking: the parent waits for them with sigwait, the workers unblock them
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
            code = 1
            try:
                uvloop.run(serve_worker(args, keys))
                code = 0
            except Exception as exc:  # one line, not a stack trace; the parent stops the rest
                print(f"floor_proxy worker {os.getpid()}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            finally:
                os._exit(code)
        children.append(pid)
    print(f"floor_proxy: {'jwt-audit' if args.jwt_audit else 'plain'}, {args.workers} workers on {args.listen}",
          flush=True)
    sys.exit(supervise(children))


if __name__ == "__main__":
    main()
