"""Prometheus export of a store's metrics (extra ``docstore[metrics]``: prometheus_client).

The Doc Server mounts the collector next to its own metrics::

    from prometheus_client import REGISTRY, make_asgi_app
    from docstore.prometheus import DocstoreCollector

    REGISTRY.register(DocstoreCollector(store))       # then serve make_asgi_app() on /metrics

or an operator runs ``docstore metrics serve --port 9108`` beside it. The families (all
prefixed ``docstore_``):

============================================  =========  ======================================
``operation_seconds{operation}``              histogram  every public store operation
``vector_search_seconds{mode}``               histogram  searches by exact / ann / halfvec
``errors_total{error,sqlstate}``              counter    failed operations by class, SQLSTATE
``retries_total{operation}``                  counter    retried attempts
``replica_fallbacks_total``                   counter    reads the primary served for a replica
``routed_searches_total``                     counter    Citus: searches run on the shard's worker
``routing_fallbacks_total``                   counter    Citus: ... run on the coordinator instead
``pool_connections{role,state}``              gauge      in_use / idle connections
``pool_max_size{role}``, ``pool_waiting{role}``  gauge   bound; callers waiting right now
``pool_acquire_seconds{role}``                histogram  time to get a connection
``pool_acquire_timeouts_total{role}``         counter    PoolTimeoutError
``database_bytes``, ``documents_table_bytes``  gauge     disk usage
``index_bytes{index}``                        gauge      each index on documents
``disk_growth_bytes``                         gauge      growth between the last two readings
``search_recall``                             gauge      live recall@k of ANN searches
``search_recall_target``, ``_samples``        gauge      its target; exact re-runs behind it
============================================  =========  ======================================

Collecting never waits on the database: disk figures come from the latest reading, and a
reading older than ``disk_refresh_seconds`` is refreshed in the background on the store's event
loop (so the first scrape may have none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from docstore.errors import ConfigurationError
from docstore.metrics import (
    BUCKETS,
    DiskUsage,
    ErrorCount,
    Histogram,
    LatencyStats,
    MetricsSnapshot,
    PoolStats,
    SearchRecall,
)

if TYPE_CHECKING:
    from docstore.core.database import Database
    from docstore.store import Store

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "Prometheus export needs prometheus_client: pip install 'docstore[metrics]'"
    ) from exc

logger = logging.getLogger("docstore")

_BOUNDS = [*(str(b) for b in BUCKETS), "+Inf"]


def _histogram(family: HistogramMetricFamily, labels: list[str], h: Histogram) -> None:
    cumulative = [count for _, count in h.cumulative()]
    family.add_metric(labels, list(zip(_BOUNDS, cumulative, strict=True)), h.total)


class DocstoreCollector(Collector):
    """A prometheus_client collector over one store (see the module docstring)."""

    def __init__(self, store: Database | Store, *, disk_refresh_seconds: float = 60.0) -> None:
        self.store = store
        self.disk_refresh_seconds = disk_refresh_seconds
        # the store's own loop, whichever thread or loop made the collector (a SyncStore's
        # runs on a private thread): disk usage is read on it, with the store's connections
        self._loop: asyncio.AbstractEventLoop = store.loop
        self._refreshing = False

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: families vary with the operations used

    def collect(self) -> Iterator[Metric]:
        m = self.store._metrics
        operations = HistogramMetricFamily(
            "docstore_operation_seconds", "Store operations by name", labels=["operation"]
        )
        op_errors = CounterMetricFamily(
            "docstore_operation_errors", "Operations that raised", labels=["operation"]
        )
        for name, h in list(m.operations.items()):
            _histogram(operations, [name], h)
            op_errors.add_metric([name], h.errors)
        yield operations
        yield op_errors
        searches = HistogramMetricFamily(
            "docstore_vector_search_seconds", "Vector searches by mode", labels=["mode"]
        )
        for mode, h in list(m.vector_search.items()):
            _histogram(searches, [mode], h)
        yield searches
        errors = CounterMetricFamily(
            "docstore_errors", "Errors by docstore class and SQLSTATE", labels=["error", "sqlstate"]
        )
        for (error, sqlstate), n in list(m.errors.items()):
            errors.add_metric([error, sqlstate or ""], n)
        yield errors
        retries = CounterMetricFamily(
            "docstore_retries", "Retried attempts of transient failures", labels=["operation"]
        )
        for name, n in list(m.retries.items()):
            retries.add_metric([name], n)
        yield retries
        yield CounterMetricFamily(
            "docstore_replica_fallbacks",
            "Reads served by the primary because the read replica was unavailable",
            value=m.replica_fallbacks,
        )
        yield CounterMetricFamily(
            "docstore_routed_searches",
            "One-source searches run on the Citus worker holding the source's shard",
            value=m.routed_searches,
        )
        yield CounterMetricFamily(
            "docstore_routing_fallbacks",
            "One-source searches run through the Citus coordinator instead (worker failed or busy)",
            value=m.routing_fallbacks,
        )
        yield from self._pools()
        yield from self._disk()
        yield from self._recall()

    def _recall(self) -> Iterator[Metric]:
        tuner = getattr(self.store, "tuner", None)
        if tuner is None:
            return
        recall = tuner.recall()
        yield GaugeMetricFamily(
            "docstore_search_recall_target", "Recall target of ANN searches", value=recall.target
        )
        yield GaugeMetricFamily(
            "docstore_search_recall_samples",
            "Exact re-runs behind docstore_search_recall",
            value=recall.samples,
        )
        if recall.estimate is not None:
            yield GaugeMetricFamily(
                "docstore_search_recall",
                "Live recall@k of ANN searches (sampled exact re-runs)",
                value=recall.estimate,
            )

    def _pools(self) -> Iterator[Metric]:
        m = self.store._metrics
        connections = GaugeMetricFamily(
            "docstore_pool_connections", "Open pooled connections", labels=["role", "state"]
        )
        max_size = GaugeMetricFamily("docstore_pool_max_size", "Pool bound", labels=["role"])
        waiting = GaugeMetricFamily(
            "docstore_pool_waiting", "Callers waiting for a connection", labels=["role"]
        )
        timeouts = CounterMetricFamily(
            "docstore_pool_acquire_timeouts", "Acquisitions that timed out", labels=["role"]
        )
        acquire = HistogramMetricFamily(
            "docstore_pool_acquire_seconds", "Time to get a connection", labels=["role"]
        )
        for pool in self.store._pools():
            role, p = pool.role, pool.pool
            idle = p.get_idle_size()
            connections.add_metric([role, "in_use"], p.get_size() - idle)
            connections.add_metric([role, "idle"], idle)
            max_size.add_metric([role], p.get_max_size())
            waiting.add_metric([role], m.waiting[role])
            timeouts.add_metric([role], m.acquire_timeouts[role])
            if role in m.acquire:
                _histogram(acquire, [role], m.acquire[role])
        yield from (connections, max_size, waiting, timeouts, acquire)

    def _disk(self) -> Iterator[Metric]:
        usage = self.store._metrics.previous_disk
        stale = usage is None or time.time() - usage.measured_at.timestamp() > (
            self.disk_refresh_seconds
        )
        if stale:
            self._refresh_disk()
        if usage is None:
            return
        yield GaugeMetricFamily(
            "docstore_database_bytes", "pg_database_size", value=usage.database_bytes
        )
        yield GaugeMetricFamily(
            "docstore_documents_table_bytes",
            "documents heap and TOAST",
            value=usage.documents_table_bytes,
        )
        index = GaugeMetricFamily("docstore_index_bytes", "Indexes on documents", labels=["index"])
        for name, size in usage.indexes.items():
            index.add_metric([name], size)
        yield index
        if usage.growth_bytes is not None:
            yield GaugeMetricFamily(
                "docstore_disk_growth_bytes",
                "Database growth between the last two disk readings",
                value=usage.growth_bytes,
            )

    def _refresh_disk(self) -> None:
        loop = self._loop
        if loop.is_closed() or self._refreshing:
            return
        self._refreshing = True

        async def refresh() -> None:
            try:
                await self.store.disk_usage()
            except Exception as exc:  # a scrape must not fail because the database did
                logger.warning("disk usage for metrics failed: %s", type(exc).__name__)
            finally:
                self._refreshing = False

        def start() -> None:
            loop.create_task(refresh())

        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            start()
        else:
            loop.call_soon_threadsafe(start)


def registry_for(store: Database | Store, **options: Any) -> CollectorRegistry:
    """A registry holding only this store's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DocstoreCollector(store, **options))
    return registry


async def serve(
    store: Database | Store,
    port: int,
    *,
    addr: str = "127.0.0.1",
    disk_refresh_seconds: float = 60.0,
    probe_seconds: float = 15.0,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``store``'s metrics on ``http://addr:port/metrics`` until ``stop`` is set.

    Meanwhile the disk usage is read every ``disk_refresh_seconds`` and ``store.health()``
    runs every ``probe_seconds`` (its latency lands in ``operation_seconds{operation=
    "health"}``), so a standalone exporter shows the database's responsiveness too.
    """
    registry = registry_for(store, disk_refresh_seconds=disk_refresh_seconds)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    stop = stop or asyncio.Event()
    next_disk = 0.0
    try:
        while not stop.is_set():
            now = time.monotonic()
            try:
                await store.health()
                if now >= next_disk:
                    await store.disk_usage()
                    next_disk = now + disk_refresh_seconds
            except Exception as exc:  # keep serving: the failure is itself a metric
                logger.warning("metrics probe failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), probe_seconds)
    finally:
        server.shutdown()
        thread.join(5)


def _quantile(buckets: list[tuple[float, int]], q: float) -> float:
    """Estimate a quantile (seconds) from cumulative buckets, interpolating inside a bucket
    as Prometheus' histogram_quantile does."""
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return 0.0
    rank = q * total
    lower, below = 0.0, 0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, count
    return lower


def _latency(
    count: int, total: float, errors: int, buckets: list[tuple[float, int]]
) -> LatencyStats:
    ms = [_quantile(buckets, q) * 1000 for q in (0.5, 0.95, 0.99)]
    return LatencyStats(
        count=count,
        errors=errors,
        total_seconds=total,
        mean_ms=total / count * 1000 if count else 0.0,
        p50_ms=ms[0],
        p95_ms=ms[1],
        p99_ms=ms[2],
        max_ms=0.0,
        buckets=buckets,
    )


def snapshot_from_text(text: str) -> MetricsSnapshot:
    """A :class:`~docstore.metrics.MetricsSnapshot` rebuilt from a scrape of this exporter
    (``docstore stats --from URL``). Percentiles are estimated from the buckets; ``max_ms`` is
    not exported (0)."""
    hist: dict[tuple[str, str], dict[str, Any]] = {}
    scalars: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, dict(sample.labels), float(sample.value)
            if family.type == "histogram":
                key = next((labels[k] for k in ("operation", "mode", "role") if k in labels), "")
                entry = hist.setdefault((family.name, key), {"buckets": [], "count": 0, "sum": 0})
                if name.endswith("_bucket"):
                    entry["buckets"].append((float(labels["le"]), int(value)))
                elif name.endswith("_count"):
                    entry["count"] = int(value)
                elif name.endswith("_sum"):
                    entry["sum"] = value
            else:
                scalars.setdefault(name.removesuffix("_total"), []).append((labels, value))

    def values(name: str, label: str) -> dict[str, float]:
        return {ls.get(label, ""): v for ls, v in scalars.get(name, [])}

    op_errors = values("docstore_operation_errors", "operation")

    def group(family: str, errors: dict[str, float] | None = None) -> dict[str, LatencyStats]:
        return {
            key: _latency(e["count"], e["sum"], int((errors or {}).get(key, 0)), e["buckets"])
            for (fam, key), e in sorted(hist.items())
            if fam == family
        }

    acquire = group("docstore_pool_acquire_seconds")
    pools = []
    connections = scalars.get("docstore_pool_connections", [])
    for role, max_size in values("docstore_pool_max_size", "role").items():
        state = {ls["state"]: int(v) for ls, v in connections if ls.get("role") == role}
        pools.append(
            PoolStats(
                role=role,
                url="",
                size=state.get("in_use", 0) + state.get("idle", 0),
                min_size=0,
                max_size=int(max_size),
                in_use=state.get("in_use", 0),
                idle=state.get("idle", 0),
                waiting=int(values("docstore_pool_waiting", "role").get(role, 0)),
                acquire_timeouts=int(values("docstore_pool_acquire_timeouts", "role").get(role, 0)),
                acquire=acquire.get(role) or _latency(0, 0.0, 0, []),
            )
        )
    disk = None
    database = values("docstore_database_bytes", "")
    if database:
        growth = values("docstore_disk_growth_bytes", "")
        disk = DiskUsage(
            measured_at=datetime.now(UTC),
            database_bytes=int(database[""]),
            documents_table_bytes=int(values("docstore_documents_table_bytes", "").get("", 0)),
            documents_indexes_bytes=int(sum(values("docstore_index_bytes", "index").values())),
            indexes={k: int(v) for k, v in values("docstore_index_bytes", "index").items()},
            growth_bytes=int(growth[""]) if growth else None,
        )
    return MetricsSnapshot(
        taken_at=datetime.now(UTC),
        uptime_seconds=0.0,
        enabled=True,
        operations=group("docstore_operation_seconds", op_errors),
        vector_search=group("docstore_vector_search_seconds"),
        pools=pools,
        errors=[
            ErrorCount(error=ls.get("error", ""), sqlstate=ls.get("sqlstate") or None, count=int(v))
            for ls, v in scalars.get("docstore_errors", [])
        ],
        retries={k: int(v) for k, v in values("docstore_retries", "operation").items()},
        replica_fallbacks=int(values("docstore_replica_fallbacks", "").get("", 0)),
        routed_searches=int(values("docstore_routed_searches", "").get("", 0)),
        routing_fallbacks=int(values("docstore_routing_fallbacks", "").get("", 0)),
        disk=disk,
        search_recall=_recall_from(values),
    )


def _recall_from(values: Callable[[str, str], dict[str, float]]) -> SearchRecall | None:
    target = values("docstore_search_recall_target", "")
    if not target:
        return None
    estimate = values("docstore_search_recall", "").get("")
    return SearchRecall(
        target=target[""],
        estimate=estimate,
        samples=int(values("docstore_search_recall_samples", "").get("", 0)),
    )
