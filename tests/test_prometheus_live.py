"""The chart's alerts and the Grafana dashboard on a real Prometheus scraping a real gateway.

``promtool test rules`` (ci/k8s-checks.sh, tests/test_audit_alerts.py) replays synthetic series;
here Debian's ``prometheus`` scrapes a running ``gateway serve`` every second and evaluates the
rules of the chart's PrometheusRule, rendered by Helm with tests/live-alerts-values.yaml (windows
and ``for:`` of seconds). The gateway is driven into each condition at once (its JWKS endpoint
down, its revocation Redis killed and a revocation arriving late, audit records dropped, invalid
tokens, a dead upstream, an introspection outage, a rejected reload, a token used from two
addresses, a burst of insufficient_scope), every alert must fire; then everything is put right
and every alert must resolve. Finally every PromQL expression of charts/tokengate/dashboards/tokengate.json
is evaluated on that Prometheus: no error, and data.

Everything listens on 127.0.0.1. Needs helm (ci/k8s-checks.sh installs it) and prometheus
(``make system-deps``); without them the tests are skipped, saying which is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.demo import DemoIssuer, EchoUpstream
from gateway.revocation.entries import Entry, Kind, Match
from gateway.revocation.schema import Schema, write_entry
from gateway.tokens.token import fingerprint
from tests.helpers import AUDIENCE, bearer, free_port
from tests.test_audit_alerts import TOOLS

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "tests" / "live-alerts-values.yaml"
DASHBOARD = ROOT / "charts" / "tokengate" / "dashboards" / "tokengate.json"
SELECTOR = {"namespace": "ci", "job": "gw-tokengate"}  # what the chart selects for release gw in namespace ci
# the alerts driven here; TokengateTargetDown and TokengateAuditWriterStalled need minutes by design
DRIVEN = {
    "TokengateJWKSRefreshFailing", "TokengateRevocationRedisDown", "TokengateRevocationNotificationLag",
    "TokengateAuditRecordsLost", "TokengateInvalidTokenRateHigh", "TokengateUpstream5xxRatioHigh",
    "TokengateFailingClosed", "TokengateConfigReloadFailed", "TokengateSuspiciousTokenUse",
    "TokengateInsufficientScopeSpike",
}
FIRE_TIMEOUT, RESOLVE_TIMEOUT = 40.0, 45.0

pytestmark = pytest.mark.asyncio(loop_scope="module")


def binary(name: str, hint: str) -> str:
    found = TOOLS / name if (TOOLS / name).is_file() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} not found ({hint})")
    return str(found)


def rendered_rules(helm: str) -> dict[str, Any]:
    """The PrometheusRule of the chart, rendered with the test values, as a Prometheus rule file."""
    out = subprocess.run([helm, "template", "gw", str(ROOT / "charts" / "tokengate"), "--namespace", "ci",
                          "--api-versions", "monitoring.coreos.com/v1", "-f", str(VALUES)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    (rule,) = [d for d in yaml.safe_load_all(out) if d and d.get("kind") == "PrometheusRule"]
    return {"groups": rule["spec"]["groups"]}


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return found


def dashboard_label_queries() -> list[tuple[str, str]]:
    """The (series selector, label) of each ``label_values(...)`` template variable."""
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    pairs = []
    for variable in variables:
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text or "")
        if match:
            pairs.append((match.group(1), match.group(2)))
    return pairs


def grafana(expr: str, window: str) -> str:
    """The query as Grafana sends it for this gateway: variables replaced."""
    return (expr.replace("$__rate_interval", window).replace("$namespace", SELECTOR["namespace"])
            .replace("$job", SELECTOR["job"]))


class Process:
    """A child process with its output in a file, stopped for good at the end."""

    def __init__(self, args: list[str], log: Path, cwd: Path | None = None) -> None:
        self.args, self.log_path, self.cwd = args, log, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                         stdin=subprocess.DEVNULL)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@dataclass
class Stack:
    """Everything the alerts watch, and what the scenario recorded."""

    tmp: Path
    issuer: DemoIssuer
    issuer_port: int
    upstream: EchoUpstream
    redis: Process
    redis_port: int
    gateway: Process
    gateway_config: Path
    proxy_port: int
    admin_port: int
    prometheus: Process
    prometheus_url: str
    http: aiohttp.ClientSession
    rules: dict[str, Any]
    fired: dict[str, float] = field(default_factory=dict)  # alert -> seconds from the fault to firing
    resolved: dict[str, float] = field(default_factory=dict)  # alert -> seconds from the repair to resolved
    still_firing: set[str] = field(default_factory=set)

    async def query(self, expr: str) -> dict[str, Any]:
        async with self.http.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}) as resp:
            body: dict[str, Any] = await resp.json()
        return body

    async def alerts(self) -> dict[str, str]:
        """alertname -> state (pending or firing) of every active alert."""
        async with self.http.get(f"{self.prometheus_url}/api/v1/alerts") as resp:
            body = await resp.json()
        states: dict[str, str] = {}
        for alert in body["data"]["alerts"]:
            name = alert["labels"]["alertname"]
            if states.get(name) != "firing":
                states[name] = alert["state"]
        return states

    async def request(self, path: str, token: str | None, **headers: str) -> int:
        all_headers = {**(bearer(token) if token else {}), **headers}
        async with self.http.get(f"http://127.0.0.1:{self.proxy_port}{path}", headers=all_headers) as resp:
            await resp.read()
            return resp.status


def gateway_yaml(stack_tmp: Path, issuer: DemoIssuer, upstream: EchoUpstream, proxy: int, admin: int,
                 redis_port: int) -> dict[str, Any]:
    issuer_config: dict[str, Any] = {
        "issuer": issuer.issuer, "audiences": [AUDIENCE], "leeway": "5s", "jwks_refresh_interval": "1s",
        "jwks_min_refresh_interval": "1s",
        "introspection": {"endpoint": f"{issuer.issuer}/introspect", "client_id": "gateway",
                          "client_secret": "gateway-secret", "timeout": "500ms", "cache_ttl": "1s",
                          "negative_cache_ttl": "1s"},
    }
    return {
        "listen": f"127.0.0.1:{proxy}", "admin_listen": f"127.0.0.1:{admin}", "watch_config": False,
        "trusted_proxies": ["127.0.0.1/32"], "log_level": "warning",
        "issuers": [issuer_config],
        "upstreams": {"orders": {"url": upstream.url, "timeout": "5s"},
                      "dead": {"url": f"http://127.0.0.1:{free_port()}", "connect_timeout": "500ms"}},
        "routes": [
            {"name": "list-orders", "path": "/orders", "methods": ["GET"], "upstream": "orders",
             "scopes": ["orders:read"]},
            {"name": "admin-orders", "path": "/admin/orders", "methods": ["GET"], "upstream": "orders",
             "scopes": ["orders:admin"]},
            {"name": "broken", "path": "/broken", "methods": ["GET"], "upstream": "dead", "scopes": ["orders:read"]},
        ],
        # records beyond 8 waiting for the next flush (every 0.5 s) are dropped: a burst does it
        "audit": {"sink": "file", "path": str(stack_tmp / "audit.jsonl"), "flush_interval": "500ms",
                  "max_pending": 8},
        "revocation": {"redis_url": f"redis://127.0.0.1:{redis_port}/0", "max_staleness": "1h"},
        "detection": {"max_ips_per_token": 1},
    }


async def wait_for(what: str, check: Any, timeout: float, stack: Stack | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(aiohttp.ClientError, OSError, RedisError):
            if await check():
                return
        if time.monotonic() > deadline:
            logs = f"\ngateway:\n{stack.gateway.output()}\nprometheus:\n{stack.prometheus.output()}" if stack else ""
            raise AssertionError(f"timed out waiting for {what}{logs}")
        await asyncio.sleep(0.2)


async def redis_answers(port: int) -> bool:
    client = Redis(port=port, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


def redis_process(tmp: Path, port: int) -> Process:
    return Process([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(tmp)], tmp / "redis.log")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    helm = binary("helm", "ci/k8s-checks.sh installs it into ~/.cache/k8s-tools")
    prometheus = binary("prometheus", "Debian: apt-get install prometheus, or make system-deps")
    tmp = tmp_path_factory.mktemp("prometheus-live")
    rules = rendered_rules(helm)
    (tmp / "rules.yaml").write_text(yaml.safe_dump(rules))

    issuer_port = free_port()
    issuer = DemoIssuer(audience=AUDIENCE)
    await issuer.start(port=issuer_port)
    upstream = EchoUpstream()
    await upstream.start()
    redis_port, proxy, admin, prom_port = free_port(), free_port(), free_port(), free_port()
    redis = redis_process(tmp, redis_port)
    redis.start()
    config = tmp / "gateway.yaml"
    config.write_text(yaml.safe_dump(gateway_yaml(tmp, issuer, upstream, proxy, admin, redis_port)))
    gateway = Process([sys.executable, "-m", "gateway", "serve", "--config", str(config)], tmp / "gateway.log",
                      cwd=ROOT)
    (tmp / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / "rules.yaml")],
        "scrape_configs": [{"job_name": SELECTOR["job"], "static_configs": [
            {"targets": [f"127.0.0.1:{admin}"], "labels": {"namespace": SELECTOR["namespace"], "pod": "p1"}}]}],
    }))
    prom = Process([prometheus, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"], tmp / "prometheus.log")
    http = aiohttp.ClientSession()
    s = Stack(tmp, issuer, issuer_port, upstream, redis, redis_port, gateway, config, proxy, admin, prom,
              f"http://127.0.0.1:{prom_port}", http, rules)
    try:
        await wait_for("redis", lambda: redis_answers(redis_port), 10)
        gateway.start()
        prom.start()

        async def ready() -> bool:
            async with http.get(f"http://127.0.0.1:{admin}/readyz") as resp:
                return resp.status == 200

        async def scraped() -> bool:
            result = (await s.query(f'up{{job="{SELECTOR["job"]}"}} == 1'))["data"]["result"]
            return bool(result)

        await wait_for("the gateway to be ready", ready, 30, s)
        await wait_for("Prometheus to scrape the gateway", scraped, 30, s)
        await scenario(s)
        yield s
    finally:
        await http.close()
        for process in (prom, gateway, redis):
            process.stop()
        await upstream.stop()
        await issuer.stop()


# --- the scenario -------------------------------------------------------------------------------


async def traffic(stack: Stack, tokens: dict[str, str], bad: asyncio.Event, stop: asyncio.Event) -> None:
    """Steady requests (about 10/s, below what the audit writer drops) until ``stop``; while ``bad``,
    also forged tokens, a dead upstream, an insufficient scope and opaque tokens."""
    while not stop.is_set():
        sends = [stack.request("/orders", tokens["good"]), stack.request("/orders", tokens["revoked"])]
        if bad.is_set():
            sends += [stack.request("/orders", tokens["forged"]), stack.request("/broken", tokens["good"]),
                      stack.request("/admin/orders", tokens["good"]), stack.request("/orders", tokens["opaque"])]
        else:
            sends.append(stack.request("/orders", tokens["opaque"]))
        await asyncio.gather(*sends, return_exceptions=True)
        await asyncio.sleep(0.4)


async def late_revocation(stack: Stack, age: float, token: str = "never-used") -> None:
    """A revocation written to Redis as made ``age`` seconds ago: the replica applies it that late."""
    client = Redis(port=stack.redis_port)
    try:
        entry = Entry(Kind.TOKEN, fingerprint(token), time.time() + 600, "*", created_at=time.time() - age,
                      match=Match.FINGERPRINT)
        await write_entry(client, Schema(), entry)
    finally:
        await client.aclose()


async def wait_alerts(stack: Stack, names: set[str], firing: bool, since: float, timeout: float,
                      into: dict[str, float]) -> None:
    """Until each of ``names`` fires (or, ``firing`` false, is no longer active): seconds in ``into``."""
    deadline = time.monotonic() + timeout
    while True:
        states = await stack.alerts()
        for name in names - into.keys():
            if (states.get(name) == "firing") if firing else (name not in states):
                into[name] = time.monotonic() - since
        if names <= into.keys() or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.25)


async def scenario(stack: Stack) -> None:
    issuer = stack.issuer
    tokens = {"good": issuer.mint(scope="orders:read"), "forged": issuer.mint(scope="orders:read")[:-6] + "AAAAAA",
              "opaque": issuer.mint_opaque(scope="orders:read"), "suspect": issuer.mint(scope="orders:read"),
              "revoked": issuer.mint(scope="orders:read")}
    assert await stack.request("/orders", tokens["good"]) == 200
    await late_revocation(stack, 0, tokens["revoked"])  # on time: the lag gauge exists, and is small
    bad, stop = asyncio.Event(), asyncio.Event()
    steady = asyncio.create_task(traffic(stack, tokens, bad, stop))
    try:
        await asyncio.sleep(3)  # a few scrapes of the healthy gateway
        assert not DRIVEN & set(await stack.alerts()), await stack.alerts()

        # --- every fault at once -------------------------------------------------------------
        faulted = time.monotonic()
        bad.set()
        await late_revocation(stack, 60)  # arrives a minute after it was made
        await issuer.stop()  # JWKS (and introspection) unreachable
        stack.redis.stop()  # the revocation feed loses Redis (max_staleness 1h: it keeps serving)
        await asyncio.gather(*(stack.request("/orders", tokens["good"]) for _ in range(80)))  # audit overflow
        for address in ("192.0.2.10", "192.0.2.11"):  # one token from two client addresses
            await stack.request("/orders", tokens["suspect"], **{"X-Forwarded-For": address})
        good_config = stack.gateway_config.read_text()
        stack.gateway_config.write_text(good_config.replace("upstream: orders", "upstream: nowhere", 1))
        stack.gateway.signal(signal.SIGHUP)  # a reload the gateway rejects
        await wait_alerts(stack, DRIVEN, True, faulted, FIRE_TIMEOUT, stack.fired)
        stack.still_firing = set(await stack.alerts())

        # --- every fault repaired -------------------------------------------------------------
        repaired = time.monotonic()
        bad.clear()
        await issuer.start(port=stack.issuer_port)
        stack.redis.start()
        await wait_for("redis again", lambda: redis_answers(stack.redis_port), 10, stack)
        stack.gateway_config.write_text(good_config)
        stack.gateway.signal(signal.SIGHUP)  # a reload that works
        await asyncio.sleep(2)  # the feed reconnects (and resyncs the empty Redis)
        await late_revocation(stack, 0)
        await wait_alerts(stack, DRIVEN, False, repaired, RESOLVE_TIMEOUT, stack.resolved)
    finally:
        stop.set()
        await steady
    print(f"\nalerts fired after (s): { {k: round(v, 1) for k, v in sorted(stack.fired.items())} }")
    print(f"alerts resolved after (s): { {k: round(v, 1) for k, v in sorted(stack.resolved.items())} }")


# --- the tests ----------------------------------------------------------------------------------


async def test_prometheus_loaded_every_rule_of_the_chart(stack: Stack) -> None:
    names = {r["alert"] for g in stack.rules["groups"] for r in g["rules"] if "alert" in r}
    assert names >= DRIVEN
    async with stack.http.get(f"{stack.prometheus_url}/api/v1/rules") as resp:
        body = await resp.json()
    loaded = [rule for group in body["data"]["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in loaded} == names
    assert all(rule["health"] == "ok" for rule in loaded), [r for r in loaded if r["health"] != "ok"]


async def test_each_alert_fires_when_the_gateway_is_driven_into_its_condition(stack: Stack) -> None:
    missing = DRIVEN - stack.fired.keys()
    assert not missing, (f"never fired: {sorted(missing)}; active then: {sorted(stack.still_firing)}\n"
                         f"gateway:\n{stack.gateway.output()}")


async def test_each_alert_resolves_once_the_condition_is_gone(stack: Stack) -> None:
    stuck = DRIVEN - stack.resolved.keys()
    assert not stuck, f"still active: {sorted(stuck)}\ngateway:\n{stack.gateway.output()}"


@pytest.mark.parametrize("expr", dashboard_queries())
async def test_every_dashboard_query_evaluates_with_data(stack: Stack, expr: str) -> None:
    """The panel queries name metrics and labels the gateway exports: a typo gives no data."""
    result = await stack.query(grafana(expr, "5m"))  # the window covers the whole scenario
    assert result["status"] == "success", result
    assert result["data"]["result"], f"no data for {grafana(expr, '5m')}"


@pytest.mark.parametrize(("selector", "label"), dashboard_label_queries())
async def test_every_dashboard_variable_has_values(stack: Stack, selector: str, label: str) -> None:
    async with stack.http.get(f"{stack.prometheus_url}/api/v1/label/{label}/values",
                              params={"match[]": grafana(selector, "5m")}) as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    assert SELECTOR[label] in body["data"], body
