"""Bench only: start ``gateway serve`` with N entries already in the in-memory revocation list.

The benchmark's configuration has no Redis, so the list lives in each gateway process
(each worker). ``bench/run.py`` writes a ``sitecustomize.py`` that imports this module
and calls ``install_from_env()`` in every Python process it starts with
``BENCH_REVOCATIONS`` set: the gateway's own processes, workers included (they are fresh
interpreters). The entries go in through ``RevocationList.add``, as the revocation
endpoints put them, before the gateway serves; each process writes how much resident
memory they took to ``$BENCH_REVOCATIONS_REPORT.<pid>`` (JSON).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from pathlib import Path


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def fill(add: object, entries: int, probe_jti: str) -> None:
    """``entries`` live entries: 70% tokens (jti and fingerprints), 10% each families, subjects, clients."""
    from gateway.revocation.entries import Entry, Kind

    assert callable(add)
    expires = time.time() + 7 * 86400
    now = time.time()
    kinds = [Kind.TOKEN] * 7 + [Kind.FAMILY, Kind.SUBJECT, Kind.CLIENT]
    add(Entry(Kind.TOKEN, probe_jti, expires))
    for i in range(1, entries):
        kind = kinds[i % 10]
        if kind is Kind.TOKEN and i % 2:
            value = hashlib.sha256(b"bench-%d" % i).hexdigest()  # a full token fingerprint
        else:
            value = f"bench-{kind.value}-{i}"
        add(Entry(kind, value, expires, not_before=now if kind in (Kind.SUBJECT, Kind.CLIENT) else None))


def install(entries: int, probe_jti: str, report: str | None) -> None:
    """Make ``build_store`` return stores that already hold ``entries`` entries."""
    from gateway.revocation import store_factory as store_module

    original = store_module.build_store

    def build_store(config):  # type: ignore[no-untyped-def]
        store = original(config)
        gc.collect()
        before = rss_bytes()
        started = time.monotonic()
        fill(store.list.add, entries, probe_jti)
        gc.collect()
        after = rss_bytes()
        if report:
            Path(f"{report}.{os.getpid()}").write_text(json.dumps({
                "entries": len(store.list), "rss_before": before, "rss_after": after,
                "bytes_per_entry": (after - before) / max(len(store.list), 1),
                "fill_seconds": time.monotonic() - started,
            }))
        return store

    store_module.build_store = build_store  # gateway.runtime imports it from here, after this runs


def install_from_env() -> None:
    count = os.environ.get("BENCH_REVOCATIONS")
    if count:
        install(int(count), os.environ.get("BENCH_REVOCATIONS_PROBE", "bench-revoked"),
                os.environ.get("BENCH_REVOCATIONS_REPORT"))
