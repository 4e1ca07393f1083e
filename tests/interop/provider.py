"""Node oidc-provider (a certified OpenID provider) as the authorization server of the interop tests:
its settings, its installation, the gateway configuration in front of it (fixtures: conftest.py).

The provider is installed from the npm registry at the version pinned in
tests/interop/provider/package-lock.json (``npm ci``, only when node_modules does not match
the lock already, so a warm run costs nothing) and started once per session on 127.0.0.1.
Its revocation hook (provider/revocation-hook.js, the one docs/revocation.md tells
integrators to copy) posts to the admin port of whichever gateway a test runs: every
gateway of these tests listens there. Without node and npm the tests are skipped, saying so.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import RunningGateway

PROVIDER_DIR = Path(__file__).resolve().parent / "provider"
ADMIN_SECRET = "interop-admin-secret-" + secrets.token_hex(8)
RS = "https://api.example/orders-rs256"  # JWT access tokens signed RS256
ES = "https://api.example/orders-es256"  # JWT access tokens signed ES256
OPAQUE = "https://api.example/orders-opaque"  # opaque access tokens, introspected
ADMIN_AUDIENCE = "https://gateway.example/admin"
SCOPES = "orders:read orders:write"
CLIENT, CLIENT_SECRET = "orders-client", "orders-client-secret-" + secrets.token_hex(8)
WEB_APP, WEB_APP_SECRET = "web-app", "web-app-secret-" + secrets.token_hex(8)
REDIRECT_URI = "http://127.0.0.1/callback"
INTROSPECTORS = {  # client_id: the gateway's own client at the authorization server, one per auth method
    "client_secret_basic": "gateway-basic",
    "client_secret_post": "gateway-post",
    "private_key_jwt": "gateway-pkjwt",
}
INTROSPECTION_SECRET = "gateway-introspection-secret-" + secrets.token_hex(8)


def provider_installed() -> bool:
    """node_modules holds exactly what package-lock.json pins (npm writes its own copy there)."""
    installed = PROVIDER_DIR / "node_modules" / ".package-lock.json"
    if not installed.is_file():
        return False
    wanted = json.loads((PROVIDER_DIR / "package-lock.json").read_text())["packages"]
    have = json.loads(installed.read_text())["packages"]
    return all(have.get(path, {}).get("version") == spec.get("version") for path, spec in wanted.items() if path)


def install_provider() -> None:
    if provider_installed():
        return
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--prefer-offline"],
        cwd=PROVIDER_DIR, capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(f"npm ci in {PROVIDER_DIR} failed:\n{result.stdout}\n{result.stderr}")


@dataclass
class Provider:
    issuer: str
    admin_port: int
    key_file: Path  # the private_key_jwt client's key (EC P-256, PEM)
    stderr: list[str]

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"


def client_settings(public_jwk: dict[str, Any]) -> list[dict[str, Any]]:
    none: dict[str, Any] = {"grant_types": [], "response_types": [], "redirect_uris": []}
    return [
        {"client_id": CLIENT, "client_secret": CLIENT_SECRET, "grant_types": ["client_credentials"],
         "response_types": [], "redirect_uris": [], "scope": f"{SCOPES} gateway:admin"},
        {"client_id": WEB_APP, "client_secret": WEB_APP_SECRET, "grant_types": ["authorization_code", "refresh_token"],
         "response_types": ["code"], "redirect_uris": [REDIRECT_URI], "scope": f"openid offline_access {SCOPES}"},
        {**none, "client_id": INTROSPECTORS["client_secret_basic"], "client_secret": INTROSPECTION_SECRET,
         "token_endpoint_auth_method": "client_secret_basic"},
        {**none, "client_id": INTROSPECTORS["client_secret_post"], "client_secret": INTROSPECTION_SECRET,
         "token_endpoint_auth_method": "client_secret_post"},
        {**none, "client_id": INTROSPECTORS["private_key_jwt"], "token_endpoint_auth_method": "private_key_jwt",
         "token_endpoint_auth_signing_alg": "ES256", "jwks": {"keys": [public_jwk]}},
    ]


def read_first_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The provider's first stdout line, or "" when it printed none within ``timeout`` seconds."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline() if process.stdout else ""),
                              daemon=True)
    reader.start()
    reader.join(timeout)
    return line[0] if line else ""


def gateway_config(provider: Provider, audit_path: Path, upstream_url: str, *, auth_method: str | None = None,
                   **overrides: Any) -> dict[str, Any]:
    """A gateway in front of the echo upstream, trusting the provider; introspecting with ``auth_method``."""
    issuer: dict[str, Any] = {
        "issuer": provider.issuer, "audiences": [RS, ES, OPAQUE], "algorithms": ["RS256", "ES256"],
        "leeway": "5s", "jwks_min_refresh_interval": "1s", "max_token_lifetime": "10m",
    }
    if auth_method is not None:
        issuer["introspection"] = {
            "client_id": INTROSPECTORS[auth_method], "auth_method": auth_method, "cache_ttl": "60s",
            **({"private_key_file": str(provider.key_file), "private_key_algorithm": "ES256"}
               if auth_method == "private_key_jwt" else {"client_secret": INTROSPECTION_SECRET}),
        }
    return {
        "listen": "127.0.0.1:0",
        "admin_listen": f"127.0.0.1:{provider.admin_port}",
        "issuers": [issuer],
        "upstreams": {"orders": {"url": upstream_url, "timeout": "5s"}},
        "routes": [
            {"name": "list-orders", "path": "/orders", "methods": ["GET"], "upstream": "orders",
             "scopes": ["orders:read"]},
            {"name": "create-order", "path": "/orders", "methods": ["POST"], "upstream": "orders",
             "scopes": ["orders:write"]},
        ],
        "audit": {"sink": "file", "path": str(audit_path), "flush_interval": "20ms"},
        "revocation": {"family_claim": "grant_id"},
        **overrides,
    }


InteropGateway = Callable[..., Awaitable[RunningGateway]]
