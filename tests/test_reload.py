"""Reloading the configuration of a running gateway (reload.py), in process.

The signals, the file watcher and the workers are exercised on a real ``gateway serve``
process in test_lifecycle.py; here are the details of one reload.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from gateway import runtime
from gateway.config import load_config
from gateway.reload import ConfigFile, Reloader
from gateway.runtime import Gateway
from gateway.server import Server
from tests.configmap import ConfigMapDir
from tests.helpers import base_config

EXTRA_ROUTE = {"name": "extra", "path_prefix": "/extra", "upstream": "orders", "auth": "none"}


def reloads(result: str) -> float:
    return REGISTRY.get_sample_value("gateway_config_reload_total", {"result": result}) or 0.0


async def until(condition: Any, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not true in time"
        await asyncio.sleep(0.02)


def test_config_file_sees_configmap_swaps_and_edits_but_not_touches(tmp_path: Path) -> None:
    files = ConfigMapDir(tmp_path / "configmap")
    files.write("a: 1\n")
    watched = ConfigFile(str(files.path))
    assert not watched.poll()
    files.write("a: 1\n")  # a new ConfigMap version with the same content
    assert not watched.poll()
    files.write("a: 2\n")
    assert watched.poll()
    assert not watched.poll()

    plain = tmp_path / "plain.yaml"
    plain.write_text("b: 1\n")
    watched = ConfigFile(str(plain))
    plain.write_text("b: 22\n")  # edited in place
    assert watched.poll()
    os.utime(plain, ns=(0, 10**18))  # touched
    assert not watched.poll()
    plain.unlink()
    assert watched.poll()  # gone: the reload that follows reports it


Running = tuple[Server, ConfigMapDir, dict[str, Any]]


@pytest.fixture
async def running(issuer: Any, upstream: Any, tmp_path: Path) -> AsyncIterator[Running]:
    files = ConfigMapDir(tmp_path / "configmap")
    config = base_config(issuer, upstream, tmp_path / "audit.jsonl")
    files.write(config)
    server = Server(Gateway(load_config(files.path), str(files.path)))
    await server.start()
    yield server, files, config
    await server.stop()


async def test_a_reload_swaps_the_pipeline_and_retires_the_old_one_after_its_requests(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "RETIRE_MIN_DELAY", 0.05)
    server, files, config = running
    gateway = server.gateway
    old = gateway.pipeline
    assert old is not None
    old_upstream = old.upstreams.by_name["orders"].session
    assert old_upstream is not None
    before = reloads("success")

    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> int:
            async with http.get(f"http://127.0.0.1:{server.ports['proxy']}{path}") as resp:
                await resp.read()
                return resp.status

        slow = asyncio.create_task(get("/slow/1"))
        await until(lambda: old.in_flight == 1)
        config["routes"].append(EXTRA_ROUTE)
        files.write(config)
        assert await Reloader(gateway).reload("test")

        assert gateway.pipeline is not old
        assert await get("/extra/1") == 200
        await asyncio.sleep(0.3)
        assert not old_upstream.closed, "the old pipeline closed under a request still using it"
        assert await slow == 200
    await until(lambda: old_upstream.closed and old.session.closed)
    assert reloads("success") == before + 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_reload_whose_issuer_keys_cannot_load_keeps_the_running_pipeline(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    server, files, config = running
    gateway = server.gateway
    old = gateway.pipeline
    config["issuers"][0].update(jwks_uri=f"http://127.0.0.1:{closed_port()}/jwks", http_timeout="1s")
    files.write(config)
    before = reloads("error")

    assert not await Reloader(gateway, keys_wait=0.3).reload("test")
    assert gateway.pipeline is old
    assert gateway.readiness()["jwks_loaded"]
    assert reloads("error") == before + 1
    assert f"the keys of {config['issuers'][0]['issuer']} could not be loaded" in caplog.text


async def test_keys_that_only_a_restart_applies_are_reported_and_kept(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    server, files, config = running
    gateway = server.gateway
    listen, grace = gateway.config.listen, gateway.config.shutdown_grace
    config.update(listen="127.0.0.1:1", shutdown_grace="3s", log_level="warning")
    config["routes"].append(EXTRA_ROUTE)
    files.write(config)

    root = logging.getLogger()
    saved = root.level
    try:
        with caplog.at_level(logging.INFO):
            assert await Reloader(gateway).reload("test")
            assert root.level == logging.WARNING  # log_level is applied at once
    finally:
        root.setLevel(saved)
    assert (gateway.config.listen, gateway.config.shutdown_grace) == (listen, grace)
    assert gateway.config.routes[-1].name == "extra"
    assert "changed keys take effect only after a restart: listen, shutdown_grace" in caplog.text


async def test_a_changed_detection_section_is_reported_and_kept_until_a_restart(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    server, files, config = running
    gateway = server.gateway
    assert gateway.detector is None  # the base configuration detects nothing
    config["detection"] = {"max_ips_per_token": 2}
    config["routes"].append(EXTRA_ROUTE)
    files.write(config)

    with caplog.at_level(logging.INFO):
        assert await Reloader(gateway).reload("test")

    assert "changed keys take effect only after a restart: detection" in caplog.text
    # the Detector is built once, with the Gateway: the configuration in effect says what it runs with
    assert gateway.detector is None
    assert gateway.config.detection == gateway.initial_config.detection
    assert gateway.config.routes[-1].name == "extra"  # the rest of the file is applied


async def test_keys_read_on_each_request_follow_a_reload_without_a_restart_warning(
    running: Running, issuer: Any, upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server, files, config = running
    gateway = server.gateway
    config.update(
        realm="reloaded-realm", trusted_proxies=["10.0.0.0/8"], decision_sources=["envoy"],
        identity_headers={"subject": "X-Reloaded-Subject"}, admin={"scope": "reloaded:admin"},
        verified_token_cache_size=7,
    )
    files.write(config)

    with caplog.at_level(logging.INFO):
        assert await Reloader(gateway).reload("test")

    assert "take effect only after a restart" not in caplog.text
    in_effect = gateway.config
    assert in_effect.realm == "reloaded-realm"
    assert [str(n) for n in in_effect.trusted_proxies] == ["10.0.0.0/8"]
    assert in_effect.decision_sources == ["envoy"]
    assert in_effect.admin.scope == "reloaded:admin"
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.ports['proxy']}"
        async with http.get(f"{base}/orders") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Bearer realm="reloaded-realm"'
        token = issuer.mint(scope="orders:read")
        async with http.get(f"{base}/orders", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
    headers = upstream.requests[-1]["headers"]
    assert headers["X-Reloaded-Subject"] == "alice"
    assert "X-Auth-Subject" not in headers


async def test_a_file_that_is_not_utf8_is_rejected_like_any_invalid_file(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    server, files, _ = running
    gateway = server.gateway
    old = gateway.pipeline
    files.write("routes: []\n")
    (files.root / "..data" / "gateway.yaml").write_bytes(b"\xff\xfe: not text\n")
    before = reloads("error")

    assert not await Reloader(gateway).reload("test")
    assert gateway.pipeline is old
    assert reloads("error") == before + 1
    assert f"config reload rejected: {files.path}:" in caplog.text
