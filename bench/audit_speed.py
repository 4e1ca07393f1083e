"""Time ``gateway audit`` / ``gateway incident`` on a large audit log (made by make_audit_log.py).

    .venv/bin/python bench/audit_speed.py [--records 1000000] [--log bench/results/audit-1m.jsonl]

Generates the log (and a gzip copy) when missing, then runs each command as its own process
and reports wall time and peak RSS (``ru_maxrss`` of that child, from ``wait4``).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], stdin: Path | None = None) -> tuple[float, int, int]:
    """(seconds, peak RSS in MiB, output lines) of one command run in a fresh process."""
    with tempfile.TemporaryFile() as out, open(stdin or os.devnull, "rb") as source:
        started = time.monotonic()
        proc = subprocess.Popen(args, stdin=source, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{args} failed with {proc.returncode}")
        out.seek(0)
        lines = out.read().count(b"\n")
    return elapsed, usage.ru_maxrss // 1024, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--log", default="bench/results/audit-1m.jsonl")
    args = parser.parse_args()
    log = Path(args.log)
    if not log.exists():
        subprocess.run([sys.executable, "bench/make_audit_log.py", "--records", str(args.records), "--out", str(log)],
                       check=True, stdout=subprocess.DEVNULL)
    gz = log.with_suffix(log.suffix + ".gz")
    if not gz.exists():
        with log.open("rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 2**20)
    jti = Path(f"{log}.needles").read_text().split()[0]
    gateway = [sys.executable, "-m", "gateway"]
    print(f"log: {log} ({log.stat().st_size / 2**20:.0f} MiB, gzip {gz.stat().st_size / 2**20:.0f} MiB), jti {jti}")
    cases = [
        ("startup only (gateway audit --help)", [*gateway, "audit", "--help"], None),
        ("audit --jti (plain file)", [*gateway, "audit", str(log), "--jti", jti], None),
        ("incident --jti (plain file, two passes)", [*gateway, "incident", str(log), "--jti", jti], None),
        ("audit --jti (gzip file)", [*gateway, "audit", str(gz), "--jti", jti], None),
        ("incident --jti (gzip on stdin)", [*gateway, "incident", "--jti", jti], gz),
        ("audit --decision deny --route create-order (parses every line)",
         [*gateway, "audit", str(log), "--decision", "deny", "--route", "create-order", "--format", "json"], None),
    ]
    for name, command, stdin in cases:
        seconds, rss, lines = run(command, stdin)
        print(f"{name:<62} {seconds:6.2f} s  peak RSS {rss:4d} MiB  ({lines} output lines)")


if __name__ == "__main__":
    main()
