"""The audit record names the token family for what it is: ``family``, read from
``revocation.family_claim`` whatever that claim is called; ``sid`` repeats it for older readers,
and queries and incident reports read both new and older records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from click.testing import CliRunner

from gateway.cli import main
from gateway.demo import DemoIssuer
from gateway.forensics.incident import Target, collect
from tests.helpers import GatewayFactory, bearer


async def test_the_family_is_read_from_the_configured_claim(make_gateway: GatewayFactory, issuer: DemoIssuer) -> None:
    gw = await make_gateway(revocation={"family_claim": "grant_id"})
    token = issuer.mint(scope="orders:read", sid="oidc-session-1", grant_id="grant-7", jti="j-1")
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/orders", headers=bearer(token)) as resp:
        assert resp.status == 200
    (record,) = [r for r in await gw.audit_records() if r["jti"] == "j-1"]
    # the OIDC session id is not the refresh-token family: the record carries the configured claim
    assert (record["family"], record["sid"]) == ("grant-7", "grant-7")


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    base = {"type": "audit", "ts": "2026-03-01T09:00:00.000Z", "decision": "allow", "reason": "allowed",
            "sub": "alice", "iss": "https://id.example"}
    path.write_text("".join(json.dumps({**base, **r}) + "\n" for r in records))


def test_queries_and_incidents_read_old_and_new_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, [
        {"jti": "old", "sid": "fam-1"},                       # written before "family" existed
        {"jti": "new", "family": "fam-1", "sid": "fam-1"},
        {"jti": "other", "family": "fam-2", "sid": "fam-1"},  # "family" wins over a stale "sid"
    ])
    result = CliRunner().invoke(main, ["audit", "--family", "fam-1", "--format", "json", str(path)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["jti"] for line in result.stdout.splitlines()] == ["old", "new"]
    csv_out = CliRunner().invoke(main, ["audit", "--jti", "old", "--format", "csv", str(path)]).stdout
    header, row = csv_out.splitlines()[:2]
    assert dict(zip(header.split(","), row.split(","), strict=True))["family"] == "fam-1"
    incident = collect([str(path)], Target("jti", "old"))
    assert incident.families == ["fam-1"]
    assert [t.family for t in incident.tokens.values()] == ["fam-1"]
