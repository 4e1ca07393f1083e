"""``gateway audit`` / ``gateway incident`` against ``grep -F`` and ``zcat | grep -F``, ratios in one run.

    .venv/bin/python bench/forensics_bench.py            # 1M-record file, 10M-record gzip archive
    .venv/bin/python bench/forensics_bench.py --quick    # 200k records, a 200k-record archive

Makes (once, under bench/results/) the log with make_audit_log.py and an archive of it: the
records cut into hourly gzip files named like a rotated log (``audit-2024-05-01T07.jsonl.gz``),
copied into ``--copies`` replica directories. Then times the commands as a responder runs
them, each in a fresh process, best of ``--repeat``: wall clock, output lines, peak RSS of
the command's own process (its scanning workers hold one block each):

- one file: ``grep -F <jti>`` (the baseline), ``gateway audit --jti`` on every core and in one
  process, ``gateway audit --sub`` against ``grep -F <sub>``, and ``gateway incident --jti
  --html`` (the token, its family and its subject's other tokens, in one scan);
- the archive (directories of gzip files): ``zcat * | grep -F <jti>`` (the baseline) and
  ``gateway audit <dirs> --jti`` with each gzip inflater installed (zlib always; python-isal
  and zlib-ng when importable; ``GATEWAY_GZIP_BACKEND`` picks one), ``gateway incident``, and
  ``--since`` covering the last hours (files skipped by their names).

Targets (issue 17): audit <= 2x grep, incident <= 3x grep, archive < 4x zcat | grep. Stops
starting new cases once ``--budget`` seconds have passed. Other work on the machine skews
every number: run it on a quiet machine and read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# --- data -------------------------------------------------------------------------------------


def ensure_log(results: Path, records: int) -> Path:
    log = results / f"audit-{records}.jsonl"
    if not log.exists() or not Path(f"{log}.needles").exists():
        print(f"making {log} ({records} records)...", file=sys.stderr)
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_audit_log.py"), "--records", str(records),
                        "--out", str(log)], check=True, stdout=subprocess.DEVNULL)
    return log


_HOUR = re.compile(rb'"ts":"(\d{4}-\d\d-\d\dT\d\d)')


def ensure_archive(results: Path, log: Path, copies: int) -> list[Path]:
    """Hourly gzip files of the log, in ``copies`` replica directories."""
    base = results / f"archive-{log.stem}"
    first = base / "replica-0"
    if not first.exists():
        print(f"making {first} (hourly gzip files)...", file=sys.stderr)
        first.mkdir(parents=True)
        sinks: dict[bytes, Any] = {}
        try:
            with log.open("rb") as source:
                for line in source:
                    match = _HOUR.search(line, 0, 80)
                    hour = match.group(1) if match else b"unknown"
                    sink = sinks.get(hour)
                    if sink is None:
                        sink = sinks[hour] = gzip.open(first / f"audit-{hour.decode()}.jsonl.gz", "wb", 6)  # noqa: SIM115
                    sink.write(line)
        finally:
            for sink in sinks.values():
                sink.close()
    for k in range(1, copies):
        replica = base / f"replica-{k}"
        if not replica.exists():
            shutil.copytree(first, replica)
    return [base / f"replica-{k}" for k in range(copies)]


# --- timing -----------------------------------------------------------------------------------


def run(command: Sequence[str], shell: bool = False,
        env: dict[str, str] | None = None) -> tuple[float, int, str, int]:
    """(seconds, output lines, stderr, peak RSS in MiB) of one command in a fresh process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(command if not shell else command[0], shell=shell, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - started
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
        if code not in (0, 1):
            raise SystemExit(f"{command} failed ({code}): {text}")
        out.seek(0)
        lines = sum(block.count(b"\n") for block in iter(lambda: out.read(2**20), b""))
        return elapsed, lines, text, usage.ru_maxrss // 1024


def warm(path: str) -> None:
    """Read a file once so that every case finds it in the page cache."""
    with open(path, "rb") as file:
        while file.read(2**22):
            pass


class Bench:
    def __init__(self, repeat: int, budget: float) -> None:
        self.repeat, self.budget, self.started = repeat, budget, time.monotonic()

    def over(self) -> bool:
        return time.monotonic() - self.started > self.budget

    def time(self, name: str, command: Sequence[str], baseline: float | None = None, shell: bool = False,
             env: dict[str, str] | None = None) -> float:
        if self.over():
            print(f"{name:<58} skipped: --budget spent", flush=True)
            return float("nan")
        best: tuple[float, int, str, int] | None = None
        for _ in range(self.repeat):
            result = run(command, shell, env)
            if best is None or result[0] < best[0]:
                best = result
        assert best is not None
        seconds, lines, err, peak = best
        ratio = f"{seconds / baseline:5.2f}x" if baseline else "  base"
        print(f"{name:<58} {seconds:7.3f} s {ratio}  {lines:6d} lines  {peak:5d} MiB  {_note(err)}", flush=True)
        return seconds


def _note(stderr: str) -> str:
    """What the command said last on stderr (``N records matched``, files skipped)."""
    said = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    skipped = next((line for line in said if line.startswith("skipped")), "")
    return "; ".join(filter(None, [skipped.rstrip(":"), said[-1] if said else ""]))


def backends() -> list[str]:
    found = ["zlib"]
    for name, module in (("isal", "isal"), ("zlib-ng", "zlib_ng")):
        if importlib.util.find_spec(module) is not None:
            found.append(name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200k records, one replica, one run each")
    parser.add_argument("--records", type=int, help="records in the log (default 1,000,000; --quick 200,000)")
    parser.add_argument("--copies", type=int, help="replicas in the archive (default 10; --quick 1)")
    parser.add_argument("--repeat", type=int, help="runs per case, best kept (default 2; --quick 1)")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds after which no case starts")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    records = args.records or (200_000 if args.quick else 1_000_000)
    copies = args.copies or (1 if args.quick else 10)
    bench = Bench(args.repeat or (1 if args.quick else 2), args.budget)
    results = Path(args.results)
    log = ensure_log(results, records)
    replicas = ensure_archive(results, log, copies)
    needles = Path(f"{log}.needles").read_text().split()
    jti, sub = needles[0], needles[2]
    gateway = [sys.executable, "-m", "gateway"]
    report = str(Path(tempfile.gettempdir()) / "forensics-bench-report.html")
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; inflaters: "
          f"{', '.join(backends())}")

    size = log.stat().st_size / 2**20
    print(f"\none file: {log} ({records} records, {size:.0f} MiB, page cache warm), jti {jti}")
    warm(str(log))
    grep = bench.time("grep -F jti", ["grep", "-F", jti, str(log)])
    bench.time("python startup + gateway --help", [*gateway, "--help"], grep)
    bench.time("gateway audit --jti (target <= 2x)", [*gateway, "audit", str(log), "--jti", jti, "--format", "json"],
               grep)
    bench.time("gateway audit --jti --workers 1", [*gateway, "audit", str(log), "--jti", jti, "--format", "json",
                                                   "--workers", "1"], grep)
    grep_sub = bench.time("grep -F sub (a shorter needle)", ["grep", "-F", sub, str(log)])
    bench.time("gateway audit --sub (target <= 2x)", [*gateway, "audit", str(log), "--sub", sub, "--format", "json"],
               grep_sub)
    bench.time("gateway incident --jti --html (target <= 3x)",
               [*gateway, "incident", str(log), "--jti", jti, "--html", report], grep)

    files = sorted(str(p) for replica in replicas for p in replica.glob("*.jsonl.gz"))
    packed = sum(os.path.getsize(f) for f in files) / 2**20
    print(f"\narchive: {len(files)} gzip files in {len(replicas)} replica dirs ({records * copies} records,"
          f" {packed:.0f} MiB gzip)")
    for path in files:
        warm(path)
    zcat = bench.time("zcat | grep -F jti", [f"zcat {' '.join(files)} | grep -F {jti}"], shell=True)
    dirs = [str(r) for r in replicas]
    audit_dirs = [*gateway, "audit", *dirs, "--jti", jti, "--format", "json"]
    for backend in backends():
        env = {**os.environ, "GATEWAY_GZIP_BACKEND": backend}
        bench.time(f"gateway audit <dirs> --jti, one process ({backend})", [*audit_dirs, "--workers", "1"], zcat,
                   env=env)
        bench.time(f"gateway audit <dirs> --jti ({backend}; target < 4x)", audit_dirs, zcat, env=env)
    bench.time("gateway incident <dirs> --jti --html", [*gateway, "incident", *dirs, "--jti", jti, "--html", report],
               zcat)
    since = "2024-05-01T22:00:00Z"
    bench.time(f"gateway audit <dirs> --jti --since {since[11:16]} (skips by name)",
               [*audit_dirs, "--since", since], zcat)


if __name__ == "__main__":
    main()
