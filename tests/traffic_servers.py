"""Real servers for the traffic-control tests (tests/test_traffic_*.py).

``LiveUpstream`` is an aiohttp WebSocket echo and server-sent events upstream on 127.0.0.1;
``GatewayProcess`` runs ``python -m gateway serve`` in a process group of its own, as Kubernetes
would, and reads its JSON log lines; ``OwnRedis`` is a redis-server process a test may kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import WSMsgType, web

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class LiveUpstream:
    """``/live*``: a WebSocket echo (says ``hello`` first; ``close:<code>:<reason>`` closes);
    ``/events``: 400 server-sent events 50 ms apart (20 s); ``/refuse``: 403 to any handshake;
    ``/slow``: answers after a second; anything else: its path as JSON."""

    handshakes: list[dict[str, str]] = field(default_factory=list)  # the headers of each upgrade seen
    closes: list[tuple[int, str]] = field(default_factory=list)  # what each socket got from the gateway
    events_ended: asyncio.Event = field(default_factory=asyncio.Event)
    plain: list[dict[str, str]] = field(default_factory=list)  # the headers of each other request
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/live", self._ws)
        app.router.add_get("/live-query", self._ws)
        app.router.add_get("/refuse", self._refuse)
        app.router.add_get("/events", self._events)
        app.router.add_get("/slow", self._slow)
        app.router.add_route("*", "/{tail:.*}", self._plain)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            self.plain.append(dict(request.headers))
            return web.json_response({"upgrade": False})
        self.handshakes.append(dict(request.headers))
        sock = web.WebSocketResponse(protocols=("chat.v2",), autoclose=True, autoping=True)
        await sock.prepare(request)
        await sock.send_str("hello")
        while True:
            msg = await sock.receive()
            if msg.type is WSMsgType.TEXT and msg.data.startswith("close:"):
                _, code, reason = msg.data.split(":", 2)
                await sock.close(code=int(code), message=reason.encode())
                break
            if msg.type is WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
            elif msg.type is WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
            else:  # CLOSE (what the gateway sent), or the connection broke
                self.closes.append((msg.data, str(msg.extra)) if msg.type is WSMsgType.CLOSE else (-1, str(msg.type)))
                break
        return sock

    async def _refuse(self, request: web.Request) -> web.Response:
        self.handshakes.append(dict(request.headers))
        return web.Response(status=403, text="no")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self.plain.append(dict(request.headers))
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await stream.prepare(request)
        try:
            for n in range(400):
                await stream.write(f"id: {n}\ndata: event {n}\n\n".encode())
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.events_ended.set()
        return stream

    async def _slow(self, request: web.Request) -> web.Response:
        self.plain.append(dict(request.headers))
        await asyncio.sleep(1.0)
        return web.json_response({"slow": True})

    async def _plain(self, request: web.Request) -> web.Response:
        self.plain.append(dict(request.headers))
        return web.json_response({"path": request.path})


async def read_event(response: aiohttp.ClientResponse) -> bytes:
    """The first server-sent event (up to its blank line) of a streamed answer."""
    data = b""
    while b"\n\n" not in data:
        chunk = await response.content.readany()
        assert chunk, "the stream ended before its first event"
        data += chunk
    return data


def audit_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- gateway processes -----------------------------------------------------------------------


@dataclass
class GatewayProcess:
    """One ``gateway serve`` process: its log (JSON lines), ports and audit file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    audit_path: Path

    def logs(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    @property
    def ports(self) -> dict[str, int]:
        return dict(next(r for r in reversed(self.logs()) if r.get("msg") == "gateway listening")["ports"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    async def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(r.get("msg") == "gateway listening" for r in self.logs()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not start (exit {self.proc.poll()}):\n"
                                     f"{self.log_path.read_text()[-4000:]}")
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "the gateway did not exit in time"
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def audit(self) -> list[dict[str, Any]]:
        return audit_lines(self.audit_path)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)


async def start_gateway_process(config: dict[str, Any], directory: Path, name: str,
                                env: dict[str, str] | None = None) -> GatewayProcess:
    """Write ``config`` (its audit goes to ``<name>-audit.jsonl``) and start ``gateway serve`` on it."""
    audit_path = directory / f"{name}-audit.jsonl"
    config = {**config, "audit": {"sink": "file", "path": str(audit_path), "flush_interval": "20ms"},
              "watch_config": False}
    config_path = directory / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = directory / f"{name}.log"
    environment = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    environment.update(env or {})
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT, env=environment,
        )
    gateway = GatewayProcess(proc, log_path, audit_path)
    try:
        await gateway.wait_listening()
    except AssertionError:
        gateway.kill()
        raise
    return gateway


async def scrape(admin_url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{admin_url}/metrics") as response:
        return await response.text()


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` in an exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = set(labels.items())
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and wanted <= set(s.labels.items()))


# --- a redis-server of the test's own ----------------------------------------------------------


class OwnRedis:
    """A redis-server process to kill and restart (on the same port)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
