"""Bench only: run ``gateway serve`` with N entries already in the in-memory revocation list.

The configuration has no Redis, so the list lives in the gateway's process. This wrapper
fills it before the gateway starts serving, through the same ``RevocationList.add`` the
revocation endpoints use, then hands over to the ordinary CLI. It also writes how much
resident memory the entries took (``--report FILE``, JSON) so the benchmark can state the
memory per entry.

    python bench/preload_revocations.py --entries 1000000 --probe-jti bench-revoked \
        --report mem.json -- serve --config gateway.yaml
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import time
from pathlib import Path

from gateway import cli, runtime
from gateway.config import RevocationConfig
from gateway.revocation.entries import Entry, Kind
from gateway.revocation.store import RevocationStore


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def fill(store: RevocationStore, entries: int, probe_jti: str) -> None:
    """``entries`` live entries: 70% tokens (jti and fingerprints), 10% each families, subjects, clients."""
    expires = time.time() + 7 * 86400
    now = time.time()
    kinds = [Kind.TOKEN] * 7 + [Kind.FAMILY, Kind.SUBJECT, Kind.CLIENT]
    add = store.list.add
    add(Entry(Kind.TOKEN, probe_jti, expires))
    for i in range(1, entries):
        kind = kinds[i % 10]
        if kind is Kind.TOKEN and i % 2:
            value = hashlib.sha256(b"bench-%d" % i).hexdigest()  # a full token fingerprint
        else:
            value = f"bench-{kind.value}-{i}"
        add(Entry(kind, value, expires, not_before=now if kind in (Kind.SUBJECT, Kind.CLIENT) else None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--probe-jti", default="bench-revoked")
    parser.add_argument("--report", type=Path)
    parser.add_argument("cli_args", nargs=argparse.REMAINDER, help="-- then the gateway CLI arguments")
    args = parser.parse_args()
    cli_args = args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args
    original = runtime.build_store

    def build_store(config: RevocationConfig) -> RevocationStore:
        store = original(config)
        gc.collect()
        before = rss_bytes()
        started = time.monotonic()
        fill(store, args.entries, args.probe_jti)
        gc.collect()
        after = rss_bytes()
        if args.report is not None:
            args.report.write_text(json.dumps({
                "entries": len(store.list), "rss_before": before, "rss_after": after,
                "bytes_per_entry": (after - before) / max(len(store.list), 1),
                "fill_seconds": time.monotonic() - started,
            }))
        return store

    runtime.build_store = build_store  # type: ignore[assignment]  # Gateway.__init__ looks it up here
    sys.argv = ["gateway", *cli_args]
    cli.main()


if __name__ == "__main__":
    main()
