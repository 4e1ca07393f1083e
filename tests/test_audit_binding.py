"""The audit trail says how each token was bound, and the tools use it.

Records are built from real Decisions (real DPoP keys, real client certificates) by the same
``audit_record`` the gateway calls, written as JSON lines and read back by ``gateway audit`` and
``gateway incident``: the binding (none / dpop / mtls), the key thumbprint and the failed rule are
written, escaped and bounded like every other field, searchable, and shown in the reports with
the proof failures a stolen sender-constrained token leaves behind.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit.fields import PROOF_FAILURES
from gateway.audit.record import LIMITS, Exchange, audit_record
from gateway.cli import main
from gateway.config import parse_config
from gateway.decision import Decision
from gateway.demo import DemoIssuer
from gateway.forensics.incident import Target, collect, render_text
from gateway.forensics.query import visible
from gateway.forensics.reports.html import render_html
from gateway.forensics.revoke import RevokeError, plan_revocation
from gateway.reasons import Reason
from gateway.revocation.entries import Kind
from gateway.tokens.certificates import thumbprint
from gateway.tokens.dpop import ProofRequest, confirmation, key_thumbprint, sign_proof
from gateway.tokens.token import ValidatedToken, fingerprint
from tests.certs import issue, make_ca
from tests.helpers import GatewayFactory
from tests.test_audit_output import ATTRIBUTES, CLASSES, ELEMENTS, FREE_ATTRIBUTES, HOSTILE, inventory

ISSUER = "https://as.example"
HOLDER_IP, THIEF_IP = "198.51.100.7", "203.0.113.9"
HOLDER_KEY = key_thumbprint(ec.generate_private_key(ec.SECP256R1()))
THIEF_KEY = key_thumbprint(ec.generate_private_key(ec.SECP256R1()))


def token(raw: str, sid: str = "family-1", cnf: dict[str, str] | None = None, jti: str | None = None) -> ValidatedToken:
    claims: dict[str, Any] = {"sid": sid}
    if cnf is not None:
        claims["cnf"] = cnf
    return ValidatedToken(ISSUER, "alice", "web", frozenset({"orders:read"}), time.time() + 300, fingerprint(raw),
                          jti=jti or f"jti-{raw}", claims=claims)


def exchange(ip: str = HOLDER_IP, status: int = 200, started: float | None = None) -> Exchange:
    return Exchange(started=time.time() if started is None else started, started_mono=time.monotonic(),
                    request_id=f"r{time.monotonic_ns()}", client_ip=ip, method="GET", host="api.example",
                    raw_path="/orders", user_agent="orders-app/2.1", status=status)


def record_of(decision: Decision, ip: str = HOLDER_IP, started: float | None = None) -> dict[str, Any]:
    record = audit_record(exchange(ip, decision.reason.status, started), decision, 1.0)
    orjson.dumps(record)  # what the writer does: every record must serialise
    return record


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


# --- the record ------------------------------------------------------------------------------


def test_the_record_says_how_the_token_was_bound() -> None:
    client = issue(make_ca(), "client-1")
    x5t = thumbprint(client.der)
    dpop_token = token("dpop-bound", cnf={"jkt": HOLDER_KEY})
    mtls_token = token("mtls-bound", cnf={"x5t#S256": x5t})
    plain = token("plain")

    dpop = record_of(Decision(Reason.ALLOWED, token=dpop_token, token_fingerprint=dpop_token.fingerprint,
                              binding="dpop", key_thumbprint=HOLDER_KEY))
    assert (dpop["binding"], dpop["key_thumbprint"]) == ("dpop", HOLDER_KEY)
    mtls = record_of(Decision(Reason.ALLOWED, token=mtls_token, token_fingerprint=mtls_token.fingerprint,
                              binding="mtls", key_thumbprint=x5t))
    assert (mtls["binding"], mtls["key_thumbprint"]) == ("mtls", x5t)
    bearer = record_of(Decision(Reason.ALLOWED, token=plain, token_fingerprint=plain.fingerprint))
    assert (bearer["binding"], bearer["key_thumbprint"]) == ("none", None)
    # a thief's proof signed with another key: nothing proven, and the key presented is kept for the responder
    stolen = record_of(Decision(Reason.DPOP_KEY_MISMATCH, token=dpop_token, token_fingerprint=dpop_token.fingerprint,
                                key_thumbprint=THIEF_KEY), THIEF_IP)
    assert (stolen["binding"], stolen["key_thumbprint"], stolen["reason"]) == ("none", THIEF_KEY, "dpop_key_mismatch")
    for record in (dpop, mtls, bearer, stolen):
        assert "rule" not in record and "escaped" not in record and "truncated" not in record


def test_requests_without_a_token_have_no_binding() -> None:
    none = record_of(Decision(Reason.MISSING_TOKEN))
    assert none["binding"] is None and none["key_thumbprint"] is None and none["token_fingerprint"] is None
    # a token that failed validation was still presented: unbound as far as this request proved
    invalid = record_of(Decision(Reason.BAD_SIGNATURE, token_fingerprint=fingerprint("forged")))
    assert invalid["binding"] == "none" and invalid["key_thumbprint"] is None


def test_the_failed_rule_is_recorded_by_name_with_the_refusals_detail() -> None:
    t = token("tenant-a")
    refused = record_of(Decision(Reason.RULE_FAILED, token=t, token_fingerprint=t.fingerprint,
                                 failed_rule="same-tenant", detail="false"))
    assert (refused["reason"], refused["rule"], refused["detail"]) == ("rule_failed", "same-tenant", "false")
    allowed = record_of(Decision(Reason.ALLOWED, token=t, token_fingerprint=t.fingerprint))
    assert "rule" not in allowed and "detail" not in allowed


def test_hostile_binding_fields_stay_escaped_and_bounded() -> None:
    """Lone surrogates (bytes that were not UTF-8) are written out, and overlong values cut, in the new
    fields as in every other: the writer never meets a value it cannot serialise."""
    t = token("hostile")
    decision = Decision(
        Reason.RULE_FAILED, token=t, token_fingerprint=t.fingerprint, binding="dpop\udcff" + "x" * 40,
        key_thumbprint="\udcfe" + "K" * 5000, failed_rule="rule-\ud800" + "r" * 1000, detail="\udc80" * 600,
    )
    record = record_of(decision)
    assert record["key_thumbprint"].startswith("\\xfe") and len(record["key_thumbprint"]) == LIMITS["key_thumbprint"]
    assert record["rule"].startswith("rule-\\ud800") and len(record["rule"]) == LIMITS["rule"]
    assert record["binding"].startswith("dpop\\xff") and len(record["binding"]) == LIMITS["binding"]
    assert len(record["detail"]) == LIMITS["detail"]
    assert {"binding", "key_thumbprint", "rule", "detail"} <= set(record["escaped"])
    assert {"binding", "key_thumbprint", "rule", "detail"} <= set(record["truncated"])
    assert not re.search("[\ud800-\udfff]", json.dumps(record, ensure_ascii=False))


def test_proof_failures_are_the_refusals_of_an_unproven_key() -> None:
    assert {Reason.UNPROVEN_BINDING, Reason.INVALID_DPOP_PROOF, Reason.DPOP_REPLAYED, Reason.DPOP_KEY_MISMATCH,
            Reason.CLIENT_CERTIFICATE_MISMATCH, Reason.CLIENT_CERTIFICATE_INVALID} == PROOF_FAILURES
    # the nonce round trip every DPoP client makes, and an unbound token, are not signs of theft
    assert Reason.USE_DPOP_NONCE not in PROOF_FAILURES and Reason.SENDER_CONSTRAINT_REQUIRED not in PROOF_FAILURES


# --- gateway audit --binding / --key-thumbprint ----------------------------------------------


def stolen_token_trail(path: Path) -> tuple[Path, ValidatedToken, ValidatedToken]:
    """A DPoP-bound token used by its holder, then replayed by a thief without the key (five proof
    failures of three kinds, two of them with the thief's own key); a plain bearer token; a
    certificate-bound token; and an older record written before bindings were recorded."""
    x5t = thumbprint(issue(make_ca(), "client-2").der)
    bound = token("stolen", cnf={"jkt": HOLDER_KEY}, sid="family-stolen")
    plain = token("plain", sid="family-plain")
    mtls = token("mtls", cnf={"x5t#S256": x5t}, sid="family-mtls")
    start = time.time() - 600
    fp = bound.fingerprint

    def at(seconds: float, decision: Decision, ip: str = HOLDER_IP) -> dict[str, Any]:
        return record_of(decision, ip, start + seconds)

    records = [
        *(at(i, Decision(Reason.ALLOWED, token=bound, token_fingerprint=fp, binding="dpop", key_thumbprint=HOLDER_KEY))
          for i in range(3)),
        at(60, Decision(Reason.UNPROVEN_BINDING, token=bound, token_fingerprint=fp), THIEF_IP),
        at(61, Decision(Reason.UNPROVEN_BINDING, token=bound, token_fingerprint=fp), THIEF_IP),
        at(62, Decision(Reason.DPOP_KEY_MISMATCH, token=bound, token_fingerprint=fp, key_thumbprint=THIEF_KEY),
           THIEF_IP),
        at(63, Decision(Reason.DPOP_KEY_MISMATCH, token=bound, token_fingerprint=fp, key_thumbprint=THIEF_KEY),
           THIEF_IP),
        at(64, Decision(Reason.INVALID_DPOP_PROOF, token=bound, token_fingerprint=fp,
                        detail="the DPoP proof is for another URL"), THIEF_IP),
        at(65, Decision(Reason.USE_DPOP_NONCE, token=bound, token_fingerprint=fp), THIEF_IP),
        at(5, Decision(Reason.ALLOWED, token=plain, token_fingerprint=plain.fingerprint)),
        at(6, Decision(Reason.ALLOWED, token=mtls, token_fingerprint=mtls.fingerprint, binding="mtls",
                       key_thumbprint=x5t)),
    ]
    old = {k: v for k, v in records[-2].items() if k not in ("binding", "key_thumbprint")}
    old["jti"] = "jti-from-last-year"
    return write(path, [*records, old]), bound, mtls


def audit(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    result = CliRunner().invoke(main, ["audit", *args, "--format", "json"])
    return result.exit_code, [json.loads(line) for line in result.stdout.splitlines() if line], result.output


def test_audit_filters_by_binding_and_key_thumbprint(tmp_path: Path) -> None:
    trail, bound, mtls = stolen_token_trail(tmp_path / "audit.jsonl")
    code, dpop, _ = audit(str(trail), "--binding", "dpop")
    assert code == 0 and len(dpop) == 3 and {r["key_thumbprint"] for r in dpop} == {HOLDER_KEY}
    code, unproven, _ = audit(str(trail), "--binding", "none", "--jti", bound.jti or "")
    assert len(unproven) == 6 and all(r["decision"] == "deny" for r in unproven)
    code, certificate, _ = audit(str(trail), "--binding", "mtls")
    assert [r["jti"] for r in certificate] == [mtls.jti]
    # the thief's key: the calls that presented it, whatever they proved
    code, thief, _ = audit(str(trail), "--key-thumbprint", THIEF_KEY)
    assert len(thief) == 2 and {r["reason"] for r in thief} == {"dpop_key_mismatch"}
    assert {r["client_ip"] for r in thief} == {THIEF_IP}
    code, both, _ = audit(str(trail), "--key-thumbprint", f" {HOLDER_KEY} ", "--binding", "none")
    assert code == 0 and both == []
    # a record written before bindings were recorded matches no --binding filter
    code, everything, _ = audit(str(trail), "--binding", "none")
    assert all(r["jti"] != "jti-from-last-year" for r in everything)


@pytest.mark.parametrize("args", [["--binding", "bearer"], ["--key-thumbprint", "not a thumbprint"],
                                  ["--key-thumbprint", "\x1b[2J"], ["--key-thumbprint", "K" * 200]])
def test_audit_refuses_malformed_binding_filters(tmp_path: Path, args: list[str]) -> None:
    trail, _, _ = stolen_token_trail(tmp_path / "audit.jsonl")
    result = CliRunner().invoke(main, ["audit", str(trail), *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "binding" in result.output or "thumbprint" in result.output


def test_audit_table_shows_binding_and_key(tmp_path: Path) -> None:
    trail, _, _ = stolen_token_trail(tmp_path / "audit.jsonl")
    result = CliRunner().invoke(main, ["audit", str(trail), "--binding", "dpop"])
    lines = result.stdout.splitlines()
    assert "BINDING" in lines[0] and "KEY" in lines[0]
    assert all(" dpop " in line and HOLDER_KEY[:11] in line for line in lines[1:]) and len(lines) == 4


# --- gateway incident ------------------------------------------------------------------------


def section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n\n", start)
    return text[start:] if end == -1 else text[start:end]


def test_incident_shows_how_the_token_was_bound_and_its_proof_failures(tmp_path: Path) -> None:
    trail, bound, _ = stolen_token_trail(tmp_path / "audit.jsonl")
    result = CliRunner().invoke(main, ["incident", str(trail), "--jti", bound.jti or "",
                                       "--html", str(tmp_path / "report.html")])
    text = result.stdout
    assert result.exit_code == 0, result.output
    assert "bindings: none x6, dpop x3   keys presented: 2" in text
    assert ("proof failures: 5 (unproven_binding x2, dpop_key_mismatch x2, invalid_dpop_proof x1): calls that"
            " did not prove the key the token is bound to") in text
    keys = section(text, "Keys presented (2)")
    holder = next(line for line in keys.splitlines() if HOLDER_KEY in line)
    thief = next(line for line in keys.splitlines() if THIEF_KEY in line)
    assert holder.split()[1:2] == ["dpop"] and holder.split()[-3:] == ["3", "3", "0"]
    assert thief.split()[1:2] == ["none"] and thief.split()[-3:] == ["2", "0", "2"]
    calls = section(text, "Calls (9)")
    assert "invalid_dpop_proof: the DPoP proof is for another URL" in calls
    assert len([line for line in calls.splitlines() if line.rstrip().endswith(" dpop")]) == 3

    html = (tmp_path / "report.html").read_text()
    assert re.search(r'id="proof-failure-count">5<', html)
    assert re.search(r'<dd id="proof-failures" class="warn">', html)
    assert re.search(r'<dd id="bindings">none \u00d76, dpop \u00d73</dd>', html)
    assert re.search(r'<dd id="key-count">2</dd>', html)
    keys_table = html[html.index('<table id="keys">'):]
    keys_table = keys_table[:keys_table.index("</table>")]
    assert re.search(rf'<td class="mono">{THIEF_KEY}</td><td>none</td>.*?<td class="n warn">2</td>', keys_table)
    assert re.search(rf'<td class="mono">{HOLDER_KEY}</td><td>dpop</td>.*?<td class="n">0</td>', keys_table)


def test_incident_without_bound_tokens_says_so(tmp_path: Path) -> None:
    trail, _, _ = stolen_token_trail(tmp_path / "audit.jsonl")
    incident = collect([str(trail)], Target("family", "family-plain"))
    text = render_text(incident)
    assert "proof failures" not in text and "bindings: none x1   keys presented: 0" in text
    assert "Keys presented (0)" in text and section(text, "Keys presented (0)").endswith("  none")
    assert re.search(r'id="proof-failure-count">0<', render_html(incident, generated=0))


def test_incident_by_key_thumbprint_tells_every_token_used_with_it_and_revokes_them(tmp_path: Path) -> None:
    """A thief's key (or a leaked holder key) is a lead of its own: every token it was used with."""
    trail, bound, _ = stolen_token_trail(tmp_path / "audit.jsonl")
    other = token("second-stolen", cnf={"jkt": HOLDER_KEY}, sid="family-other", jti="jti-second")
    extra = record_of(Decision(Reason.DPOP_KEY_MISMATCH, token=other, token_fingerprint=other.fingerprint,
                               key_thumbprint=THIEF_KEY), THIEF_IP)
    with trail.open("ab") as out:
        out.write(orjson.dumps(extra) + b"\n")
    result = CliRunner().invoke(main, ["incident", str(trail), "--key-thumbprint", THIEF_KEY])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith(f"Incident report for key thumbprint {THIEF_KEY}")
    tokens = section(text, "Tokens used with this key (2)")
    assert bound.jti is not None and bound.jti in tokens and "jti-second" in tokens
    assert "proof failures: 3 (dpop_key_mismatch x3)" in text

    config = parse_config(yaml.safe_dump({
        "upstreams": {"o": {"url": "http://127.0.0.1:9"}},
        "issuers": [{"issuer": ISSUER, "audiences": ["api"]}],
        "routes": [{"name": "r", "path": "/x", "upstream": "o"}],
    }))
    incident = collect([str(trail)], Target.from_options(key_thumbprint=THIEF_KEY))
    entries = plan_revocation(incident, config, "INC-7 DPoP key of a thief")
    assert {(e.kind, e.value, e.issuer) for e in entries} == {
        (Kind.TOKEN, bound.jti, ISSUER), (Kind.TOKEN, "jti-second", ISSUER),
        (Kind.FAMILY, "family-stolen", ISSUER), (Kind.FAMILY, "family-other", ISSUER),
    }
    unknown = collect([str(trail)], Target.from_options(key_thumbprint="unseen-key"))
    with pytest.raises(RevokeError, match="no audit record shows a token used with this key"):
        plan_revocation(unknown, config, "x")


def test_incident_refuses_a_malformed_key_thumbprint(tmp_path: Path) -> None:
    trail, _, _ = stolen_token_trail(tmp_path / "audit.jsonl")
    result = CliRunner().invoke(main, ["incident", str(trail), "--key-thumbprint", "<script>"])
    assert result.exit_code == 2 and "thumbprint" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["incident", str(trail), "--key-thumbprint", HOLDER_KEY, "--jti", "j"])
    assert result.exit_code == 2 and "--key-thumbprint" in result.output


def hostile_binding_trail(path: Path) -> Path:
    """Records whose binding, key, rule and detail (and their types) were chosen by an attacker."""
    t = token("hostile-bound", cnf={"jkt": HOLDER_KEY})
    base = record_of(Decision(Reason.DPOP_KEY_MISMATCH, token=t, token_fingerprint=t.fingerprint,
                              key_thumbprint=THIEF_KEY), THIEF_IP)
    records = [{**base, "binding": HOSTILE}, {**base, "key_thumbprint": HOSTILE}, {**base, "rule": HOSTILE},
               {**base, "detail": HOSTILE}, {**base, "binding": ["dpop", HOSTILE], "key_thumbprint": {"k": HOSTILE}},
               {**base, "binding": 7, "key_thumbprint": 3.5, "rule": None}]
    return write(path, records)


def test_hostile_binding_values_are_escaped_in_the_html_report(tmp_path: Path) -> None:
    trail = hostile_binding_trail(tmp_path / "audit.jsonl")
    t = token("hostile-bound", cnf={"jkt": HOLDER_KEY})
    incident = collect([str(trail)], Target("jti", t.jti or ""))
    html = render_html(incident, generated=0)
    parsed = inventory(html)
    assert set(parsed.elements) <= ELEMENTS, set(parsed.elements) - ELEMENTS
    for tag, name, value in parsed.attributes:
        assert name in ATTRIBUTES, (tag, name)
        if name == "class":
            assert set(value.split()) <= CLASSES, value
        elif name not in FREE_ATTRIBUTES and name != "content":
            assert "<" not in value and "PWNED" not in value, (tag, name, value)
    text = "".join(parsed.text)
    assert visible(HOSTILE) in text and "{{7*7}}" in text
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2028\u2029]", html)
    assert re.search(r'id="proof-failure-count">6<', html)


def test_hostile_binding_values_are_shown_escaped_on_the_terminal(tmp_path: Path) -> None:
    trail = hostile_binding_trail(tmp_path / "audit.jsonl")
    t = token("hostile-bound", cnf={"jkt": HOLDER_KEY})
    for args in (["incident", str(trail), "--jti", t.jti or ""], ["audit", str(trail)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.stdout and "\u202e" not in result.stdout.replace("\\u202e", ""), args
    # CSV keeps values exact (docs/incident-response.md) but never lets one start a formula or a row
    csv_out = CliRunner().invoke(main, ["audit", str(trail), "--format", "csv"]).stdout
    rows = list(csv.reader(io.StringIO(csv_out, newline="")))
    header = rows[0]
    assert {"binding", "key_thumbprint", "rule"} <= set(header) and len(rows) == 7
    assert all(len(row) == len(rows[0]) for row in rows)


# --- end to end: DPoP requests through a real gateway -----------------------------------------


async def test_a_dpop_request_through_the_gateway_records_its_binding_and_key(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    """The holder's DPoP requests are written with binding dpop and its jkt; the thief's replays of the
    same token (no proof, a proof of its own key) with binding none, the thief's key, and the reason;
    the incident report counts them as proof failures."""
    gw = await make_gateway(trusted_proxies=["127.0.0.1/32"])
    holder, thief = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    raw = issuer.mint(cnf=confirmation(holder), sid="family-e2e")
    url = f"{gw.url}/orders"

    async def get(headers: dict[str, str], ip: str) -> int:
        async with http.get(url, headers={**headers, "X-Forwarded-For": ip}) as response:
            await response.read()
            return response.status

    def dpop(key: Any) -> dict[str, str]:
        return {"Authorization": f"DPoP {raw}", "DPoP": sign_proof(key, ProofRequest("GET", url, raw))}

    assert await get(dpop(holder), HOLDER_IP) == 200
    assert await get({"Authorization": f"Bearer {raw}"}, THIEF_IP) == 401  # stolen, sent without its key
    assert await get(dpop(thief), THIEF_IP) == 401  # a proof signed with the thief's own key
    records = await gw.audit_records()
    assert [(r["binding"], r["key_thumbprint"], r["reason"]) for r in records] == [
        ("dpop", key_thumbprint(holder), "allowed"),
        ("none", None, "unproven_binding"),
        ("none", key_thumbprint(thief), "dpop_key_mismatch"),
    ]
    assert all(r["jti"] == records[0]["jti"] and "rule" not in r for r in records)
    assert raw not in gw.audit_path.read_text()

    result = CliRunner().invoke(main, ["incident", str(gw.audit_path), "--key-thumbprint", key_thumbprint(thief)])
    assert result.exit_code == 0, result.output
    assert "proof failures: 1 (dpop_key_mismatch x1)" in result.stdout
    result = CliRunner().invoke(main, ["incident", str(gw.audit_path), "--jti", records[0]["jti"]])
    assert "bindings: none x2, dpop x1   keys presented: 2" in result.stdout
    assert "proof failures: 2 (unproven_binding x1, dpop_key_mismatch x1)" in result.stdout
