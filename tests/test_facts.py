"""The proxy's one-pass exchange_and_facts gives what new_exchange and facts_of give (facts.py)."""

from __future__ import annotations

import dataclasses
from typing import Any
from unittest import mock

import pytest
import yaml
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.config import parse_config
from gateway.facts import exchange_and_facts, facts_of, new_exchange

HEADERS: list[dict[str, str]] = [
    {"Host": "api.example", "Authorization": "Bearer abc", "User-Agent": "ua"},
    {"Host": "api.example", "X-Forwarded-For": "203.0.113.9, 10.0.0.7", "X-Forwarded-Proto": "https",
     "X-Forwarded-Host": "public.example", "X-Request-Id": "req-1", "DPoP": "proof"},
    {"Host": "h", "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Protocol": "chat, x"},
    {"Host": "h", "X-Forwarded-For": "not-an-ip", "X-Forwarded-Proto": "gopher"},
]


def _config(trusted: list[str]) -> Any:
    return parse_config(yaml.safe_dump({
        "upstreams": {"o": {"url": "http://127.0.0.1:9"}},
        "issuers": [{"issuer": "https://issuer.example", "audiences": ["api"]}],
        "routes": [{"name": "r", "path": "/x", "upstream": "o"}],
        "trusted_proxies": trusted,
    }))


@pytest.mark.parametrize("trusted", [[], ["10.0.0.0/8"], ["192.0.2.0/24"]])
@pytest.mark.parametrize("headers", HEADERS)
def test_exchange_and_facts_equal_the_two_steps(trusted: list[str], headers: dict[str, str]) -> None:
    config = _config(trusted)
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("10.1.2.3", 40000) if name == "peername" else default)
    request = make_mocked_request("GET", "/x?a=1", headers=CIMultiDict(headers), transport=transport)
    exchange, peer = new_exchange(request, config, "proxy")
    facts = facts_of(request, config, exchange.client_ip)
    exchange2, facts2, peer2, peer_trusted = exchange_and_facts(request, config, "proxy")
    assert peer2 == peer == "10.1.2.3"
    assert peer_trusted == (trusted == ["10.0.0.0/8"])
    skip = {"started", "started_mono", "request_id"}
    assert {k: v for k, v in dataclasses.asdict(exchange2).items() if k not in skip} == {
        k: v for k, v in dataclasses.asdict(exchange).items() if k not in skip}
    if "X-Request-Id" in headers:
        assert exchange2.request_id == exchange.request_id == headers["X-Request-Id"]
    assert facts2 == facts
