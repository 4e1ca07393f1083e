"""The tokengate benchmark: one command, one machine, one run (``make bench``).

Starts, all on 127.0.0.1 and all in one temporary directory:
  * nginx as the upstream (``return 200`` with a small fixed body; never the bottleneck),
  * a DemoIssuer (real RSA/EC keys; discovery, JWKS, introspection) in this process,
  * the gateway as ``gateway serve --config <generated yaml>`` with audit (file sink) and
    metrics on, and a second gateway holding 1,000,000 revocation entries,
  * the floors (issue 14): bench/floor_proxy.py, a bare aiohttp reverse proxy with as many
    workers as the gateway, plain and with a verified-token cache + one audit line per request,
  * Apache httpd + mod_auth_openidc as an OAuth 2.0 resource server, when installed,
  * for the DPoP rows, redis-server (the replay cache of a third gateway), when installed,
then runs wrk at fixed connections and duration, alternating the targets over several
rounds, and reports medians over rounds and ratios taken within each round. Last, it times
the gateway's start-up (process start to /readyz 200) with 1,000,000 revocation entries in a
local redis-server, against the same start-up with none.

DPoP (RFC 9449) needs a fresh proof per request, which wrk's Lua cannot sign: before each
DPoP run this script signs enough ES256 proofs (unique jti, iat now) and the wrk script
sends each one once, read from a file per wrk thread.

    .venv/bin/python bench/run.py [--rounds 5] [--duration 3] [--connections 50] ...
    .venv/bin/python bench/run.py --quick      # under a minute: a few rows, one round (make bench-quick)

This is a script, never a test: the machines are shared and noisy, so read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.demo import DemoIssuer  # noqa: E402
from gateway.tokens.dpop import (  # noqa: E402
    ProofRequest,
    access_token_hash,
    confirmation,
    public_jwk,
    sign_proof,
)

AUDIENCE = "https://api.example/orders"
SCOPE = "orders:read"
UPSTREAM_BODY = '{"ok":true,"from":"tokengate-bench-upstream","pad":"0123456789abcdef"}\n'
CLK_TCK = os.sysconf("SC_CLK_TCK")
REVOKED_JTI = "bench-revoked-jti"
TENANT_CLAIMS: dict[str, Any] = {"tenant": "acme", "email": "alice@acme.example", "department": "sales"}
CLAIMS_RULES = [  # three typical rules: tenant isolation, an email domain, a claim in a set
    {"name": "same-tenant", "expression": "claims.tenant == path.tenant"},
    {"name": "email-domain", "expression": 'claims.email.endsWith("@acme.example")'},
    {"name": "department", "expression": 'claims.department in ["sales", "support"]'},
]
MOD_AUTH_OPENIDC = "/usr/lib/apache2/modules/mod_auth_openidc.so"
FLOOR_PROXY = REPO / "bench" / "floor_proxy.py"
STARTUP_PREFIX = "bench-startup:revoked:"  # the key prefix of the start-up measurement's entries
READY_STREAK = 16  # /readyz 200 this many times in a row on new connections: every worker is ready
# --quick: a look in under a minute; explicit flags still win (they are parsed after these defaults)
QUICK_DEFAULTS: dict[str, Any] = {
    "rounds": 1, "duration": 2, "warmup": 1, "rotate_warmup": 2, "tokens": 1_000, "cold": False, "revoked": 0,
    "low_connections": 0, "rows": "direct,none,rs256,rotate,floor,floor-jwt,apache,startup",
    "startup_revocations": 100_000, "startup_runs": 1, "out": REPO / "bench" / "results" / "quick.md",
}


# --- processes and CPU -----------------------------------------------------------------------


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from "state" on (index 0 = field 3)


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of ``root`` and its live descendants, plus the reaped children of ``root``."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        if pid == root:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def rss_of_tree(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return tree_cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(self.stop_signal)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what we started
            self.proc.wait(timeout=5)


def start(name: str, argv: list[str], log: Path, stop_signal: int = signal.SIGTERM,
          env: dict[str, str] | None = None) -> Service:
    out = log.open("ab")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    out.close()
    return Service(name, proc, stop_signal)


async def wait_http(url: str, service: Service, timeout: float = 30.0, ok: Callable[[int], bool] = lambda s: s < 500,
                    ) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if service.proc.poll() is not None:
                raise RuntimeError(f"{service.name} exited with status {service.proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    await resp.read()
                    if ok(resp.status):
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{service.name} not ready at {url} after {timeout}s")


# --- the servers -----------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (mod_auth_openidc only fetches a JWKS over https)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2)).sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def start_nginx(tmp: Path, port: int, tls_port: int, issuer: DemoIssuer) -> Service:
    """The upstream; its second (TLS) server only relays the issuer's JWKS for Apache."""
    root = tmp / "nginx"
    (root / "tmp").mkdir(parents=True)
    cert, key = self_signed(root)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {root}/tmp/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = root / "nginx.conf"
    conf.write_text(f"""daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp_paths}
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{UPSTREAM_BODY.strip()}\\n';
        }}
    }}
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location = /jwks {{ proxy_pass {issuer.issuer}/jwks; }}
    }}
}}
""")
    os.chmod(root, 0o755)
    return start("nginx", ["nginx", "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
                 root / "stdout.log", signal.SIGQUIT)


APACHE_MODULES = ("mpm_event", "authn_core", "authz_core", "authz_user", "auth_openidc", "proxy",
                  "proxy_http")


def start_apache(tmp: Path, port: int, upstream_port: int, jwks_uri: str, issuer: DemoIssuer) -> Service:
    root = tmp / "apache"
    (root / "run").mkdir(parents=True)
    modules = "\n".join(f"LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so" for m in APACHE_MODULES)
    scope_regex = r"(^|\s)orders:read($|\s)"
    conf = root / "httpd.conf"
    conf.write_text(f"""ServerRoot {root}
ServerName 127.0.0.1
{modules}
Listen 127.0.0.1:{port}
PidFile {root}/run/httpd.pid
DefaultRuntimeDir {root}/run
ErrorLog {root}/error.log
LogLevel warn
User www-data
Group www-data
StartServers 2
ServerLimit 4
ThreadsPerChild 64
MinSpareThreads 64
MaxSpareThreads 256
MaxRequestWorkers 256
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 30

OIDCOAuthVerifyJwksUri {jwks_uri}
OIDCSSLValidateServer Off
OIDCOAuthSSLValidateServer Off
OIDCOAuthRemoteUserClaim sub
OIDCCryptoPassphrase tokengate-bench-passphrase
OIDCCacheType shm

<Location /orders>
    AuthType oauth20
    <RequireAll>
        Require valid-user
        Require claim iss:{issuer.issuer}
        Require claim aud:{AUDIENCE}
        Require claim "scope~{scope_regex}"
    </RequireAll>
    ProxyPass http://127.0.0.1:{upstream_port}/orders
</Location>
""")
    os.chmod(root, 0o777)
    os.chmod(root / "run", 0o777)
    return start("apache", ["apache2", "-f", str(conf), "-DFOREGROUND"], root / "stdout.log", signal.SIGTERM)


def apache_installed() -> bool:
    return shutil.which("apache2") is not None and Path(MOD_AUTH_OPENIDC).exists()


def gateway_config(tmp: Path, name: str, port: int, upstream_port: int, issuer: DemoIssuer, workers: int,
                   introspection: bool, extra: dict[str, Any] | None = None) -> Path:
    issuer_entry: dict[str, Any] = {
        "issuer": issuer.issuer, "audiences": [AUDIENCE], "algorithms": ["RS256", "ES256"],
    }
    routes: list[dict[str, Any]] = [
        {"name": "open", "path": "/open", "methods": ["GET"], "upstream": "nginx", "auth": "none"},
        {"name": "orders", "path": "/orders", "methods": ["GET"], "upstream": "nginx", "scopes": [SCOPE]},
        # rows 8a/8b: the same route shape, with and without claims rules
        {"name": "rules", "path": "/rules/{tenant}/orders", "methods": ["GET"], "upstream": "nginx",
         "scopes": [SCOPE], "rules": CLAIMS_RULES},
        {"name": "norules", "path": "/norules/{tenant}/orders", "methods": ["GET"], "upstream": "nginx",
         "scopes": [SCOPE]},
    ]
    if introspection:
        issuer_entry["introspection"] = {
            "endpoint": f"{issuer.issuer}/introspect", "client_id": "gateway", "client_secret": "gateway-secret",
            "token_prefix": "demo_", "cache_ttl": "300s",
        }
        routes.append({"name": "opaque", "path": "/opaque", "methods": ["GET"], "upstream": "nginx",
                       "scopes": [SCOPE]})
    config = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "workers": workers,
        "watch_config": False,
        "log_level": "warning",
        "issuers": [issuer_entry],
        "upstreams": {"nginx": {"url": f"http://127.0.0.1:{upstream_port}", "timeout": "10s"}},
        "routes": routes,
        "audit": {"sink": "file", "path": str(tmp / f"{name}-audit.jsonl")},
        **(extra or {}),
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def admin_url(config_path: Path) -> str:
    return "http://" + str(yaml.safe_load(config_path.read_text())["admin_listen"])


# --- wrk --------------------------------------------------------------------------------------

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


def static_script(path: Path, token: str | None, delay_ms: float = 0) -> Path:
    """Every request with the same header; with ``delay_ms``, each connection waits that long between requests."""
    header = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
    pace = f"delay = function() return {delay_ms:g} end\n" if delay_ms else ""
    path.write_text(header + pace + _DONE)
    return path


def rotating_script(path: Path, token_file: Path, url_path: str) -> Path:
    path.write_text(f"""
local tokens = {{}}
local counter = 0
local threads = 0
setup = function(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
init = function(args)
  for line in io.lines("{token_file}") do tokens[#tokens + 1] = line end
  counter = (tid or 0) * 4999
end
request = function()
  counter = counter + 1
  return wrk.format("GET", "{url_path}", {{["Authorization"] = "Bearer " .. tokens[(counter % #tokens) + 1]}})
end
""" + _DONE)
    return path


def dpop_script(path: Path, proof_prefix: Path, url_path: str, token: str) -> Path:
    """``Authorization: DPoP <token>`` with the next unused proof of this wrk thread's file on every request."""
    path.write_text(f"""
local proofs = {{}}
local counter = 0
local threads = 0
local auth = "DPoP {token}"
setup = function(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
init = function(args)
  for line in io.lines("{proof_prefix}" .. (tid or 0) .. ".txt") do proofs[#proofs + 1] = line end
end
request = function()
  -- past the end the last proof is sent again: a replay, refused and counted as an error
  if counter < #proofs then counter = counter + 1 end
  return wrk.format("GET", "{url_path}", {{["Authorization"] = auth, ["DPoP"] = proofs[counter]}})
end
""" + _DONE)
    return path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fast_proofs(key: ec.EllipticCurvePrivateKey, url: str, token: str, count: int) -> list[str]:
    """``count`` ES256 DPoP proofs for GET ``url`` with ``token``: the header encoded once, each signed.

    Equivalent to ``gateway.tokens.dpop.sign_proof`` (checked against the gateway itself before
    each run) at about a quarter of its cost, so that tens of thousands are ready in seconds.
    """
    header = _b64(json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(key)},
                             separators=(",", ":")).encode())
    ath, iat, prefix = access_token_hash(token), int(time.time()), uuid.uuid4().hex
    algorithm = ec.ECDSA(hashes.SHA256())
    proofs = []
    for i in range(count):
        claims = {"jti": f"{prefix}-{i}", "htm": "GET", "htu": url, "iat": iat, "ath": ath}
        signing_input = f"{header}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
        r, s = decode_dss_signature(key.sign(signing_input.encode(), algorithm))
        proofs.append(f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}")
    return proofs


@dataclass
class DPoPLoad:
    """Proof files for one DPoP target, signed anew for every wrk run (a proof is good once, for 60 s)."""

    key: ec.EllipticCurvePrivateKey
    url: str
    token: str
    directory: Path
    threads: int
    minimum: int  # proofs per run at least
    expected_rps: float = 0.0  # the fastest run so far: the next run gets 1.5x what it could send
    runs: int = 0

    def script(self, duration: float) -> Path:
        count = max(self.minimum, int(self.expected_rps * (duration + 1) * 1.5))
        proofs = fast_proofs(self.key, self.url, self.token, count)
        self.runs += 1
        prefix = self.directory / f"proofs-{self.runs}-"
        for t in range(self.threads):
            (self.directory / f"proofs-{self.runs}-{t}.txt").write_text("\n".join(proofs[t :: self.threads]) + "\n")
        for old in self.directory.glob(f"proofs-{self.runs - 1}-*.txt"):
            old.unlink()
        return dpop_script(self.directory / f"dpop-{self.runs}.lua", prefix, urlsplit(self.url).path, self.token)


def proof_costs(count: int = 2000) -> dict[str, float]:
    """What checking one proof costs in this process (µs): the whole stateless check, and its ES256 verification."""
    from gateway.tokens.dpop import DPoPSettings, check_proof

    key = ec.generate_private_key(ec.SECP256R1())
    url, token = "http://127.0.0.1:8080/orders", "bench-token"
    proofs = fast_proofs(key, url, token, count)
    settings = DPoPSettings()
    started = time.perf_counter()
    for proof in proofs:
        check_proof([proof], access_token=token, method="GET", uri=url, settings=settings)
    check_us = (time.perf_counter() - started) / count * 1e6
    public, algorithm = key.public_key(), ec.ECDSA(hashes.SHA256())
    signed = []
    for proof in proofs:
        signing_input, _, signature = proof.rpartition(".")
        raw = base64.urlsafe_b64decode(signature + "==")
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        signed.append((signing_input.encode(), der))
    started = time.perf_counter()
    for data, der in signed:
        public.verify(der, data, algorithm)
    verify_us = (time.perf_counter() - started) / count * 1e6
    return {"check_us": check_us, "verify_us": verify_us}


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None  # CPU of the serving processes per request (= ms per 1,000 requests)
    requests: int
    errors: int  # socket errors + non-2xx
    side_cpu_us: float | None = None  # CPU of a helper service per request (the DPoP replay cache's Redis)


async def wrk(url: str, script: Path, connections: int, threads: int, duration: float,
              service: Service | None, side: Service | None = None) -> Run:
    argv = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
            "--timeout", "5s", "-s", str(script), url]
    before = service.cpu() if service else 0.0
    side_before = side.cpu() if side else 0.0
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=duration + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    after = service.cpu() if service else 0.0
    side_after = side.cpu() if side else 0.0
    text = out.decode(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{text}")
    data = json.loads(line.removeprefix("BENCHJSON "))
    requests = int(data["requests"])
    errors = sum(int(data[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return Run(
        rps=requests / (data["duration_us"] / 1e6), p50_ms=data["p50"] / 1000, p99_ms=data["p99"] / 1000,
        cpu_us=(after - before) / requests * 1e6 if service and requests else None, requests=requests,
        errors=errors, side_cpu_us=(side_after - side_before) / requests * 1e6 if side and requests else None,
    )


# --- the benchmark ----------------------------------------------------------------------------


@dataclass
class Target:
    key: str
    label: str
    url: str
    script: Path | Callable[[int], Path]  # a callable gets the round number (a fresh token set per round)
    service: Service
    connections: int
    warm: bool = True
    warmup: int | None = None  # seconds of unmeasured load first (default: --warmup)
    side: Service | None = None  # a helper whose CPU is reported beside the table (Redis of the DPoP row)
    load: DPoPLoad | None = None  # DPoP rows: told each run's rate, to sign enough proofs for the next


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    services: list[Service] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runs: dict[str, list[Run]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    upstream_port: int = 0
    workers: int = 1


def mint_many(issuer: DemoIssuer, count: int) -> list[str]:
    return [issuer.mint(sub=f"user-{i}", scope=SCOPE, ttl=3600) for i in range(count)]


async def check(url: str, token: str | None, expect: int | tuple[int, ...], what: str) -> None:
    expected = expect if isinstance(expect, tuple) else (expect,)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(16):  # new connections: SO_REUSEPORT spreads them over every worker
            async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                body = await resp.read()
                if resp.status not in expected:
                    raise RuntimeError(f"{what}: {url} answered {resp.status}, expected {expect}: {body[:300]!r}")


async def run_bench(bench: Bench) -> None:
    args, tmp = bench.args, bench.tmp
    issuer = DemoIssuer(audience=AUDIENCE)
    await issuer.start(port=0)
    try:
        await _run_bench(bench, issuer)
    finally:
        for service in reversed(bench.services):
            service.stop()
        await issuer.stop()
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)


async def _run_bench(bench: Bench, issuer: DemoIssuer) -> None:
    args, tmp = bench.args, bench.tmp
    rows = set(args.rows.split(",")) if args.rows else None

    def wanted(key: str) -> bool:
        return rows is None or key in rows or key == "none"  # row 2 is every ratio's base

    upstream_port, tls_port = free_port(), free_port()
    nginx = start_nginx(tmp, upstream_port, tls_port, issuer)
    bench.services.append(nginx)
    await wait_http(f"http://127.0.0.1:{upstream_port}/", nginx)

    workers = args.workers
    bench.upstream_port, bench.workers = upstream_port, workers
    introspection = True  # row 5; False below when the gateway does not start with an introspection issuer

    gateway_bin = str(Path(sys.executable).with_name("gateway"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    while True:
        gw_port = free_port()
        gw_config = gateway_config(tmp, "gateway", gw_port, upstream_port, issuer, workers, introspection)
        gw = start("gateway", [gateway_bin, "serve", "--config", str(gw_config)], tmp / "gateway.log", env=env)
        try:
            await wait_http(admin_url(gw_config) + "/readyz", gw, ok=lambda s: s == 200)
        except RuntimeError:
            if not introspection:
                raise
            gw.stop()
            errors = [x for x in (tmp / "gateway.log").read_text().splitlines() if "Error" in x]
            bench.notes.append("Row 5 (opaque tokens) is n/a: the gateway did not start with an introspection "
                               f"issuer ({errors[-1].strip()[:200] if errors else 'no error logged'}).")
            introspection = False
            (tmp / "gateway.log").rename(tmp / "gateway-introspection-failed.log")
            continue
        break
    bench.services.append(gw)
    gw_base = f"http://127.0.0.1:{gw_port}"

    rs_token = issuer.mint(scope=SCOPE, ttl=3600)
    es_token = issuer.mint(scope=SCOPE, ttl=3600, key=issuer.keys[1])
    await check(f"{gw_base}/open", None, 200, "auth: none route")
    await check(f"{gw_base}/orders", rs_token, 200, "JWT route RS256")
    await check(f"{gw_base}/orders", es_token, 200, "JWT route ES256")
    await check(f"{gw_base}/orders", None, 401, "JWT route without a token")

    scripts = tmp / "wrk"
    scripts.mkdir()
    targets: list[Target] = [
        Target("direct", "1 upstream direct (nginx)", f"http://127.0.0.1:{upstream_port}/orders",
               static_script(scripts / "rs256.lua", rs_token), nginx, args.connections),
        *await floor_targets(bench, issuer, rs_token, static_script(scripts / "rs256.lua", rs_token), wanted),
        Target("none", "2 gateway, `auth: none` route", f"{gw_base}/open",
               static_script(scripts / "rs256.lua", rs_token), gw, args.connections),
        Target("rs256", "3a gateway, JWT RS256 hot token", f"{gw_base}/orders",
               static_script(scripts / "rs256.lua", rs_token), gw, args.connections),
        Target("es256", "3b gateway, JWT ES256 hot token", f"{gw_base}/orders",
               static_script(scripts / "es256.lua", es_token), gw, args.connections),
    ]
    targets += await sender_constraint_targets(bench, issuer, gw, gw_base, scripts, wanted)
    targets += await rules_targets(bench, issuer, gw, gw_base, scripts, wanted)
    targets += await rate_limit_targets(bench, issuer, scripts, wanted)

    if wanted("rotate"):
        say(f"minting {args.tokens:,} RS256 tokens for the warm rotation")
        warm_file = tmp / "tokens-warm.txt"
        warm_file.write_text("\n".join(mint_many(issuer, args.tokens)) + "\n")
        targets.append(Target("rotate", f"4a gateway, JWT rotating over {args.tokens:,} tokens, warm cache",
                              f"{gw_base}/orders", rotating_script(scripts / "rotate.lua", warm_file, "/orders"), gw,
                              args.connections, warmup=args.rotate_warmup))
    if wanted("cold") and args.cold:
        say(f"minting {args.tokens:,} x {args.rounds} RS256 tokens for the first-use rows (a fresh set each round)")
        cold_sets = []
        for r in range(args.rounds):
            token_file = tmp / f"tokens-cold-{r}.txt"
            token_file.write_text("\n".join(mint_many(issuer, args.tokens)) + "\n")
            cold_sets.append(rotating_script(scripts / f"cold-{r}.lua", token_file, "/orders"))
        targets.append(Target("cold", f"4b gateway, JWT rotating over {args.tokens:,} tokens never seen before",
                              f"{gw_base}/orders", lambda r: cold_sets[r], gw, args.connections, warm=False))

    if introspection and wanted("opaque"):
        opaque = issuer.mint_opaque(scope=SCOPE, ttl=3600)
        await check(f"{gw_base}/opaque", opaque, 200, "opaque route")
        targets.append(Target("opaque", "5 gateway, opaque token, warm introspection cache", f"{gw_base}/opaque",
                              static_script(scripts / "opaque.lua", opaque), gw, args.connections))

    if args.revoked and wanted("revoked"):
        rv_port = free_port()
        rv_config = gateway_config(tmp, "revoked", rv_port, upstream_port, issuer, workers, False)
        preload = tmp / "preload"
        preload.mkdir()
        (preload / "sitecustomize.py").write_text(
            f"import sys\nsys.path.insert(0, {str(REPO / 'bench')!r})\n"
            "import preload_revocations\npreload_revocations.install_from_env()\n"
        )
        report = tmp / "revoked-memory.json"
        rv_env = {**env, "PYTHONPATH": str(preload), "BENCH_REVOCATIONS": str(args.revoked),
                  "BENCH_REVOCATIONS_PROBE": REVOKED_JTI, "BENCH_REVOCATIONS_REPORT": str(report)}
        rv = start("gateway-revoked", [gateway_bin, "serve", "--config", str(rv_config)], tmp / "revoked.log",
                   env=rv_env)
        bench.services.append(rv)
        say(f"loading {args.revoked:,} revocation entries into each gateway process")
        await wait_http(admin_url(rv_config) + "/readyz", rv, timeout=180, ok=lambda s: s == 200)
        deadline = time.monotonic() + 180
        # every worker loads its own copy; the first one ready answers /readyz
        while len(list(tmp.glob("revoked-memory.json.*"))) < workers and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        rv_base = f"http://127.0.0.1:{rv_port}"
        await check(f"{rv_base}/orders", rs_token, 200, "JWT route with 1M revocations")
        await check(f"{rv_base}/orders", issuer.mint(scope=SCOPE, jti=REVOKED_JTI), 401, "a revoked jti")
        reports = [json.loads(p.read_text()) for p in tmp.glob("revoked-memory.json.*")]
        if not reports:
            raise RuntimeError("the revoked gateway wrote no memory report: the preload did not run")
        bench.extra["revoked_memory"] = min(reports, key=lambda r: r["bytes_per_entry"])
        bench.extra["revoked_processes"] = len(reports)
        bench.extra["revoked_rss_tree"] = rss_of_tree(rv.pid)
        bench.extra["gateway_rss_tree"] = rss_of_tree(gw.pid)
        targets.append(Target("revoked", f"6 gateway, JWT RS256 hot, {args.revoked:,} revoked entries",
                              f"{rv_base}/orders", static_script(scripts / "revoked.lua", rs_token), rv,
                              args.connections))
    elif not args.revoked:
        bench.notes.append("Row 6 (revocation list) skipped (--revoked 0).")

    if args.apache and wanted("apache"):
        if apache_installed():
            ap_port = free_port()
            apache = start_apache(tmp, ap_port, upstream_port, f"https://127.0.0.1:{tls_port}/jwks", issuer)
            bench.services.append(apache)
            ap_url = f"http://127.0.0.1:{ap_port}/orders"
            await wait_http(ap_url, apache)
            await check(ap_url, rs_token, 200, "Apache + mod_auth_openidc")
            await check(ap_url, None, 401, "Apache + mod_auth_openidc without a token")
            await check(ap_url, issuer.mint(scope="profile"), (401, 403), "Apache, wrong scope")
            targets.append(Target("apache", "A Apache httpd + mod_auth_openidc, RS256 hot token", ap_url,
                                  static_script(scripts / "apache.lua", rs_token), apache, args.connections))
        else:
            bench.notes.append("Apache + mod_auth_openidc not installed (`apt-get install apache2 "
                               "libapache2-mod-auth-openidc`): compared against nginx only.")

    targets = [t for t in targets if wanted(t.key)]
    # moderate load: few connections, each pausing between requests, so no server runs at capacity
    paced = static_script(scripts / "paced.lua", rs_token, args.low_delay)
    moderate = [
        Target(f"{t.key}@{args.low_connections}", t.label, t.url, paced, t.service, args.low_connections)
        for t in targets if t.key in ("direct", "floor", "floor-jwt", "none", "rs256", "apache")
    ] if args.low_connections else []

    processes = len(process_tree(gw.pid))
    bench.extra["gateway_processes"] = (f"{processes} processes (a supervisor and {processes - 1} workers)"
                                        if processes > 1 else "1 process")
    bench.extra["workers"] = workers
    say(f"gateway: {bench.extra['gateway_processes']}; targets: {', '.join(t.key for t in targets)}")

    if args.warmup > 0 or args.rotate_warmup > 0:
        for target in targets + moderate:
            if target.warm:
                script = target.script(0) if callable(target.script) else target.script
                seconds = target.warmup or args.warmup
                if seconds > 0:
                    await wrk(target.url, script, target.connections, args.threads, seconds, None)

    all_targets = targets + moderate
    profile_task: asyncio.Task[None] | None = None
    for r in range(args.rounds):
        shift = r % len(all_targets)
        for target in all_targets[shift:] + all_targets[:shift]:  # a different order every round
            script = target.script(r) if callable(target.script) else target.script
            duration = args.duration if target in targets else args.low_duration
            if args.profile and r == 0 and target.key == "rs256":
                profile_task = asyncio.create_task(profile(gw, tmp, duration, bench))
            run = await wrk(target.url, script, target.connections, args.threads, duration, target.service,
                            target.side)
            if target.load is not None:
                target.load.expected_rps = max(target.load.expected_rps, run.rps)
            if profile_task is not None:
                await profile_task
                profile_task = None
            bench.runs.setdefault(target.key, []).append(run)
            say(f"round {r + 1}/{args.rounds} {target.key:>12}: {run.rps:9.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
                f"p99 {run.p99_ms:6.2f} ms  cpu {run.cpu_us or 0:6.1f} us/req  errors {run.errors}")
            await asyncio.sleep(args.pause)

    error_lines = 0
    for log_file in (tmp / "gateway.log", tmp / "revoked.log"):
        if log_file.exists():
            error_lines += sum('"level": "error"' in x or '"level":"error"' in x or "Traceback" in x
                          for x in log_file.read_text(errors="replace").splitlines())
    bench.extra["gateway_error_logs"] = error_lines
    bench.extra["audit_lines"] = sum(1 for _ in (tmp / "gateway-audit.jsonl").open("rb"))
    floor_logs(bench)
    if args.startup_revocations and wanted("startup"):
        await startup_times(bench, issuer)
    bench.extra["targets"] = [(t.key, t.label) for t in targets]


# --- sender-constrained tokens and claims rules (issue 12) -----------------------------------


async def check_dpop(url: str, key: ec.EllipticCurvePrivateKey, token: str) -> None:
    """The DPoP row measures what it claims: a proof is accepted once, a replay and a bare Bearer are not."""
    timeout = aiohttp.ClientTimeout(total=10)
    # one kept-alive connection: the replay goes to the worker that saw the proof (an in-memory
    # replay cache is per process)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        async def status(headers: dict[str, str]) -> int:
            async with session.get(url, headers=headers, timeout=timeout) as resp:
                await resp.read()
                return resp.status

        signed = sign_proof(key, ProofRequest("GET", url, access_token=token))
        fast = fast_proofs(key, url, token, 1)[0]
        dpop = f"DPoP {token}"
        got = [await status({"Authorization": dpop, "DPoP": proof}) for proof in (signed, fast, fast)]
        got.append(await status({"Authorization": f"Bearer {token}"}))
    if got != [200, 200, 401, 401]:
        raise RuntimeError(f"DPoP route {url}: fresh proof, bench proof, its replay, Bearer answered {got}, "
                           "expected [200, 200, 401, 401]")


def redis_ready(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


async def start_redis(bench: Bench, name: str = "redis") -> tuple[Service, int] | None:
    """A throwaway redis-server on 127.0.0.1 (no persistence), or None when it is not installed."""
    if shutil.which("redis-server") is None:
        return None
    root, port = bench.tmp / name, free_port()
    root.mkdir()
    redis = start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", str(root)], root / "stdout.log")
    bench.services.append(redis)
    deadline = time.monotonic() + 15
    while not redis_ready(port):
        if redis.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        await asyncio.sleep(0.1)
    return redis, port


async def sender_constraint_targets(bench: Bench, issuer: DemoIssuer, gw: Service, gw_base: str, scripts: Path,
                                    wanted: Callable[[str], bool]) -> list[Target]:
    """Rows 7a/7b: a DPoP-bound RS256 token with a fresh ES256 proof per request, on row 3a's route."""
    args, targets = bench.args, []
    if not (wanted("dpop") or wanted("dpop-redis")):
        return []
    key = ec.generate_private_key(ec.SECP256R1())
    token = issuer.mint(scope=SCOPE, ttl=3600, cnf=confirmation(key))
    threads = min(args.threads, args.connections)

    def target(row: str, label: str, base: str, service: Service, side: Service | None) -> Target:
        url = f"{base}/orders"
        load = DPoPLoad(key, url, token, scripts / row, threads, args.proofs)
        load.directory.mkdir()
        return Target(row, label, url, lambda _round: load.script(args.duration), service, args.connections,
                      side=side, load=load)

    bench.extra["proof_costs"] = proof_costs()
    if wanted("dpop"):
        await check_dpop(f"{gw_base}/orders", key, token)
        targets.append(target("dpop", "7a gateway, DPoP-bound RS256 token, a fresh ES256 proof per request "
                              "(replay cache in memory)", gw_base, gw, None))
    if wanted("dpop-redis"):
        started = await start_redis(bench)
        if started is None:
            bench.notes.append("Row 7b (DPoP, replay cache in Redis) skipped: redis-server is not installed.")
            return targets
        redis, redis_port = started
        port = free_port()
        config = gateway_config(bench.tmp, "gateway-dpop-redis", port, bench.upstream_port, issuer, bench.workers,
                                False, {"dpop": {"redis_url": f"redis://127.0.0.1:{redis_port}/0"}})
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        dpop_gw = start("gateway-dpop-redis", [str(Path(sys.executable).with_name("gateway")), "serve", "--config",
                                               str(config)], bench.tmp / "gateway-dpop-redis.log", env=env)
        bench.services.append(dpop_gw)
        await wait_http(admin_url(config) + "/readyz", dpop_gw, ok=lambda s: s == 200)
        base = f"http://127.0.0.1:{port}"
        await check_dpop(f"{base}/orders", key, token)
        targets.append(target("dpop-redis", "7b gateway, DPoP-bound RS256 token, a fresh ES256 proof per request "
                              "(replay cache in Redis)", base, dpop_gw, redis))
    return targets


async def rules_targets(bench: Bench, issuer: DemoIssuer, gw: Service, gw_base: str, scripts: Path,
                        wanted: Callable[[str], bool]) -> list[Target]:
    """Rows 8a/8b: one route with three CEL claims rules, and the same route without them."""
    if not (wanted("rules") or wanted("norules")):
        return []
    token = issuer.mint(scope=SCOPE, ttl=3600, **TENANT_CLAIMS)
    await check(f"{gw_base}/rules/acme/orders", token, 200, "claims rules route")
    await check(f"{gw_base}/rules/globex/orders", token, 403, "claims rules route, another tenant")
    await check(f"{gw_base}/norules/acme/orders", token, 200, "route without rules")
    script = static_script(scripts / "rules.lua", token)
    connections = bench.args.connections
    return [
        Target("rules", f"8a gateway, JWT RS256 hot token, route with {len(CLAIMS_RULES)} CEL claims rules",
               f"{gw_base}/rules/acme/orders", script, gw, connections),
        Target("norules", "8b gateway, JWT RS256 hot token, the same route without rules",
               f"{gw_base}/norules/acme/orders", script, gw, connections),
    ]


async def rate_limit_targets(bench: Bench, issuer: DemoIssuer, scripts: Path,
                             wanted: Callable[[str], bool]) -> list[Target]:
    """Rows 9a/9b (issue 13): a route with a subject limit that is never hit, its counters in Redis
    (one EVALSHA per request), and the same route without it, on one gateway."""
    if not (wanted("limited") or wanted("unlimited")):
        return []
    started = await start_redis(bench, "redis-ratelimit")
    if started is None:
        bench.notes.append("Rows 9a/9b (rate limits) skipped: redis-server is not installed.")
        return []
    redis, redis_port = started
    port = free_port()
    config = gateway_config(bench.tmp, "gateway-ratelimit", port, bench.upstream_port, issuer, bench.workers, False,
                            {"rate_limiting": {"redis_url": f"redis://127.0.0.1:{redis_port}/0"}})
    data = yaml.safe_load(config.read_text())
    same = {"methods": ["GET"], "upstream": "nginx", "scopes": [SCOPE]}
    data["routes"] += [  # 10,000,000 a minute: never reached, every request still charged in Redis
        {"name": "limited", "path": "/limited/orders", **same,
         "rate_limits": [{"key": "subject", "rate": "10000000/m"}]},
        {"name": "unlimited", "path": "/unlimited/orders", **same},
    ]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    gw = start("gateway-ratelimit", [str(Path(sys.executable).with_name("gateway")), "serve", "--config", str(config)],
               bench.tmp / "gateway-ratelimit.log", env=env)
    bench.services.append(gw)
    await wait_http(admin_url(config) + "/readyz", gw, ok=lambda s: s == 200)
    base = f"http://127.0.0.1:{port}"
    token = issuer.mint(scope=SCOPE, ttl=3600)
    await check(f"{base}/unlimited/orders", token, 200, "route without a limit")
    async with aiohttp.ClientSession() as session, session.get(f"{base}/limited/orders",
                                                               headers={"Authorization": f"Bearer {token}"}) as resp:
        if resp.status != 200 or not resp.headers.get("RateLimit", "").startswith('"subject";r='):
            raise RuntimeError(f"the limited route answered {resp.status} without its RateLimit header: the limit "
                               "is not in force")
    script = static_script(scripts / "ratelimit.lua", token)
    connections = bench.args.connections
    return [
        Target("limited", "9a gateway, JWT RS256 hot token, route with a subject limit never hit (Redis)",
               f"{base}/limited/orders", script, gw, connections, side=redis),
        Target("unlimited", "9b gateway, JWT RS256 hot token, the same route without a limit",
               f"{base}/unlimited/orders", script, gw, connections),
    ]


def rate_limit_section(bench: Bench) -> list[str]:
    """Row 9a against 9b: what a limit that is never hit costs (target: within 10% throughput)."""
    if "limited" not in bench.runs or "unlimited" not in bench.runs:
        return []
    rps = ratios(bench, "limited", "unlimited", "rps")
    cpu = ratios(bench, "limited", "unlimited", "cpu_us")
    ratio = statistics.median(rps) if rps else None
    side = [r.side_cpu_us for r in bench.runs["limited"] if r.side_cpu_us is not None]
    verdict = "n/a" if ratio is None else ("met" if ratio >= 0.9 else "NOT met")
    line = (f"- A subject limit never hit, counters in Redis (9a) vs the same route without it (9b): "
            f"{fmt(ratio, '.2f', 'x')} throughput, {fmt(statistics.median(cpu) if cpu else None, '.2f', 'x')} "
            f"gateway CPU (target >= 0.90x): {verdict}")
    if side:
        line += f"; Redis itself {statistics.median(side):.1f} us per request"
    return [line]


async def profile(gw: Service, tmp: Path, duration: float, bench: Bench) -> None:
    """py-spy over the gateway's processes during the first RS256 run (--profile)."""
    py_spy = Path(sys.executable).with_name("py-spy")
    out = REPO / "bench" / "results" / "profile-rs256.speedscope.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.sleep(0.5)
    proc = await asyncio.create_subprocess_exec(
        str(py_spy), "record", "--pid", str(gw.pid), "--subprocesses", "--duration", str(max(1, int(duration) - 1)),
        "--rate", "250", "--format", "speedscope", "--output", str(out), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    bench.extra["profile"] = str(out) if proc.returncode == 0 else f"py-spy failed: {err.decode()[-300:]}"


# --- the floors and the start-up time (issue 14) --------------------------------------------


async def floor_targets(bench: Bench, issuer: DemoIssuer, token: str, script: Path,
                        wanted: Callable[[str], bool]) -> list[Target]:
    """Rows F0/F1: bench/floor_proxy.py, as many workers as the gateway, the same upstream and token."""
    out: list[Target] = []
    modes = [("floor", "--plain", "F0 floor: bare aiohttp proxy, no features"),
             ("floor-jwt", "--jwt-audit", "F1 floor: bare aiohttp proxy + JWT cache + one audit line")]
    for key, flag, label in modes:
        if not wanted(key):
            continue
        port = free_port()
        argv = [sys.executable, str(FLOOR_PROXY), flag, "--listen", f"127.0.0.1:{port}",
                "--upstream", f"http://127.0.0.1:{bench.upstream_port}", "--workers", str(bench.workers)]
        if flag == "--jwt-audit":
            argv += ["--jwks", f"{issuer.issuer}/jwks", "--issuer", issuer.issuer, "--audience", AUDIENCE,
                     "--audit", str(bench.tmp / "floor-audit.jsonl")]
        floor = start(key, argv, bench.tmp / f"{key}.log")
        bench.services.append(floor)
        url = f"http://127.0.0.1:{port}/orders"
        await wait_http(url, floor)
        await check(url, token, 200, label)
        if flag == "--jwt-audit":
            await check(url, None, 401, f"{label}, without a token")
            await check(url, token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"), 401,
                        f"{label}, a bad signature")
        out.append(Target(key, label, url, script, floor, bench.args.connections))
    return out


def floor_logs(bench: Bench) -> None:
    """Error lines in the floors' logs (wrk stops mid-request every run) and F1's audit lines."""
    lines = [x for key in ("floor", "floor-jwt") if (bench.tmp / f"{key}.log").exists()
             for x in (bench.tmp / f"{key}.log").read_text(errors="replace").splitlines()]
    if lines:
        bench.extra["floor_error_logs"] = sum("Error" in x or "Traceback" in x for x in lines)
    audit = bench.tmp / "floor-audit.jsonl"
    if audit.exists():
        bench.extra["floor_audit_lines"] = sum(1 for _ in audit.open("rb"))


def revocation_entries_resp(count: int, issuer: str, expires_in: int = 7 * 86400) -> Iterator[bytes]:
    """``count`` revocation entries as Redis SET commands (RESP, 10,000 a chunk) under STARTUP_PREFIX: 70% token entries
    (half jti, half SHA-256 fingerprints), 10% each family, subject and client; the first is REVOKED_JTI.

    Keys and values come from the gateway's own schema (one entry of each shape, the value then
    swapped in), so a million are ready in about a second.
    """
    from gateway.revocation import Entry, Kind, Match, Schema

    schema, now = Schema(STARTUP_PREFIX), time.time()
    expires, placeholder = now + expires_in, "benchvalue"  # fingerprint keys are lower-cased
    shapes = {
        "jti": Entry(Kind.TOKEN, placeholder, expires, issuer, match=Match.JTI, created_at=now),
        "fingerprint": Entry(Kind.TOKEN, placeholder, expires, issuer, match=Match.FINGERPRINT, created_at=now),
        "family": Entry(Kind.FAMILY, placeholder, expires, issuer, created_at=now),
        "subject": Entry(Kind.SUBJECT, placeholder, expires, issuer, not_before=now, created_at=now),
        "client": Entry(Kind.CLIENT, placeholder, expires, issuer, not_before=now, created_at=now),
    }
    templates = {name: (schema.entry_key(e).split(placeholder),
                        json.dumps(e.to_json(), separators=(",", ":")).split(placeholder))
                 for name, e in shapes.items()}
    cycle = ["jti", "fingerprint"] * 3 + ["jti", "family", "subject", "client"]  # 7 tokens in 10
    ttl = str(expires_in).encode()
    chunks: list[bytes] = []
    for i in range(count):
        shape = cycle[i % 10]
        value = (REVOKED_JTI if i == 0 else hashlib.sha256(b"bench-%d" % i).hexdigest() if shape == "fingerprint"
                 else f"bench-{shape}-{i}")
        (k1, k2), (v1, v2) = templates[shape]
        key, val = f"{k1}{value}{k2}".encode(), f"{v1}{value}{v2}".encode()
        chunks.append(b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nEX\r\n$%d\r\n%b\r\n"
                      % (len(key), key, len(val), val, len(ttl), ttl))
        if len(chunks) == 10_000:
            yield b"".join(chunks)
            chunks.clear()
    yield b"".join(chunks)


def fill_redis(port: int, count: int, issuer: str) -> float:
    """Write ``count`` entries with ``redis-cli --pipe``; seconds taken."""
    started = time.monotonic()
    # redis-cli prints only a summary at the end: its stdout cannot fill up while we write
    proc = subprocess.Popen(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--pipe"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdin is not None
    try:
        for chunk in revocation_entries_resp(count, issuer):
            proc.stdin.write(chunk)
        out, _ = proc.communicate(timeout=300)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0 or b"errors: 0" not in out:
        raise RuntimeError(f"redis-cli --pipe failed: {out.decode(errors='replace')[-300:]}")
    return time.monotonic() - started


def listening(port: int) -> int:
    """Sockets in LISTEN on 127.0.0.1:``port`` (one per gateway worker: they bind it once ready)."""
    wanted = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError):
        return sum(1 for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                   if line.split()[1] == wanted and line.split()[3] == "0A")
    return 0


async def time_to_ready(bench: Bench, issuer: DemoIssuer, name: str, redis_url: str, prefix: str) -> dict[str, float]:
    """Seconds from starting ``gateway serve`` to its first /readyz 200, and to every worker being ready.

    A worker listens once its start-up is over or has waited 10 s for Redis, ready or not, and
    answers /readyz for itself: "every worker" is the start of the first run of READY_STREAK
    answers 200 in a row, each on a new connection (SO_REUSEPORT spreads them over the workers),
    with as many sockets listening on the admin port as there are workers.
    """
    args, workers = bench.args, bench.workers
    port = free_port()
    revocation: dict[str, Any] = {"redis_url": redis_url, "key_prefix": prefix}
    if args.startup_snapshot:  # the signed start-up snapshot: the first start against a Redis writes it
        key = bench.tmp / "snapshot.key"
        if not key.exists():
            key.write_text(base64.b64encode(os.urandom(48)).decode() + "\n")
        revocation["snapshot"] = {"key_file": str(key)}
    config = gateway_config(bench.tmp, name, port, bench.upstream_port, issuer, workers, False,
                            {"revocation": revocation})
    url = admin_url(config) + "/readyz"
    admin_port = int(url.rsplit(":", 1)[1].split("/")[0])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    gw = start(name, [str(Path(sys.executable).with_name("gateway")), "serve", "--config", str(config)],
               bench.tmp / f"{name}.log", env=env)
    first: float | None = None
    streak, streak_start = 0, 0.0
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            while time.monotonic() - started < args.startup_timeout:  # bounded: one poll per 20 ms at most
                if gw.proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {gw.proc.returncode} (log: {name}.log)")
                status = 0
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(url, timeout=timeout) as resp:
                        await resp.read()
                        status = resp.status
                now = time.monotonic() - started
                if status == 200:
                    first = now if first is None else first
                if status == 200 and listening(admin_port) >= workers:
                    streak, streak_start = streak + 1, streak_start if streak else now
                    if streak >= READY_STREAK:
                        return {"first": first or now, "all": streak_start}
                    continue  # the streak is timed from its first answer: no pause within it
                streak = 0
                await asyncio.sleep(0.02)
        raise RuntimeError(f"{name} was not ready after {args.startup_timeout}s")
    finally:
        try:
            if prefix == STARTUP_PREFIX and first is not None and gw.proc.poll() is None:
                base = f"http://127.0.0.1:{port}/orders"
                await check(base, issuer.mint(scope=SCOPE, ttl=3600), 200, f"{name}: a token not revoked")
                await check(base, issuer.mint(scope=SCOPE, jti=REVOKED_JTI), 401, f"{name}: the revoked probe jti")
        finally:
            gw.stop()


async def startup_times(bench: Bench, issuer: DemoIssuer) -> None:
    """Start-up with ``--startup-revocations`` entries in Redis, against an empty prefix, alternating."""
    args = bench.args
    if shutil.which("redis-cli") is None:
        bench.notes.append("Start-up time with revocation entries in Redis skipped: redis-server/redis-cli missing.")
        return
    started = await start_redis(bench, "redis-startup")
    if started is None:
        bench.notes.append("Start-up time with revocation entries in Redis skipped: redis-server is not installed.")
        return
    redis, port = started
    redis_url = f"redis://127.0.0.1:{port}/0"
    say(f"writing {args.startup_revocations:,} revocation entries into redis-server for the start-up time")
    fill = await asyncio.to_thread(fill_redis, port, args.startup_revocations, issuer.issuer)
    runs: dict[str, list[dict[str, float]]] = {"empty": [], "full": []}
    try:
        for r in range(args.startup_runs):
            for label, prefix in (("empty", "bench-startup-empty:revoked:"), ("full", STARTUP_PREFIX)):
                result = await time_to_ready(bench, issuer, f"startup-{label}-{r}", redis_url, prefix)
                runs[label].append(result)
                say(f"start-up {r + 1}/{args.startup_runs} {label:>5}: /readyz 200 after {result['first']:.2f} s, "
                    f"every worker after {result['all']:.2f} s")
    finally:
        redis.stop()
    # with the snapshot, the first start against a Redis (cold) writes it and every later one (warm) reads it
    warm = {label: rs[1:] if args.startup_snapshot and len(rs) > 1 else rs for label, rs in runs.items()}
    bench.extra["startup"] = {
        "entries": args.startup_revocations, "fill_seconds": fill, "runs": runs, "snapshot": args.startup_snapshot,
        **{f"{label}_{what}": statistics.median(r[what] for r in rs) for label, rs in warm.items() if rs
           for what in ("first", "all")},
        **{f"{label}_cold_{what}": rs[0][what] for label, rs in runs.items() if rs for what in ("first", "all")},
    }


def startup_line(bench: Bench) -> str | None:
    up = bench.extra.get("startup")
    if not up or "full_first" not in up:
        return None
    entries, target = up["entries"], up["full_all"] <= 2.0  # every worker ready
    scale = "" if entries == 1_000_000 else " (the target is for 1,000,000 entries)"
    runs = len(up["runs"]["full"])
    how = "the signed snapshot (`revocation.snapshot`)" if up["snapshot"] else "every worker loading every key"
    which = (f"median of {runs}" if not up["snapshot"] else f"warm: median of the {runs - 1} starts after the first"
             if runs > 1 else "cold: the first start, which writes the snapshot")
    cold = (f" The first start (cold: no snapshot in Redis yet, one worker loads every key and writes it): "
            f"{up['full_cold_first']:.2f} s, every worker after {up['full_cold_all']:.2f} s."
            if up["snapshot"] and runs > 1 else "")
    return (f"Start-up of `gateway serve` (process start to /readyz 200) with {entries:,} revocation entries in "
            f"Redis, {how}: {up['full_first']:.2f} s, every worker ready after {up['full_all']:.2f} s; with an "
            f"empty list {up['empty_first']:.2f} s / {up['empty_all']:.2f} s, so the entries add "
            f"{up['full_all'] - up['empty_all']:.2f} s ({which}; written into Redis in {up['fill_seconds']:.1f} s)."
            f"{cold} Target <= 2 s: {'met' if target else 'NOT met'}{scale}.")


# --- the report -------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratios(bench: Bench, key: str, base: str, attr: str) -> list[float]:
    """Per-round ratios ``key / base`` of one metric (both measured in the same round)."""
    out = []
    for a, b in zip(bench.runs.get(key, []), bench.runs.get(base, []), strict=False):
        x, y = getattr(a, attr), getattr(b, attr)
        if x is not None and y:
            out.append(x / y)
    return out


def fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:{spec}}{suffix}"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()), "cpu": cpu, "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": _version(["wrk", "-v"]), "nginx": _version(["nginx", "-v"]),
        "apache": _version(["apache2", "-v"]),
        "mod_auth_openidc": _version(["dpkg-query", "-W", "-f=${Version}", "libapache2-mod-auth-openidc"]),
    }


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout + out.stderr).strip().splitlines()
    return re.sub(r"\s+", " ", text[0]).split(" Copyright")[0] if text else "unknown"


def report(bench: Bench, command: str, seconds: float) -> str:
    args = bench.args
    m = machine()
    has = bench.runs.__contains__
    lines = [
        f"Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Machine: {m['nproc']} cores ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}; "
        f"{m['wrk']}; {m['nginx']}; {m['apache']}; mod_auth_openidc {m['mod_auth_openidc']}  ",
        f"Command: `{command}` ({seconds:.0f} s)  ",
        f"Load: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s per row "
        + (f"(moderate-load rows: -c{args.low_connections} -d{args.low_duration:g}s, each connection pausing "
           f"{args.low_delay:g} ms between requests)" if args.low_connections else "(no moderate-load rows)")
        + f", {args.rounds} rounds, "
        f"targets alternating; medians over rounds; ratios taken within each round, then the median.  ",
        f"Gateway: `gateway serve`, {bench.extra.get('gateway_processes', '?')} "
        f"(`workers: {bench.extra.get('workers', '?')}`), uvloop, audit to a file, metrics on, log level warning; "
        f"upstream nginx `return 200` ({len(UPSTREAM_BODY)}-byte body), 1 worker process.",
        "",
        "| row | req/s | x row 2 | p50 ms | p99 ms | CPU us/req | CPU x row 2 | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = dict(bench.extra.get("targets", []))
    keys = [k for k, _ in bench.extra.get("targets", [])]
    keys += [k for k in bench.runs if "@" in k]
    for key in keys:
        runs = bench.runs.get(key, [])
        if not runs:
            continue
        base_key = "none" if "@" not in key else f"none@{args.low_connections}"
        label = labels.get(key) or (f"{labels.get(key.split('@')[0], key)}, moderate load "
                                    f"({args.low_connections} connections, {args.low_delay:g} ms pauses)")
        cpu = [r.cpu_us for r in runs if r.cpu_us is not None]
        lines.append(
            f"| {label} | {fmt(median([r.rps for r in runs]))} "
            f"| {fmt(median(ratios(bench, key, base_key, 'rps')), '.2f')} "
            f"| {fmt(median([r.p50_ms for r in runs]), '.2f')} | {fmt(median([r.p99_ms for r in runs]), '.2f')} "
            f"| {fmt(median(cpu) if cpu else None, '.1f')} "
            f"| {fmt(median(ratios(bench, key, base_key, 'cpu_us')), '.2f')} | {sum(r.errors for r in runs)} |"
        )
    if not has("opaque") and (not args.rows or "opaque" in args.rows.split(",")):
        lines.append("| 5 gateway, opaque token, warm introspection cache | n/a | | | | | | |")
    lines.append("")
    lines.append("CPU us/req is utime+stime of the serving processes (the gateway and its children; nginx's for row 1; "
                 "Apache's for row A) per request, i.e. ms per 1,000 requests. Rows 1, 2, 3a, 6 and A send the same "
                 "RS256 token in `Authorization` (row 2 forwards it untouched), so row 2 is the proxy alone on the "
                 "same bytes. Errors are socket errors plus non-2xx answers.")
    issue14 = floors_section(bench)
    if issue14:
        lines += ["", "Against the floors and Apache (issue 14; ratios taken within each round, then the median):",
                  ""]
        lines += issue14
    lines += ["", "Targets (issue 8):", ""]
    lines += targets_section(bench)
    constrained = sender_constraint_section(bench)
    if constrained:
        lines += ["", "Sender-constrained tokens and claims rules (issue 12; ratios within each round):", ""]
        lines += constrained
    limited = rate_limit_section(bench)
    if limited:
        lines += ["", "Rate limits (issue 13; ratios within each round):", ""]
        lines += limited
    mem = bench.extra.get("revoked_memory")
    if mem:
        lines.append("")
        lines.append(f"Revocation list: {mem['entries']:,} entries took {mem['rss_after'] - mem['rss_before']:,} bytes "
                     f"of RSS in a gateway process, {mem['bytes_per_entry']:.0f} bytes per entry (loaded in "
                     f"{mem['fill_seconds']:.1f} s; the in-memory list is per process: "
                     f"{bench.extra.get('revoked_processes', 1)} copies with {bench.extra.get('workers', 1)} workers).")
    lines.append(f"Error-level lines in the gateway's log over the whole run (wrk stops mid-request every run): "
                 f"{bench.extra.get('gateway_error_logs', 'n/a')}. Audit lines written: "
                 f"{bench.extra.get('audit_lines', 'n/a'):,}.")
    if "floor_error_logs" in bench.extra:
        lines.append(f"Floors: error lines in their logs {bench.extra['floor_error_logs']}; audit lines written by F1 "
                     f"{bench.extra.get('floor_audit_lines', 0):,}.")
    if "profile" in bench.extra:
        lines.append(f"Profile (py-spy, first RS256 run): {bench.extra['profile']}")
    if bench.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in bench.notes]
    return "\n".join(lines) + "\n"


def floors_section(bench: Bench) -> list[str]:
    """The gateway against the bare aiohttp proxies (F0, F1) and Apache, with issue 14's targets."""
    low, tokens = bench.args.low_connections, bench.args.tokens

    def med(key: str, base: str, attr: str) -> float | None:
        values = ratios(bench, key, base, attr)
        return statistics.median(values) if values else None

    def verdict(checks: list[bool | None]) -> str:
        if not checks or any(c is None for c in checks):
            return "n/a"
        return "met" if all(checks) else "NOT met"

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    def at_least(value: float | None, limit: float) -> bool | None:
        return None if value is None else value >= limit

    out = ["| comparison | throughput | CPU per request | target | |", "|---|---:|---:|---|---|"]
    Checks = Callable[[float | None, float | None], list[bool | None]] | None
    compared: list[tuple[str, str, str, str, Checks]] = [  # label, key, base, target, checks of (rps, cpu)
        ("gateway `auth: none` (2) vs bare proxy (F0)", "none", "floor", "CPU <= 1.05x",
         lambda rps, cpu: [at_most(cpu, 1.05)]),
        ("gateway JWT RS256 hot (3a) vs bare proxy + JWT cache + audit line (F1)", "rs256", "floor-jwt",
         "CPU <= 1.05x", lambda rps, cpu: [at_most(cpu, 1.05)]),
        ("gateway JWT RS256 hot (3a) vs Apache + mod_auth_openidc (A)", "rs256", "apache",
         "throughput >= 1.2x, CPU <= 0.8x", lambda rps, cpu: [at_least(rps, 1.2), at_most(cpu, 0.8)]),
        (f"gateway, {tokens:,} distinct tokens warm (4a) vs one hot token (3a)", "rotate", "rs256",
         "throughput >= 0.9x", lambda rps, cpu: [at_least(rps, 0.9)]),
        ("for reference: F1 vs F0 (a JWT cache and an audit line in a bare proxy)", "floor-jwt", "floor", "", None),
        ("for reference: F1 vs Apache (A)", "floor-jwt", "apache", "", None),
    ]
    for label, key, base, target, checks in compared:
        if key not in bench.runs or base not in bench.runs:
            continue
        rps, cpu = med(key, base, "rps"), med(key, base, "cpu_us")
        out.append(f"| {label} | {fmt(rps, '.2f', 'x')} | {fmt(cpu, '.2f', 'x')} | {target} "
                   f"| {verdict(checks(rps, cpu)) if checks else ''} |")
    if len(out) == 2:
        out = []
    p99, ap99 = (median([r.p99_ms for r in bench.runs.get(k, [])]) for k in ("rs256", "apache"))
    if "rs256" in bench.runs and "apache" in bench.runs:
        out.append(f"| p99 at {bench.args.connections} connections, JWT route (3a) vs Apache (A) | "
                   f"{fmt(p99, '.2f', ' ms')} vs {fmt(ap99, '.2f', ' ms')} | | below Apache's "
                   f"| {verdict([p99 < ap99])} |")
    direct, jwt_low = bench.runs.get(f"direct@{low}", []), bench.runs.get(f"rs256@{low}", [])
    if direct and jwt_low:
        added = statistics.median(a.p50_ms - b.p50_ms for a, b in zip(jwt_low, direct, strict=False))
        out.append(f"| p50 added over nginx direct, JWT route, moderate load ({low} connections) | "
                   f"{added:.2f} ms | | < 1 ms | {verdict([added < 1])} |")
    line = startup_line(bench)
    if line:
        out += ["", line]
    return out


def sender_constraint_section(bench: Bench) -> list[str]:
    """Rows 7a/7b against row 3a (the same route, a bearer token) and 8a against 8b."""
    out: list[str] = []

    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def cpu_delta(key: str, base: str) -> float | None:
        pairs = zip(bench.runs.get(key, []), bench.runs.get(base, []), strict=False)
        return med([a.cpu_us - b.cpu_us for a, b in pairs if a.cpu_us is not None and b.cpu_us is not None])

    def compare(key: str, base: str) -> str:
        return (f"{fmt(med(ratios(bench, key, base, 'rps')), '.2f', 'x')} throughput, "
                f"{fmt(med(ratios(bench, key, base, 'cpu_us')), '.2f', 'x')} CPU, "
                f"{fmt(cpu_delta(key, base), '+.0f', ' us')} of CPU per request")

    for key, where in (("dpop", "in memory"), ("dpop-redis", "in Redis")):
        if key in bench.runs:
            line = f"- DPoP, a fresh proof per request (replay cache {where}) vs row 3a: {compare(key, 'rs256')}"
            side = med([r.side_cpu_us for r in bench.runs[key] if r.side_cpu_us is not None])
            if side is not None:
                line += f"; Redis itself {side:.1f} us per request"
            out.append(line)
    costs = bench.extra.get("proof_costs")
    if costs:
        out.append(f"- One proof check in one process (all but the replay cache: parsing, the ES256 signature, "
                   f"htm, htu, iat, ath, jti): {costs['check_us']:.0f} us, of which the ES256 signature "
                   f"verification alone {costs['verify_us']:.0f} us")
        delta = cpu_delta("dpop", "rs256")
        if delta is not None:
            out.append(f"  (row 7a's extra CPU per request is {delta / costs['verify_us']:.1f} times one ES256 "
                       "verification)")
    if "rules" in bench.runs and "norules" in bench.runs:
        out.append(f"- {len(CLAIMS_RULES)} CEL claims rules vs the same route without rules (8a vs 8b): "
                   f"{compare('rules', 'norules')}")
    return out


def targets_section(bench: Bench) -> list[str]:
    args = bench.args
    low = args.low_connections
    out: list[str] = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    vs_apache = med(ratios(bench, "rs256", "apache", "rps"))
    cpu = med([r.cpu_us for r in bench.runs.get("rs256", []) if r.cpu_us is not None])
    out.append(f"- JWT hot token vs Apache + mod_auth_openidc: {fmt(vs_apache, '.2f', 'x')} (target >= 1.2x): "
               f"{verdict(None if vs_apache is None else vs_apache >= 1.2)}")
    out.append(f"- JWT hot token CPU: {fmt(cpu, '.1f', ' us/req')} (target < 90): "
               f"{verdict(None if cpu is None else cpu < 90)}")
    vs_none = med(ratios(bench, "rs256", "none", "rps"))
    out.append(f"- JWT route vs `auth: none` route: {fmt(vs_none, '.2f', 'x')} (target >= 0.95x): "
               f"{verdict(None if vs_none is None else vs_none >= 0.95)}")
    es_none = med(ratios(bench, "es256", "none", "rps"))
    if es_none is not None:
        out.append(f"  (ES256: {es_none:.2f}x)")
    rot = med(ratios(bench, "rotate", "rs256", "rps"))
    cold = bench.runs.get("cold", [])
    hot = bench.runs.get("rs256", [])
    if cold and hot:  # the extra CPU of a run of fresh tokens, per token and worker verifying it
        workers = int(bench.extra.get("workers", 1))
        extra = [(c.cpu_us - h.cpu_us) * c.requests / min(c.requests, args.tokens * workers)
                 for c, h in zip(cold, hot, strict=False) if c.cpu_us is not None and h.cpu_us is not None]
        if extra:
            bench.extra["first_use_cpu_us"] = med(extra)
    out.append(f"- {args.tokens:,} distinct tokens (warm cache) vs hot token: {fmt(rot, '.2f', 'x')} (target >= 0.6x): "
               f"{verdict(None if rot is None else rot >= 0.6)}")
    if "first_use_cpu_us" in bench.extra:
        cold_rot = med(ratios(bench, "cold", "rs256", "rps"))
        out.append(f"  (tokens never seen before, row 4b: {fmt(cold_rot, '.2f', 'x')}; a first use costs about "
                   f"{bench.extra['first_use_cpu_us']:.0f} us of CPU in each worker that sees it: the RS256 "
                   "verification)")
    op_rps = med(ratios(bench, "opaque", "rs256", "rps"))
    op_cpu = med(ratios(bench, "opaque", "rs256", "cpu_us"))
    out.append(f"- Opaque token, warm cache vs JWT hot: {fmt(op_rps, '.2f', 'x')} throughput, "
               f"{fmt(op_cpu, '.2f', 'x')} CPU (target: as cheap): "
               f"{verdict(None if op_rps is None else op_rps >= 0.95)}")
    rv = med(ratios(bench, "revoked", "rs256", "rps"))
    # noise: the spread of the same-run ratio of two identical targets is not available, so use
    # the round-to-round spread of row 3's ratio against row 2
    spread = ratios(bench, "rs256", "none", "rps")
    noise = (max(spread) - min(spread)) / 2 if len(spread) > 1 else 0.05
    noise = max(noise, 0.05)
    out.append(f"- {args.revoked:,} revoked entries vs row 3a (both hot RS256): {fmt(rv, '.2f', 'x')} "
               f"(target: within noise, taken as +-{noise:.2f}): "
               f"{verdict(None if rv is None else rv >= 1 - noise)}")
    direct = bench.runs.get(f"direct@{low}", [])
    jwt_low = bench.runs.get(f"rs256@{low}", [])
    if direct and jwt_low:
        added = [a.p50_ms - b.p50_ms for a, b in zip(jwt_low, direct, strict=False)]
        out.append(f"- Added p50 latency over the direct upstream at moderate load ({low} connections, "
                   f"{args.low_delay:g} ms pauses; JWT route): "
                   f"{med(added):.2f} ms (target < 1 ms): {verdict(med(added) < 1)}")  # type: ignore[operator]
    p99 = med([r.p99_ms for r in bench.runs.get("rs256", [])])
    ap99 = med([r.p99_ms for r in bench.runs.get("apache", [])])
    out.append(f"- p99 at {args.connections} connections, JWT route vs Apache: {fmt(p99, '.2f', ' ms')} vs "
               f"{fmt(ap99, '.2f', ' ms')}: {verdict(None if p99 is None or ap99 is None else p99 < ap99)}")
    errors = bench.extra.get("gateway_error_logs")
    out.append(f"- No error-level log noise on client disconnects: {errors} error lines: "
               f"{verdict(None if errors is None else errors == 0)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all targets (medians)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run (whole seconds)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections for the main rows")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--low-connections", type=int, default=10,
                        help="connections of the moderate-load latency rows (0: skip them)")
    parser.add_argument("--low-duration", type=int, default=2)
    parser.add_argument("--low-delay", type=float, default=5.0,
                        help="ms each connection of the moderate-load rows waits between requests")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured load per target first (0: none)")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between runs")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="gateway worker processes")
    parser.add_argument("--tokens", type=int, default=10_000, help="distinct tokens of rows 4a and 4b")
    parser.add_argument("--rotate-warmup", type=int, default=8,
                        help="seconds of rotation before row 4a is measured: every worker verifies every token once")
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="skip row 4b (fresh tokens each round)")
    parser.add_argument("--revoked", type=int, default=1_000_000, help="revocation entries of row 6 (0: skip)")
    parser.add_argument("--no-apache", dest="apache", action="store_false", help="skip Apache + mod_auth_openidc")
    parser.add_argument("--rows", default="", help="only these rows: direct,none,rs256,es256,rotate,cold,opaque,"
                        "revoked,apache,dpop,dpop-redis,rules,norules,limited,unlimited,floor,floor-jwt, and startup "
                        "(the start-up time with revocation entries in Redis); row 2 always runs")
    parser.add_argument("--startup-revocations", type=int, default=1_000_000,
                        help="revocation entries in Redis for the start-up time (0: skip it)")
    parser.add_argument("--startup-runs", type=int, default=3, help="start-ups timed with and without the entries")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds a start-up may take at most")
    parser.add_argument("--startup-snapshot", action=argparse.BooleanOptionalAction, default=True,
                        help="start-ups with the signed snapshot (revocation.snapshot; the first start writes it, "
                        "the others read it); --no-startup-snapshot: every worker loads every key")
    parser.add_argument("--quick", action="store_true",
                        help="a look in under a minute: " + " ".join(
                            f"--{k.replace('_', '-')} {v}" for k, v in QUICK_DEFAULTS.items()
                            if k not in ("cold", "out")) + " --no-cold, written to bench/results/quick.md")
    parser.add_argument("--proofs", type=int, default=30_000,
                        help="DPoP proofs signed before each DPoP run at least (more once a run's rate is known)")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway during the first RS256 run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "latest.md")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (configs, logs)")
    if "--quick" in sys.argv[1:]:
        parser.set_defaults(**QUICK_DEFAULTS)
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: apt-get install -y wrk nginx")
    flags = " ".join(sys.argv[1:])
    if os.environ.get("MAKELEVEL"):
        target = "bench-quick" if args.quick else "bench"
        flags = " ".join(a for a in sys.argv[1:] if a != "--quick")
        command = f'make {target} BENCH_ARGS="{flags}"' if flags else f"make {target}"
    else:
        command = " ".join([".venv/bin/python bench/run.py", *sys.argv[1:]])
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tokengate-bench-"))
    os.chmod(tmp, 0o755)
    bench = Bench(args, tmp)
    try:
        asyncio.run(run_bench(bench))
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    text = report(bench, command, time.monotonic() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    raw = {k: [vars(r) for r in v] for k, v in bench.runs.items()}
    args.out.with_suffix(".json").write_text(json.dumps({"runs": raw, "extra": bench.extra, "notes": bench.notes},
                                                        indent=1, default=str))
    print(text)
    print(f"(written to {args.out}; paste it into BENCHMARKS.md)", file=sys.stderr)


if __name__ == "__main__":
    main()
