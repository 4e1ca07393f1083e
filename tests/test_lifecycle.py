"""The gateway as Kubernetes runs it: a real ``gateway serve`` process, signals, reloads, workers.

Each test starts ``python -m gateway serve --config FILE`` in a process group of its own
(killed in teardown whatever happens) against the in-test issuer and upstream, with the
configuration mounted the way a ConfigMap is, and reads the JSON log lines of its stdout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from gateway.config import RevocationConfig
from gateway.demo import EchoUpstream
from gateway.reload import POLL_INTERVAL
from gateway.revocation.entries import Entry, Kind, Match
from gateway.revocation.redis_store import RedisStore
from gateway.revocation.schema import Schema, write_entry
from gateway.tokens.dpop import ProofRequest, confirmation, sign_proof
from tests.configmap import ConfigMapDir
from tests.helpers import RawResponse, base_config, bearer, raw_request

ROOT = Path(__file__).resolve().parent.parent
EXTRA_ROUTE = {"name": "extra", "path_prefix": "/extra", "upstream": "orders", "auth": "none"}

Record = dict[str, Any]


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> list[Record]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def messages(self, msg: str) -> list[Record]:
        return [r for r in self.logs() if r.get("msg") == msg]

    async def wait_log(
        self, predicate: Callable[[Record], bool], count: int = 1, timeout: float = 10.0
    ) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.logs() if predicate(r)]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"not in the log (exit {self.proc.poll()}):\n{self.log_path.read_text()[-4000:]}")
            await asyncio.sleep(0.05)

    @property
    def ports(self) -> dict[str, int]:
        return dict(self.messages("gateway listening")[-1]["ports"])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['proxy']}{path}"

    def admin(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}{path}"

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "the gateway did not exit in time"
            await asyncio.sleep(0.05)
        return self.proc.returncode


Spawn = Callable[..., Awaitable[GatewayProcess]]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start ``gateway serve``; waits for ``listening`` workers to listen. All are SIGKILLed in teardown."""
    started: list[GatewayProcess] = []

    async def start(config_path: Path, listening: int = 1) -> GatewayProcess:
        log_path = tmp_path / f"gateway-{len(started)}.log"
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        with open(log_path, "ab") as out:  # O_APPEND: the parent and the workers share it
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT, env=env,
            )
        gateway = GatewayProcess(proc, log_path)
        started.append(gateway)
        await gateway.wait_log(lambda r: r.get("msg") == "gateway listening", count=listening, timeout=30)
        return gateway

    yield start
    for gateway in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gateway.proc.pid, signal.SIGKILL)  # the whole group: parent and workers
        gateway.proc.wait(timeout=5)


@pytest.fixture
def files(tmp_path: Path) -> ConfigMapDir:
    return ConfigMapDir(tmp_path / "config")


class ArrivalsUpstream(EchoUpstream):
    """The echo upstream, noting the path of each request as soon as its head arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[str] = []

    async def handle(self, request: Any) -> Any:
        self.arrived.append(request.path)
        return await super().handle(request)


@pytest.fixture
async def arrivals() -> AsyncIterator[ArrivalsUpstream]:
    server = ArrivalsUpstream()
    await server.start()
    yield server
    await server.stop()


async def eventually(check: Callable[[], Awaitable[bool]], within: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not true within {within}s"
        await asyncio.sleep(every)


async def status_of(url: str) -> int:
    """The status of one GET on a fresh connection (0 when refused)."""
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientConnectionError:
        return 0


async def refuses(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def scrape(gateway: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(gateway.admin("/metrics")) as resp:
        text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and wanted <= set(sample_labels))


# --- SIGTERM -------------------------------------------------------------------------------


@pytest.mark.timeout(45)
async def test_sigterm_fails_readiness_refuses_new_connections_and_drains_in_flight(
    spawn: Spawn, files: ConfigMapDir, issuer: Any, arrivals: ArrivalsUpstream, tmp_path: Path
) -> None:
    config = base_config(issuer, arrivals, tmp_path / "audit.jsonl")
    config["shutdown_grace"] = "10s"
    files.write(config)
    gateway = await spawn(files.path)
    await eventually(lambda: _is(status_of(gateway.admin("/readyz")), 200), within=10)

    async def streamed_body() -> AsyncIterator[bytes]:
        for _ in range(16):
            yield b"x" * 4096
            await asyncio.sleep(0.25)

    async def both_at_the_upstream() -> bool:
        return {"/slow/4", "/orders"} <= set(arrivals.arrived)

    async with aiohttp.ClientSession() as http:

        async def call(method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
            async with http.request(method, gateway.url(path), **kwargs) as resp:
                return resp.status, await resp.read()

        slow = asyncio.create_task(call("GET", "/slow/4"))
        upload = asyncio.create_task(
            call("POST", "/orders", data=streamed_body(), headers=bearer(issuer.mint(scope="orders:write")))
        )
        # both requests went through the gateway to the upstream: they are in flight now
        await eventually(both_at_the_upstream, within=10, every=0.02)
        proxy_port = gateway.ports["proxy"]
        gateway.proc.send_signal(signal.SIGTERM)

        await eventually(lambda: _is(status_of(gateway.admin("/readyz")), 503), within=1.5)
        await eventually(lambda: refuses(proxy_port), within=1.5)
        assert not slow.done() and not upload.done(), "readiness and the listener went before the requests ended"

        assert (await slow)[0] == 200
        status, body = await upload
        assert status == 200
        assert json.loads(body)["body_bytes"] == 16 * 4096  # the streamed body arrived whole
    assert await gateway.wait_exit(15) == 0
    assert gateway.messages("shutting down")


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected


# --- hot reload ----------------------------------------------------------------------------


@pytest.mark.timeout(45)
async def test_a_changed_configmap_is_applied_without_dropping_a_keepalive_connection(
    spawn: Spawn, files: ConfigMapDir, issuer: Any, upstream: Any, tmp_path: Path
) -> None:
    config = base_config(issuer, upstream, tmp_path / "audit.jsonl")
    files.write(config)
    gateway = await spawn(files.path)

    opened: list[object] = []

    async def on_connection(_session: object, _context: object, params: object) -> None:
        opened.append(params)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_connection)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace]) as http:

        async def status(path: str) -> int:
            async with http.get(gateway.url(path)) as resp:
                await resp.read()
                return resp.status

        assert await status("/extra/1") == 404
        config["routes"].append(EXTRA_ROUTE)
        files.write(config)
        await eventually(lambda: _is(status("/extra/1"), 200), within=10, every=0.2)
        assert await status("/public/health") == 200
    assert len(opened) == 1, "the keep-alive connection was dropped"

    [reloaded] = gateway.messages("config reloaded")
    assert reloaded["cause"] == "file changed"
    samples = await scrape(gateway)
    assert total(samples, "gateway_config_reload_total", result="success") == 1
    assert total(samples, "gateway_config_reload_total", result="error") == 0


@pytest.mark.timeout(45)
async def test_an_invalid_file_keeps_the_running_config_and_says_where(
    spawn: Spawn, files: ConfigMapDir, issuer: Any, upstream: Any, tmp_path: Path
) -> None:
    config = base_config(issuer, upstream, tmp_path / "audit.jsonl")
    files.write(config)
    gateway = await spawn(files.path)

    index = len(config["routes"])
    config["routes"].append({**EXTRA_ROUTE, "upstream": "nope"})
    text = files.write(config)
    line = next(n for n, content in enumerate(text.splitlines(), 1) if "upstream: nope" in content)

    [rejected] = await gateway.wait_log(lambda r: str(r.get("msg", "")).startswith("config reload rejected"))
    assert rejected["level"] == "error"
    assert f"{files.path}:{line}: routes[{index}].upstream: unknown upstream 'nope'" in rejected["msg"]
    assert await status_of(gateway.url("/public/health")) == 200  # the old configuration serves on
    assert await status_of(gateway.url("/extra/1")) == 404
    samples = await scrape(gateway)
    assert total(samples, "gateway_config_reload_total", result="error") == 1
    assert total(samples, "gateway_config_reload_total", result="success") == 0

    config["routes"][index]["upstream"] = "orders"  # fixed: the next version goes in
    files.write(config)
    await eventually(lambda: _is(status_of(gateway.url("/extra/1")), 200), within=10, every=0.2)
    assert total(await scrape(gateway), "gateway_config_reload_total", result="success") == 1


@pytest.mark.timeout(45)
async def test_sighup_reloads_when_watching_is_off(
    spawn: Spawn, issuer: Any, upstream: Any, tmp_path: Path
) -> None:
    config = base_config(issuer, upstream, tmp_path / "audit.jsonl")
    config["watch_config"] = False
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML; a plain file edited in place
    gateway = await spawn(path)

    discoveries = issuer.calls["discovery"]
    config["routes"].append(EXTRA_ROUTE)
    path.write_text(json.dumps(config))
    # a watcher would notice within a poll interval and start a reload, whose new pipeline asks
    # the issuer for its metadata at once (long before the reload is done and counted)
    await asyncio.sleep(3 * POLL_INTERVAL)
    assert issuer.calls["discovery"] == discoveries, "a reload started: the file is watched"
    assert total(await scrape(gateway), "gateway_config_reload_total") == 0
    assert not gateway.messages("config reloaded")
    assert await status_of(gateway.url("/extra/1")) == 404

    gateway.proc.send_signal(signal.SIGHUP)
    [reloaded] = await gateway.wait_log(lambda r: r.get("msg") == "config reloaded")
    assert reloaded["cause"] == "SIGHUP"
    assert issuer.calls["discovery"] > discoveries  # the same sign of a reload as above, now there
    assert await status_of(gateway.url("/extra/1")) == 200
    samples = await scrape(gateway)
    assert total(samples, "gateway_config_reload_total", result="success") == 1  # the signal's, and no other
    assert total(samples, "gateway_config_reload_total", result="error") == 0


# --- several workers -----------------------------------------------------------------------


def requests_by_pid(metrics_dir: str, **labels: str) -> dict[int, float]:
    """gateway_requests_total (of the series with ``labels``) of each process, from its own multiprocess file."""
    counts: dict[int, float] = {}
    for file in Path(metrics_dir).glob("counter_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        counts[pid] = sum(
            sample.value for family in MultiProcessCollector.merge([str(file)])  # type: ignore[no-untyped-call]
            for sample in family.samples
            if sample.name == "gateway_requests_total" and labels.items() <= sample.labels.items()
        )
    return counts


@pytest.mark.timeout(80)
async def test_workers_share_the_port_metrics_audit_reloads_and_restarts(
    spawn: Spawn, files: ConfigMapDir, issuer: Any, upstream: Any, tmp_path: Path
) -> None:
    audit_path = tmp_path / "audit.jsonl"
    config = base_config(issuer, upstream, audit_path)
    config.update(workers=2, shutdown_grace="5s")
    files.write(config)
    gateway = await spawn(files.path, listening=2)
    [starting] = gateway.messages("starting workers")
    metrics_dir = starting["metrics_dir"]
    workers = {r["pid"] for r in gateway.messages("gateway listening")}
    assert len(workers) == 2
    sent = 0

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as http:

        async def get(path: str, request_id: str | None = None) -> int:
            nonlocal sent
            sent += 1
            headers = {"X-Request-Id": request_id} if request_id else {}
            async with http.get(gateway.url(path), headers=headers) as resp:
                await resp.read()
                return resp.status

        # every request on a new connection: SO_REUSEPORT spreads them over both workers
        n = 60
        ids = [f"lifecycle-{i:03d}" for i in range(n)]
        pad = "p" * 1500  # long audit lines: a torn write would show
        statuses = await asyncio.gather(*(get(f"/public/files/{pad}/{i}", ids[i]) for i in range(n)))
        assert statuses == [200] * n

        served = requests_by_pid(metrics_dir)
        assert {pid for pid, count in served.items() if count} == workers, served
        assert total(await scrape(gateway), "gateway_requests_total") == n

        # one audit file, two writers: exactly n whole lines
        async def audit_complete() -> bool:
            return audit_path.exists() and audit_path.read_bytes().count(b"\n") >= n

        await eventually(audit_complete, within=5)
        await asyncio.sleep(0.2)
        data = audit_path.read_bytes()
        assert data.endswith(b"\n")
        records = [json.loads(line) for line in data.splitlines()]
        assert len(records) == n
        assert sorted(r["request_id"] for r in records) == ids
        assert {r["type"] for r in records} == {"audit"}
        assert {r["type"] for r in gateway.logs()} == {"log"}  # stdout carries only the operational log

        # a changed file reaches every worker
        config["routes"].append(EXTRA_ROUTE)
        files.write(config)

        async def all_reloaded() -> bool:
            return await asyncio.gather(*(get(f"/extra/{i}") for i in range(8))) == [200] * 8

        await eventually(all_reloaded, within=15, every=0.2)
        await gateway.wait_log(lambda r: r.get("msg") == "config reloaded", count=2)
        assert {r["pid"] for r in gateway.messages("config reloaded")} == workers

        # a worker that dies is replaced; what it counted stays in the sums
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        await gateway.wait_log(lambda r: r.get("msg") == "worker exited; restarting it" and r["pid"] == victim)
        [replacement] = await gateway.wait_log(
            lambda r: r.get("msg") == "gateway listening" and r["pid"] not in workers, timeout=30
        )
        assert await gateway.wait_log(lambda r: r.get("msg") == "worker started" and r["pid"] == replacement["pid"])
        statuses = await asyncio.gather(*(get(f"/extra/after-restart-{i}") for i in range(10)))
        assert statuses == [200] * 10  # the replacement started from the reloaded file
        assert total(await scrape(gateway), "gateway_requests_total") == sent

    # SIGTERM to the parent reaches the workers; all exit, the metrics directory goes
    gateway.proc.send_signal(signal.SIGTERM)
    assert await gateway.wait_exit(20) == 0
    for pid in workers | {replacement["pid"]}:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not Path(metrics_dir).exists()
    assert len(gateway.messages("worker stopped")) == 2


# --- forked workers ------------------------------------------------------------------------


def blocked_signals(pid: int) -> set[int]:
    """The signals ``pid`` blocks (its SigBlk mask)."""
    mask = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("SigBlk:")).split()[1], 16)
    return {number for number in range(1, 65) if mask >> (number - 1) & 1}


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaps (a container's init may not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.timeout(90)
async def test_forked_workers_share_the_nonce_secret_and_export_no_series_of_the_parent(
    spawn: Spawn, files: ConfigMapDir, issuer: Any, upstream: Any, tmp_path: Path, redis_url: str
) -> None:
    """The workers are forks of the parent (same command line, no ``python -m gateway.workers``)
    that end up as a fresh worker did: signals unblocked once ready, one DPoP nonce secret drawn
    by the parent (a restarted worker too), and metrics in files of their own pids only: the
    parent's would count as a process that never dies (its ``livemin`` gauges at 0)."""
    config = base_config(issuer, upstream, tmp_path / "audit.jsonl")
    config["issuers"][0]["dpop"] = {"nonce": True}
    config.update(workers=2, shutdown_grace="5s",
                  revocation={"redis_url": redis_url, "key_prefix": f"t{os.getpid()}-{time.time_ns()}:revoked:"})
    files.write(config)
    gateway = await spawn(files.path, listening=2)
    parent = gateway.proc.pid
    metrics_dir = Path(gateway.messages("starting workers")[0]["metrics_dir"])
    workers = {r["pid"] for r in gateway.messages("gateway listening")}
    for pid in workers:
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == Path(f"/proc/{parent}/cmdline").read_bytes()
        assert blocked_signals(pid) & {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD} == set()

    key = ec.generate_private_key(ec.SECP256R1())
    token = issuer.mint(cnf=confirmation(key))
    base = gateway.url("").rstrip("/")

    async def orders(nonce: str | None) -> RawResponse:  # a new connection each: spread over the workers
        proof = sign_proof(key, ProofRequest(method="GET", url=f"{base}/orders", access_token=token, nonce=nonce))
        return await raw_request(base, "/orders", headers={"Authorization": f"DPoP {token}", "DPoP": proof})

    async def all_pass_on(expected: set[int]) -> None:
        first = await orders(None)
        assert first.status == 401 and first.headers["DPoP-Nonce"]
        before = requests_by_pid(str(metrics_dir), status="200")
        answers = [await orders(first.headers["DPoP-Nonce"]) for _ in range(24)]
        assert [a.status for a in answers] == [200] * 24, [a.body for a in answers if a.status != 200][:1]

        async def each_served() -> bool:  # the nonce one worker issued passed on every worker
            served = requests_by_pid(str(metrics_dir), status="200")
            return {pid for pid in expected if served.get(pid, 0) > before.get(pid, 0)} == expected

        await eventually(each_served, within=5)

    async def metrics_are_the_workers(sent: int) -> None:
        async def added_up() -> bool:  # every request counted once, by the worker that served it
            samples = await scrape(gateway)
            return (total(samples, "gateway_requests_total", route="list-orders") == sent
                    == sum(requests_by_pid(str(metrics_dir), route="list-orders").values())
                    and total(samples, "gateway_revocation_redis_up") == 1
                    and total(samples, "gateway_audit_writer_heartbeat_timestamp_seconds") > time.time() - 60)

        await eventually(added_up, within=5)
        assert not list(metrics_dir.glob(f"*_{parent}.db"))

    await all_pass_on(workers)
    await metrics_are_the_workers(25)

    # a restarted worker is forked too, with the same secret, and still no file of the parent
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    [replacement] = await gateway.wait_log(
        lambda r: r.get("msg") == "gateway listening" and r["pid"] not in workers, timeout=30
    )
    now = (workers - {victim}) | {replacement["pid"]}
    await all_pass_on(now)
    await metrics_are_the_workers(50)  # the killed worker's counts stay in the sums

    # a parent killed outright: its workers notice and drain (nobody would restart or stop them)
    os.kill(parent, signal.SIGKILL)

    async def orphans_gone() -> bool:
        return all(gone(pid) for pid in now)

    await eventually(orphans_gone, within=15, every=0.2)
    assert len(gateway.messages("the supervising parent is gone; shutting down")) == 2
    shutil.rmtree(metrics_dir, ignore_errors=True)  # the parent would have removed it


@pytest.mark.timeout(90)
async def test_forked_workers_start_from_the_revocation_list_their_parent_loaded(
    spawn: Spawn, files: ConfigMapDir, issuer: Any, upstream: Any, tmp_path: Path, redis_url: str
) -> None:
    """With ``revocation.snapshot`` the parent reads and checks the snapshot once, in an event loop
    of its own that is gone before it forks (one thread left), and its first workers start from
    its copy; a restarted worker reads the snapshot itself, as before."""
    prefix = f"t{os.getpid()}-{time.time_ns()}:revoked:"
    key_file = tmp_path / "snapshot.key"
    key_file.write_text(base64.b64encode(os.urandom(48)).decode() + "\n")
    revocation = {"redis_url": redis_url, "key_prefix": prefix, "snapshot": {"key_file": str(key_file)}}
    client = Redis.from_url(redis_url)
    try:
        for value in ("revoked-0", "revoked-1", "revoked-2"):
            await write_entry(client, Schema(prefix), Entry(Kind.TOKEN, value, time.time() + 3600, issuer.issuer,
                                                            match=Match.JTI))
    finally:
        await client.aclose()
    first = RedisStore(RevocationConfig.model_validate(revocation))  # the first start: writes the snapshot
    await first.start()
    await first.stop()

    config = base_config(issuer, upstream, tmp_path / "audit.jsonl")
    config.update(workers=2, log_level="info", revocation=revocation)
    files.write(config)
    gateway = await spawn(files.path, listening=2)
    parent = gateway.proc.pid
    [handed] = gateway.messages("revocation snapshot loaded for the workers")
    assert handed["entries"] == 3
    loaded = await gateway.wait_log(lambda r: r.get("msg") == "revocation list loaded", count=2)
    assert {(r["cause"], r["entries"]) for r in loaded} == {("snapshot_from_parent", 3)}
    threads = next(line for line in Path(f"/proc/{parent}/status").read_text().splitlines()
                   if line.startswith("Threads:"))
    assert threads.split() == ["Threads:", "1"]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:

        async def status(token: str) -> int:
            async with http.get(gateway.url("/orders"), headers=bearer(token)) as resp:
                return resp.status

        # new connections each: both workers answer, and both hold the list
        assert await asyncio.gather(*(status(issuer.mint(jti=f"revoked-{i % 3}")) for i in range(16))) == [401] * 16
        assert await asyncio.gather(*(status(issuer.mint()) for _ in range(4))) == [200] * 4

    metrics_dir = gateway.messages("starting workers")[0]["metrics_dir"]

    async def both_refused() -> bool:
        refused = requests_by_pid(metrics_dir, status="401")
        return {pid for pid, count in refused.items() if count} == {r["pid"] for r in loaded}

    await eventually(both_refused, within=5)

    victim = min(r["pid"] for r in loaded)
    os.kill(victim, signal.SIGKILL)
    [replacement] = await gateway.wait_log(
        lambda r: r.get("msg") == "gateway listening" and r["pid"] not in {x["pid"] for x in loaded}, timeout=30
    )
    [again] = [r for r in gateway.messages("revocation list loaded") if r["pid"] == replacement["pid"]]
    assert (again["cause"], again["entries"]) == ("snapshot", 3)  # read by itself: the parent let its copy go
