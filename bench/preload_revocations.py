"""Bench only: start ``gateway serve`` with N entries already in the in-memory revocation list.

The benchmark's configuration has no Redis, so the list lives in each gateway process
(each worker). ``bench/run.py`` writes a ``sitecustomize.py`` that imports this module
and calls ``install_from_env()`` in every Python process it starts with
``BENCH_REVOCATIONS`` set: the gateway's own processes (workers are forked from the parent
and fill their own list when they build their store). The entries go in through
``RevocationList.add``, as the revocation endpoints put them, before the gateway serves;
each process writes how much resident memory they took to ``$BENCH_REVOCATIONS_REPORT.<pid>`` (JSON).
"""

from __future__ import annotations

import gc
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any


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


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs ``patch`` on a module right after it is first imported, whoever imports it: this
    module runs at interpreter start (sitecustomize), and importing the gateway that early would
    create its metrics before ``gateway serve`` has set up the workers' multiprocess directory
    (workers are forked from the parent since the fork change, and it refuses that)."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name, self.patch = name, patch

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            self.patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install(entries: int, probe_jti: str, report: str | None) -> None:
    """Make ``build_store`` return stores that already hold ``entries`` entries."""
    sys.meta_path.insert(0, _PatchOnImport("gateway.revocation.store_factory",
                                           lambda module: _wrap(module, entries, probe_jti, report)))


def _wrap(store_module: ModuleType, entries: int, probe_jti: str, report: str | None) -> None:
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
