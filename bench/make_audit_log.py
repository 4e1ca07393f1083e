"""Write a large synthetic audit log (JSON lines, optionally gzip) for timing ``gateway audit``/``incident``.

    .venv/bin/python bench/make_audit_log.py --records 1000000 --out bench/results/audit-1m.jsonl

The records look like the gateway's own (same fields, same ``ts`` format), spread over a
day, from 20,000 subjects and ~60,000 tokens, with 1 in 200 lines an operational log line
(``"type": "log"``). A few "needle" tokens (printed on stdout and written to ``<out>.needles``,
one per line as ``jti sid sub``) are each used ~50 times from two networks, with some calls for scopes
they lack, so an incident query has something to find.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import pathlib
import random
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

import orjson

ROUTES = [
    ("list-orders", "GET", "/orders", ["orders:read"]),
    ("create-order", "POST", "/orders", ["orders:write"]),
    ("change-order", "PUT", "/orders/{id}", ["orders:write"]),
    ("order-status", "GET", "/orders/{id}/status", ["orders:admin", "orders:read"]),
]
AGENTS = ["okhttp/4.12.0", "python-requests/2.32.3", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "curl/8.5.0"]


def ts(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(
    rng: random.Random, moment: float, token: dict[str, Any], ip: str, scope_fail: bool = False
) -> dict[str, Any]:
    name, method, path, scopes = rng.choice(ROUTES)
    path = path.replace("{id}", str(rng.randrange(1, 100000)))
    held = token["scopes"]
    missing = sorted(set(scopes) - set(held)) if name != "order-status" else (
        [] if set(held) & set(scopes) else sorted(scopes))
    if scope_fail and not missing:
        name, method, path, scopes = ROUTES[1]
        missing = sorted(set(scopes) - set(held))
    denied = bool(missing)
    return {
        "type": "audit", "ts": ts(moment), "request_id": f"{rng.getrandbits(96):024x}", "mode": "proxy",
        "client_ip": ip, "method": method, "host": "api.example", "path": path, "route": name,
        "upstream": "orders", "status": 403 if denied else 200, "decision": "deny" if denied else "allow",
        "reason": "insufficient_scope" if denied else "allowed", "sub": token["sub"], "client_id": token["client"],
        "iss": "https://id.example", "jti": token["jti"], "sid": token["sid"], "token_fingerprint": token["fp"],
        "scopes": held, "required_scopes": sorted(scopes), "missing_scopes": missing,
        "user_agent": token["agent"], "duration_ms": round(rng.uniform(0.5, 40), 3),
        "upstream_ms": None if denied else round(rng.uniform(0.3, 35), 3), "bytes_in": 0,
        "bytes_out": 120 if denied else rng.randrange(200, 5000),
    }


def make_token(rng: random.Random, sub: str, sid: str, jti: str | None = None) -> dict[str, Any]:
    jti = jti or f"{rng.getrandbits(128):032x}"
    return {
        "jti": jti, "sid": sid, "sub": sub, "client": rng.choice(["web", "mobile", "batch"]),
        "fp": hashlib.sha256(jti.encode()).hexdigest()[:32], "agent": rng.choice(AGENTS),
        "scopes": rng.choice([["orders:read"], ["orders:read", "orders:write"], ["orders:read"], ["profile"]]),
    }


def generate(out: IO[bytes], records: int, needles: int, seed: int, start: float) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    subjects = [f"user-{i:05d}" for i in range(20000)]
    pool = [make_token(rng, rng.choice(subjects), f"sess-{i:06d}") for i in range(60000)]
    needle_tokens = [
        make_token(rng, f"needle-user-{i}", f"needle-family-{i}", jti=f"needle{i:02d}{rng.getrandbits(96):024x}")
        for i in range(needles)
    ]
    for token in needle_tokens:
        token["scopes"] = ["orders:read"]
    # each needle gets ~50 calls at random positions, half of them from a second network
    needle_at: dict[int, int] = {}
    for n in range(needles):
        for _ in range(50):
            needle_at[rng.randrange(records)] = n
    span = 86400.0
    buffer: list[bytes] = []
    log_line = orjson.dumps({"type": "log", "ts": ts(start), "level": "info", "logger": "gateway",
                             "msg": "jwks refreshed", "issuer": "https://id.example"}) + b"\n"
    for i in range(records):
        moment = start + span * i / records
        n = needle_at.get(i)
        if n is not None:
            token = needle_tokens[n]
            second = rng.random() < 0.5
            ip = f"203.0.113.{rng.randrange(1, 250)}" if second else f"10.{n}.0.{rng.randrange(1, 250)}"
            rec = record(rng, moment, token, ip, scope_fail=second and rng.random() < 0.4)
            if second:
                rec["user_agent"] = "python-requests/2.31.0"
        else:
            token = pool[rng.randrange(len(pool))]
            rec = record(rng, moment, token, f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
        buffer.append(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
        if i % 200 == 199:
            buffer.append(log_line)
        if len(buffer) >= 20000:
            out.write(b"".join(buffer))
            buffer.clear()
    out.write(b"".join(buffer))
    return needle_tokens


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag with its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0:  # a switch: its help says what off means (not "default: False")
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, metavar="N",
                        help="audit records to write (operational log lines come on top: one per 200 records)")
    parser.add_argument("--out", default="bench/results/audit-1m.jsonl", metavar="PATH",
                        help="output file ('-' for stdout); the needles go to PATH.needles beside it")
    parser.add_argument("--gzip", action="store_true",
                        help="gzip the output (name it .gz yourself; default: plain JSON lines)")
    parser.add_argument("--needles", type=int, default=3, metavar="N",
                        help="tokens used ~50 times each from two networks, for incident queries to find")
    parser.add_argument("--seed", type=int, default=5, help="random seed: the same seed writes the same file")
    parser.add_argument("--start", default="2024-05-01T00:00:00Z", metavar="TIME",
                        help="RFC 3339 time of the first record; the records span the day after it")
    return parser


def main() -> None:
    parser_ = parser()
    args = parser_.parse_args()
    start = datetime.fromisoformat(args.start.replace("Z", "+00:00")).timestamp()
    began = time.monotonic()
    if args.out == "-":
        sink: IO[bytes] = gzip.GzipFile(fileobj=sys.stdout.buffer, mode="wb") if args.gzip else sys.stdout.buffer
        needles = generate(sink, args.records, args.needles, args.seed, start)
        sink.flush()
    else:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        opener = gzip.open if args.gzip else open
        with opener(args.out, "wb") as sink:
            needles = generate(sink, args.records, args.needles, args.seed, start)
    target = sys.stderr if args.out == "-" else sys.stdout
    lines = "".join(f"{t['jti']} {t['sid']} {t['sub']}\n" for t in needles)
    print(lines, end="", file=target)
    if args.out != "-":
        pathlib.Path(f"{args.out}.needles").write_text(lines)
    print(f"wrote {args.records} records to {args.out} in {time.monotonic() - began:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
