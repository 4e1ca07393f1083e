"""The archive-scale scanning engine (gateway/forensics/): mixed archives, the time-window
skip, envelope unwrapping, one-pass incident collection, sequential = parallel, hostile input."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import select as io_select
import subprocess
import sys
from collections.abc import Generator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.demo import DemoIssuer
from gateway.forensics.archive import MAX_LINE, gunzip, line_blocks, name_time
from gateway.forensics.envelope import Envelope
from gateway.forensics.query import Query
from gateway.forensics.scan import (
    Collected,
    Needles,
    ScanPlan,
    ScanStats,
    collect,
    needles_for_query,
    scan,
    value_needles,
)
from gateway.forensics.window import NameTime
from tests.audit_traffic import TRUSTED, drive
from tests.helpers import GatewayFactory
from tests.reference_reader import iter_records, reference_select

SCRIPT_HEAD = ("import json, sys\nfrom gateway.forensics.query import Query\n"
               "from gateway.forensics.scan import ScanPlan, ScanStats, collect, scan\n")
T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
STOLEN = "stolen-jti-0001"


def ts(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rec(n: int, at: datetime, jti: str, sid: str, sub: str, *, ip: str = "10.0.0.1", client: str = "web",
        decision: str = "allow", **extra: Any) -> dict[str, Any]:
    """A record with the fields and the shape the gateway writes."""
    denied = decision == "deny"
    return {
        "type": "audit", "ts": ts(at), "request_id": f"{n:024x}", "mode": "proxy", "client_ip": ip,
        "method": "GET", "host": "api.example", "path": "/orders", "route": "list-orders", "upstream": "orders",
        "status": 403 if denied else 200, "decision": decision, "reason": "insufficient_scope" if denied else "allowed",
        "sub": sub, "client_id": client, "iss": "https://id.example", "jti": jti, "sid": sid,
        "token_fingerprint": hashlib.sha256(jti.encode()).hexdigest()[:32], "scopes": ["orders:read"],
        "required_scopes": ["orders:read"], "missing_scopes": [], "user_agent": "curl/8.5.0", "duration_ms": 1.5,
        "upstream_ms": None if denied else 1.0, "bytes_in": 0, "bytes_out": 120, **extra,
    }


def trail(count: int, start: datetime = T0, every: timedelta = timedelta(seconds=1),
          stolen_from: int | None = None) -> list[dict[str, Any]]:
    """``count`` records of 40 tokens (8 subjects, 20 families); the stolen token (family
    fam-3, subject user-3) is used from record ``stolen_from`` on, its family and subject
    from the start: an incident must look back before the token's first use."""
    out = []
    stolen_from = count // 2 if stolen_from is None else stolen_from
    for n in range(count):
        at = start + every * n
        if n >= stolen_from and n % 7 == 0:
            out.append(rec(n, at, STOLEN, "fam-3", "user-3", ip="203.0.113.9", decision="deny" if n % 2 else "allow"))
            continue
        t = n % 40
        out.append(rec(n, at, f"jti-{t:03d}", f"fam-{t % 20}", f"user-{t % 8}", ip=f"10.0.{t}.1"))
        if n % 50 == 49:
            out.append({"type": "log", "ts": ts(at), "level": "info", "msg": "jwks refreshed"})
    return out


def lines(records: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def write(path: Path, records: list[dict[str, Any]], gz: bool = False) -> Path:
    data = lines(records)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def audit_only(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == "audit"]


def reference(
    records: list[dict[str, Any]], query: Query, fields: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The incident's answer the slow way: every record decoded, two passes."""
    targets = [r for r in records if query.matches(r)]
    keys = {(f, r[f]) for r in targets for f in fields if isinstance(r.get(f), str) and r[f]}
    related = [r for r in records if not query.matches(r) and any((f, r.get(f)) in keys for f in fields)]
    return targets, related


def run_collect(names: list[str], query: Query, workers: int, piece_bytes: int = 4096,
                stats: ScanStats | None = None) -> Collected:
    return collect(names, ScanPlan.for_query(query, expand=("sid", "sub")), workers=workers,
                   piece_bytes=piece_bytes, stats=stats)


def found(names: list[str], query: Query, workers: int = 1, warn: list[str] | None = None,
          plan: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """What ``scan`` returns for ``query`` (``plan`` overrides fields of the query's plan)."""
    messages: list[str] = warn if warn is not None else []
    scan_plan = replace(ScanPlan.for_query(query), **(plan or {}))
    return list(scan(names, scan_plan, workers=workers, warn=messages.append, **kwargs))


# --- the same answers as gateway audit --------------------------------------------------------


async def test_same_records_as_gateway_audit_on_a_real_gateways_trail(
    make_gateway: GatewayFactory, issuer: DemoIssuer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(**TRUSTED)
    t = await drive(gw, issuer, http)
    path = str(gw.audit_path)
    for query in (Query(jti=t.a.jti), Query(sub=t.a.sub), Query(family=t.a.sid), Query(fingerprint=t.a.fingerprint),
                  Query(ip="203.0.113.0/24"), Query(decision="deny"), Query(reason="insufficient_scope")):
        expected = reference_select([path], query)
        assert expected
        for workers in (1, 2):
            assert found([path], query, workers, piece_bytes=512) == expected


def test_scan_equals_select_for_every_kind_of_filter(tmp_path: Path) -> None:
    records = trail(3000)
    path = str(write(tmp_path / "audit.jsonl", records))
    queries = [Query(jti=STOLEN), Query(sub="user-3"), Query(family="fam-3"), Query(client="web", jti="jti-007"),
               Query(ip="203.0.113.9"), Query(ip="203.0.113.0/24", decision="deny"), Query(ip="10.0.3.0/24"),
               Query(decision="deny"),
               Query.build(since=ts(T0 + timedelta(seconds=100)), until=ts(T0 + timedelta(seconds=200)))]
    for query in queries:
        expected = reference_select([path], query)
        assert expected
        assert found([path], query, 1) == expected
        assert found([path], query, 2, piece_bytes=8192) == expected


def test_needles_come_from_every_filter_naming_a_value() -> None:
    query = Query(jti="j1", sub="s1", ip="10.1.0.0/16", decision="deny")
    assert needles_for_query(query).groups == ((b"j1",), (b"s1",), (b"10.1.",), (b"deny",))
    assert needles_for_query(Query(ip="2001:db8::/32")).groups == ()  # IPv6 texts vary: no needle
    assert needles_for_query(Query(ip="10.0.0.0/4")).groups == ()
    needles = Needles.of(["abc", "xyz"])
    assert needles.admits(b'{"a":"abc","b":"xyz"}') and not needles.admits(b'{"a":"abc"}')


# --- mixed archives ---------------------------------------------------------------------------


def test_mixed_archive_plain_gzip_rotated_directory_and_glob(tmp_path: Path) -> None:
    records = trail(2000)
    parts = [records[i:i + 400] for i in range(0, 2000, 400)]
    logs = tmp_path / "logs"
    (logs / "replica-b").mkdir(parents=True)
    write(logs / "audit.jsonl.2.gz", parts[0], gz=True)
    write(logs / "audit.jsonl.1", parts[1])
    write(logs / "audit.jsonl", parts[2])
    # a gzip of two members (``cat a.gz b.gz``) and a hidden file that is left out
    (logs / "replica-b" / "audit-2026-12-05T08.jsonl.gz").write_bytes(
        gzip.compress(lines(parts[3][:200])) + gzip.compress(lines(parts[3][200:])))
    write(logs / ".audit.jsonl.swp", parts[4])
    os.mkfifo(logs / "replica-b" / "pipe")  # no writer: reading it would wait forever
    write(tmp_path / "extra-1.jsonl", parts[4])
    names = [str(logs), str(tmp_path / "extra-*.jsonl"), str(logs / "audit.jsonl")]  # audit.jsonl named twice
    order = parts[2] + parts[1] + parts[0] + parts[3] + parts[4]  # sorted names: audit.jsonl, .1, .2.gz, replica-b/
    query = Query(sub="user-3")
    expected = [r for r in order if query.matches(r)]
    for workers in (1, 2, 3):
        stats = ScanStats()
        assert found(names, query, workers, piece_bytes=4096, stats=stats) == expected
        assert stats.inputs == 5


def test_a_glob_matching_nothing_and_a_missing_file_are_warnings(tmp_path: Path) -> None:
    warnings: list[str] = []
    assert found([str(tmp_path / "nothing-*.gz"), str(tmp_path / "missing.jsonl")], Query(jti="x"),
                 warn=warnings) == []
    assert any("no file matches" in w for w in warnings)
    assert any("missing.jsonl: cannot read" in w for w in warnings)


# --- sequential = parallel; one-pass incident ----------------------------------------------------


@pytest.mark.parametrize("stolen_from", [0, 1500, 2990])
def test_one_pass_incident_equals_the_two_pass_answer(tmp_path: Path, stolen_from: int) -> None:
    records = trail(3000, stolen_from=stolen_from)
    parts = [records[:1000], records[1000:2000], records[2000:]]
    names = [str(write(tmp_path / "a.jsonl", parts[0])), str(write(tmp_path / "b.jsonl.gz", parts[1], gz=True)),
             str(write(tmp_path / "c.jsonl", parts[2]))]
    query = Query(jti=STOLEN)
    targets, related = reference(audit_only(records), query, ("sid", "sub"))
    assert targets and related
    answers = []
    for workers in (1, 2, 3):
        stats = ScanStats()
        answer = run_collect(names, query, workers, stats=stats)
        assert answer.records == targets
        assert answer.related == related
        assert answer.keys == {("sid", "fam-3"), ("sub", "user-3")}
        answers.append((answer.records, answer.related))
    assert answers[0] == answers[1] == answers[2]


def test_keys_learned_late_are_looked_for_again_only_where_they_were_not(tmp_path: Path) -> None:
    records = trail(4000, stolen_from=3900)
    path = str(write(tmp_path / "audit.jsonl", records))
    stats = ScanStats()
    answer = run_collect([path], Query(jti=STOLEN), workers=1, piece_bytes=64 * 1024, stats=stats)
    assert (answer.records, answer.related) == reference(audit_only(records), Query(jti=STOLEN), ("sid", "sub"))
    size = os.path.getsize(path)
    assert 0 < stats.rescanned < size  # the part before the token's first use, not the whole file again
    early = ScanStats()
    run_collect([path], Query(jti="jti-001"), workers=1, piece_bytes=64 * 1024, stats=early)
    assert early.rescanned == 0  # a token seen in the first block: nothing to look at again


def test_a_family_key_that_json_escapes_is_expanded_too(tmp_path: Path) -> None:
    family = 'fam "quoted" / é'
    records = [rec(0, T0, "other", family, "user-9"), rec(1, T0, STOLEN, family, "user-1"),
               rec(2, T0, "third", "fam-x", "user-1"), rec(3, T0, "noise", "fam-y", "user-2")]
    path = str(write(tmp_path / "audit.jsonl", records))
    answer = run_collect([path], Query(jti=STOLEN), workers=1)
    assert answer.records == [records[1]]
    assert answer.related == [records[0], records[2]]


def test_incident_over_stdin_gzip_reads_the_spool_again(tmp_path: Path) -> None:
    records = trail(12000, stolen_from=11900)  # more than a block: the first blocks are read again
    data = gzip.compress(lines(records))
    script = (
        SCRIPT_HEAD +
        "stats = ScanStats()\n"
        "c = collect(['-'], ScanPlan.for_query(Query(jti=sys.argv[1]), expand=('sid', 'sub')), stats=stats)\n"
        "print(json.dumps([c.records, c.related, stats.rescanned]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, STOLEN], input=data, capture_output=True, check=True,
                          cwd=Path(__file__).parent.parent)
    targets, related, rescanned = json.loads(done.stdout)
    assert (targets, related) == reference(audit_only(records), Query(jti=STOLEN), ("sid", "sub"))
    assert rescanned > 0


# --- the time window --------------------------------------------------------------------------


def corrupt_gzip() -> bytes:
    """A gzip header followed by a body that fails the moment it is inflated."""
    good = gzip.compress(lines([rec(0, T0, STOLEN, "fam-3", "user-3")]))
    return good[:10] + b"\xff" * 200


def test_gzip_named_outside_the_window_is_not_decompressed(tmp_path: Path) -> None:
    old = tmp_path / "audit-2026-12-01T08.jsonl.gz"
    old.write_bytes(corrupt_gzip())
    current = write(tmp_path / "audit-2026-12-05T08.jsonl.gz", trail(100), gz=True)
    query = Query.build(jti=STOLEN, since="2026-12-05T00:00:00Z")
    warnings: list[str] = []
    stats = ScanStats()
    records = found([str(old), str(current)], query, warn=warnings, stats=stats)
    assert records == reference_select([str(current)], query) and records
    assert warnings == []  # had the corrupt body been read, it would have said so
    assert [name for name, _ in stats.skipped] == [str(old)]
    # the same file inside the window is read, and its corruption reported
    inside = tmp_path / "audit-2026-12-05T09.jsonl.gz"
    old.rename(inside)
    found([str(inside)], query, warn=warnings)
    assert any("corrupt" in w for w in warnings)


def test_rotated_series_is_skipped_after_until_by_the_previous_rotation(tmp_path: Path) -> None:
    hours = []
    for h in range(4):
        start = T0 + timedelta(hours=h)
        path = tmp_path / f"audit-{start:%Y-%m-%dT%H}.jsonl.gz"
        write(path, trail(60, start=start, every=timedelta(minutes=1), stolen_from=0), gz=True)
        hours.append(str(path))
    Path(hours[3]).write_bytes(corrupt_gzip())  # never read: it starts after hour 2 ended
    query = Query.build(jti=STOLEN, until=ts(T0 + timedelta(minutes=30)))
    warnings: list[str] = []
    stats = ScanStats()
    records = found(hours, query, warn=warnings, stats=stats, plan={"slack": 600})
    assert records == reference_select(hours[:2], query) and records
    assert warnings == []
    assert [name for name, _ in stats.skipped] == hours[2:]


def test_plain_files_are_skipped_by_their_first_and_last_records(tmp_path: Path) -> None:
    early = write(tmp_path / "early.jsonl", trail(500, start=T0 - timedelta(days=2)))
    late = write(tmp_path / "late.jsonl", trail(500, start=T0))
    # a concatenation of two replicas is out of order: never skipped, its in-window record found
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(late.read_bytes() + early.read_bytes())
    query = Query.build(sub="user-3", since=ts(T0 - timedelta(minutes=1)))
    stats = ScanStats()
    names = [str(early), str(late), str(mixed)]
    records = found(names, query, stats=stats)
    assert [name for name, _ in stats.skipped] == [str(early)]
    assert stats.bytes == late.stat().st_size + mixed.stat().st_size
    assert records == reference_select(names, query)
    assert records == found(names, query, plan={"skip": False})


def test_newest_first_exports_are_in_order_too(tmp_path: Path) -> None:
    records = audit_only(trail(300, start=T0 - timedelta(days=3)))
    newest_first = write(tmp_path / "logcli.jsonl", list(reversed(records)))
    stats = ScanStats()
    assert found([str(newest_first)], Query.build(sub="user-3", since=ts(T0)), stats=stats) == []
    assert len(stats.skipped) == 1


def known_name_time(name: str) -> NameTime:
    """``name_time`` of a name that has a time."""
    found_time = name_time(name)
    assert found_time is not None, name
    return found_time


def test_name_times() -> None:
    assert known_name_time("/x/audit-2026-12-05T10.jsonl.gz").start == datetime(2026, 12, 5, 10, tzinfo=UTC)
    assert known_name_time("audit-2026-12-05T10.jsonl.gz").period == timedelta(hours=1)
    assert known_name_time("audit.jsonl-20261205").period == timedelta(days=1)
    assert known_name_time("audit-2026-12-05T10-30-00.jsonl").period == timedelta(seconds=1)
    assert known_name_time("audit-2026-12-05T10.jsonl.gz").series == known_name_time("audit-2026-12-05T11.jsonl").series
    assert name_time("audit-2026-13-05.jsonl") is None  # no such month
    assert name_time("audit-2026-12-05-to-2026-12-06.jsonl") is None  # two times: not guessed
    assert name_time("audit.jsonl.3.gz") is None


# --- envelopes --------------------------------------------------------------------------------


def envelopes(records: list[dict[str, Any]]) -> dict[str, bytes]:
    """The same records as each log store hands them out."""
    raw = [orjson.dumps(r).decode() for r in records]
    hits = [{"_index": "logs-gw", "_id": str(i), "_score": 1.0, "_source": r} for i, r in enumerate(records)]
    search = {"took": 3, "timed_out": False, "hits": {"total": {"value": len(hits)}, "hits": hits}}
    return {
        "kubectl --prefix": "".join(f"[pod/tokengate-7d9f/gateway] {line}\n" for line in raw).encode(),
        "kubectl --timestamps": "".join(f"2026-12-05T08:00:00.123456789Z {line}\n" for line in raw).encode(),
        "loki raw (docker json log)": b"".join(
            orjson.dumps({"log": line + "\n", "stream": "stdout", "time": "2026-12-05T08:00:00Z"}) + b"\n"
            for line in raw),
        "loki jsonl": b"".join(orjson.dumps({"labels": {"app": "tokengate"}, "line": line, "timestamp": "x"}) + b"\n"
                               for line in raw),
        "loki default": "".join(f'2026-12-05T08:00:00Z {{app="tokengate", pod="gw-1"}} {line}\n'
                                for line in raw).encode(),
        "es _search pretty": json.dumps(search, indent=2).encode() + b"\n",
        "es _search compact": orjson.dumps(search) + b"\n",
        "es hits ndjson": b"".join(orjson.dumps(h) + b"\n" for h in hits),
        "es _source.message": b"".join(orjson.dumps({"_source": {"@timestamp": "x", "message": line}}) + b"\n"
                                       for line in raw),
        "json array": json.dumps(records, indent=1).encode(),
        "es _search pages appended": b"".join(
            json.dumps({"hits": {"hits": hits[i:i + 50]}}, indent=2).encode() + b"\n" for i in range(0, len(hits), 50)),
    }


def test_every_store_format_is_unwrapped(tmp_path: Path) -> None:
    records = audit_only(trail(400))
    query = Query(sub="user-3")
    expected = [r for r in records if query.matches(r)]
    for name, data in envelopes(records).items():
        plain = tmp_path / (name.replace(" ", "_") + ".log")
        plain.write_bytes(data)
        packed = tmp_path / (name.replace(" ", "_") + ".log.gz")
        packed.write_bytes(gzip.compress(data))
        for path in (plain, packed):
            assert found([str(path)], query) == expected, name
            assert found([str(path)], query, 2, piece_bytes=2048) == expected, name
        incident = run_collect([str(plain)], Query(jti=STOLEN), workers=1)
        assert (incident.records, incident.related) == reference(records, Query(jti=STOLEN), ("sid", "sub")), name


def test_a_search_response_on_stdin_is_read_whole(tmp_path: Path) -> None:
    records = audit_only(trail(200))
    data = envelopes(records)["es _search pretty"]
    script = (SCRIPT_HEAD +
              "print(json.dumps(list(scan(['-'], ScanPlan.for_query(Query(sub='user-3'))))))\n")
    done = subprocess.run([sys.executable, "-c", script], input=data, capture_output=True, check=True,
                          cwd=Path(__file__).parent.parent)
    assert json.loads(done.stdout) == [r for r in records if r["sub"] == "user-3"]


def test_a_document_larger_than_a_line_may_be_is_read(tmp_path: Path) -> None:
    records = audit_only(trail(30000))
    path = tmp_path / "search.json"
    hits = [{"_index": "logs-gw", "_source": r} for r in records]
    path.write_bytes(json.dumps({"took": 3, "hits": {"hits": hits}}, indent=2).encode())
    assert path.stat().st_size > MAX_LINE
    expected = [r for r in records if r["jti"] == STOLEN]
    assert found([str(path)], Query(jti=STOLEN)) == expected and expected


def test_explicit_field_path(tmp_path: Path) -> None:
    records = audit_only(trail(100))
    as_object = b"".join(orjson.dumps({"event": {"audit_record": r}, "host": "gw-1"}) + b"\n" for r in records)
    as_text = b"".join(orjson.dumps({"event": {"audit_record": orjson.dumps(r).decode()}}) + b"\n" for r in records)
    query = Query(sub="user-3")
    expected = [r for r in records if query.matches(r)]
    for data in (as_object, as_text):
        path = tmp_path / "export.jsonl"
        path.write_bytes(data)
        assert found([str(path)], query, plan={"envelope": Envelope.at("event.audit_record")}) == expected
        assert found([str(path)], query, plan={"envelope": Envelope.at("event.other")}) == []
    hits = tmp_path / "search.json"
    hits.write_bytes(envelopes(records)["es _search pretty"])
    assert found([str(hits)], query, plan={"envelope": Envelope.at("hits.hits._source")}) == expected
    with pytest.raises(ValueError, match="field names joined by dots"):
        Envelope.at("a..b")


def test_without_unwrapping_only_the_gateways_own_lines_count(tmp_path: Path) -> None:
    records = audit_only(trail(100))
    data = envelopes(records)
    path = tmp_path / "mixed.log"
    path.write_bytes(data["kubectl --prefix"] + data["loki jsonl"] + data["es hits ndjson"])
    expected = [r for r in records if r["sub"] == "user-3"]
    assert found([str(path)], Query(sub="user-3"), plan={"envelope": Envelope.none()}) == expected
    assert found([str(path)], Query(sub="user-3")) == expected * 3


def test_a_value_inside_a_record_never_passes_for_a_record(tmp_path: Path) -> None:
    forged = orjson.dumps(rec(1, T0, STOLEN, "fam-3", "user-3")).decode()
    carrier = rec(0, T0, "jti-000", "fam-0", "user-0", user_agent=forged, message=forged)
    path = write(tmp_path / "audit.jsonl", [carrier])
    assert found([str(path)], Query(jti=STOLEN)) == []


# --- needles and escaping ---------------------------------------------------------------------


def test_value_needles() -> None:
    assert value_needles("user-3") == (b"user-3",)
    assert value_needles('o"brien/é-tenant') == (b"-tenant",)
    assert value_needles("é/\"") == ()


def test_a_value_json_escapes_is_found_however_it_was_encoded(tmp_path: Path) -> None:
    sub = 'o"brien\\ops/é\u2028tenant'
    record = rec(1, T0, "jti-1", "fam-1", sub)
    other = rec(2, T0, "jti-2", "fam-2", "obrien tenant")
    encodings = [
        orjson.dumps(record),  # the gateway's own writer: raw UTF-8, \" and \\ escaped
        json.dumps(record).encode(),  # ensure_ascii: \u00e9
        json.dumps(record).replace("\\u00e9", "\\u00E9").encode(),  # upper-case hex
        json.dumps(record).replace("/", "\\/").encode(),  # an escaped solidus
        orjson.dumps({"log": orjson.dumps(record).decode()}),  # a string inside a string
    ]
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"\n".join([*encodings, orjson.dumps(other)]) + b"\n")
    assert found([str(path)], Query(sub=sub)) == [record] * len(encodings)
    assert found([str(path)], Query(sub="é")) == []  # no needle at all: every line decoded, still exact


# --- hostile input ----------------------------------------------------------------------------


def test_hostile_lines_are_skipped_and_the_rest_is_found(tmp_path: Path) -> None:
    good = [rec(n, T0, STOLEN, "fam-3", "user-3") for n in range(3)]
    hostile = [
        b"not json at all " + STOLEN.encode(),
        b'{"type":"audit","jti":"' + STOLEN.encode() + b'", broken',
        b"\xff\xfe\x00" + STOLEN.encode() + b"\x80\x81",  # not UTF-8
        b'{"type":"audit","jti":"' + STOLEN.encode() + b'","sub":"\xff\xfe"}',  # invalid UTF-8 inside JSON
        b"[" * 100_000 + STOLEN.encode(),  # deeper than any decoder recurses
        b'{"type":"audit","jti":"' + STOLEN.encode() + b'","pad":"' + b"x" * (MAX_LINE + 10) + b'"}',  # too long
        b"{" + STOLEN.encode() + b"}",
        b"\x00" * 1000,
        b'["' + STOLEN.encode() + b'", 1, null]',
        b'{"hits": {"hits": "' + STOLEN.encode() + b'"}}',
    ]
    data = b""
    for i, line in enumerate(hostile):
        data += line + b"\r\n"
        if i < len(good):
            data += orjson.dumps(good[i]) + b"\r\n"
    data += orjson.dumps(rec(9, T0, STOLEN, "fam-3", "user-3"))  # no newline at the end
    expected = [*good, rec(9, T0, STOLEN, "fam-3", "user-3")]
    for gz in (False, True):
        path = tmp_path / ("hostile.jsonl.gz" if gz else "hostile.jsonl")
        path.write_bytes(gzip.compress(data) if gz else data)
        for workers in (1, 2):
            assert found([str(path)], Query(jti=STOLEN), workers, piece_bytes=1 << 20) == expected
        incident = run_collect([str(path)], Query(jti=STOLEN), 1)
        assert incident.records == expected


def test_truncated_and_corrupt_gzip_keep_what_was_there(tmp_path: Path) -> None:
    records = trail(2000)
    expected = [r for r in records if r.get("sub") == "user-3"]
    whole = gzip.compress(lines(records))
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    warnings: list[str] = []
    got = found([str(truncated)], Query(sub="user-3"), warn=warnings)
    assert 0 < len(got) < len(expected) and got == expected[: len(got)]
    assert any("ends early" in w for w in warnings)
    trailing = tmp_path / "trailing.jsonl.gz"
    trailing.write_bytes(whole + b"this is not gzip")
    warnings.clear()
    assert found([str(trailing)], Query(sub="user-3"), warn=warnings) == expected
    assert any("not gzip" in w for w in warnings)
    padded = tmp_path / "padded.jsonl.gz"
    padded.write_bytes(whole + b"\0" * 512)  # tape-block padding is not an error
    warnings.clear()
    assert found([str(padded)], Query(sub="user-3"), warn=warnings) == expected
    assert warnings == []


def test_line_blocks_drop_an_overlong_line_whole() -> None:
    half = MAX_LINE // 2 + 10
    chunks = [b"first\nsec", b"ond\n", b"a" * half, b"a" * half, b"a" * 100 + b"\nthird\nlast"]
    blocks = list(line_blocks(iter(chunks)))
    assert b"".join(block for _, block in blocks) == b"first\nsecond\nthird\nlast\n"
    third = next(offset for offset, block in blocks if block.startswith(b"third"))
    assert third == len(b"first\nsecond\n") + 2 * half + 101  # offsets still count the dropped line


def test_gzip_bomb_is_inflated_a_bounded_piece_at_a_time(tmp_path: Path) -> None:
    bomb = gzip.compress(b"\n" * (64 * 2**20), compresslevel=9)
    path = tmp_path / "bomb.gz"
    path.write_bytes(bomb)
    with open(path, "rb") as raw:
        sizes = [len(piece) for piece in gunzip(raw)]
    assert sum(sizes) == 64 * 2**20 and max(sizes) <= 4 * 2**20


def test_stdin_and_files_mixed_keep_input_order(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", trail(300, start=T0))
    b = trail(300, start=T0 + timedelta(hours=1))
    script = (SCRIPT_HEAD +
              "print(json.dumps(list(scan(sys.argv[1:], ScanPlan.for_query(Query(sub='user-3')), workers=2))))\n")
    done = subprocess.run([sys.executable, "-c", script, "-", str(a), "-"], input=gzip.compress(lines(b)),
                          capture_output=True, check=True, cwd=Path(__file__).parent.parent)
    expected = [r for r in audit_only(b) + audit_only(trail(300, start=T0)) if r["sub"] == "user-3"]
    assert json.loads(done.stdout) == expected


def test_reading_the_same_answers_as_iter_records_on_every_line(tmp_path: Path) -> None:
    """Without needles (a --decision/--since only query) every line is decoded: same records."""
    records = trail(1000)
    path = str(write(tmp_path / "audit.jsonl", records))
    query = Query(decision="allow")
    assert found([path], query, plan={"needles": Needles()}) == [r for r in iter_records([path]) if query.matches(r)]


def test_gateway_audit_reads_times_with_the_engines_rules() -> None:
    from gateway.forensics import query, times

    # one set of time rules: gateway audit reads times with the engine's own functions
    shared = (times.parse_time, times.ts_text, times.canonical_ts)
    # what the query module's namespace binds (it imports them without re-exporting them)
    assert tuple(vars(query)[name] for name in ("parse_time", "ts_text", "canonical_ts")) == shared
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert times.parse_time("2026-12-05T12:00:00+02:00", now) == datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    assert times.parse_time("1w", now) == datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert times.canonical_ts("2026-12-05T10:00:00+01:00") == "2026-12-05T09:00:00.000Z"
    assert [times.canonical_ts(v) for v in ("yesterday", 5, None, "")] == [None, None, None, None]
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        times.parse_time("soon")


def test_every_search_and_inflate_backend_gives_the_same_records(tmp_path: Path) -> None:
    """bytes.find or StringZilla, zlib or python-isal / zlib-ng (whichever are installed)."""
    records = trail(3000, stolen_from=2000)
    names = [str(write(tmp_path / "a.jsonl", records[:1500])),
             str(write(tmp_path / "b.jsonl.gz", records[1500:], gz=True))]
    script = SCRIPT_HEAD + (
        "from gateway.forensics import archive, scan as engine\n"
        "c = collect(sys.argv[1:], ScanPlan.for_query(Query(jti='" + STOLEN + "'), expand=('sid', 'sub')))\n"
        "s = list(scan(sys.argv[1:], ScanPlan.for_query(Query(sub='user-3'))))\n"
        "print(json.dumps([engine.SEARCH_BACKEND, archive.GZIP_BACKEND, c.records, c.related, s]))\n")
    answers = {}
    for search in ("python", "stringzilla"):
        for inflate in ("zlib", "isal", "zlib-ng"):
            env = {**os.environ, "GATEWAY_SEARCH_BACKEND": search, "GATEWAY_GZIP_BACKEND": inflate}
            done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, check=True, env=env,
                                  cwd=Path(__file__).parent.parent)
            used_search, used_inflate, *answer = json.loads(done.stdout)
            answers[(used_search, used_inflate)] = answer
    targets, related = reference(audit_only(records), Query(jti=STOLEN), ("sid", "sub"))
    for answer in answers.values():
        assert answer == [targets, related, [r for r in records if r.get("sub") == "user-3"]]
    assert ("bytes.find", "zlib") in answers


def test_a_named_pipe_is_read_as_a_stream_and_spooled_for_the_incident(tmp_path: Path) -> None:
    import threading

    records = trail(12000, stolen_from=11000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(gzip.compress(lines(records)))

    writer = threading.Thread(target=feed)
    writer.start()
    stats = ScanStats()
    answer = run_collect([str(fifo)], Query(jti=STOLEN), workers=1, stats=stats)
    writer.join(timeout=30)
    assert (answer.records, answer.related) == reference(audit_only(records), Query(jti=STOLEN), ("sid", "sub"))
    assert stats.rescanned > 0  # read again from the spool, the pipe being gone


def test_a_worker_that_dies_ends_the_scan_with_a_clear_error(tmp_path: Path) -> None:
    from gateway.forensics.scan import ScanError

    records = trail(2000)
    records[1500]["jti"] = "kills-the-worker"
    path = str(write(tmp_path / "audit.jsonl", records))

    def dies_on_it(record: dict[str, Any]) -> bool:
        if record.get("jti") == "kills-the-worker":
            os._exit(3)  # what the OOM killer does to a worker
        return record.get("sub") == "user-3"

    plan = ScanPlan(match=dies_on_it, needles=Needles.of(["kills-the-worker"]))
    with pytest.raises(ScanError, match="a scanning process died"):
        list(scan([path], plan, workers=2, piece_bytes=4096))


def test_a_file_truncated_under_the_scan_ends_the_read_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logrotate's copytruncate empties the live file while it is read: what was read stands,
    the scan says so, and nothing crashes (a memory map would die of SIGBUS here)."""
    from gateway.forensics import reader as engine

    monkeypatch.setattr(engine, "BLOCK", 64 * 1024)
    records = trail(3000)
    records[10]["jti"] = "truncates-the-file"
    path = write(tmp_path / "audit.jsonl", records)

    def truncating(record: dict[str, Any]) -> bool:
        if record.get("jti") == "truncates-the-file":
            os.truncate(path, 0)
        return record.get("sub") == "user-3"

    plan = ScanPlan(match=truncating, needles=Needles((( b"user-3", b"truncates-the-file"),)))
    warnings: list[str] = []
    got = list(scan([str(path)], plan, workers=1, warn=warnings.append))
    expected = [r for r in records if r.get("sub") == "user-3"]
    assert got and got == expected[: len(got)] and len(got) < len(expected)
    assert any("shrank while it was read" in w for w in warnings)


def test_a_reader_that_stops_early_leaves_no_worker_behind(tmp_path: Path) -> None:
    import multiprocessing

    records = trail(20000)
    path = str(write(tmp_path / "audit.jsonl", records))
    records_found = scan([path], ScanPlan.for_query(Query(sub="user-3")), workers=2, piece_bytes=64 * 1024)
    assert isinstance(records_found, Generator)  # declared an Iterator; a generator can be closed
    assert next(records_found)["sub"] == "user-3"
    records_found.close()  # what `gateway audit ... | head -1` does
    assert multiprocessing.active_children() == []


def test_records_from_a_pipe_are_passed_on_before_it_ends(tmp_path: Path) -> None:
    """``kubectl logs -f | gateway audit --jti J``: a match is printed while the pipe stays open."""
    script = SCRIPT_HEAD + (
        "for record in scan(['-'], ScanPlan.for_query(Query(jti=sys.argv[1]))):\n"
        "    print(record['request_id'], flush=True)\n")
    child = subprocess.Popen([sys.executable, "-c", script, STOLEN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             cwd=Path(__file__).parent.parent)
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(lines([rec(7, T0, STOLEN, "fam-3", "user-3"), rec(8, T0, "other", "fam-1", "user-1")]))
        child.stdin.flush()
        readable, _, _ = io_select.select([child.stdout], [], [], 20)
        assert readable, "nothing printed while the pipe was open"
        assert child.stdout.readline().strip() == b"%024x" % 7
        child.stdin.write(lines([rec(9, T0, STOLEN, "fam-3", "user-3")]))
        child.stdin.close()
        assert child.stdout.read().split() == [b"%024x" % 9]
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()


# --- the commands: gateway audit / gateway incident over archives -----------------------------


def cli(*args: str, input: bytes | None = None) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from gateway.cli import main

    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


def test_audit_reads_directories_globs_and_gzip_and_warns_of_missing_names(tmp_path: Path) -> None:
    records = trail(1200)
    logs = tmp_path / "logs"
    logs.mkdir()
    write(logs / "audit.jsonl.1.gz", records[:600], gz=True)
    write(logs / "audit.jsonl", records[600:])
    write(tmp_path / "other-1.jsonl", records[:100])
    query = Query(jti=STOLEN)
    expected = reference_select([str(logs / "audit.jsonl"), str(logs / "audit.jsonl.1.gz"),
                                 str(tmp_path / "other-1.jsonl")], query)
    assert expected
    for workers in ("1", "2"):
        code, out, err = cli("audit", str(logs), str(tmp_path / "other-*.jsonl"), str(tmp_path / "gone.jsonl"),
                             "--jti", STOLEN, "--format", "json", "--workers", workers)
        assert code == 0 and json_lines(out) == expected
        assert "gone.jsonl: cannot read" in err and f"{len(expected)} records matched" in err


def test_file_names_in_warnings_are_shown_not_obeyed_by_the_terminal(tmp_path: Path) -> None:
    hostile = str(tmp_path / "audit-\x1b]0;owned\x07\x1b[2J-*.gz")
    code, _, err = cli("audit", hostile, "--jti", STOLEN)
    assert code == 0 and "no file matches" in err
    assert "\x1b" not in err and "\x07" not in err and "\\x1b]0;owned\\x07" in err


def test_audit_names_the_files_it_skipped_for_the_time_window(tmp_path: Path) -> None:
    old = tmp_path / "audit-2026-12-01T08.jsonl.gz"
    old.write_bytes(corrupt_gzip())  # read, it would warn of its corruption
    current = write(tmp_path / "audit-2026-12-05T08.jsonl.gz", trail(100), gz=True)
    code, out, err = cli("audit", str(old), str(current), "--jti", STOLEN, "--since", "2026-12-05T00:00:00Z",
                         "--format", "json")
    assert code == 0 and json_lines(out) == reference_select([str(current)], Query.build(
        jti=STOLEN, since="2026-12-05T00:00:00Z"))
    assert "skipped 1 file outside the time window" in err and old.name in err and "corrupt" not in err


def test_audit_and_incident_unwrap_log_store_exports_from_stdin(tmp_path: Path) -> None:
    records = audit_only(trail(300))
    expected = [r for r in records if r["sub"] == "user-3"]
    for name in ("kubectl --prefix", "loki jsonl", "es _search pretty"):
        data = envelopes(records)[name]
        code, out, _ = cli("audit", "-", "--sub", "user-3", "--format", "json", input=data)
        assert (code, json_lines(out)) == (0, expected), name
        code, out, _ = cli("incident", "-", "--jti", STOLEN, "--format", "json", input=data)
        report = json.loads(out)
        assert code == 0 and report["summary"]["calls"] == sum(r["jti"] == STOLEN for r in records), name
    # the gateway's own lines only: an envelope is not looked into
    code, out, _ = cli("audit", "-", "--sub", "user-3", "--no-unwrap", "--format", "json",
                       input=envelopes(records)["loki jsonl"])
    assert (code, out) == (0, "")


def test_audit_field_names_where_the_record_sits(tmp_path: Path) -> None:
    records = audit_only(trail(100))
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"event": {"audit_record": r}}) + b"\n" for r in records))
    code, out, _ = cli("audit", str(path), "--sub", "user-3", "--field", "event.audit_record", "--format", "json")
    assert (code, json_lines(out)) == (0, [r for r in records if r["sub"] == "user-3"])
    code, _, err = cli("audit", str(path), "--field", "event..x")
    assert code == 2 and "--field" in err and "Traceback" not in err
    code, _, err = cli("audit", str(path), "--field", "a", "--no-unwrap")
    assert code == 2 and "not both" in err


def test_incident_is_the_same_with_one_worker_or_many(tmp_path: Path) -> None:
    records = trail(3000, stolen_from=1000)
    names = [str(write(tmp_path / "a.jsonl", records[:1500])), str(write(tmp_path / "b.jsonl.gz", records[1500:],
                                                                          gz=True))]
    answers = []
    for workers in ("1", "2"):
        code, out, _ = cli("incident", *names, "--jti", STOLEN, "--format", "json", "--workers", workers)
        assert code == 0
        answers.append(json.loads(out))
    assert answers[0] == answers[1]
    targets, related = reference(audit_only(records), Query(jti=STOLEN), ("sid", "sub"))
    assert answers[0]["summary"]["calls"] == len(targets) and related
