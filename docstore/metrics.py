"""What a store measures about itself: :class:`Metrics`, read with ``await store.metrics()``.

The plan's "Monitoring Post-Migration" asks for query response times, connection pool usage,
vector search performance, error rates and disk usage growth. A :class:`Metrics` registry
lives in every store and records, in memory and without touching the database:

- every public operation (``search``, ``search_text``, ``hybrid_search``,
  ``documents.upsert_many``, ``documents.get``, ``fetch``, …), timed into a histogram with
  fixed buckets (cumulative, for Prometheus) plus the most recent
  :data:`RECENT_SAMPLES` durations (for p50/p95/p99). Only the outermost call is recorded:
  ``hybrid_search`` runs two searches but counts once, as itself;
- vector searches again by how they ran (``exact``, ``ann``, ``halfvec``);
- errors by docstore class and SQLSTATE, retries by operation, reads that fell back from a
  replica to the primary;
- pool acquisitions: how long callers waited, how many are waiting now, how many timed out.

Pool sizes and disk usage are read when a snapshot is taken (:meth:`Database.metrics`).
Recording costs a few microseconds a call (``bench/metrics.py`` measures it against a store
with ``DOCSTORE_METRICS=false``). :mod:`docstore.prometheus` exports the same figures.
"""

from __future__ import annotations

import bisect
import contextvars
import functools
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar, cast

import numpy as np
from pydantic import BaseModel

# Upper bounds of the latency buckets, seconds (Prometheus' le labels; +Inf is implied).
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
RECENT_SAMPLES = 1024
"""Durations kept per histogram for percentiles: the last this many calls."""


class LatencyStats(BaseModel):
    """One histogram: counts since the store opened, percentiles of the recent calls."""

    count: int
    """Calls since the store opened."""
    errors: int
    """Of those, calls that raised."""
    total_seconds: float
    mean_ms: float
    p50_ms: float
    """Median of the last ``RECENT_SAMPLES`` calls (0 when there were none)."""
    p95_ms: float
    p99_ms: float
    max_ms: float
    """Slowest of the last ``RECENT_SAMPLES`` calls."""
    buckets: list[tuple[float, int]]
    """Cumulative ``(upper bound in seconds, calls at most that long)``; the last bound is
    ``inf`` and its count is :attr:`count`."""


class Histogram:
    """Fixed-bucket latency histogram plus a window of recent samples. Not thread-safe; a
    store lives on one event loop."""

    __slots__ = ("_counts", "count", "errors", "recent", "total")

    def __init__(self) -> None:
        self._counts = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.errors = 0
        self.total = 0.0
        self.recent: deque[float] = deque(maxlen=RECENT_SAMPLES)

    def observe(self, seconds: float, *, failed: bool = False) -> None:
        self._counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds
        self.recent.append(seconds)
        if failed:
            self.errors += 1

    def cumulative(self) -> list[tuple[float, int]]:
        bounds = (*BUCKETS, float("inf"))
        running, out = 0, []
        for bound, n in zip(bounds, self._counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def stats(self) -> LatencyStats:
        if self.recent:
            p50, p95, p99 = np.percentile(np.fromiter(self.recent, float), [50, 95, 99])
            peak = max(self.recent)
        else:
            p50 = p95 = p99 = peak = 0.0
        return LatencyStats(
            count=self.count,
            errors=self.errors,
            total_seconds=self.total,
            mean_ms=self.total / self.count * 1000 if self.count else 0.0,
            p50_ms=float(p50) * 1000,
            p95_ms=float(p95) * 1000,
            p99_ms=float(p99) * 1000,
            max_ms=float(peak) * 1000,
            buckets=self.cumulative(),
        )


class PoolStats(BaseModel):
    """One connection pool (``role`` primary or replica) as this process sees it."""

    role: str
    url: str
    """The pool's URL, password redacted."""
    size: int
    """Open connections."""
    min_size: int
    max_size: int
    in_use: int
    idle: int
    waiting: int
    """Callers waiting for a connection right now."""
    acquire_timeouts: int
    """Acquisitions that gave up after ``DOCSTORE_POOL_ACQUIRE_TIMEOUT`` (PoolTimeoutError)."""
    acquire: LatencyStats
    """How long callers waited for a connection."""


class DiskUsage(BaseModel):
    """Sizes in bytes, from ``pg_database_size`` and ``pg_*_size`` of ``documents``."""

    measured_at: datetime
    database_bytes: int
    documents_table_bytes: int
    """``documents`` heap plus its TOAST table (the 12 KB vectors live there)."""
    documents_indexes_bytes: int
    indexes: dict[str, int]
    """Each index on ``documents`` by name."""
    growth_bytes: int | None = None
    """Database growth since the previous snapshot (None for the first)."""
    growth_seconds: float | None = None
    """Time between the previous snapshot and this one."""


class ErrorCount(BaseModel):
    error: str
    """docstore error class (``QueryError``, ``PoolTimeoutError``, …)."""
    sqlstate: str | None
    count: int


class SearchRecall(BaseModel):
    """Live recall of ANN searches and the settings in force (``store.tuner``): a sampled
    share of ANN searches re-run exactly in the background."""

    target: float
    estimate: float | None = None
    """Mean recall@k over the last ``samples`` exact re-runs (None before the first)."""
    samples: int = 0
    lowest: float | None = None
    below_target: bool = False
    """``estimate`` under ``target`` over enough samples to say so."""
    ef_search: int | None = None
    """The calibrated first-pass ``hnsw.ef_search`` (None: not calibrated)."""
    escalation_ef_search: int | None = None
    calibration_source: str | None = None
    """What the calibration measured on: "probes", "recent queries" or "given"."""
    calibrated_at: datetime | None = None


class NodeMetrics(BaseModel):
    """One primary node of a Citus cluster in ``store.metrics()`` (a distributed database:
    :mod:`docstore.schema.citus`). Fields a node could not report are None."""

    name: str
    port: int
    coordinator: bool
    reachable: bool
    """The node answered the coordinator's command (within 2 s to connect)."""
    connections: int | None = None
    """Backends connected to this database on the node (``pg_stat_activity``): clients,
    and on a worker the coordinator's connections to its shards."""
    active_queries: int | None = None
    """Of them, running a statement now (``state = 'active'``; the probe not counted)."""
    shards: int | None = None
    """Shards of ``documents`` placed on the node."""
    documents_rows: int | None = None
    """Rows in those shards: ``n_live_tup``, an estimate that lags writes by about a second."""
    documents_bytes: int | None = None
    """Those shards' size on disk, indexes and TOAST included."""


class MetricsSnapshot(BaseModel):
    """What ``store.metrics()`` returns; ``docstore stats`` prints it."""

    taken_at: datetime
    uptime_seconds: float
    """Since the store opened."""
    enabled: bool
    """False when the store was opened with ``DOCSTORE_METRICS=false`` (nothing recorded)."""
    operations: dict[str, LatencyStats]
    vector_search: dict[str, LatencyStats]
    """``search`` calls again, by how they ran: ``exact``, ``ann`` or ``halfvec``."""
    pools: list[PoolStats]
    errors: list[ErrorCount]
    retries: dict[str, int]
    """Retried attempts (transient failures), by operation."""
    replica_fallbacks: int
    """Reads sent to the primary because the read replica was unavailable."""
    routed_searches: int = 0
    """On a Citus cluster: one-source searches run on the worker holding the source's shard
    (:mod:`docstore.core.shards`)."""
    routing_fallbacks: int = 0
    """On a Citus cluster: one-source searches run through the coordinator instead, because
    their worker failed, was marked down after a failure, or had every connection busy."""
    server_connections: dict[str, int] = {}
    """The server's view of this store's connections (``pg_stat_activity`` rows with its
    application_name), by state: ``active``, ``idle``, ``idle in transaction``, …"""
    disk: DiskUsage | None = None
    search_recall: SearchRecall | None = None
    """Live recall of ANN searches (None where the store does no vector search)."""
    nodes: list[NodeMetrics] = []
    """On a distributed database (Citus), every primary node: reachable, connections and
    active queries on it, the shards of ``documents`` it holds with their rows and bytes
    (``[]`` on a single node, which costs nothing extra, and when the nodes could not be
    read: a warning is logged and the rest of the snapshot is kept)."""

    @property
    def error_total(self) -> int:
        return sum(e.count for e in self.errors)


# The operation being recorded in this task, so nested calls (hybrid_search → search,
# documents.get → fetchrow) are recorded once, as the outermost.
_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "docstore_operation", default=None
)


class Metrics:
    """The registry of one store (see the module docstring)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.operations: dict[str, Histogram] = {}
        self.vector_search: dict[str, Histogram] = {}
        self.errors: Counter[tuple[str, str | None]] = Counter()
        self.retries: Counter[str] = Counter()
        self.replica_fallbacks = 0
        self.routed_searches = 0
        self.routing_fallbacks = 0
        self.acquire: dict[str, Histogram] = {}
        self.acquire_timeouts: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()
        self.previous_disk: DiskUsage | None = None

    def _histogram(self, table: dict[str, Histogram], name: str) -> Histogram:
        found = table.get(name)
        if found is None:
            found = table[name] = Histogram()
        return found

    def observe(self, operation: str, seconds: float, error: BaseException | None) -> None:
        self._histogram(self.operations, operation).observe(seconds, failed=error is not None)
        if error is not None:
            self.error(error)

    def error(self, error: BaseException) -> None:
        sqlstate = getattr(error, "sqlstate", None)
        self.errors[(type(error).__name__, sqlstate if isinstance(sqlstate, str) else None)] += 1

    def search_mode(self, mode: str, seconds: float) -> None:
        if self.enabled:
            self._histogram(self.vector_search, mode).observe(seconds)

    def retry(self) -> None:
        if self.enabled:
            self.retries[_CURRENT.get() or "run"] += 1

    def fallback(self) -> None:
        self.replica_fallbacks += 1

    def acquired(self, role: str, seconds: float) -> None:
        if self.enabled:
            self._histogram(self.acquire, role).observe(seconds)

    def timed_out(self, role: str) -> None:
        self.acquire_timeouts[role] += 1

    def snapshot(
        self,
        *,
        pools: list[PoolStats],
        server_connections: dict[str, int],
        disk: DiskUsage | None,
        taken_at: datetime,
        nodes: list[NodeMetrics] | None = None,
    ) -> MetricsSnapshot:
        return MetricsSnapshot(
            taken_at=taken_at,
            uptime_seconds=time.monotonic() - self.started,
            enabled=self.enabled,
            operations={k: h.stats() for k, h in sorted(self.operations.items())},
            vector_search={k: h.stats() for k, h in sorted(self.vector_search.items())},
            pools=pools,
            errors=[
                ErrorCount(error=e, sqlstate=s, count=n)
                for (e, s), n in sorted(self.errors.items(), key=lambda kv: -kv[1])
            ],
            retries=dict(self.retries),
            replica_fallbacks=self.replica_fallbacks,
            routed_searches=self.routed_searches,
            routing_fallbacks=self.routing_fallbacks,
            server_connections=server_connections,
            disk=disk,
            nodes=nodes or [],
        )

    def pool_acquire_stats(self, role: str) -> LatencyStats:
        return self._histogram(self.acquire, role).stats()


F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])


def timed(name: str) -> Callable[[F], F]:
    """Record calls of an async method as operation ``name`` (the outermost call only):
    its latency, and whether it raised. A call cancelled before it finished (a caller's
    timeout, ``asyncio.CancelledError``, ``KeyboardInterrupt``) is not recorded.

    The method's object must have a ``_metrics`` :class:`Metrics` (a store does; a
    repository passes its store's on).
    """

    def decorate(method: F) -> F:
        @functools.wraps(method)
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            metrics: Metrics = self._metrics
            if not metrics.enabled or _CURRENT.get() is not None:
                return await method(self, *args, **kwargs)
            token = _CURRENT.set(name)
            started = time.perf_counter()
            error: BaseException | None = None
            finished = False
            try:
                result = await method(self, *args, **kwargs)
                finished = True
                return result
            except Exception as exc:
                error = exc
                finished = True
                raise
            finally:
                # a cancelled (or interrupted) call neither succeeded nor failed: its partial
                # latency would pass for a fast success, so it is not observed
                if finished:
                    metrics.observe(name, time.perf_counter() - started, error)
                _CURRENT.reset(token)

        return cast(F, wrapper)

    return decorate
