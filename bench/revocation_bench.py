"""Revocation benchmark: propagation delay between replicas, and the cost of a 1,000,000-entry list.

    .venv/bin/python bench/revocation_bench.py [--revocations 200] [--entries 1000000]
                                               [--duration 5] [--rounds 3] [--connections 32]

Everything runs on 127.0.0.1, started and stopped by this script in a temporary directory:
a redis-server, nginx as the upstream (``return 200``; an in-process echo server when nginx
is missing), the demo issuer in this process, and gateways as ``gateway serve`` processes.

1. Propagation: two gateways share one Redis. For each of ``--revocations`` tokens: both
   replicas answer 200, then the token's jti is revoked through the Python API
   (``Revoker.revoke_jti``), and both replicas are polled over HTTP until they answer 401.
   The delay is from the start of the write to the first 401 at each replica (so it includes
   one HTTP round trip of polling).
2. Scale: ``--entries`` revocations are written straight into Redis (the schema's keys,
   pipelined); a gateway loading them and a gateway with an empty list run side by side;
   wrk drives each in turn (alternating, ``--rounds`` times) with a valid token that is
   not revoked. Memory: RSS difference between the two processes, and tracemalloc of the
   same list built in this process.

A script, never a test: the machine is shared and noisy, so read ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.demo import DemoIssuer, EchoUpstream  # noqa: E402
from gateway.revocation import Entry, Kind, RevocationList, Revoker  # noqa: E402
from gateway.revocation.schema import Schema, decode, encode  # noqa: E402
from gateway.tokens.token import ValidatedToken, fingerprint  # noqa: E402

AUDIENCE = "https://api.example/orders"
PROBE_JTI = "bench-probe-revoked"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Processes:
    """The processes this script started (and only those), stopped by pid at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


async def wait_ready(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], within: float) -> float:
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(url) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        if time.monotonic() - started > within:
            raise RuntimeError(f"{url} not ready after {within}s")
        await asyncio.sleep(0.05)


def gateway_config(issuer: DemoIssuer, upstream_url: str, redis_url: str, prefix: str) -> tuple[dict[str, Any], int,
                                                                                                    int]:
    port, admin = free_port(), free_port()
    return {
        "listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}", "watch_config": False,
        "log_level": "warning",
        "issuers": [{"issuer": issuer.issuer, "audiences": [AUDIENCE], "algorithms": ["RS256"]}],
        "upstreams": {"up": {"url": upstream_url}},
        "routes": [{"name": "orders", "path": "/orders", "methods": ["GET"], "upstream": "up",
                    "scopes": ["orders:read"]}],
        "audit": {"sink": "none"},
        "revocation": {"redis_url": redis_url, "key_prefix": prefix, "max_staleness": "10s"},
    }, port, admin


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = Processes()
        self.results: dict[str, Any] = {}

    def start_gateway(self, name: str, config: dict[str, Any]) -> subprocess.Popen[bytes]:
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return self.procs.start([sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                                self.tmp / f"{name}.log")

    async def start_redis(self) -> str:
        port = free_port()
        self.procs.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(self.tmp)], self.tmp / "redis.log")
        from redis.asyncio import Redis

        client = Redis(port=port)
        for _ in range(200):
            with contextlib.suppress(Exception):
                await client.ping()
                break
            await asyncio.sleep(0.02)
        await client.aclose()
        return f"redis://127.0.0.1:{port}/0"

    async def start_upstream(self) -> str:
        port = free_port()
        nginx = shutil.which("nginx", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")
        if nginx is None:
            echo = EchoUpstream()
            return await echo.start()
        root = self.tmp / "nginx"
        (root / "logs").mkdir(parents=True)
        (root / "nginx.conf").write_text(f"""
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {root}; proxy_temp_path {root}; fastcgi_temp_path {root};
  uwsgi_temp_path {root}; scgi_temp_path {root};
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 '{{"ok":true}}'; }} }}
}}
""")
        self.procs.start([nginx, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
                         self.tmp / "nginx.log")
        await asyncio.sleep(0.3)
        return f"http://127.0.0.1:{port}"

    # --- 1. propagation ------------------------------------------------------------------------

    async def propagation(self, http: aiohttp.ClientSession, issuer: DemoIssuer, upstream: str, redis_url: str) -> None:
        prefix = "bench-prop:revoked:"
        replicas = []
        for name in ("replica-a", "replica-b"):
            config, port, admin = gateway_config(issuer, upstream, redis_url, prefix)
            proc = self.start_gateway(name, config)
            replicas.append((f"http://127.0.0.1:{port}/orders", proc))
            await wait_ready(http, f"http://127.0.0.1:{admin}/readyz", proc, 30)
        n = self.args.revocations
        tokens = [(f"prop-{i}-{os.urandom(4).hex()}", "") for i in range(n)]
        tokens = [(jti, issuer.mint(jti=jti)) for jti, _ in tokens]
        delays: dict[str, list[float]] = {"a": [], "b": [], "both": []}
        writes: list[float] = []

        async def first_401(url: str, token: str, t0: float) -> float:
            headers = {"Authorization": f"Bearer {token}"}
            while True:
                async with http.get(url, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 401:
                        return time.perf_counter() - t0
                    if time.perf_counter() - t0 > 5:
                        raise RuntimeError(f"{url}: not denied after 5 s")

        async with Revoker(redis_url, key_prefix=prefix) as revoker:
            for jti, token in tokens:
                for url, _ in replicas:
                    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                        await resp.read()
                        assert resp.status == 200, resp.status
                t0 = time.perf_counter()
                write = asyncio.create_task(revoker.revoke_jti(jti, reason="bench"))
                a, b = await asyncio.gather(*(first_401(url, token, t0) for url, _ in replicas))
                await write
                writes.append(time.perf_counter() - t0)
                delays["a"].append(a)
                delays["b"].append(b)
                delays["both"].append(max(a, b))
        for _, proc in replicas:
            self.procs.stop(proc)
        self.results["propagation"] = {
            key: {"p50_ms": percentile(v, 50) * 1000, "p99_ms": percentile(v, 99) * 1000, "max_ms": max(v) * 1000}
            for key, v in {**delays, "write": writes}.items()
        }
        self.results["propagation"]["revocations"] = n

    # --- 2. scale ------------------------------------------------------------------------------

    def entries(self, n: int) -> list[Entry]:
        """70% tokens (half jtis, half fingerprints), 10% each families, subjects, clients."""
        expires, now = time.time() + 7 * 86400, time.time()
        kinds = [Kind.TOKEN] * 7 + [Kind.FAMILY, Kind.SUBJECT, Kind.CLIENT]
        out = [Entry(Kind.TOKEN, PROBE_JTI, expires, created_at=now)]
        for i in range(1, n):
            kind = kinds[i % 10]
            if kind is Kind.TOKEN and i % 2:
                value = hashlib.sha256(b"bench-%d" % i).hexdigest()
            else:
                value = f"bench-{kind.value}-{i}"
            cutoff = now if kind in (Kind.SUBJECT, Kind.CLIENT) else None
            out.append(Entry(kind, value, expires, not_before=cutoff, created_at=now))
        return out

    async def fill_redis(self, redis_url: str, prefix: str, entries: list[Entry]) -> dict[str, float]:
        from redis.asyncio import Redis

        schema = Schema(prefix)
        client = Redis.from_url(redis_url)
        before = (await client.info("memory"))["used_memory"]
        started = time.monotonic()
        ttl = 7 * 86400
        for start in range(0, len(entries), 10_000):
            pipe = client.pipeline(transaction=False)
            for entry in entries[start:start + 10_000]:
                pipe.set(schema.entry_key(entry), encode(entry), ex=ttl)
            await pipe.execute()
        seconds = time.monotonic() - started
        after = (await client.info("memory"))["used_memory"]
        await client.aclose()
        return {"fill_seconds": seconds, "redis_bytes_per_entry": (after - before) / len(entries)}

    def wrk(self, url: str, token: str) -> dict[str, float]:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{self.args.connections}", f"-d{self.args.duration}s", "--latency",
             "-H", f"Authorization: Bearer {token}", url],
            capture_output=True, text=True, check=True, timeout=self.args.duration + 30,
        ).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        lat = {m.group(1): _ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M)}
        return {"rps": rps, "p50_ms": lat.get("50", 0.0), "p99_ms": lat.get("99", 0.0),
                "non_2xx": float(non2xx.group(1)) if non2xx else 0.0}

    async def scale(self, http: aiohttp.ClientSession, issuer: DemoIssuer, upstream: str, redis_url: str) -> None:
        n = self.args.entries
        entries = self.entries(n)
        fill = await self.fill_redis(redis_url, "bench-big:revoked:", entries)
        full_cfg, full_port, full_admin = gateway_config(issuer, upstream, redis_url, "bench-big:revoked:")
        empty_cfg, empty_port, empty_admin = gateway_config(issuer, upstream, redis_url, "bench-empty:revoked:")
        empty = self.start_gateway("empty-list", empty_cfg)
        empty_ready = await wait_ready(http, f"http://127.0.0.1:{empty_admin}/readyz", empty, 60)
        full = self.start_gateway("full-list", full_cfg)
        full_ready = await wait_ready(http, f"http://127.0.0.1:{full_admin}/readyz", full, 600)
        await asyncio.sleep(1.0)
        rss_full, rss_empty = rss(full.pid), rss(empty.pid)
        probe = issuer.mint(jti=PROBE_JTI)
        async with http.get(f"http://127.0.0.1:{full_port}/orders", headers={"Authorization": f"Bearer {probe}"}) as r:
            probe_status = r.status
        token = issuer.mint(jti="bench-not-revoked", ttl=3600)
        targets = {"empty": f"http://127.0.0.1:{empty_port}/orders", "full": f"http://127.0.0.1:{full_port}/orders"}
        runs: dict[str, list[dict[str, float]]] = {"empty": [], "full": []}
        await asyncio.to_thread(self.wrk, targets["empty"], token)  # warm-up
        for _ in range(self.args.rounds):
            for name in ("empty", "full"):  # in a thread: the event loop keeps serving the in-process issuer
                runs[name].append(await asyncio.to_thread(self.wrk, targets[name], token))
        self.procs.stop(full)
        self.procs.stop(empty)
        med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
        ratios = [f["rps"] / e["rps"] for e, f in zip(runs["empty"], runs["full"], strict=True)]
        self.results["scale"] = {
            "entries": n, **fill, "empty_ready_s": empty_ready, "full_ready_s": full_ready,
            "rss_empty_mb": rss_empty / 2**20, "rss_full_mb": rss_full / 2**20,
            "rss_bytes_per_entry": (rss_full - rss_empty) / n, "probe_status": probe_status,
            "empty": med["empty"], "full": med["full"], "rps_ratio_median": statistics.median(ratios),
            "rps_ratios": ratios,
        }
        self.results["scale"].update(in_process(entries))


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        return 0.0
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


def in_process(entries: list[Entry]) -> dict[str, float]:
    """tracemalloc size of the local list, and the cost of one check, empty vs full."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    full = RevocationList()
    for entry in entries:
        full.add(decode(encode(entry)))  # fresh strings, as when loaded from Redis
    size = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    token = ValidatedToken("https://as.example", "someone", "some-client", frozenset({"orders:read"}),
                           time.time() + 600, fingerprint("not revoked"), jti="not-revoked", issued_at=time.time(),
                           claims={"sid": "not-revoked"})
    empty = RevocationList()

    def cost(rl: RevocationList) -> float:
        loops = 200_000
        started = time.perf_counter()
        for _ in range(loops):
            rl.check(token)
        return (time.perf_counter() - started) / loops * 1e9

    check_empty, check_full = min(cost(empty) for _ in range(3)), min(cost(full) for _ in range(3))
    started = time.perf_counter()
    full.sweep()
    sweep = time.perf_counter() - started
    return {"tracemalloc_bytes_per_entry": size / len(entries), "check_ns_empty": check_empty,
            "check_ns_full": check_full, "sweep_ms_full": sweep * 1000}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revocations", type=int, default=200)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    if not shutil.which("redis-server") or (not args.skip_scale and not shutil.which("wrk")):
        sys.exit("needs redis-server and wrk (apt-get install redis-server wrk)")
    with tempfile.TemporaryDirectory(prefix="tokengate-revocation-bench-") as tmpdir:
        bench = Bench(args, Path(tmpdir))
        issuer = DemoIssuer(audience=AUDIENCE)
        await issuer.start()
        try:
            redis_url = await bench.start_redis()
            upstream = await bench.start_upstream()
            async with aiohttp.ClientSession() as http:
                await bench.propagation(http, issuer, upstream, redis_url)
                if not args.skip_scale:
                    await bench.scale(http, issuer, upstream, redis_url)
        finally:
            bench.procs.stop_all()
            await issuer.stop()
    report(bench.results)


def report(results: dict[str, Any]) -> None:
    p = results["propagation"]
    print(f"\npropagation over {p['revocations']} revocations (write start -> first 401, incl. one HTTP poll):")
    for key in ("a", "b", "both", "write"):
        label = {"a": "replica A", "b": "replica B", "both": "both replicas", "write": "write returned"}[key]
        print(f"  {label:15} p50 {p[key]['p50_ms']:6.2f} ms   p99 {p[key]['p99_ms']:6.2f} ms   "
              f"max {p[key]['max_ms']:6.2f} ms")
    s = results.get("scale")
    if s:
        print(f"\n{s['entries']:,} entries: Redis filled in {s['fill_seconds']:.1f} s "
              f"({s['redis_bytes_per_entry']:.0f} B/entry in Redis)")
        print(f"  gateway ready: empty list {s['empty_ready_s']:.2f} s, full list {s['full_ready_s']:.2f} s "
              f"(probe token revoked -> {s['probe_status']})")
        print(f"  RSS: empty {s['rss_empty_mb']:.0f} MiB, full {s['rss_full_mb']:.0f} MiB "
              f"-> {s['rss_bytes_per_entry']:.0f} B/entry; tracemalloc {s['tracemalloc_bytes_per_entry']:.0f} B/entry")
        for name in ("empty", "full"):
            m = s[name]
            print(f"  {name:5} list: {m['rps']:8.0f} req/s   p50 {m['p50_ms']:.2f} ms   p99 {m['p99_ms']:.2f} ms"
                  f"   non-2xx {m['non_2xx']:.0f}")
        print(f"  throughput full/empty (median of per-round ratios): {s['rps_ratio_median']:.3f} "
              f"(rounds: {', '.join(f'{r:.3f}' for r in s['rps_ratios'])})")
        print(f"  one check(): {s['check_ns_empty']:.0f} ns empty, {s['check_ns_full']:.0f} ns full; "
              f"sweep of the full list {s['sweep_ms_full']:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
