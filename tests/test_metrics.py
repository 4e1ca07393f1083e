"""Prometheus metrics, /healthz and /readyz on the admin port (never the public one)."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.demo import DemoIssuer, EchoUpstream
from tests.helpers import AUDIENCE, GatewayFactory, RunningGateway, bearer, free_port, metric


async def get(url: str) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text(), resp.headers


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


async def test_metrics_on_the_admin_port(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    # counters live as long as the process: compare with their values before this gateway started
    valid_before = metric("gateway_token_validations_total", issuer=issuer.issuer, result="valid")
    refresh_before = metric("gateway_jwks_refresh_total", issuer=issuer.issuer, result="ok")
    gw = await make_gateway()
    token = issuer.mint()
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # the second one comes from the verified-token cache
            async with session.get(gw.url + "/orders", headers=bearer(token)) as resp:
                assert resp.status == 200
        async with session.get(gw.url + "/orders") as resp:
            assert resp.status == 401
    status, text, headers = await get(gw.admin_url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    found = samples(text)
    names = {name for name, _, _ in found}
    for name in ("gateway_requests_total", "gateway_request_duration_seconds_bucket",
                 "gateway_upstream_duration_seconds_bucket", "gateway_token_validations_total",
                 "gateway_jwks_refresh_total", "gateway_token_cache_total"):
        assert name in names, name

    def value(name: str, **labels: str) -> float:
        return sum(v for n, lab, v in found if n == name and all(lab.get(k) == w for k, w in labels.items()))

    assert value("gateway_requests_total", route="list-orders", method="GET", status="200", decision="allow",
                 reason="allowed") >= 2
    assert value("gateway_requests_total", route="list-orders", method="GET", status="401", decision="deny",
                 reason="missing_token") >= 1
    assert value("gateway_token_validations_total", issuer=issuer.issuer, result="valid") == valid_before + 1
    assert value("gateway_jwks_refresh_total", issuer=issuer.issuer, result="ok") == refresh_before + 1
    assert value("gateway_token_cache_total", cache="verified_token", result="hit") >= 1
    assert value("gateway_token_cache_total", cache="verified_token", result="miss") >= 1
    assert value("gateway_request_duration_seconds_count", route="list-orders") >= 3
    assert value("gateway_upstream_duration_seconds_count", upstream="orders") >= 2


async def test_admin_endpoints_are_not_on_the_public_port(
    gw: RunningGateway, upstream: EchoUpstream
) -> None:
    assert gw.port("proxy") != gw.port("admin")
    for path in ("/metrics", "/healthz", "/readyz"):
        status, _, _ = await get(gw.url + path)
        assert status == 404, path
    assert upstream.requests == []
    status, _, _ = await get(gw.admin_url + "/orders")  # and the proxy is not on the admin port
    assert status == 404


async def test_healthz_and_readyz(gw: RunningGateway) -> None:
    status, text, _ = await get(gw.admin_url + "/healthz")
    assert (status, text) == (200, '{"status":"alive"}')
    async with aiohttp.ClientSession() as session, session.get(gw.admin_url + "/readyz") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["ready"] is True
    assert body["jwks_loaded"] is True


async def test_readyz_fails_until_every_issuer_has_keys(
    make_gateway: GatewayFactory, issuer: DemoIssuer
) -> None:
    missing = DemoIssuer(audience=AUDIENCE, issuer=f"http://127.0.0.1:{free_port()}")  # never started
    errors_before = metric("gateway_jwks_refresh_total", issuer=missing.issuer, result="error")
    gw = await make_gateway(issuers=[
        {"issuer": issuer.issuer, "audiences": [AUDIENCE]},
        {"issuer": missing.issuer, "audiences": [AUDIENCE]},
    ])
    status, _, _ = await get(gw.admin_url + "/healthz")
    assert status == 200  # alive ...
    async with aiohttp.ClientSession() as session, session.get(gw.admin_url + "/readyz") as resp:
        assert resp.status == 503  # ... but not ready
        body = await resp.json()
    assert body["ready"] is False
    assert body["jwks_loaded"] is False
    _, text, _ = await get(gw.admin_url + "/metrics")
    errors = [v for n, lab, v in samples(text)
              if n == "gateway_jwks_refresh_total" and lab == {"issuer": missing.issuer, "result": "error"}]
    assert errors == [errors_before + 1]


def test_folded_histogram_equals_one_observe_per_value() -> None:
    """The request path counts in plain objects; the fold gives what Histogram.observe would have."""
    from prometheus_client import CollectorRegistry, Histogram

    from gateway import metrics

    registry = CollectorRegistry()
    observed = Histogram("observed_seconds", "x", ["l"], buckets=metrics._LATENCY_BUCKETS, registry=registry)
    folded = Histogram("folded_seconds", "x", ["l"], buckets=metrics._LATENCY_BUCKETS, registry=registry)
    pending = metrics.pending_histogram(folded, "a")
    assert isinstance(pending, metrics.PendingHistogram)  # the bulk fold works with this prometheus-client
    rng = random.Random(7)
    values = [0.0, 30.0, 31.0, 1e9, *metrics._LATENCY_BUCKETS, *(rng.expovariate(200) for _ in range(3000))]
    for i, value in enumerate(values):
        observed.labels("a").observe(value)
        pending.observe(value)
        if i % 1000 == 0:
            metrics.fold()
    metrics.fold()
    metrics.fold()  # nothing new: nothing added twice

    def samples(name: str) -> dict[tuple[str, str], float]:
        return {(s.name.removeprefix(name), s.labels.get("le", "")): s.value
                for family in registry.collect() if family.name == name for s in family.samples
                if not s.name.endswith("_created")}

    got, want = samples("folded_seconds"), samples("observed_seconds")
    assert got.keys() == want.keys() and len(got) == len(metrics._LATENCY_BOUNDS) + 2
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert got[("_count", "")] == len(values)


def test_reading_the_registry_folds_pending_counts() -> None:
    from gateway import metrics

    labels = {"route": "fold-test", "method": "GET", "status": "200", "decision": "allow", "reason": "allowed"}
    before = metric("gateway_requests_total", **labels)
    pending = metrics.pending_count(metrics.REQUESTS, *labels.values())
    pending.count += 3
    assert metric("gateway_requests_total", **labels) == before + 3  # collect() folded first
    assert metric("gateway_requests_total", **labels) == before + 3  # and only once
