"""``gateway incident``: the story of a token from real audit records, the HTML report, and --revoke."""

from __future__ import annotations

import asyncio
import gzip
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from click.testing import CliRunner

from gateway.cli import main
from gateway.demo import DemoIssuer, EchoUpstream
from gateway.forensics.incident import Target, collect, render_text
from gateway.forensics.reports.html import render_html
from gateway.forensics.revoke import (
    RevokeError,
    action_record,
    apply_revocation,
    operator_name,
    plan_revocation,
)
from gateway.revocation.entry_factory import EXPIRY_MARGIN
from tests.audit_traffic import AWAY_IP, HOME_IP, OTHER_IP, TRUSTED, assert_no_raw_token, call, drive, html_number
from tests.helpers import AUDIENCE, GatewayFactory, base_config


def run(*args: str, input: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def section(text: str, title: str) -> str:
    """The lines of one report section (up to the next blank line)."""
    start = text.index(title)
    end = text.find("\n\n", start)
    return text[start: end if end != -1 else len(text)]


async def test_incident_tells_the_whole_story(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw = await make_gateway(**TRUSTED)
    t = await drive(gw, issuer, http)
    html_path = tmp_path / "report.html"
    code, out, err = run("incident", str(gw.audit_path), "--jti", t.a.jti, "--html", str(html_path))
    assert code == 0, err
    calls_of_a = [r for r in t.records if r["jti"] == t.a.jti]

    # first and last use
    assert f"first use: {calls_of_a[0]['ts']} from {HOME_IP}" in out
    assert f"last use:  {calls_of_a[-1]['ts']} from {AWAY_IP}" in out
    assert "calls: 7 (5 allowed, 2 denied) from 2 client IPs" in out
    # every call is listed, with its request id's time and both IPs
    calls = section(out, "Calls (7)").splitlines()[2:]
    assert len(calls) == 7
    assert [line.split()[0] for line in calls] == [r["ts"] for r in calls_of_a]
    assert sum(HOME_IP in line for line in calls) == 2 and sum(AWAY_IP in line for line in calls) == 5
    # calls by route and status
    routes = section(out, "Calls by route and status")
    assert re.search(r"list-orders\s+3\s+3", routes)
    assert re.search(r"create-order\s+1\s+1", routes)
    # every client IP with first/last seen and counts
    ips = section(out, "Client IPs")
    home = calls_of_a[0]["ts"], calls_of_a[1]["ts"]
    assert re.search(rf"{re.escape(HOME_IP)}\s+{home[0]}\s+{home[1]}\s+2\s+2\s+0", ips)
    assert re.search(rf"{re.escape(AWAY_IP)}\s+{calls_of_a[2]['ts']}\s+{calls_of_a[-1]['ts']}\s+5\s+3\s+2", ips)
    assert OTHER_IP not in out  # bob's calls are not part of this story
    # user agents
    agents = section(out, "User agents")
    assert "python-requests/2.31" in agents and "orders-app/2.1" in agents
    # denials grouped by reason
    assert "insufficient_scope: 2" in section(out, "Denials by reason (2)")
    # the scope-escalation attempts: asked for, missing, held
    escalations = section(out, "Scope-escalation attempts (2)").splitlines()[2:]
    assert len(escalations) == 2
    for line, method in zip(escalations, ("POST", "DELETE"), strict=True):
        assert AWAY_IP in line and method in line
        assert re.search(r"orders:write\s+orders:write\s+orders:read", line)
    # the other token of the same family is named, the other subject's is not
    related = section(out, "Other tokens of the same family or subject")
    assert t.b.jti in related and t.c.jti not in related
    assert "family-alice-1" in out

    # the HTML report holds the same counts and needs nothing from outside
    html = html_path.read_text()
    assert html_number(html, "calls-total") == 7
    assert html_number(html, "calls-allowed") == 5
    assert html_number(html, "calls-denied") == 2
    assert html_number(html, "ip-count") == 2
    assert html_number(html, "escalation-count") == 2
    ip_calls = dict(re.findall(r'<tr data-ip="([^"]+)">.*?<td class="n calls">(\d+)</td>', html))
    assert ip_calls == {HOME_IP: "2", AWAY_IP: "5"}
    assert len(re.findall(r'<tr class="escalation">', html)) == 2
    assert html.count('<td class="missing">orders:write</td>') == 2
    assert len(re.findall(r"<tr class=\"(allow|deny|flag)\">", html)) == 7
    bars = re.findall(r'data-allow="(\d+)" data-deny="(\d+)"', html)
    assert sum(int(a) for a, _ in bars) == 5 and sum(int(d) for _, d in bars) == 2
    assert "<svg" in html and "<style>" in html
    for external in ("<script", "<link", "src=", "href=", "@import", "url("):
        assert external not in html
    assert_no_raw_token(out + err + html, t.a, t.b, t.c)


async def test_incident_by_token_subject_and_family(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw = await make_gateway(**TRUSTED)
    t = await drive(gw, issuer, http)
    path = str(gw.audit_path)
    code, out, err = run("incident", path, "--token", t.a.raw)
    assert code == 0 and "calls: 7 " in out
    assert "the token itself is not shown" in out
    assert_no_raw_token(out + err, t.a)
    code, out, _ = run("incident", path, "--fingerprint", t.a.fingerprint[:12])
    assert code == 0 and "calls: 7 " in out
    code, out, _ = run("incident", path, "--sub", "alice")
    assert code == 0 and "calls: 8 " in out
    tokens = section(out, "Tokens of this subject (2)")
    assert t.a.jti in tokens and t.b.jti in tokens
    code, out, _ = run("incident", path, "--family", "family-bob-1")
    assert code == 0 and "calls: 2 (1 allowed, 1 denied) from 1 client IP" in out
    assert "Scope-escalation attempts (1)" in out
    code, out, _ = run("incident", path, "--jti", "no-such-token")
    assert code == 1 and "No audit records" in out
    code, _, err = run("incident", path, "--jti", t.a.jti, "--sub", "alice")
    assert code == 2 and "exactly one" in err
    code, _, err = run("incident", path, "--jti", t.a.jti, "--revoke")
    assert code == 2 and "--config" in err


async def test_incident_reads_gzip_from_stdin(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """``kubectl logs -l app=gateway | gateway incident --jti J`` (a real pipe, gzip'd here)."""
    gw = await make_gateway(**TRUSTED)
    t = await drive(gw, issuer, http)
    data = b'{"type":"log","level":"info","msg":"gateway listening"}\n' + gw.audit_path.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "incident", "--jti", t.a.jti, "--html", str(tmp_path / "r.html")],
        input=gzip.compress(data), capture_output=True, timeout=30, check=False,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr
    assert "calls: 7 (5 allowed, 2 denied) from 2 client IPs" in out
    assert t.b.jti in section(out, "Other tokens of the same family or subject")  # the second pass read the spool
    assert html_number((tmp_path / "r.html").read_text(), "calls-total") == 7


async def test_revoke_cuts_off_the_family_in_a_running_gateway(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """The revocation the command makes, applied to a running gateway's own store."""
    gw = await make_gateway(**TRUSTED)
    t = await drive(gw, issuer, http)
    incident = collect([str(gw.audit_path)], Target.from_options(jti=t.a.jti))
    entries = plan_revocation(incident, gw.gateway.config, "laptop stolen")
    assert {(e.kind.value, e.value) for e in entries} == {("token", t.a.jti), ("family", "family-alice-1")}
    await apply_revocation(gw.gateway.revocation, entries)
    gw.gateway.audit.write(action_record(incident, entries, "laptop stolen", operator_name()))

    assert await call(http, gw, "GET", "/orders", t.a, HOME_IP) == 401
    assert await call(http, gw, "GET", "/orders", t.b, HOME_IP) == 401  # same family, never reported stolen
    fresh = issuer.mint(sub="alice", scope="orders:read", sid="family-alice-1")
    async with http.get(f"{gw.url}/orders", headers={"Authorization": f"Bearer {fresh}"}) as response:
        assert response.status == 401
    assert await call(http, gw, "GET", "/orders", t.c, OTHER_IP) == 200  # bob is not affected
    records = await gw.audit_records()
    assert [r["reason"] for r in records[-4:-1]] == ["revoked_token", "revoked_family", "revoked_family"]
    action = next(r for r in records if r.get("mode") == "incident")
    assert action["operator"] == operator_name() and action["reason"] == "laptop stolen"
    assert {(x["kind"], x["value"]) for x in action["revoked"]} == {("token", t.a.jti), ("family", "family-alice-1")}
    report = render_text(collect([str(gw.audit_path)], Target.from_options(jti=t.a.jti)))
    assert "Responder actions already recorded" in report and "laptop stolen" in report
    assert "revoked_family" in render_html(collect([str(gw.audit_path)], Target.from_options(family="family-alice-1")))


async def test_revoke_refuses_a_config_without_a_shared_list(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, tmp_path: Path,
    upstream: EchoUpstream,
) -> None:
    gw = await make_gateway(**TRUSTED)
    t = await drive(gw, issuer, http)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(base_config(issuer, upstream, tmp_path / "cli-audit.jsonl")))
    code, out, err = run("incident", str(gw.audit_path), "--jti", t.a.jti, "--revoke", "--config", str(config))
    assert code == 1 and "in memory" in err
    assert "revoked token" not in out
    assert not (tmp_path / "cli-audit.jsonl").exists()


async def test_revoke_command_through_redis(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, tmp_path: Path,
    upstream: EchoUpstream, redis_proc: Any,
) -> None:
    """``gateway incident --revoke --config`` in its own process; the gateway shares the list through Redis."""
    pytest.importorskip("gateway.revocation.redis_store", reason="the Redis revocation store is not there yet")
    revocation = {"redis_url": f"redis://{redis_proc.host}:{redis_proc.port}/0", "key_prefix": f"t{time.time_ns()}:"}
    gw = await make_gateway(**TRUSTED, revocation=revocation)
    t = await drive(gw, issuer, http)
    config_data = base_config(issuer, upstream, tmp_path / "responder-audit.jsonl")
    config_data["revocation"] = revocation
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(config_data))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "incident", str(gw.audit_path), "--jti", t.a.jti, "--revoke",
        "--config", str(config), "--reason", "token posted in a public repo",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    out = stdout.decode()
    assert proc.returncode == 0, stderr.decode()
    assert f"revoked token {t.a.jti}" in out and "revoked family family-alice-1" in out
    assert "token posted in a public repo" in out
    deadline = time.monotonic() + 5
    while await call(http, gw, "GET", "/orders", t.b, HOME_IP) != 401:
        assert time.monotonic() < deadline, "the running gateway never saw the revocation"
        await asyncio.sleep(0.05)
    assert await call(http, gw, "GET", "/orders", t.a, AWAY_IP) == 401
    assert await call(http, gw, "GET", "/orders", t.c, OTHER_IP) == 200
    actions = [r for r in _jsonl(tmp_path / "responder-audit.jsonl") if r.get("action") == "revoke"]
    assert len(actions) == 1 and actions[0]["reason"] == "token posted in a public repo"
    assert_no_raw_token(out + stderr.decode(), t.a, t.b)


async def test_revocation_entries_live_as_long_as_the_issuers_tokens(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """an entry's TTL is the issuer's max_token_lifetime (+ the schema's margin), not default_ttl."""
    gw = await make_gateway(**TRUSTED, issuers=[{"issuer": issuer.issuer, "audiences": [AUDIENCE], "leeway": "5s",
                                                 "max_token_lifetime": "1h"}])
    t = await drive(gw, issuer, http)
    now = time.time()
    config = gw.gateway.config
    assert config.revocation.default_ttl == 86400
    for target in (Target.from_options(jti=t.a.jti), Target.from_options(sub="alice")):
        entries = plan_revocation(collect([str(gw.audit_path)], target), config, "stolen", now=now)
        assert entries and {e.expires_at for e in entries} == {now + 3600 + EXPIRY_MARGIN}, target
        assert {e.issuer for e in entries} == {issuer.issuer}
        assert all(e.created_at == now for e in entries)


async def test_revoke_command_writes_without_loading_the_list(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession, tmp_path: Path,
    upstream: EchoUpstream, redis_proc: Any,
) -> None:
    """--revoke writes its entries like ``gateway revoke``: no SCAN of the list, no feed to follow."""
    from redis.asyncio import Redis

    revocation = {"redis_url": f"redis://{redis_proc.host}:{redis_proc.port}/0", "key_prefix": f"t{time.time_ns()}:"}
    gw = await make_gateway(**TRUSTED, revocation=revocation)
    t = await drive(gw, issuer, http)
    config_data = base_config(issuer, upstream, tmp_path / "responder-audit.jsonl")
    config_data["revocation"] = revocation
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(config_data))
    redis = Redis(host=redis_proc.host, port=redis_proc.port)

    async def scans() -> int:
        return int((await redis.info("commandstats")).get("cmdstat_scan", {}).get("calls", 0))

    try:
        before = await scans()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "incident", str(gw.audit_path), "--jti", t.a.jti, "--revoke",
            "--config", str(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()
        assert await scans() == before
        family_key = f"{revocation['key_prefix']}v2:family:{issuer.issuer}|family-alice-1"
        assert 0 < await redis.ttl(family_key) <= 86400 + EXPIRY_MARGIN
    finally:
        await redis.aclose()
    assert "revoked family family-alice-1" in stdout.decode()
    deadline = time.monotonic() + 5
    while await call(http, gw, "GET", "/orders", t.b, HOME_IP) != 401:
        assert time.monotonic() < deadline, "the running gateway never saw the revocation"
        await asyncio.sleep(0.05)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _record(ts: str, iss: str, jti: str, sid: str) -> str:
    import json

    return json.dumps({"type": "audit", "ts": ts, "request_id": f"r-{jti}", "decision": "allow", "status": 200,
                       "reason": "allowed", "route": "r", "client_ip": HOME_IP, "sub": "alice", "iss": iss,
                       "jti": jti, "sid": sid, "token_fingerprint": "ab" * 16})


def test_revoke_plans_issuer_scoped_entries_and_refuses_to_guess_an_issuer(tmp_path: Path) -> None:
    """a family seen at two issuers is revoked at each of them, never for every issuer; a token
    the audit trail does not show needs an issuer when several are configured."""
    from gateway.config import parse_config
    from gateway.revocation import Match

    a, b = "https://a.example", "https://b.example"
    trail = tmp_path / "audit.jsonl"
    trail.write_text("\n".join([_record("2026-01-01T10:00:00Z", a, "ja", "shared-sid"),
                                _record("2026-01-01T10:01:00Z", b, "jb", "shared-sid")]) + "\n")
    config = parse_config(yaml.safe_dump({
        "upstreams": {"o": {"url": "http://127.0.0.1:9"}},
        "issuers": [{"issuer": a, "audiences": ["api"]}, {"issuer": b, "audiences": ["api"]}],
        "routes": [{"name": "r", "path": "/x", "upstream": "o"}],
    }))
    entries = plan_revocation(collect([str(trail)], Target.from_options(family="shared-sid")), config, "test")
    assert {(e.kind.value, e.value, e.issuer) for e in entries} == {("family", "shared-sid", a),
                                                                   ("family", "shared-sid", b)}
    [token, family] = plan_revocation(collect([str(trail)], Target.from_options(jti="ja")), config, "test")
    assert (token.value, token.match, token.issuer) == ("ja", Match.JTI, a)
    assert (family.value, family.issuer) == ("shared-sid", a)
    with pytest.raises(RevokeError, match="--issuer"):
        plan_revocation(collect([str(trail)], Target.from_options(jti="never-seen")), config, "test")
