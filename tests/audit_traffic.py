"""Real traffic through a running gateway for the audit / incident / detection tests.

One stolen-looking token (``a``) is used from a legitimate network and then from a second
one through a trusted proxy's X-Forwarded-For, and asks for scopes it lacks; ``b`` is another
token of the same family (sid), ``c`` belongs to someone else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from gateway.demo import DemoIssuer
from gateway.tokens.token import fingerprint
from tests.helpers import RunningGateway

HOME_IP = "198.51.100.7"
AWAY_IP = "203.0.113.9"
OTHER_IP = "192.0.2.44"
TRUSTED = {"trusted_proxies": ["127.0.0.1/32"]}


@dataclass
class Token:
    raw: str
    jti: str
    sid: str
    sub: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.raw)[:32]


def mint(issuer: DemoIssuer, sub: str, scope: str, sid: str) -> Token:
    raw = issuer.mint(sub=sub, scope=scope, sid=sid)
    claims = jwt.decode(raw, options={"verify_signature": False})
    return Token(raw, claims["jti"], sid, sub)


async def call(
    http: aiohttp.ClientSession, gw: RunningGateway, method: str, path: str, token: Token, ip: str,
    agent: str = "orders-app/2.1",
) -> int:
    headers = {"Authorization": f"Bearer {token.raw}", "X-Forwarded-For": ip, "User-Agent": agent}
    async with http.request(method, f"{gw.url}{path}", headers=headers) as response:
        await response.read()
        return response.status


@dataclass
class Traffic:
    a: Token
    b: Token
    c: Token
    records: list[dict[str, Any]]


async def drive(gw: RunningGateway, issuer: DemoIssuer, http: aiohttp.ClientSession) -> Traffic:
    """Seven calls by ``a`` (two IPs, two scope-escalation attempts), one by ``b``, two by ``c``."""
    a = mint(issuer, "alice", "orders:read", "family-alice-1")
    b = mint(issuer, "alice", "orders:read orders:write", "family-alice-1")
    c = mint(issuer, "bob", "orders:read", "family-bob-1")
    statuses = [
        await call(http, gw, "GET", "/orders", a, HOME_IP),
        await call(http, gw, "GET", "/orders/17/status", a, HOME_IP),
        await call(http, gw, "GET", "/orders", b, HOME_IP),
        await call(http, gw, "GET", "/orders", a, AWAY_IP, "python-requests/2.31"),
        await call(http, gw, "POST", "/orders", a, AWAY_IP, "python-requests/2.31"),
        await call(http, gw, "DELETE", "/orders/17", a, AWAY_IP, "python-requests/2.31"),
        await call(http, gw, "GET", "/orders/18/status", a, AWAY_IP, "python-requests/2.31"),
        await call(http, gw, "GET", "/orders", a, AWAY_IP, "python-requests/2.31"),
        await call(http, gw, "GET", "/orders", c, OTHER_IP),
        await call(http, gw, "POST", "/orders", c, OTHER_IP),
    ]
    assert statuses == [200, 200, 200, 200, 403, 403, 200, 200, 200, 403], statuses
    records = await gw.audit_records()
    assert len(records) == 10
    return Traffic(a, b, c, records)


def assert_no_raw_token(text: str, *tokens: Token) -> None:
    for token in tokens:
        assert token.raw not in text
        # nor any sizeable piece of it (a signature or payload segment)
        for segment in token.raw.split("."):
            assert segment not in text


def html_number(html: str, ident: str) -> int:
    match = re.search(rf'id="{ident}">(\d+)<', html)
    assert match, ident
    return int(match.group(1))
