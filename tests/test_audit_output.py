"""What responders open shows audit values and never obeys them.

Every value of an audit record can be chosen by an attacker (a path, a user agent, a
crafted record in a log). The HTML report escapes them in every context (Jinja2,
autoescape), the CSV export is RFC 4180 and neutralises formulas, the terminal output
shows control characters escaped. Each output is read back the way its consumer reads
it: an HTML parser and a real browser, a strict CSV parser, the bytes a terminal gets.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gateway.forensics.incident import Target, collect, render_text
from gateway.forensics.query import CSV_FIELDS, csv_safe, visible
from gateway.forensics.reports.html import render_html

ROOT = Path(__file__).resolve().parent.parent
# markup for every HTML context, a template expression, a terminal escape sequence, a
# formula, line breaks, a bidi override and a line separator, in one value
HOSTILE = (
    "\"'><script>document.title='PWNED'</script><img src=x onerror=\"document.body.dataset.pwned=1\">"
    "</style></title></textarea><svg onload=alert(1)>{{7*7}}${7*7} javascript:alert(1)"
    "\x1b[2J\x1b]0;owned\x07\x9b31m\r\n=HYPERLINK(\"http://evil\")\u202etxt.exe\u2028\x00\x7f"
)
TEXT_FIELDS = ("ts", "request_id", "mode", "client_ip", "method", "host", "path", "route", "upstream", "decision",
               "reason", "sub", "client_id", "iss", "sid", "token_fingerprint", "user_agent")
LIST_FIELDS = ("scopes", "required_scopes", "missing_scopes", "suspicious")


def record(*layers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """An ordinary audit record, with ``fields`` and then each of ``layers`` laid over it."""
    base = {
        "type": "audit", "ts": "2026-03-01T09:00:00.000Z", "request_id": "r", "mode": "proxy",
        "client_ip": "203.0.113.7", "method": "GET", "host": "api.example", "path": "/orders", "route": "list-orders",
        "upstream": "orders", "status": 200, "decision": "allow", "reason": "allowed", "sub": "alice",
        "client_id": "web", "iss": "https://as.example", "jti": "jti-1", "sid": "family-1",
        "token_fingerprint": "0c26045c21b9e7d9e6b64018779de6ba", "scopes": ["orders:read"],
        "required_scopes": ["orders:read"], "missing_scopes": [], "user_agent": "curl/8", "duration_ms": 1.0,
        "upstream_ms": 0.5, "bytes_in": 0, "bytes_out": 10,
    }
    for layer in (fields, *layers):
        base.update(layer)
    return base


def hostile_trail(path: Path) -> Path:
    """One record per field holding the hostile value (and a denied and a flagged variant), records
    of wrong types, responder actions with hostile values, and tokens of the same family."""
    records = [record()]
    for name in TEXT_FIELDS:
        records.append(record({name: HOSTILE}))
        records.append(record({name: HOSTILE}, decision="deny", reason="insufficient_scope", status=403,
                              missing_scopes=[HOSTILE], required_scopes=[HOSTILE]))
    for name in LIST_FIELDS:
        records.append(record({name: [HOSTILE, "x"]}, decision="deny", reason="insufficient_scope"))
    records.append(record(status=HOSTILE, decision=HOSTILE, reason=HOSTILE))
    records.append(record(route=7, reason=None, decision=["x"], client_ip={"a": HOSTILE}, user_agent=3.5,
                          scopes=HOSTILE, suspicious=5, status="500", ts=12))
    records.append(record(jti="jti-other", token_fingerprint="aa", sub=HOSTILE, client_id=HOSTILE))
    records.append({"type": "audit", "mode": "incident", "action": HOSTILE, "decision": "revoke", "ts": HOSTILE,
                    "operator": HOSTILE, "reason": HOSTILE, "jti": "jti-1",
                    "revoked": [{"kind": HOSTILE, "value": HOSTILE}, HOSTILE, 5]})
    records.append({"type": "audit", "mode": "incident", "action": "revoke", "jti": "jti-1", "revoked": HOSTILE})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- HTML ------------------------------------------------------------------------------------

ELEMENTS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "dl", "dt", "dd", "span",
            "table", "thead", "tbody", "tr", "th", "td", "svg", "line", "text", "g", "rect", "footer", "code"}
ATTRIBUTES = {"lang", "charset", "name", "content", "http-equiv", "class", "id", "style", "width", "height",
              "viewbox", "role", "aria-label", "x", "y", "x1", "y1", "x2", "y2", "stroke", "fill", "text-anchor",
              "data-bucket-minutes", "data-minute", "data-allow", "data-deny", "data-route", "data-ip",
              "data-reason"}
CLASSES = {"target", "summary", "mono", "warn", "muted", "legend", "n", "calls", "t", "count", "missing",
           "escalation", "allow", "deny", "flag", "other"}
FREE_ATTRIBUTES = {"data-route", "data-ip", "data-reason", "aria-label"}  # may carry (escaped) record values


class Inventory(HTMLParser):
    """Every element, attribute and text run of a document, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []
        self.styles: list[str] = []
        self.text: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        self._in_style = tag == "style"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self._in_style = False

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.text).append(data)


def inventory(html: str) -> Inventory:
    parsed = Inventory()
    parsed.feed(html)
    parsed.close()
    return parsed


@pytest.mark.parametrize("target", [Target("jti", "jti-1"), Target("sub", "alice"), Target("family", "family-1"),
                                    Target("jti", HOSTILE), Target("family", HOSTILE)],
                         ids=["jti", "sub", "family", "hostile-jti", "hostile-family"])
def test_html_report_escapes_every_value_in_every_context(tmp_path: Path, target: Target) -> None:
    incident = collect([str(hostile_trail(tmp_path / "audit.jsonl"))], target)
    html = render_html(incident, generated=0)
    parsed = inventory(html)
    assert set(parsed.elements) <= ELEMENTS, set(parsed.elements) - ELEMENTS  # no script, img, iframe...
    assert parsed.elements.count("style") == 1 and parsed.elements.count("body") == 1
    for tag, name, value in parsed.attributes:
        assert name in ATTRIBUTES, (tag, name)  # no on* handler, no href, src or action anywhere
        if name == "class":
            assert set(value.split()) <= CLASSES, value  # fixed words, never a record's
        elif name not in FREE_ATTRIBUTES and name != "content":
            assert "<" not in value and "PWNED" not in value and "alert" not in value, (tag, name, value)
    # the style sheet is the template's own: nothing from the records got into it
    assert "PWNED" not in parsed.styles[0] and "</" not in parsed.styles[0]
    text = "".join(parsed.text)
    if target.value == HOSTILE or target.kind != "family":
        # the value is shown as text, whole, with its invisible characters written out
        assert visible(HOSTILE) in text
        assert "{{7*7}}" in text and "49" not in text.replace("2049", "")  # data, never a template
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2028\u2029]", html)
    csp = [v for _, n, v in parsed.attributes if n == "content" and "default-src" in v]
    assert csp == ["default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"]


def test_html_report_keeps_its_readable_values(tmp_path: Path) -> None:
    """Escaping changes nothing for ordinary values: ids and data attributes stay readable."""
    incident = collect([str(hostile_trail(tmp_path / "audit.jsonl"))], Target("jti", "jti-1"))
    html = render_html(incident, generated=0)
    assert re.search(r'<tr data-ip="203\.0\.113\.7"><td class="mono">203\.0\.113\.7</td>', html)
    attrs = {(n, v) for _, n, v in inventory(html).attributes}
    assert ("data-route", visible(HOSTILE)) in attrs and ("data-ip", visible(HOSTILE)) in attrs
    assert ("data-reason", visible(HOSTILE)) in attrs
    assert re.search(r'id="calls-total">\d+<', html)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed")
    return found


def test_a_browser_runs_nothing_from_the_report(tmp_path: Path) -> None:
    """The report opened in a real browser: the DOM after load shows no trace of a script having run."""
    browser = chromium()
    incident = collect([str(hostile_trail(tmp_path / "audit.jsonl"))], Target("jti", "jti-1"))
    report = tmp_path / "report.html"
    report.write_text(render_html(incident, generated=0), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
             "--dump-dom", report.as_uri()],
            capture_output=True, text=True, timeout=120,
        ).stdout
    assert "<table" in dom, "the browser did not load the report"
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert title and title.group(1).startswith("Incident report")
    assert "data-pwned" not in dom
    assert not re.search(r"<(script|img|svg onload|iframe)\b", dom.replace("<svg id=", ""))


# --- CSV -------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, timeout=60, env=env)


CSV_VALUES = {
    "path": "/a\rb",  # the raw CR that used to split the row
    "user_agent": "ua\n=1+1",
    "host": "h\r\n@SUM(A1)",
    "sub": '=HYPERLINK("http://evil","x")',
    "client_id": "+cmd|' /C calc'!A0",
    "route": "-2+3",
    "iss": "@evil",
    "jti": "\tx",
    "sid": "\rstart",
    "request_id": 'quote " and, comma',
    "reason": "\uff1dfull-width",
}


def test_csv_is_rfc_4180_and_neutralises_formulas(tmp_path: Path) -> None:
    records = [record(CSV_VALUES, {"request_id": f"row-{i}"}, duration_ms=-5) for i in range(3)]
    records[1]["request_id"] = CSV_VALUES["request_id"]
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = cli("audit", str(path), "--format", "csv")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    # every record ends with CRLF; a CR or LF anywhere else is inside a quoted field
    assert out.endswith("\r\n") and out.count("\r\n") >= 4
    rows = list(csv.reader(io.StringIO(out, newline=""), strict=True))
    assert rows[0] == list(CSV_FIELDS)
    assert len(rows) == 4  # a header and three records: no value split a row
    for row in rows[1:]:
        got = dict(zip(CSV_FIELDS, row, strict=True))
        assert got["path"] == "/a\rb"  # not a formula: kept as it is, quoted
        assert got["user_agent"] == "ua\n=1+1"
        assert got["sub"] == "'" + CSV_VALUES["sub"]
        assert got["client_id"] == "'" + CSV_VALUES["client_id"]
        assert got["route"] == "'-2+3" and got["iss"] == "'@evil" and got["jti"] == "'\tx"
        assert got["sid"] == "'\rstart" and got["reason"] == "'\uff1dfull-width"
        assert got["duration_ms"] == "-5.0" or got["duration_ms"] == "-5"  # a plain number stays one
        assert not any(cell[:1] in ("=", "+", "-", "@", "\t", "\r") and not re.fullmatch(r"-?\d+(\.\d+)?", cell)
                       for cell in row)
    assert rows[2][CSV_FIELDS.index("request_id")] == 'quote " and, comma'


@pytest.mark.parametrize(("value", "cell"), [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1+1", "'-1+1"), ("@x", "'@x"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"),
    ("-12", "-12"), ("-1.5", "-1.5"), ("a=1", "a=1"), ("", ""), ("\uff0bx", "'\uff0bx"),
])
def test_csv_cells(value: str, cell: str) -> None:
    assert csv_safe(value) == cell


# --- terminal --------------------------------------------------------------------------------

UNSAFE_FOR_A_TERMINAL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028"
                                   "\u2029]")


def test_audit_table_shows_control_characters_escaped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(json.dumps(record({name: HOSTILE[150:], "suspicious": [HOSTILE]})) + "\n"
                            for name in TEXT_FIELDS))
    result = cli("audit", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert not UNSAFE_FOR_A_TERMINAL.search(out)  # no ESC, no CSI, no bell, no CR: nothing for the terminal
    assert "\\x1b[2J" in out and "\\x9b31m" in out and "\\u202e" in out
    assert len(out.splitlines()) == len(TEXT_FIELDS) + 1  # one line per record whatever the values held


def test_incident_text_report_shows_control_characters_escaped(tmp_path: Path) -> None:
    trail = hostile_trail(tmp_path / "audit.jsonl")
    for target in (Target("jti", "jti-1"), Target("sub", "alice"), Target("family", HOSTILE)):
        text = render_text(collect([str(trail)], target))
        assert not UNSAFE_FOR_A_TERMINAL.search(text)
    result = cli("incident", str(trail), "--jti", "jti-1")
    out = result.stdout.decode()
    assert result.returncode == 0 and not UNSAFE_FOR_A_TERMINAL.search(out)
    assert visible(HOSTILE) in out
