"""The audit trail's side of tracing: ``--trace-id`` in ``gateway audit`` and ``gateway incident``,
and the HTML report's links to the trace viewer, whose ids come from a hostile trail."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.demo import DemoIssuer
from gateway.tracing import trace_link
from tests.helpers import MINIMAL_CONFIG, GatewayFactory, bearer
from tests.otlp_receiver import HttpReceiver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TEMPLATE = "https://tempo.example/explore?orgId=1&trace={trace_id}&span={span_id}"


def record(ts: str, trace_id: Any, span_id: Any = SPAN, sub: str = "alice", **extra: Any) -> dict[str, Any]:
    return {"type": "audit", "ts": ts, "request_id": f"r-{ts}", "mode": "proxy", "client_ip": "203.0.113.7",
            "method": "GET", "host": "api.example", "path": "/orders", "route": "list-orders", "status": 200,
            "decision": "allow", "reason": "allowed", "sub": sub, "client_id": "app", "iss": "https://as.example",
            "jti": f"jti-{ts}", "token_fingerprint": "ab" * 16, "trace_id": trace_id, "span_id": span_id, **extra}


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# --- trace_link ----------------------------------------------------------------------------------


@pytest.mark.parametrize("trace_id", [
    '"><script>alert(1)</script>', "javascript:alert(1)", TRACE.upper(), TRACE + "0", TRACE[:-1], "0" * 32,
    TRACE + "\n", None, 12345, ["x"], {"a": 1},
])
def test_only_a_well_formed_trace_id_becomes_a_link(trace_id: Any) -> None:
    assert trace_link(TEMPLATE, trace_id, SPAN) is None


def test_a_link_is_the_template_filled_with_the_ids() -> None:
    assert trace_link(TEMPLATE, TRACE, SPAN) == f"https://tempo.example/explore?orgId=1&trace={TRACE}&span={SPAN}"
    assert trace_link("https://jaeger.example/trace/{trace_id}", TRACE, "not-a-span") == \
        f"https://jaeger.example/trace/{TRACE}"
    assert trace_link(TEMPLATE, TRACE, "<b>") is None  # the template needs the span id, and this is none
    assert trace_link(None, TRACE, SPAN) is None


# --- gateway audit --trace-id --------------------------------------------------------------------


def test_audit_filters_by_trace_id(tmp_path: Path) -> None:
    trail = write(tmp_path / "audit.jsonl", [
        record("2026-01-01T00:00:00.000Z", TRACE), record("2026-01-01T00:00:01.000Z", "1" * 32),
        record("2026-01-01T00:00:02.000Z", None),
    ])
    result = run("audit", str(trail), "--trace-id", TRACE.upper(), "--format", "json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["ts"] for r in lines] == ["2026-01-01T00:00:00.000Z"]
    csv = run("audit", str(trail), "--trace-id", TRACE, "--format", "csv").stdout.splitlines()
    header = csv[0].split(",")
    assert header[-3:] == ["trace_id", "span_id", "family"]  # new columns go last: older sheets keep theirs
    assert csv[1].split(",")[-3:-1] == [TRACE, SPAN]


@pytest.mark.parametrize("bad", ["xyz", TRACE[:-1], TRACE + "00", '"; drop'])
def test_audit_refuses_a_trace_id_that_is_not_one(tmp_path: Path, bad: str) -> None:
    trail = write(tmp_path / "audit.jsonl", [record("2026-01-01T00:00:00.000Z", TRACE)])
    result = run("audit", str(trail), "--trace-id", bad)
    assert result.exit_code == 2
    assert "a trace id is 32 hex digits" in result.output


# --- gateway incident --trace-id and the report's links ------------------------------------------


def test_incident_of_a_trace_lists_its_tokens_and_links_each_call(tmp_path: Path) -> None:
    trail = write(tmp_path / "audit.jsonl", [
        record("2026-01-01T00:00:00.000Z", TRACE),
        record("2026-01-01T00:00:01.000Z", TRACE, span_id="1111111111111111", jti="other", sub="bob"),
        record("2026-01-01T00:00:02.000Z", "2" * 32),
    ])
    report = tmp_path / "report.html"
    result = run("incident", str(trail), "--trace-id", TRACE, "--html", str(report), "--trace-url-template", TEMPLATE)
    assert result.exit_code == 0, result.output
    assert f"Incident report for trace {TRACE}" in result.stdout
    assert "Tokens seen in this trace (2)" in result.stdout
    page = report.read_text()
    links = re.findall(r'<a href="([^"]*)" rel="noopener noreferrer">', page)
    assert [html.unescape(link) for link in links] == [
        f"https://tempo.example/explore?orgId=1&trace={TRACE}&span={SPAN}",
        f"https://tempo.example/explore?orgId=1&trace={TRACE}&span=1111111111111111",
    ]
    assert "&amp;trace=" in page  # attribute-escaped as well


def test_hostile_trace_ids_in_the_trail_become_text_never_links(tmp_path: Path) -> None:
    hostile = ['"><script>alert(1)</script>', "javascript:alert(1)", TRACE.upper(), " " + TRACE,
               '" onmouseover="alert(1)']
    trail = write(tmp_path / "audit.jsonl", [
        record(f"2026-01-01T00:00:0{i}.000Z", value) for i, value in enumerate([*hostile, TRACE])
    ])
    report = tmp_path / "report.html"
    result = run("incident", str(trail), "--sub", "alice", "--html", str(report),
                 "--trace-url-template", "https://jaeger.example/trace/{trace_id}")
    assert result.exit_code == 0, result.output
    page = report.read_text()
    assert re.findall(r'<a href="([^"]*)"', page) == [f"https://jaeger.example/trace/{TRACE}"]
    assert "<script>" not in page and "onmouseover=\"" not in page
    assert "&lt;script&gt;" in page  # shown, escaped


def test_the_template_comes_from_the_gateway_configuration(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(MINIMAL_CONFIG + "tracing:\n  trace_url_template: https://grafana.example/t/{trace_id}\n")
    trail = write(tmp_path / "audit.jsonl", [record("2026-01-01T00:00:00.000Z", TRACE)])
    report = tmp_path / "report.html"
    result = run("incident", str(trail), "--jti", "jti-2026-01-01T00:00:00.000Z", "--html", str(report),
                 "--config", str(config))
    assert result.exit_code == 0, result.output
    assert f'<a href="https://grafana.example/t/{TRACE}"' in report.read_text()
    assert run("incident", str(trail), "--jti", "x", "--reason", "why").exit_code == 2  # --reason needs --revoke


def test_a_bad_template_on_the_command_line_is_refused(tmp_path: Path) -> None:
    trail = write(tmp_path / "audit.jsonl", [record("2026-01-01T00:00:00.000Z", TRACE)])
    result = run("incident", str(trail), "--trace-id", TRACE, "--trace-url-template", "javascript:x({trace_id})")
    assert result.exit_code == 2
    assert "not an absolute http(s) URL" in result.output


def test_without_trace_ids_the_report_has_no_trace_column(tmp_path: Path) -> None:
    plain = record("2026-01-01T00:00:00.000Z", None)
    del plain["trace_id"], plain["span_id"]
    trail = write(tmp_path / "audit.jsonl", [plain])
    report = tmp_path / "report.html"
    assert run("incident", str(trail), "--sub", "alice", "--html", str(report),
               "--trace-url-template", TEMPLATE).exit_code == 0
    assert "<th>trace</th>" not in report.read_text()


# --- a real trail --------------------------------------------------------------------------------


async def test_a_traced_gateways_trail_finds_a_request_by_its_trace(
    tmp_path: Path, make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = HttpReceiver()
    await receiver.start()
    try:
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        gw = await make_gateway(tracing={"enabled": True, "endpoint": receiver.url},
                                trusted_proxies=["127.0.0.1/32"])
        for _ in range(3):
            async with http.get(gw.url + "/orders", headers=bearer(issuer.mint())) as resp:
                assert resp.status == 200
        async with http.get(gw.url + "/orders", headers={**bearer(issuer.mint(sub="mallory")),
                                                        "traceparent": f"00-{TRACE}-{SPAN}-01"}) as resp:
            assert resp.status == 200
        await gw.stop()
    finally:
        await receiver.stop()
    result = run("audit", str(gw.audit_path), "--trace-id", TRACE, "--format", "json")
    found = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["sub"], r["trace_id"]) for r in found] == [("mallory", TRACE)]
    incident = run("incident", str(gw.audit_path), "--trace-id", TRACE)
    assert "subjects: mallory" in incident.stdout
