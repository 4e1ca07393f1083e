"""The scanning engine (gateway/forensics) against ``grep -F`` and ``zcat | grep -F``, ratios in one run.

    .venv/bin/python bench/forensics_bench.py            # 1M-record file, 10M-record gzip archive
    .venv/bin/python bench/forensics_bench.py --quick    # 200k records, a 200k-record archive

Makes (once, under bench/results/) the log with make_audit_log.py and an archive of it: the
records cut into hourly gzip files named like a rotated log (``audit-2024-05-01T07.jsonl.gz``),
copied into ``--copies`` replica directories. Then times, each command in a fresh process,
best of ``--repeat``, wall clock and peak RSS:

- one file: ``grep -F <jti>``, the engine's ``scan`` (jti filter) in one process and on
  every core (and the same for the shorter needle of a subject), and its ``collect``
  (the incident: the token, its family and its subject);
  ``gateway audit`` and ``gateway incident --html`` as they are, for comparison;
- the archive: ``zcat * | grep -F <jti>`` and the engine, sequential and parallel, with
  each gzip inflater installed (zlib always; python-isal and zlib-ng when importable);
- the archive with ``--since`` covering the last hours: files skipped by name.

The engine runs as ``python bench/forensics_bench.py --child ...``: it imports only
gateway.forensics (what ``gateway audit`` costs once the CLI stops importing the whole
gateway to start); the child's filter is ``jti == J``, as ``Query(jti=J)`` decides. Stops
starting new cases once ``--budget`` seconds have passed. Other work on the machine
skews every number: run it on a quiet machine and read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
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


# --- the child: one scan, printed as JSON lines -------------------------------------------------


class FieldIs:
    """``record[field] == value`` (and ``ts >= since``): what ``Query(jti=J, since=S)`` decides."""

    def __init__(self, name: str, value: str, since: str | None) -> None:
        self.name, self.value, self.since = name, value, since

    def __call__(self, record: dict[str, Any]) -> bool:
        if record.get(self.name) != self.value:
            return False
        ts = record.get("ts")
        return self.since is None or (isinstance(ts, str) and ts >= self.since)


def child(args: argparse.Namespace) -> None:
    from gateway.forensics.scan import Needles, ScanPlan, ScanStats, collect, scan
    from gateway.forensics.times import parse_time, ts_text

    since = ts_text(parse_time(args.since)) if args.since else None
    plan = ScanPlan(match=FieldIs(args.by, args.jti, since), needles=Needles.of([args.jti]), since=since,
                    expand=("sid", "sub") if args.mode == "incident" else ())
    stats = ScanStats()
    workers = None if args.workers == 0 else args.workers
    out = sys.stdout.buffer
    import orjson

    if args.mode == "incident":
        found = collect(args.files, plan, workers=workers, stats=stats)
        records = found.records + found.related
    else:
        records = list(scan(args.files, plan, workers=workers, stats=stats))
    for record in records:
        out.write(orjson.dumps(record) + b"\n")
    out.flush()
    print(json.dumps({"workers": stats.workers, "skipped": len(stats.skipped), "inflate": stats.backend,
                      "search": stats.search,
                      "rescanned MiB": stats.rescanned >> 20, "decoded": stats.decoded,
                      "peak MiB": _peak_mib()}), file=sys.stderr)


def _peak_mib() -> int:
    """The most memory this process held (VmHWM: since its exec, unlike ru_maxrss), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


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


def run(command: Sequence[str], shell: bool = False, env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(seconds, output lines, stderr) of one command in a fresh process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(command if not shell else command[0], shell=shell, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=env)
        code = proc.wait()
        elapsed = time.monotonic() - started
        err.seek(0)
        text = err.read().decode(errors="replace")
        if code not in (0, 1):
            raise SystemExit(f"{command} failed ({code}): {text}")
        out.seek(0)
        lines = sum(block.count(b"\n") for block in iter(lambda: out.read(2**20), b""))
        return elapsed, lines, text


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
        best: tuple[float, int, str] | None = None
        for _ in range(self.repeat):
            result = run(command, shell, env)
            if best is None or result[0] < best[0]:
                best = result
        assert best is not None
        seconds, lines, err = best
        ratio = f"{seconds / baseline:5.2f}x" if baseline else "  base"
        print(f"{name:<58} {seconds:7.3f} s {ratio}  {lines:6d} lines  {_note(err)}", flush=True)
        return seconds


def _note(stderr: str) -> str:
    for line in reversed(stderr.strip().splitlines()):
        if line.startswith("{"):
            info = json.loads(line)
            return ", ".join(f"{k} {v}" for k, v in info.items() if v not in (0, None))
    return ""


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
    parser.add_argument("--child", choices=["scan", "incident"], dest="mode", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--jti", help=argparse.SUPPRESS)
    parser.add_argument("--by", default="jti", help=argparse.SUPPRESS)
    parser.add_argument("--since", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    records = args.records or (200_000 if args.quick else 1_000_000)
    copies = args.copies or (1 if args.quick else 10)
    bench = Bench(args.repeat or (1 if args.quick else 2), args.budget)
    results = Path(args.results)
    log = ensure_log(results, records)
    replicas = ensure_archive(results, log, copies)
    jti = Path(f"{log}.needles").read_text().split()[0]
    engine = [sys.executable, str(Path(__file__).resolve()), "--jti", jti]
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; inflaters: "
          f"{', '.join(backends())}")

    size = log.stat().st_size / 2**20
    print(f"\none file: {log} ({records} records, {size:.0f} MiB, page cache warm), jti {jti}")
    warm(str(log))
    grep = bench.time("grep -F jti", ["grep", "-F", jti, str(log)])
    bench.time("python startup + import gateway.forensics", [sys.executable, "-c", "import gateway.forensics.scan"],
               grep)
    bench.time("engine scan --jti, one process", [*engine, "--child", "scan", "--workers", "1", str(log)], grep)
    bench.time("engine scan --jti, all cores", [*engine, "--child", "scan", str(log)], grep)
    bench.time("engine incident (token+family+subject), one process",
               [*engine, "--child", "incident", "--workers", "1", str(log)], grep)
    bench.time("engine incident (token+family+subject), all cores", [*engine, "--child", "incident", str(log)], grep)
    sub = Path(f"{log}.needles").read_text().split()[2]
    grep_sub = bench.time("grep -F sub (a shorter needle)", ["grep", "-F", sub, str(log)])
    by_sub = [sys.executable, str(Path(__file__).resolve()), "--jti", sub, "--by", "sub", "--child", "scan"]
    bench.time("engine scan --sub, one process", [*by_sub, "--workers", "1", str(log)], grep_sub)
    bench.time("engine scan --sub, all cores", [*by_sub, str(log)], grep_sub)
    gateway = [sys.executable, "-m", "gateway"]
    bench.time("today: gateway audit --jti --format json", [*gateway, "audit", str(log), "--jti", jti, "--format",
                                                          "json"], grep)
    report = Path(tempfile.gettempdir()) / "forensics-bench-report.html"
    bench.time("today: gateway incident --jti --html", [*gateway, "incident", str(log), "--jti", jti, "--html",
                                                       str(report)], grep)

    files = sorted(str(p) for replica in replicas for p in replica.glob("*.jsonl.gz"))
    packed = sum(os.path.getsize(f) for f in files) / 2**20
    print(f"\narchive: {len(files)} gzip files in {len(replicas)} replica dirs ({records * copies} records,"
          f" {packed:.0f} MiB gzip)")
    for path in files:
        warm(path)
    quoted = " ".join(files)
    zcat = bench.time("zcat | grep -F jti", [f"zcat {quoted} | grep -F {jti}"], shell=True)
    dirs = [str(r) for r in replicas]
    for backend in backends():
        env = {**os.environ, "GATEWAY_GZIP_BACKEND": backend}
        bench.time(f"engine scan --jti, one process ({backend})",
                   [*engine, "--child", "scan", "--workers", "1", *dirs], zcat, env=env)
        bench.time(f"engine scan --jti, all cores ({backend})", [*engine, "--child", "scan", *dirs], zcat, env=env)
    installed = backends()
    best = next(b for b in ("isal", "zlib-ng", "zlib") if b in installed)
    env = {**os.environ, "GATEWAY_GZIP_BACKEND": best}
    bench.time(f"engine incident, all cores ({best})", [*engine, "--child", "incident", *dirs], zcat, env=env)
    since = "2024-05-01T22:00:00Z"
    bench.time(f"engine scan --jti --since {since[11:16]} (skips by name)",
               [*engine, "--child", "scan", "--since", since, *dirs], zcat, env=env)


if __name__ == "__main__":
    main()
