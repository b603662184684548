"""Metrics (issue 8): what store.metrics() and the Prometheus endpoint report after real work."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

import docstore
from docstore.cli import app
from docstore.errors import PoolTimeoutError, QueryError
from docstore.prometheus import DocstoreCollector, registry_for, serve, snapshot_from_text
from tests.conftest import sample_documents, unit_vector


async def workload(store: docstore.Store) -> None:
    await store.documents.upsert_many(sample_documents(60))
    for i in range(5):
        await store.search(unit_vector(i), limit=3)
    await store.search(unit_vector(1), source_name="tokio", exact=True)
    await store.search_text("spawn task", limit=3)
    await store.hybrid_search("spawn", unit_vector(2), limit=3)
    await store.documents.get_by_key("rust", "tokio", "tokio/1")
    await store.documents.count()


async def test_a_workload_fills_histograms_pools_and_disk(store: docstore.Store) -> None:
    """Acceptance 1 (first half): non-zero histograms for the operations used, pool figures
    and disk usage."""
    await workload(store)
    snap = await store.metrics()
    ops = snap.operations
    assert ops["search"].count == 6  # the hybrid search's inner search is not counted again
    assert ops["hybrid_search"].count == 1 and ops["search_text"].count == 1
    assert ops["documents.upsert_many"].count == 1
    assert ops["documents.get_by_key"].count == 1 and ops["documents.count"].count == 1
    for name in ("search", "documents.upsert_many", "hybrid_search"):
        stats = ops[name]
        assert stats.total_seconds > 0 and 0 < stats.p50_ms <= stats.p99_ms <= stats.max_ms
        assert stats.buckets[-1] == (float("inf"), stats.count)
    assert "fetch" not in ops and "run" not in ops  # nested calls are not recorded twice
    assert snap.vector_search["exact"].count == 7  # 6 searches + the hybrid's
    (pool,) = snap.pools
    assert pool.role == "primary" and pool.max_size == 5 and 1 <= pool.size <= 5
    assert pool.in_use == 0 and pool.waiting == 0 and pool.acquire.count >= 10
    assert snap.server_connections and sum(snap.server_connections.values()) >= 1
    assert snap.disk is not None and snap.disk.database_bytes > 0
    assert snap.disk.documents_table_bytes > 0 and "documents_pkey" in snap.disk.indexes
    assert snap.disk.growth_bytes is None  # the first reading
    assert snap.errors == [] and snap.retries == {}


async def test_disk_growth_is_measured_between_snapshots(store: docstore.Store) -> None:
    first = await store.disk_usage()
    await store.documents.upsert_many(sample_documents(300, "serde"))
    second = await store.disk_usage()
    assert second.growth_bytes is not None and second.growth_bytes > 300 * 6000
    assert second.growth_seconds is not None and second.growth_seconds > 0
    assert second.documents_table_bytes > first.documents_table_bytes


async def test_errors_are_counted_by_class_and_sqlstate(store: docstore.Store) -> None:
    with pytest.raises(QueryError):
        await store.execute("select 1 / 0")
    with pytest.raises(QueryError):
        await store.execute("select 1 / 0")
    with pytest.raises(docstore.ValidationError):
        await store.search([1.0, 2.0])  # wrong dimension: refused before any SQL
    snap = await store.metrics(disk=False)
    counts = {(e.error, e.sqlstate): e.count for e in snap.errors}
    assert counts[("QueryError", "22012")] == 2 and counts[("ValidationError", None)] == 1
    assert snap.operations["execute"].errors == 2 and snap.operations["search"].errors == 1
    assert snap.error_total == 3


async def test_pool_waiters_and_acquire_timeouts_are_counted(database_url: str) -> None:
    async with docstore.connect(database_url, pool_max_size=1, pool_min_size=1) as store:
        async with store.acquire():
            waiter = asyncio.create_task(store.fetchval("select 1"))
            while store.pool_stats()[0].waiting == 0:
                await asyncio.sleep(0.01)
            assert store.pool_stats()[0].in_use == 1
            with pytest.raises(PoolTimeoutError):
                async with store.acquire(timeout=0.05):
                    pass
        assert await waiter == 1
        (pool,) = store.pool_stats()
        assert pool.waiting == 0 and pool.acquire_timeouts == 1 and pool.acquire.max_ms > 0


async def test_metrics_can_be_switched_off(database_url: str) -> None:
    async with docstore.connect(database_url, metrics=False) as store:
        await store.fetchval("select 1")
        await store.search(unit_vector(0), exact=True)
        snap = await store.metrics(disk=False)
    assert snap.enabled is False and snap.operations == {} and snap.vector_search == {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_prometheus_endpoint_serves_the_same_figures(store: docstore.Store) -> None:
    """Acceptance 1 (second half): a real HTTP scrape of `serve()`; `docstore stats --from`
    reads it back."""
    await workload(store)
    with pytest.raises(QueryError):
        await store.execute("select 1 / 0")
    port = _free_port()
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(store, port, probe_seconds=0.1, stop=stop))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        text = ""
        deadline = asyncio.get_running_loop().time() + 60  # a loaded CI machine is slow
        while asyncio.get_running_loop().time() < deadline:
            # until the server is up, the first disk reading is in and a probe has run
            try:
                text = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(url, timeout=5).read().decode()
                )
            except OSError:
                text = ""
            if "docstore_database_bytes" in text and 'operation="health"' in text:
                break
            await asyncio.sleep(0.05)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        ops = {
            s.labels["operation"]: s.value
            for s in families["docstore_operation_seconds"].samples
            if s.name.endswith("_count")
        }
        assert ops["search"] == 6 and ops["documents.upsert_many"] == 1 and ops["health"] >= 1
        errors = families["docstore_errors"].samples
        assert any(s.labels == {"error": "QueryError", "sqlstate": "22012"} for s in errors)
        pool = {s.labels["state"]: s.value for s in families["docstore_pool_connections"].samples}
        assert pool["in_use"] + pool["idle"] >= 1
        assert families["docstore_database_bytes"].samples[0].value > 0

        rebuilt = snapshot_from_text(text)
        assert rebuilt.operations["search"].count == 6 and rebuilt.operations["search"].p50_ms > 0
        assert rebuilt.disk is not None and rebuilt.disk.database_bytes > 0
        result = await asyncio.to_thread(CliRunner().invoke, app, ["stats", "--from", url])
        assert result.exit_code == 0, result.output
        assert "documents.upsert_many" in result.output and "QueryError" in result.output
    finally:
        stop.set()
        await serving


async def test_a_collector_mounted_in_an_app_registry(store: docstore.Store) -> None:
    """How the Doc Server mounts it: its own registry, scraped while its loop runs."""
    await store.search(unit_vector(3), exact=True)
    await store.disk_usage()
    registry = registry_for(store)
    text = await asyncio.to_thread(lambda: generate_latest(registry).decode())
    assert 'docstore_vector_search_seconds_count{mode="exact"} 1.0' in text
    assert isinstance(next(iter(registry._collector_to_names)), DocstoreCollector)


def test_docstore_stats_prints_this_processes_view(database_url: str) -> None:
    result = CliRunner().invoke(app, ["stats", "--url", database_url])
    assert result.exit_code == 0, result.output
    assert "connection pools" in result.output and "disk: database" in result.output
    as_json = CliRunner().invoke(app, ["stats", "--url", database_url, "--json"])
    assert as_json.exit_code == 0 and '"database_bytes"' in as_json.output


def test_a_sync_stores_collector_reads_disk_usage_on_the_stores_own_loop(
    database_url: str,
) -> None:
    """A collector over a SyncStore's store (its loop runs on a private thread) refreshes
    the disk figures on that loop — made in a plain script (no loop at all) or inside another
    running loop (Jupyter's) — never on the caller's loop with the store's connections."""
    import time

    import docstore.sync

    def scrape_until_disk(registry: object, seconds: float = 20.0) -> str:
        deadline = time.monotonic() + seconds
        while True:
            text = generate_latest(registry).decode()  # type: ignore[arg-type]
            if "docstore_database_bytes " in text or time.monotonic() > deadline:
                return text
            time.sleep(0.1)

    with docstore.sync.connect(database_url, pool_min_size=1, pool_max_size=2) as s:
        assert "docstore_database_bytes " in scrape_until_disk(
            registry_for(s.store, disk_refresh_seconds=0)
        )

        async def in_a_running_loop() -> None:
            registry = registry_for(s.store, disk_refresh_seconds=0)
            for _ in range(10):
                generate_latest(registry)
                await asyncio.sleep(0.05)

        asyncio.run(in_a_running_loop())
        time.sleep(0.3)
        assert s.documents.count() == 0  # the pool's connections are intact
        assert s.metrics(disk=False).errors == []


async def test_a_cancelled_call_is_not_recorded_as_a_fast_success(store: docstore.Store) -> None:
    """A caller's timeout cancels a 5 s statement after 0.2 s: neither a success at 0.2 s nor
    a failure — the operation's histogram does not count it."""
    await store.fetchval("select 1")
    before = (await store.metrics(disk=False)).operations["fetchval"]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.fetchval("select pg_sleep(5)"), 0.2)
    after = (await store.metrics(disk=False)).operations["fetchval"]
    assert (after.count, after.errors) == (before.count, before.errors)
    assert await store.fetchval("select 2") == 2  # and the pool is fine


def test_stats_from_shows_the_endpoints_port_and_refuses_url_with_it() -> None:
    """An http endpoint is not a database URL: its port is not a password to hide (it was
    shown as ``***``), a password or query value in it is; ``--url`` with ``--from`` is a
    usage error (--from silently won)."""
    from docstore.urls import redact_url

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = CliRunner().invoke(app, ["stats", "--from", f"http://127.0.0.1:{port}/metrics"])
    assert result.exit_code == 1 and f"127.0.0.1:{port}/metrics" in result.output
    assert redact_url("https://u:hunter2@[::1]:9108/metrics?token=abc&x=") == (
        "https://u:***@[::1]:9108/metrics?token=***&x=***"
    )
    both = CliRunner().invoke(
        app, ["stats", "--url", "postgresql://u@127.0.0.1:1/x", "--from", "http://h:1/metrics"]
    )
    assert both.exit_code == 2, both.output
