"""Fixtures of the interop tests: the oidc-provider process (once per session) and gateways in front of it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from gateway.config import parse_config
from gateway.runtime import Gateway
from gateway.server import Server
from tests.helpers import RunningGateway, free_port

from .provider import (
    ADMIN_AUDIENCE,
    ADMIN_SECRET,
    ES,
    OPAQUE,
    PROVIDER_DIR,
    RS,
    SCOPES,
    InteropGateway,
    Provider,
    client_settings,
    gateway_config,
    install_provider,
    read_first_line,
)


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("Node.js (node and npm) is not installed: the oidc-provider interop tests need it "
                    "(Debian: apt-get install nodejs npm)")
    install_provider()
    work = tmp_path_factory.mktemp("oidc-provider")
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = work / "gateway-client-key.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    public_jwk = {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": "gateway-pkjwt", "alg": "ES256"}
    admin_port = free_port()
    settings = {
        "clients": client_settings(public_jwk),
        "resources": {RS: {"format": "jwt", "alg": "RS256", "scope": f"{SCOPES} gateway:admin"},
                      ES: {"format": "jwt", "alg": "ES256", "scope": SCOPES},
                      OPAQUE: {"format": "opaque", "scope": SCOPES},
                      ADMIN_AUDIENCE: {"format": "jwt", "alg": "ES256", "scope": "gateway:admin"}},
        "gateway": {"adminUrl": f"http://127.0.0.1:{admin_port}", "secret": ADMIN_SECRET},
        "accounts": ["alice"],
    }
    (work / "settings.json").write_text(json.dumps(settings))
    process = subprocess.Popen(
        ["node", str(PROVIDER_DIR / "provider.js"), str(work / "settings.json")], cwd=PROVIDER_DIR,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NODE_ENV": "test"},
    )
    assert process.stdout is not None and process.stderr is not None
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(process.stderr or []), daemon=True).start()
    first = read_first_line(process, 30)
    if not first:
        process.kill()
        pytest.fail("oidc-provider did not start:\n" + "".join(stderr))
    try:
        yield Provider(json.loads(first)["issuer"], admin_port, key_file, stderr)
    finally:
        if process.stdin is not None:
            process.stdin.close()  # the provider exits when its stdin closes
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
async def interop_gateway(
    oidc_provider: Provider, upstream: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[InteropGateway]:
    """Start a gateway on the provider's admin port: ``await interop_gateway(auth_method=..., **overrides)``."""
    monkeypatch.setenv("GATEWAY_ADMIN_SECRET", ADMIN_SECRET)
    started: list[RunningGateway] = []

    async def start(**options: Any) -> RunningGateway:
        audit_path = tmp_path / f"audit-{len(started)}.jsonl"
        data = gateway_config(oidc_provider, audit_path, upstream.url, **options)
        server = Server(Gateway(parse_config(yaml.safe_dump(data), "interop.yaml")))
        await server.start()
        running = RunningGateway(server, server.gateway, audit_path)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session
