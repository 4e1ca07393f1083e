"""The chart's `helm test` pod: its check, run as rendered against a real gateway on 127.0.0.1.

ci/k8s-checks.sh validates the rendered Pod (schema, hardening, the Services and the
NetworkPolicy it needs); here its script runs with the URLs pointed at a gateway of this test.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import RunningGateway
from tests.test_audit_alerts import tool

ROOT = Path(__file__).resolve().parent.parent


def rendered_test_pod(*sets: str) -> dict[str, Any]:
    args = [tool("helm"), "template", "gw", str(ROOT / "charts" / "tokengate"), "--namespace", "ci"]
    for value in sets:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    pods = [d for d in yaml.safe_load_all(out) if d and d.get("kind") == "Pod"]
    assert len(pods) <= 1
    return pods[0] if pods else {}


async def run_check(pod: dict[str, Any], ready_url: str, public_url: str) -> tuple[int, str]:
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-c"]
    script, _, _, host = container["args"]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, ready_url, public_url, host,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


def test_the_pod_checks_the_first_route_that_needs_a_token() -> None:
    pod = rendered_test_pod("gateway.upstreams.u.url=http://u.example:8080",
                   "gateway.routes[0].name=open", "gateway.routes[0].path=/public", "gateway.routes[0].upstream=u",
                   "gateway.routes[0].auth=none",
                   "gateway.routes[1].name=orders", "gateway.routes[1].path=/orders/{id}/items",
                   "gateway.routes[1].upstream=u")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["args"][1:3] == ["http://gw-tokengate:9090/readyz",
                                                         "http://gw-tokengate:80/orders/x/items"]
    assert rendered_test_pod("helmTest.enabled=false") == {}


async def test_the_check_passes_on_a_working_install(gw: RunningGateway) -> None:
    code, out = await run_check(rendered_test_pod(), f"{gw.admin_url}/readyz", f"{gw.url}/orders")
    assert (code, out.strip()) == (0, f"/readyz: 200 (want 200); {gw.url}/orders without a token: 401 (want 401)")


async def test_the_check_fails_on_an_unready_gateway_or_an_open_route(gw: RunningGateway) -> None:
    pod = rendered_test_pod()
    gw.gateway.draining = True  # /readyz 503
    code, out = await run_check(pod, f"{gw.admin_url}/readyz", f"{gw.url}/orders")
    assert code == 1 and "/readyz: 503" in out
    gw.gateway.draining = False
    code, out = await run_check(pod, f"{gw.admin_url}/readyz", f"{gw.url}/public/health")  # no token needed
    assert code == 1 and "without a token: 200 (want 401)" in out
    code, out = await run_check(pod, f"{gw.admin_url}/readyz", "http://127.0.0.1:1/orders")
    assert code == 1 and "unreachable" in out
