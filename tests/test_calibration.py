"""Self-calibrating ANN against a real database: calibration at index build, stored for every
process, used by default searches, live recall, and recalibration (issue 14 B)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

import docstore
from docstore import Document
from docstore.search import growth, planner, table_changes
from docstore.search import tuner as tuner_module
from docstore.search.calibration import Calibrator, TableChangedError
from docstore.search.tuning import Calibration

DIM = 3072
ROWS = 2000


def clustered(n: int, *, clusters: int = 40, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Unit vectors of centroid + N(0, spread²) per dimension (issue 14's shape)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, clusters, n)] + rng.normal(
        scale=spread / np.sqrt(DIM), size=(n, DIM)
    ).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def noisy_queries(points: np.ndarray, n: int, *, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = points[rng.integers(0, len(points), n)] + rng.normal(scale=noise, size=(n, DIM)).astype(
        np.float32
    )
    return q / np.linalg.norm(q, axis=1, keepdims=True)


async def load(
    store: docstore.Store, points: np.ndarray, *, start: int = 0, analyze: bool = True
) -> None:
    await store.documents.upsert_many(
        Document(source_name=f"s{i % 10}", doc_path=f"d{i}", content=f"doc {i}", embedding=v)
        for i, v in enumerate(points, start=start)
    )
    if analyze:
        await store.execute("ANALYZE documents")


@pytest.fixture
async def indexed(database_url: str) -> AsyncIterator[tuple[docstore.Store, np.ndarray]]:
    points = clustered(ROWS)
    async with docstore.connect(database_url) as store:
        await load(store, points)
        await store.create_vector_index()  # builds, then calibrates on probes
        yield store, points


@pytest.mark.parametrize("analyzed", [False, True])
async def test_stored_probes_are_found_however_sparse_the_ids(
    store: docstore.Store, analyzed: bool
) -> None:
    """Calibration's probes come from random pages, not random ids: after most rows are
    deleted (or on Citus, where each worker counts ids from its own range) drawing ids in
    [min, max] finds almost nothing; a table the planner has no row count for is sampled too."""
    await store.documents.upsert_many(
        Document(source_name=f"s{i % 10}", doc_path=f"d{i}", content="c", embedding=v)
        for i, v in enumerate(clustered(400, seed=3))
    )
    await store.execute("DELETE FROM documents WHERE id % 40 <> 0")  # 10 left, ids 40 apart
    reltuples = "SELECT reltuples FROM pg_class WHERE oid = 'documents'::regclass"
    if analyzed:
        await store.execute("VACUUM ANALYZE documents")
        assert await store.fetchval(reltuples) == 10
    else:
        assert await store.fetchval(reltuples) < 0  # the planner has no row count yet
    sample = await Calibrator(store).sample_stored(8)
    assert len(sample) == 8
    assert len({v.tobytes() for v in sample}) == 8
    rows = await store.fetch("SELECT embedding FROM documents")
    kept = {np.asarray(r["embedding"], dtype=np.float32).tobytes() for r in rows}
    assert len(kept) == 10 and {v.tobytes() for v in sample} <= kept
    assert [v.tobytes() for v in await Calibrator(store).sample_stored(8)] == [
        v.tobytes() for v in sample
    ]  # the same table, the same sample


async def test_index_build_calibrates_and_stores_the_settings(
    indexed: tuple[docstore.Store, np.ndarray], database_url: str
) -> None:
    store, _ = indexed
    calibration = await store.tuner.calibration()
    assert isinstance(calibration, Calibration)
    assert calibration.query_source == "probes" and calibration.queries == tuner_module.PROBES
    assert calibration.met_target and calibration.expected_recall >= 0.98
    assert calibration.table_rows == ROWS
    # in the database: another store (another process) searches with the same settings
    async with docstore.connect(database_url) as other:
        assert await other.tuner.calibration() == calibration
        results = await other.search(clustered(1, seed=9)[0])
        assert results.mode == "ann" and results.ef_search == calibration.ef_search


async def test_default_search_meets_the_target_on_queries_far_from_every_document(
    indexed: tuple[docstore.Store, np.ndarray],
) -> None:
    store, points = indexed
    queries = noisy_queries(points, 60, noise=0.05, seed=4)  # best match cosine ~0.34
    recalls = []
    for q in queries:
        ann = await store.search(q)
        exact = await store.search(q, exact=True)
        recalls.append(len(set(ann.ids) & set(exact.ids)) / len(exact.ids))
    assert np.mean(recalls) >= 0.98 and min(recalls) >= 0.7, (np.mean(recalls), min(recalls))


async def test_explicit_settings_override_the_calibration(
    indexed: tuple[docstore.Store, np.ndarray],
) -> None:
    store, points = indexed
    results = await store.search(points[0], ef_search=300)
    assert results.ef_search == 300 and not results.escalated


async def test_calibrate_on_given_queries_and_a_stricter_target(
    indexed: tuple[docstore.Store, np.ndarray],
) -> None:
    store, points = indexed
    queries = noisy_queries(points, 40, noise=0.05, seed=8)
    calibration = await store.calibrate_search(query_vectors=queries, target=0.995)
    assert calibration.query_source == "given" and calibration.target_recall == 0.995
    assert (await store.tuner.calibration()) == calibration


async def test_duplicated_vectors_are_no_misses(database_url: str) -> None:
    """100 documents share one vector: the exact top 10 of a query near it is an arbitrary
    pick of 10 equals (by id), so an ANN search that returns 10 others lost nothing.
    Counted by id, calibration found recall 0.10 and 'target not met' there."""
    points = clustered(ROWS, seed=5)
    points[np.arange(0, ROWS, ROWS // 100)] = points[0]
    rng = np.random.default_rng(6)
    near = points[0] + rng.normal(scale=1 / np.sqrt(DIM), size=(20, DIM)).astype(np.float32)
    async with docstore.connect(database_url) as store:
        await load(store, points)
        await store.create_vector_index()
        calibration = await store.calibrate_search(query_vectors=near)
        assert calibration.met_target and calibration.lowest_recall == 1.0
        report = await store.evaluate_recall(query_vectors=list(near), limit=10)
        assert report.recall == 1.0 and report.min_recall == 1.0


async def test_live_recall_estimate_tracks_true_recall(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every search re-run exactly (sample 1.0, unlimited budget) with a deliberately low
    ef_search: the estimate is within ±0.03 of the recall the test measures itself."""
    monkeypatch.setenv("DOCSTORE_SEARCH_RECALL_SAMPLE", "1")
    monkeypatch.setenv("DOCSTORE_SEARCH_RECALL_BUDGET", "1")
    monkeypatch.setenv("DOCSTORE_HNSW_EF_SEARCH", "10")  # explicit: no calibration, no 2nd pass
    monkeypatch.setenv("DOCSTORE_SEARCH_OVERSAMPLE", "1")
    rng = np.random.default_rng(2)  # no structure at all: HNSW's hardest case
    points = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    queries = rng.standard_normal((220, DIM)).astype(np.float32)
    async with docstore.connect(database_url) as store:
        await load(store, points)
        await store.create_vector_index(calibrate=False)
        truth = []
        for q in queries:
            ann = await store.search(q)
            await store.tuner.wait()  # this test wants every search measured
            exact = await store.search(q, exact=True)
            truth.append(len(set(ann.ids) & set(exact.ids)) / len(exact.ids))
        estimate = store.tuner.recall()
    assert estimate.samples == min(len(queries), tuner_module.RECALL_WINDOW)
    true_recall = float(np.mean(truth[-estimate.samples :]))
    assert estimate.estimate is not None
    assert abs(estimate.estimate - true_recall) <= 0.03, (estimate.estimate, true_recall)
    assert true_recall < 0.98  # the test is only meaningful when recall is imperfect


async def test_live_recall_is_not_lowered_by_min_similarity(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live recall compares the ANN top ``limit`` with the exact top ``limit``: hits that
    ``min_similarity`` then drops are not misses (they were counted as such: an estimate near
    0.1 for searches that returned exactly the right hits, "degraded" health and needless
    recalibrations)."""
    monkeypatch.setenv("DOCSTORE_SEARCH_RECALL_SAMPLE", "1")
    monkeypatch.setenv("DOCSTORE_SEARCH_RECALL_BUDGET", "1")
    monkeypatch.setenv("DOCSTORE_HNSW_EF_SEARCH", "400")  # near-exact ANN on 600 rows
    points = clustered(600)
    async with docstore.connect(database_url) as store:
        await load(store, points)
        await store.create_vector_index(calibrate=False)
        for q in noisy_queries(points, 30, noise=0.001, seed=5):
            hits = await store.search(q, min_similarity=0.99)
            assert hits.mode == "ann" and 1 <= len(hits) < 10
            await store.tuner.wait()
        estimate = store.tuner.recall()
    assert estimate.samples == 30
    assert estimate.estimate is not None and estimate.estimate >= 0.95, estimate


async def test_live_recall_shows_in_metrics_and_health(
    indexed: tuple[docstore.Store, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = indexed
    snapshot = await store.metrics(disk=False)
    assert snapshot.search_recall is not None
    assert snapshot.search_recall.target == 0.98
    health = await store.health()
    assert health.search_recall is not None and health.ok


async def test_a_new_process_reports_the_stored_calibration(
    indexed: tuple[docstore.Store, np.ndarray], database_url: str
) -> None:
    """(Review of 2026-12-06.) `docstore health` / `docstore stats` right after `docstore index
    calibrate` said "not calibrated": a new store reported only what it had cached."""
    store, _ = indexed
    stored = await store.tuner.calibration()
    assert stored is not None
    async with docstore.connect(database_url) as fresh:  # as a new process would
        health = await fresh.health()
        assert health.search_recall is not None
        assert health.search_recall.ef_search == stored.ef_search
        assert health.search_recall.calibrated_at == stored.calibrated_at
    async with docstore.connect(database_url) as fresh:
        recall = (await fresh.metrics(disk=False)).search_recall
        assert recall is not None and recall.ef_search == stored.ef_search


async def test_recent_queries_replace_the_probes(
    indexed: tuple[docstore.Store, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After MIN_RECENT real searches a probe calibration is redone on them, in the
    background, and stored with the queries (for `docstore index calibrate` elsewhere)."""
    monkeypatch.setattr(tuner_module, "RECALIBRATE_SECONDS", 0.0)
    store, points = indexed
    for q in noisy_queries(points, tuner_module.MIN_RECENT, noise=0.01, seed=12):
        await store.search(q)
    await store.tuner.wait()
    calibration = await store.tuner.calibration()
    assert calibration is not None and calibration.query_source == "recent queries"
    stored = await store.fetchval("SELECT count(*) FROM docstore_search_queries")
    assert stored >= tuner_module.MIN_RECENT


async def test_no_query_vectors_kept_when_opted_out(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCSTORE_SEARCH_KEEP_QUERIES", "false")
    points = clustered(300)
    async with docstore.connect(database_url) as store:
        await load(store, points)
        await store.create_vector_index()
        for q in points[:10]:
            await store.search(q)
        await store.calibrate_search()
        assert await store.fetchval("SELECT count(*) FROM docstore_search_queries") == 0


async def test_read_only_store_calibrates_in_memory(
    indexed: tuple[docstore.Store, np.ndarray], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only store keeps its calibration in memory — past the cache period too (it went
    back to the stored one after 30 s: after growth a background calibration each minute)."""
    store, _ = indexed
    before = await store.fetchval("SELECT calibration::text FROM docstore_search_calibration")
    async with docstore.connect(database_url, read_only=True) as reader:
        calibration = await reader.calibrate_search(sample=30)
        assert (await reader.tuner.calibration()) == calibration
        monkeypatch.setattr(tuner_module, "CACHE_SECONDS", 0.0)  # read again: still its own
        assert (await reader.tuner.calibration()) == calibration
        await reader.tuner.wait()
        assert reader.tuner._calibrating is None  # no growth against its own estimate
        after = await store.fetchval("SELECT calibration::text FROM docstore_search_calibration")
        assert before == after  # nothing stored
        newer = await store.calibrate_search(sample=30)  # a writer stores one: it is in force
        assert (await reader.tuner.calibration()) == newer
        await reader.calibrate_search(sample=30)  # review 81: a writer's stored before the
        newest = await store.calibrate_search(sample=30)  # reader's next lookup is in force
        assert (await reader.tuner.calibration()) == newest


async def test_growth_triggers_a_background_recalibration(
    indexed: tuple[docstore.Store, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tuner_module, "CACHE_SECONDS", 0.0)
    monkeypatch.setattr(tuner_module, "RECALIBRATE_SECONDS", 0.0)
    store, _ = indexed
    first = await store.tuner.calibration()
    assert first is not None
    more = clustered(ROWS, seed=77)
    await store.documents.upsert_many(
        Document(source_name="more", doc_path=f"m{i}", content="x", embedding=v)
        for i, v in enumerate(more)
    )
    await store.execute("ANALYZE documents")
    await store.tuner.calibration()  # notices the growth
    await store.tuner.wait()
    second = await store.tuner.calibration()
    assert second is not None and abs(second.table_rows - 2 * ROWS) <= 0.02 * ROWS  # reltuples
    assert second.calibrated_at > first.calibrated_at


async def test_calibration_needs_an_index(store: docstore.Store) -> None:
    with pytest.raises(docstore.SchemaError, match="create_vector_index"):
        await store.calibrate_search()


async def test_background_work_stops_with_the_store(
    indexed: tuple[docstore.Store, np.ndarray],
) -> None:
    store, points = indexed
    await store.search(points[1])
    await asyncio.wait_for(store.tuner.aclose(), 10)


async def test_search_uses_the_defaults_where_the_calibration_cannot_be_read(
    indexed: tuple[docstore.Store, np.ndarray], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A schema older than migration 5 (a read-only store never upgrades it) or a role without
    SELECT on the table: searches still run, on the default settings, and say so once."""
    store, points = indexed
    await store.execute("DROP TABLE docstore_search_calibration")
    async with docstore.connect(database_url, read_only=True) as reader:
        first = await reader.search(points[3])
        second = await reader.search(points[4])
    assert first.mode == "ann" and first.ef_search == planner.DEFAULT_EF_SEARCH
    assert second.ids and second.ef_search == planner.DEFAULT_EF_SEARCH
    warned = [r for r in caplog.records if "calibration unreadable" in r.getMessage()]
    assert len(warned) == 1


@pytest.mark.parametrize("analyzed", [True, False])
async def test_an_index_built_before_loading_calibrates_once_the_table_has_grown(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch, analyzed: bool
) -> None:
    """The setup order "index first, then load" does not fail: with fewer than two stored
    embeddings the calibration is deferred (defaults meanwhile), and the lookup runs it in the
    background once the table has 1,000 rows — also before any ANALYZE (review 75: the table,
    never analyzed, has no rows per page to estimate from, so it waited for autovacuum)."""
    monkeypatch.setattr(tuner_module, "CACHE_SECONDS", 0.0)
    monkeypatch.setattr(tuner_module, "RECALIBRATE_SECONDS", 0.0)
    await store.execute("ALTER TABLE documents SET (autovacuum_enabled = off)")
    try:
        index = await store.create_vector_index()
        assert index.usable and await store.tuner.calibration() is None
        points = clustered(1200)
        assert (await store.search(points[0])).mode == "ann"  # the defaults
        await load(store, points[:600], analyze=analyzed)
        await store.tuner.calibration()
        await store.tuner.wait()
        assert await store.tuner.calibration() is None  # not yet 1,000 rows
        await load(store, points[600:], start=600, analyze=analyzed)
        await store.tuner.calibration()  # notices the rows
        await store.tuner.wait()
        calibrated = await store.tuner.calibration()
        assert calibrated is not None and calibrated.queries >= 2
        assert abs(calibrated.table_rows - 1200) <= 24
    finally:
        await store.execute("ALTER TABLE documents RESET (autovacuum_enabled)")


async def test_rows_without_an_embedding_do_not_start_a_deferred_calibration(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deferred calibration waits for 1,000 rows *with* an embedding: the growth check
    counted every row, so a table of documents still waiting for their embeddings started a
    background calibration at each lookup, which failed with a logged ``ValidationError``
    (fewer than two stored embeddings to probe with) — every ``RECALIBRATE_SECONDS``."""
    monkeypatch.setattr(tuner_module, "CACHE_SECONDS", 0.0)
    monkeypatch.setattr(tuner_module, "RECALIBRATE_SECONDS", 0.0)
    calibrate = tuner_module.SearchTuner.calibrate
    calls: list[str] = []

    async def counted(self: tuner_module.SearchTuner, *args: Any, **kwargs: Any) -> Calibration:
        calls.append("calibrate")
        return await calibrate(self, *args, **kwargs)

    monkeypatch.setattr(tuner_module.SearchTuner, "calibrate", counted)
    await store.create_vector_index()
    assert await store.tuner.calibration() is None  # deferred
    await store.documents.upsert_many(
        Document(source_name="s", doc_path=f"bare{i}", content=f"doc {i}") for i in range(1500)
    )
    for _ in range(3):
        await store.tuner.calibration()
        await store.tuner.wait()
    assert calls == [] and await store.tuner.calibration() is None
    await load(store, clustered(1400))
    await store.tuner.calibration()  # 1,400 embedded rows now
    await store.tuner.wait()
    calibrated = await store.tuner.calibration()
    assert calls == ["calibrate"] and calibrated is not None


async def test_failed_background_calibrations_back_off(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background calibration that failed was started again ``RECALIBRATE_SECONDS`` later,
    however often it had failed: under a bulk load of hours the table changes during each of a
    calibration's three measurements, so a paced calibration ran all the time, its exact scans
    for nothing. The wait doubles after each failure in a row (up to ``MAX_BACKOFF_SECONDS``)
    and is back to ``RECALIBRATE_SECONDS`` after a success. (A clock of the test's; the table
    reads as grown at every lookup.)"""
    monkeypatch.setattr(tuner_module, "CACHE_SECONDS", 0.0)
    await load(store, clustered(1000))
    await store.create_vector_index()
    first = await store.tuner.calibration()
    assert first is not None
    now = [1000.0]
    store.tuner._spacing.clock = lambda: now[0]
    started: list[float] = []
    failing = [True]

    async def grown(*args: Any, **kwargs: Any) -> str:
        return "the table has grown"

    async def calibrate(self: tuner_module.SearchTuner, *args: Any, **kwargs: Any) -> Calibration:
        started.append(now[0])
        now[0] += taking[0]  # how long it runs
        if failing[0]:
            raise TableChangedError("the documents table changed while the calibration measured")
        self._spacing.failures = 0  # as calibrate() does after storing
        return first

    real = tuner_module.SearchTuner.calibrate
    monkeypatch.setattr(growth, "stale", grown)
    monkeypatch.setattr(tuner_module.SearchTuner, "calibrate", calibrate)

    async def lookups(start: int, stop: int) -> None:
        for t in range(start, stop, 10):
            now[0] = float(t)
            await store.tuner.calibration()
            await store.tuner.wait()

    taking = [0.0]
    await lookups(1000, 3000)  # each fails at once
    assert started == [1000, 1120, 1360, 1840, 2800]  # 120, 240, 480, then 960 s: the cap
    taking[0] = 1000.0
    await lookups(3000, 5000)  # fails after 1,000 s: the next 960 s after its end
    assert started[5:] == [3760]
    failing[0], taking[0] = False, 0.0
    await lookups(5000, 6000)
    assert started[6:] == [5720, 5780, 5840, 5900, 5960]  # 4,760 + 960; after a success 60 s
    store.tuner._spacing.failures = 3
    monkeypatch.setattr(tuner_module.SearchTuner, "calibrate", real)
    await store.calibrate_search(sample=10)  # any success resets the count, a foreground one too
    assert store.tuner._spacing.failures == 0


async def test_a_background_recalibration_leaves_a_one_connection_pool_serving(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calibration lock was held on a pooled connection while the calibration's own
    queries took others: on a one-connection pool every background recalibration waited for
    the connection its lock held (``PoolTimeoutError`` after the pool's timeout) and so did
    every search meanwhile. The lock holds a connection of its own now; the recalibration
    finishes and the searches beside it are served."""
    monkeypatch.setattr(tuner_module, "CACHE_SECONDS", 0.0)
    monkeypatch.setattr(tuner_module, "RECALIBRATE_SECONDS", 0.0)
    opener = docstore.connect(
        database_url, pool_min_size=1, pool_max_size=1, pool_acquire_timeout=5.0
    )
    async with opener as store:
        await load(store, clustered(1200))
        await store.create_vector_index()
        first = await store.tuner.calibration()
        assert first is not None and first.query_source == "probes"
        questions = clustered(tuner_module.MIN_RECENT + 16, seed=5)
        for q in questions:  # the 64th real query starts the recalibration
            await store.search(q)
        running = store.tuner._calibrating
        assert running is not None and not running.done()
        while not running.done():  # searches beside it are served
            assert (await store.search(questions[0])).mode == "ann"
        await store.tuner.wait()
        again = await store.tuner.calibration()
        assert again is not None and again.query_source == "recent queries"


async def test_a_table_grown_by_a_bulk_load_is_noticed_before_analyze(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The growth check read ``reltuples``, which a bulk load leaves where the last ANALYZE (or
    index build) put it: a calibration made on 1,000 rows stayed in force while the table
    doubled, until autovacuum's ANALYZE came by. It counts live rows in a sample of pages now:
    growth is seen at once, and the dead rows an update leaves (twice the pages until VACUUM,
    as many rows) are not growth."""
    monkeypatch.setattr(tuner_module, "CACHE_SECONDS", 0.0)
    monkeypatch.setattr(tuner_module, "RECALIBRATE_SECONDS", 0.0)
    await store.execute("ALTER TABLE documents SET (autovacuum_enabled = off)")
    try:
        points = clustered(2000)
        await load(store, points[:1000])
        await store.create_vector_index()
        first = await store.tuner.calibration()
        assert first is not None and first.table_rows == 1000
        await load(store, points[1000:], start=1000, analyze=False)
        reltuples = "SELECT reltuples FROM pg_class WHERE oid = 'documents'::regclass"
        assert await store.fetchval(reltuples) < 1100  # not analyzed since
        await store.tuner.calibration()  # notices the rows
        await store.tuner.wait()
        again = await store.tuner.calibration()
        assert again is not None and again.table_rows == 2000
        pages = "SELECT pg_relation_size('documents') / 8192"
        before = await store.fetchval(pages)
        await store.execute("UPDATE documents SET content = content || ' (updated)'")
        assert await store.fetchval(pages) > 1.6 * before  # the dead rows' pages
        for _ in range(3):
            await store.tuner.calibration()
            await store.tuner.wait()
        after = await store.tuner.calibration()
        assert after is not None and after.calibrated_at == again.calibrated_at  # none ran
    finally:
        await store.execute("ALTER TABLE documents RESET (autovacuum_enabled)")


async def test_a_biased_row_estimate_does_not_recalibrate_in_a_loop(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 77: the sampled row count draws the same pages each time, so on a table whose
    rows per page vary a lot it can stay off the exact count by more than half: compared with
    the count a calibration stores, it started a calibration every ``RECALIBRATE_SECONDS``.
    A calibration stores the estimate too, and later estimates are compared with it."""
    monkeypatch.setattr(tuner_module, "CACHE_SECONDS", 0.0)
    monkeypatch.setattr(tuner_module, "RECALIBRATE_SECONDS", 0.0)
    exact = growth.table_rows

    async def twice(*args: Any, **kwargs: Any) -> growth.Rows:  # a sample reading double
        rows = await exact(*args, **kwargs)
        return growth.Rows(2 * rows.rows, 2 * rows.embedded)

    monkeypatch.setattr(growth, "table_rows", twice)
    await load(store, clustered(1000))
    await store.create_vector_index()
    first = await store.tuner.calibration()
    assert first is not None and first.table_rows == 1000
    assert first.table_estimate is not None and abs(first.table_estimate - 2000) <= 200
    assert first.embedded_estimate is not None and abs(first.embedded_estimate - 2000) <= 200
    for _ in range(3):
        await store.tuner.calibration()
        await store.tuner.wait()
    after = await store.tuner.calibration()
    assert after is not None and after.calibrated_at == first.calibrated_at  # none ran


async def test_growth_is_measured_in_the_same_rows_as_the_calibrations_estimate(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 79: once growth was counted in rows with an embedding, a calibration stored by an
    earlier docstore (its ``table_estimate`` counting every row) was compared with that count:
    a table a third of whose rows have no embedding read as shrunk and was recalibrated (in a
    loop on a read-only store). Growth compares like with like: rows with an embedding where
    the calibration has their count, all rows where it has only ``table_estimate``."""
    monkeypatch.setattr(tuner_module, "CACHE_SECONDS", 0.0)
    monkeypatch.setattr(tuner_module, "RECALIBRATE_SECONDS", 0.0)
    await load(store, clustered(1000))
    await store.documents.upsert_many(
        Document(source_name="s", doc_path=f"bare{i}", content=f"doc {i}") for i in range(600)
    )
    await store.create_vector_index()
    first = await store.tuner.calibration()
    assert first is not None and first.table_rows == 1600
    assert first.embedded_estimate is not None and abs(first.embedded_estimate - 1000) <= 250
    assert first.table_estimate is not None and first.table_estimate > first.embedded_estimate
    await store.execute(  # as an earlier docstore stored it
        "UPDATE docstore_search_calibration SET calibration = calibration - 'embedded_estimate'"
    )
    for _ in range(3):
        await store.tuner.calibration()
        await store.tuner.wait()
    after = await store.tuner.calibration()
    assert after is not None and after.calibrated_at == first.calibrated_at  # none ran
    assert after.embedded_estimate is None
    await load(store, clustered(2000, seed=1), start=1000)  # 3,600 rows: × 2.25
    await store.tuner.calibration()
    await store.tuner.wait()
    again = await store.tuner.calibration()
    assert again is not None and again.calibrated_at > first.calibrated_at
    assert again.embedded_estimate is not None and abs(again.embedded_estimate - 3000) <= 750


async def test_growth_seen_while_another_process_calibrates_is_acted_on_later(
    store: docstore.Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Growth seen while another process holds the calibration lock (and so calibrates
    nothing here) is acted on by a later lookup (review 75: a first form of the dead-row guard
    remembered it as handled)."""
    monkeypatch.setattr(tuner_module, "CACHE_SECONDS", 0.0)
    monkeypatch.setattr(tuner_module, "RECALIBRATE_SECONDS", 0.0)
    points = clustered(2000)
    await load(store, points[:1000])
    await store.create_vector_index()
    first = await store.tuner.calibration()
    assert first is not None and first.table_rows == 1000
    async with (
        docstore.connect(database_url) as other,
        other.try_lock(tuner_module.CALIBRATION_LOCK_KEY) as held,
    ):
        assert held is True
        await load(store, points[1000:], start=1000)
        assert (await store.tuner.calibration()) == first  # growth seen, lock taken
        await store.tuner.wait()
        assert (await store.tuner.calibration()) == first
    await store.tuner.calibration()  # the other process is gone, nothing calibrated
    await store.tuner.wait()
    again = await store.tuner.calibration()
    assert again is not None and abs(again.table_rows - 2000) <= 40


# -- review 68: a calibration measured while the table is written --------------------------


def _writer(
    store: docstore.Store, *, writes: int, rows: int = 1
) -> tuple[Any, list[asyncio.Task[Any]]]:
    """A progress callback that, for its first ``writes`` calls, inserts ``rows`` rows beside
    the calibration (in a task of its own: the write lands while the measurement goes on)."""
    tasks: list[asyncio.Task[Any]] = []
    extra = clustered(writes * rows or 1, seed=77)

    def progress(stage: str, done: int, total: int) -> None:
        if len(tasks) < writes:
            i = len(tasks)
            docs = [
                Document(source_name="new", doc_path=f"w{j}", content="w", embedding=extra[j])
                for j in range(i * rows, (i + 1) * rows)
            ]
            tasks.append(asyncio.ensure_future(store.documents.upsert_many(docs)))

    return progress, tasks


async def test_a_calibration_measured_while_rows_are_written_is_measured_again(
    indexed: tuple[docstore.Store, np.ndarray],
) -> None:
    """A bulk load beside the background recalibration made the exact answers stale while
    the trials ran (recall fell as ef_search rose) and ef_search 20 was stored: recall 0.95
    with queries at 0.0 until the next recalibration minutes later. The table is now checked
    before and after; a try during which more than 0.5 % of it changed is measured again."""
    store, points = indexed
    queries = noisy_queries(points, 20, noise=0.05, seed=11)
    progress, tasks = _writer(store, writes=1, rows=50)  # 2.5 %, during the first try
    calibration = await store.calibrate_search(query_vectors=queries, progress=progress)
    await asyncio.gather(*tasks)
    assert len(tasks) == 1
    assert calibration.table_rows == ROWS + 50  # counted, not the planner's stale estimate
    assert calibration.met_target and calibration.lowest_recall >= 0.7


async def test_a_table_that_keeps_changing_stores_no_calibration(
    indexed: tuple[docstore.Store, np.ndarray],
) -> None:
    store, points = indexed
    before = await store.tuner.calibration()
    queries = noisy_queries(points, 20, noise=0.05, seed=12)
    progress, tasks = _writer(store, writes=10_000)  # a row on every step of every try
    with pytest.raises(docstore.QueryError, match="changed while the search calibration"):
        await store.calibrate_search(query_vectors=queries, progress=progress)
    await asyncio.gather(*tasks)
    assert await store.tuner.calibration() == before  # nothing stored


async def test_an_index_built_while_rows_are_written_defers_its_calibration(
    store: docstore.Store,
) -> None:
    """The index is built and returned; its calibration, which three changed tries refused,
    is deferred to the background instead of failing the build."""
    await load(store, clustered(ROWS))
    progress, tasks = _writer(store, writes=10_000)
    index = await store.create_vector_index(progress=progress)
    await asyncio.gather(*tasks)
    assert index.usable
    assert await store.tuner.calibration() is None  # deferred: searches use the defaults
    results = await store.search(clustered(1, seed=9)[0])
    assert results.mode == "ann"


# -- a trickle of writes: a few rows changed leave a measurement standing -------------------

SMALL_DIM = 32


def _small(n: int, *, seed: int) -> np.ndarray:
    """Unit vectors in :data:`SMALL_DIM` dimensions, 20 clusters (fast to load and scan)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((20, SMALL_DIM)).astype(np.float32)
    points = centres[rng.integers(0, 20, n)] + rng.normal(scale=0.4, size=(n, SMALL_DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
async def small_indexed(empty_database_url: str) -> AsyncIterator[docstore.Store]:
    """20,000 rows of 32 dimensions (0.5 %: 100 rows) with an uncalibrated index."""
    async with docstore.connect(empty_database_url, embedding_dim=SMALL_DIM) as store:
        await store.documents.upsert_many(
            Document(source_name=f"s{i % 10}", doc_path=f"d{i}", content="c", embedding=v)
            for i, v in enumerate(_small(20_000, seed=1))
        )
        await store.execute("ANALYZE documents")
        await store.create_vector_index(calibrate=False)
        yield store


async def _until_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``; True once ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def test_a_calibration_stands_while_a_trickle_of_rows_is_written(
    small_indexed: docstore.Store,
) -> None:
    """One upsert every 5 s into an unrelated source made each of a paced calibration's three
    tries fail on 26,500 rows (the state compared exactly), so a continuously ingesting
    server never calibrated. Now a few rows changed leave the measurement standing: here a
    row every ~0.1 s, ~10 a try (each try saw some: all three failed before), 100 allowed."""
    store = small_indexed
    stop = asyncio.Event()
    written: list[float] = []  # when each trickled row committed
    vectors = _small(10_000, seed=2)

    async def trickle() -> None:
        while not await _until_stopped(stop, 0.1):
            i = len(written)
            doc = Document(
                source_name="trickle", doc_path=f"t{i}", content="t", embedding=vectors[i]
            )
            await store.documents.upsert(doc)
            written.append(time.perf_counter())

    task = asyncio.ensure_future(trickle())
    try:
        while not written:  # the trickle is running before the calibration starts
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        calibration = await store.calibrate_search(query_vectors=_small(40, seed=3))
        ended = time.perf_counter()
    finally:
        stop.set()
        await task
    during = sum(1 for t in written if started <= t <= ended)
    assert during >= 2, during  # rows were written while it measured
    assert calibration.table_rows >= 20_000
    assert await store.tuner.calibration() == calibration


async def test_a_calibration_refuses_a_table_that_changes_materially_each_try(
    small_indexed: docstore.Store,
) -> None:
    """Re-embedding 500 rows at a time (2.5 %; 5 % counted: each update is a version gone
    and one written) for as long as the calibration runs: every try sees far more than
    0.5 % of the table change, and nothing is stored."""
    store = small_indexed
    stop = asyncio.Event()
    batches = 0

    async def reembed() -> None:
        nonlocal batches
        while not await _until_stopped(stop, 0.0):
            first = (batches * 500) % 20_000
            await store.documents.upsert_many(
                Document(source_name=f"s{i % 10}", doc_path=f"d{i}", content="c", embedding=v)
                for i, v in enumerate(_small(500, seed=100 + batches), start=first)
            )
            batches += 1

    task = asyncio.ensure_future(reembed())
    try:
        with pytest.raises(TableChangedError, match=r"rows changed, at most 0\.5 % may"):
            await store.calibrate_search()
    finally:
        stop.set()
        await task
    assert batches >= 3
    assert await store.tuner.calibration() is None  # nothing stored


async def test_the_rows_changed_during_a_measurement_are_counted(
    empty_database_url: str,
) -> None:
    """What :func:`table_changes.table_state` counts against the first scan's snapshot:
    inserts, deletes, updates (a version gone, one written), and the rows of a transaction
    that was open at the first scan and wrote in a savepoint (as docstore's COPY does), whose
    subtransaction ids the snapshot does not list."""
    async with docstore.connect(empty_database_url, embedding_dim=SMALL_DIM) as store:
        vectors = _small(300, seed=4)
        await store.documents.upsert_many(
            Document(source_name="a", doc_path=f"d{i}", content="c", embedding=v)
            for i, v in enumerate(vectors[:200])
        )
        start = await table_changes.table_state(store)
        assert start.rows == 200
        assert (await table_changes.table_state(store, start)).changed_since(start) == 0
        await store.documents.upsert_many(
            Document(source_name="b", doc_path=f"n{i}", content="c", embedding=v)
            for i, v in enumerate(vectors[200:203])
        )
        await store.execute("UPDATE documents SET content = 'u' WHERE doc_path IN ('d1', 'd2')")
        await store.execute("DELETE FROM documents WHERE doc_path = 'd3'")
        end = await table_changes.table_state(store, start)
        assert end.changed_since(start) == 3 + 2 * 2 + 1
        assert table_changes.tolerated(start, end) is False  # 8 > 0.5 % of 202

        async with store.transaction() as conn:
            await conn.execute("UPDATE documents SET content = 'v' WHERE doc_path = 'd4'")
            async with conn.transaction():  # a savepoint: rows under a subtransaction id
                await conn.execute(
                    "INSERT INTO documents (source_name, doc_path, content)"
                    " SELECT 'c', 'x' || g, 'c' FROM generate_series(1, 20) g"
                )
                await conn.execute("UPDATE documents SET content = 'w' WHERE doc_path = 'd5'")
            await store.execute(  # another transaction commits: the first one is listed open
                "INSERT INTO documents (source_name, doc_path, content) VALUES ('d', 'y', 'c')"
            )
            start = await table_changes.table_state(store)
        assert start.snapshot is not None and start.recent == 1
        end = await table_changes.table_state(store, start)
        assert end.changed_since(start) == 2 * 1 + 20 + 2 * 1
