"""What tracing costs a request: the same gateway with tracing off, on with every trace sampled,
and on with none sampled (``sample_ratio: 0``), in alternating rounds on 127.0.0.1.

    .venv/bin/python bench/tracing_overhead.py [--requests 2000] [--rounds 5]

A DemoIssuer, an echo upstream, the gateway and a client on one keep-alive connection run in
this process, so the figures are the gateway's CPU per request plus the client's: read the
differences, not the absolute values. The OTLP/HTTP receiver that takes the spans is a process
of its own (it only reads them), so that what a collector does is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.config import parse_config  # noqa: E402
from gateway.demo import DemoIssuer, EchoUpstream  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402
from gateway.server import Server  # noqa: E402

RECEIVER = """
import sys
from aiohttp import web
async def export(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")  # an empty ExportTraceServiceResponse
app = web.Application()
app.router.add_post("/v1/traces", export)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""

AUDIENCE = "https://api.example/orders"


def config(issuer: DemoIssuer, upstream: EchoUpstream, tracing: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "audit": {"sink": "none"},
        "issuers": [{"issuer": issuer.issuer, "audiences": [AUDIENCE]}],
        "upstreams": {"orders": {"url": upstream.url}},
        "routes": [{"name": "orders", "path": "/orders", "upstream": "orders", "scopes": ["orders:read"]}],
    }
    if tracing is not None:
        data["tracing"] = tracing
    return data


async def run(requests: int, rounds: int) -> None:
    os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "200")
    from tests.helpers import free_port

    issuer, upstream = DemoIssuer(audience=AUDIENCE), EchoUpstream()
    await issuer.start()
    await upstream.start()
    port = free_port()
    receiver = await asyncio.create_subprocess_exec(sys.executable, "-c", RECEIVER, str(port))
    collector = f"http://127.0.0.1:{port}"
    await asyncio.sleep(1.0)  # the receiver binds its port
    token = issuer.mint(ttl=3600)
    variants: dict[str, dict[str, Any] | None] = {
        "tracing off": None,
        "on, all sampled": {"enabled": True, "endpoint": collector},
        "on, none sampled": {"enabled": True, "endpoint": collector, "sample_ratio": 0},
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    async with aiohttp.ClientSession() as http:
        for _ in range(rounds):
            for name, tracing in variants.items():
                server = Server(Gateway(parse_config(yaml.safe_dump(config(issuer, upstream, tracing)))))
                await server.start()
                url = f"http://127.0.0.1:{server.ports['proxy']}/orders"
                headers = {"Authorization": f"Bearer {token}"}
                for _ in range(200):  # warm: caches, connection
                    async with http.get(url, headers=headers) as resp:
                        await resp.read()
                started = time.perf_counter()
                for _ in range(requests):
                    async with http.get(url, headers=headers) as resp:
                        await resp.read()
                results[name].append((time.perf_counter() - started) / requests * 1e6)
                await server.stop()
    receiver.terminate()
    await receiver.wait()
    await upstream.stop()
    await issuer.stop()
    base = statistics.median(results["tracing off"])
    print(f"{'variant':<18} {'median us/request':>18} {'vs off':>8}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<18} {median:>18.1f} {median / base:>8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory():
        asyncio.run(run(args.requests, args.rounds))


if __name__ == "__main__":
    main()
