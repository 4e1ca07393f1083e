"""Prometheus metrics, served on the admin port.

Labels use the shared decision reasons (``gateway.reasons.Reason``) so a metric, an audit
record and an error response always agree. With ``PROMETHEUS_MULTIPROC_DIR`` set (several
workers), prometheus-client's multiprocess mode aggregates the workers' values.

The per-request metrics (``gateway_requests_total`` and the two duration histograms) are
counted on the request path in plain Python objects (``PendingCount``, ``PendingHistogram``)
and folded into prometheus-client by ``fold()``: every second (``Gateway``'s timer), when
the proxy has no request in flight, before every read of these metrics (``render_latest``,
any ``collect()`` of the registry) and when the gateway stops. In multiprocess mode each
``inc``/``observe`` checks the pid and writes an mmap'd file, about 5% of the CPU of a
request (BENCHMARKS.md); folded, that is paid once per second and label set instead.
What another worker counted reaches the shared files by that worker's own fold: while it
is busy, a scrape can miss up to its last second of requests (never once it is idle).
"""

from __future__ import annotations

import math
import os
import threading
from bisect import bisect_left
from collections.abc import Iterable
from itertools import compress
from operator import ne
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from .reasons import Reason

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LATENCY_BOUNDS = (*_LATENCY_BUCKETS, math.inf)  # the upper bounds of a histogram's buckets, +Inf included

# prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR at its import): values live in mmap'd files
_SHARED_FILES = values.ValueClass is not values.MutexValue
_fold_lock = threading.Lock()  # one fold at a time (a scrape may come from another thread)
_counts: list[PendingCount] = []
_histograms: list[PendingHistogram] = []


class PendingCount:
    """A counter child's increments not yet folded into it; ``count += 1`` on the request path.

    ``count`` only grows and is written by the recording thread alone; ``fold`` adds what
    it gained since the last fold, so a fold from another thread never loses an increment.
    """

    __slots__ = ("_child", "_folded", "count")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self._folded = 0
        self.count = 0
        _counts.append(self)

    def _fold(self) -> None:
        count = self.count
        self._child.inc(count - self._folded)
        self._folded = count


class PendingHistogram:
    """A histogram child's observations not yet folded into it: a count per bucket and the sum.

    ``observe`` puts a value in the same bucket prometheus-client would (the first upper
    bound >= the value); ``fold`` adds the new counts to the child's buckets and the new sum
    to its sum, which is what as many ``Histogram.observe`` calls would have done.
    """

    __slots__ = ("_bounds", "_child", "_folded", "_folded_sum", "buckets", "sum")

    def __init__(self, child: Histogram, bounds: tuple[float, ...]) -> None:
        self._child = child
        self._bounds = bounds
        self._folded = [0] * len(bounds)
        self._folded_sum = 0.0
        self.buckets = [0] * len(bounds)
        self.sum = 0.0
        _histograms.append(self)

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def _fold(self) -> None:
        buckets, folded = self.buckets[:], self._folded
        # prometheus-client has no bulk observe: add to the child's bucket and sum values
        # directly (their layout is checked in _bulk_foldable, and by tests/test_metrics.py)
        child: Any = self._child
        for i in compress(range(len(buckets)), map(ne, buckets, folded)):  # the buckets that changed
            child._buckets[i].inc(buckets[i] - folded[i])
        self._folded = buckets
        total = self.sum
        child._sum.inc(total - self._folded_sum)
        self._folded_sum = total


class DirectHistogram:
    """``observe`` straight into the child: if prometheus-client's histogram layout ever changes."""

    __slots__ = ("_child",)

    def __init__(self, child: Histogram) -> None:
        self._child = child

    def observe(self, value: float) -> None:
        self._child.observe(value)


def idle() -> None:
    """The proxy has no request in flight: with several workers, fold now.

    Another worker's scrape reads this process's counts from the shared files, so an idle
    worker keeps nothing pending; under load the timer folds every second. In one process
    every read folds first, so nothing is needed here.
    """
    if _SHARED_FILES:
        fold()


def fold() -> None:
    """Add what the request path counted since the last fold to the prometheus-client metrics."""
    with _fold_lock:
        for count in _counts[:]:
            if count.count != count._folded:
                count._fold()
        for histogram in _histograms[:]:
            if histogram.buckets != histogram._folded:
                histogram._fold()


class _FoldingCounter(Counter):
    """A Counter that folds the pending counts before it is read."""

    def collect(self) -> Iterable[Metric]:
        fold()
        return super().collect()


class _FoldingHistogram(Histogram):
    """A Histogram that folds the pending observations before it is read."""

    def collect(self) -> Iterable[Metric]:
        fold()
        return super().collect()


def _bulk_foldable(child: Histogram, bounds: tuple[float, ...]) -> bool:
    buckets, total = getattr(child, "_buckets", None), getattr(child, "_sum", None)
    return (
        isinstance(buckets, list) and len(buckets) == len(bounds) and all(hasattr(b, "inc") for b in buckets)
        and hasattr(total, "inc") and list(getattr(child, "_upper_bounds", ())) == list(bounds)
    )


def pending_count(counter: Counter, *labels: str) -> PendingCount:
    """The pending increments of one labelled child of a folding counter (one per label set: memoise it)."""
    return PendingCount(counter.labels(*labels))


def pending_histogram(histogram: Histogram, label: str) -> PendingHistogram | DirectHistogram:
    """The pending observations of one labelled child of a latency histogram (one per label: memoise it)."""
    child = histogram.labels(label)
    if _bulk_foldable(child, _LATENCY_BOUNDS):
        return PendingHistogram(child, _LATENCY_BOUNDS)
    return DirectHistogram(child)


# the pending counts and observations of the request path, made once per label set and kept, as
# prometheus-client keeps the children themselves (labels() locks and hashes every call)
_COUNTS_BY_LABELS: dict[tuple[Counter, tuple[str, ...]], PendingCount] = {}
_HISTOGRAMS_BY_LABEL: dict[tuple[Histogram, str], PendingHistogram | DirectHistogram] = {}
# count_request's by outcome: route, method, status and reason, without building the label strings
_OUTCOMES: dict[tuple[str, str, int, Reason], tuple[PendingCount, PendingHistogram | DirectHistogram]] = {}


def pending(counter: Counter, *labels: str) -> PendingCount:
    """The memoised pending increments of a folding counter's child ``labels``: ``.count += 1`` on the
    request path, folded by ``fold`` (for a caller that keeps it, as a cache keeps its hit and miss)."""
    key = (counter, labels)
    found = _COUNTS_BY_LABELS.get(key)
    if found is None:
        found = _COUNTS_BY_LABELS[key] = pending_count(counter, *labels)
    return found


def count(counter: Counter, *labels: str) -> None:
    """Add one to a folding counter's child ``labels`` (on the request path; folded by ``fold``)."""
    pending(counter, *labels).count += 1


def _histogram_child(histogram: Histogram, label: str) -> PendingHistogram | DirectHistogram:
    key = (histogram, label)
    pending = _HISTOGRAMS_BY_LABEL.get(key)
    if pending is None:
        pending = _HISTOGRAMS_BY_LABEL[key] = pending_histogram(histogram, label)
    return pending


def observe(histogram: Histogram, label: str, value: float) -> None:
    """Observe ``value`` in a latency histogram's child ``label`` (on the request path; folded by ``fold``)."""
    _histogram_child(histogram, label).observe(value)


def count_request(route: str, method: str, status: int, reason: Reason, duration: float | None) -> None:
    """Count one finished request in ``REQUESTS`` and, unless ``duration`` is None, ``REQUEST_DURATION``."""
    key = (route, method, status, reason)
    pending = _OUTCOMES.get(key)
    if pending is None:
        pending = _OUTCOMES[key] = (
            pending_count(REQUESTS, route, method, str(status), reason.decision, reason.value),
            _histogram_child(REQUEST_DURATION, route),
        )
    pending[0].count += 1
    if duration is not None:
        pending[1].observe(duration)


# counted through count_request / observe (Gateway.record), folded by fold()
REQUESTS = _FoldingCounter(
    "gateway_requests_total", "Requests by route, method, status, decision and reason",
    ["route", "method", "status", "decision", "reason"],
)
REQUEST_DURATION = _FoldingHistogram(
    "gateway_request_duration_seconds", "Time from request head to the end of the response", ["route"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_DURATION = _FoldingHistogram(
    "gateway_upstream_duration_seconds", "Time until the upstream answered with its head", ["upstream"],
    buckets=_LATENCY_BUCKETS,
)
# counted through count on the decision path (binding.py, policy.py), folded by fold()
DPOP_PROOFS = _FoldingCounter(
    "gateway_dpop_proofs_total", "DPoP proofs checked, by result (valid or the refusal's reason)", ["result"],
)
RULE_DENIALS = _FoldingCounter(
    "gateway_rule_denials_total", "Requests refused by a claims rule, by route and rule name", ["route", "rule"],
)
TOKEN_VALIDATIONS = Counter(
    "gateway_token_validations_total", "Token validations (cache misses) by issuer and result", ["issuer", "result"],
)
JWKS_REFRESH = Counter("gateway_jwks_refresh_total", "JWKS fetches by issuer and result", ["issuer", "result"])
# the verified-token cache counts its hits and misses through pending (tokens/cache.py), folded by fold()
TOKEN_CACHE = _FoldingCounter(
    "gateway_token_cache_total", "Verified-token and introspection cache lookups", ["cache", "result"],
)
INTROSPECTION_CALLS = Counter(
    "gateway_introspection_requests_total", "Introspection calls by issuer and result", ["issuer", "result"],
)
INTROSPECTION_DURATION = Histogram(
    "gateway_introspection_duration_seconds", "Introspection call latency", ["issuer"], buckets=_LATENCY_BUCKETS,
)
INTROSPECTION_COALESCED = Counter(
    "gateway_introspection_coalesced_total", "Requests that waited for an introspection call already in flight",
    ["issuer"],
)
REVOCATION_ENTRIES = Gauge(
    "gateway_revocation_entries", "Entries in the local copy of the revocation list", multiprocess_mode="livemax",
)
REVOCATION_REDIS_UP = Gauge(
    "gateway_revocation_redis_up", "1 while the revocation feed from Redis is connected", multiprocess_mode="livemin",
)
REVOCATION_LAG = Gauge(
    "gateway_revocation_notification_lag_seconds", "Delay between a revocation write and its notification here",
    multiprocess_mode="livemax",
)
REVOCATION_RESYNCS = Counter("gateway_revocation_resyncs_total", "Full reloads of the revocation list", ["cause"])
REVOCATION_REDIS_ERRORS = Counter("gateway_revocation_redis_errors_total", "Redis errors in the revocation feed")
REVOCATION_SNAPSHOT_LOADS = Counter(
    "gateway_revocation_snapshot_loads_total", "Looks at the signed revocation snapshot at start-up, by result",
    ["result"],
)
REVOCATION_SNAPSHOT_REPAIRED = Counter(
    "gateway_revocation_snapshot_repaired_total",
    "Entries a verifying scan found in the keys but missing or weaker in a copy loaded from the snapshot",
)
CONFIG_RELOADS = Counter("gateway_config_reload_total", "Configuration reloads by result", ["result"])
SUSPICIOUS = Counter("gateway_suspicious_token_use_total", "Suspicious token uses detected", ["reason"])
AUDIT_DROPPED = Counter("gateway_audit_write_errors_total", "Audit batches that could not be written")
AUDIT_OVERFLOW = Counter(
    "gateway_audit_records_dropped_total", "Audit records dropped because the sink fell behind by audit.max_pending",
)
AUDIT_UNSERIALISABLE = Counter(
    "gateway_audit_records_unserialisable_total",
    "Audit records that could not be written as JSON and were replaced by a minimal record saying so",
)
AUDIT_HEARTBEAT = Gauge(
    "gateway_audit_writer_heartbeat_timestamp_seconds",
    "Unix time the audit writer last went round its loop (0 without a sink); stale when it is dead or stuck",
    multiprocess_mode="livemin",
)

# traffic control: rate limits (ratelimit/) and long-lived connections (websocket/)
RATE_LIMITED = Counter(
    "gateway_rate_limited_total", "Requests refused by a rate limit, by route and limit", ["route", "limit"],
)
RATE_LIMIT_UNAVAILABLE = Counter(
    "gateway_rate_limit_unavailable_total",
    "Requests whose limits could not be checked (Redis unavailable), by route and on_redis_error outcome",
    ["route", "outcome"],
)
LONG_CONNECTIONS = Gauge(
    "gateway_long_connections", "Open WebSocket and streaming connections by route and kind", ["route", "kind"],
    multiprocess_mode="livesum",
)
LONG_CONNECTION_CLOSES = Counter(
    "gateway_long_connection_closes_total", "Closed WebSocket and streaming connections by route, kind and reason",
    ["route", "kind", "reason"],
)


def render_latest() -> tuple[bytes, str]:
    """The exposition text, aggregated over workers in multiprocess mode.

    This process's pending counts are folded first; another worker's reach the shared
    files by its own fold (at most a second behind while it is busy, at once when idle).
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        fold()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
