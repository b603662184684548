"""Regression tests for the search review of 2026-12-06 (``/tmp/review-search.md``), against a
real PostgreSQL + pgvector: evaluate_recall kept out of the tuner, the HNSW plan check, the
scope count of embedded rows only, health on calibrated searches only, the seed check and the
scope cache's cap."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

import docstore
from docstore import Document, ValidationError
from docstore.search import ann_plans, queries, scopes
from tests.conftest import sample_documents, unit_vector

DIM = 3072


@asynccontextmanager
async def _indexed_store(url: str, rows: int, **options: Any) -> AsyncIterator[docstore.Store]:
    """A store on ``rows`` sample documents with the cosine HNSW index (not calibrated: the
    defaults count as calibrated settings), analyzed."""
    async with docstore.connect(url, **options) as store:
        await store.documents.upsert_many(sample_documents(rows))
        await store.create_vector_index(calibrate=False)
        await store.execute("ANALYZE documents")
        yield store


async def test_evaluate_recall_does_not_feed_the_tuner(database_url: str) -> None:
    """Finding 1: measuring used stored vectors as the tuner's "real queries"."""
    async with _indexed_store(database_url, 200, search_recall_sample=1.0) as store:
        report = await store.evaluate_recall(sample=70)
        assert report.sample == 70
        tuner = store.tuner
        await tuner.wait()
        assert not tuner._recent.get("cosine")
        assert tuner._since_calibration["cosine"] == 0
        assert tuner._calibrating is None
        assert len(tuner._live.window) == 0
        # a real search still feeds it
        await store.search(unit_vector(10_001))
        assert len(tuner._recent["cosine"]) == 1


async def test_small_table_ann_is_not_taken_as_using_the_index(database_url: str) -> None:
    """Finding 2: the pg_class index scan of SCAN_LIMITS made every statement "use the
    index", so ANN on a small table ran as a scan and sort of every vector."""
    async with _indexed_store(database_url, 200) as store:
        sql, params = queries.ann_search_sql(
            unit_vector(7), dim=DIM, limit=10, candidates=40, ef_search=100
        )
        assert await store._vector._planner_takes_the_index(sql, params) is False
        names = [i.name for i in await store.vector_indexes()]
        forced = await store.run(_explain_under_settings(sql, params), read=True)
        assert ann_plans.uses_hnsw(forced, names)
        alone = await store.fetchval("EXPLAIN (FORMAT JSON) " + sql, *params)
        assert not ann_plans.uses_hnsw(alone, names)
        assert '"Index Scan"' in str(alone)  # the pg_class lookup that fooled the old check
        results = await store.search(unit_vector(7))
        assert results.mode == "ann"
        assert results[0].doc_path == "tokio/7"  # sample document i has unit_vector(i)


async def test_forced_ann_statement_is_replanned_over_a_cached_generic_plan(
    database_url: str,
) -> None:
    """Finding 2's note: a generic plan cached while the statement ran alone was reused under
    ``enable_seqscan = off``; ``ann_settings_sql`` now forces a custom plan."""
    async with _indexed_store(database_url, 200, pool_min_size=1, pool_max_size=1) as store:
        sql, params = queries.ann_search_sql(
            unit_vector(3), dim=DIM, limit=10, candidates=40, ef_search=100
        )
        names = [i.name for i in await store.vector_indexes()]
        literal = "[" + ",".join(repr(float(x)) for x in unit_vector(3)) + "]"
        execute = f"EXECUTE review_ann('{literal}', {', '.join(map(str, params[1:5]))})"

        async def work(conn: Any) -> Any:
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            try:
                await conn.execute(f"PREPARE review_ann AS {sql}")
                await conn.fetch(execute)
                async with conn.transaction():
                    await conn.execute(queries.ann_settings_sql(100))
                    return await conn.fetchval("EXPLAIN (FORMAT JSON) " + execute)
            finally:
                await conn.execute("DEALLOCATE review_ann; RESET plan_cache_mode")

        assert ann_plans.uses_hnsw(await store.run(work), names)


def _explain_under_settings(sql: str, params: list[Any]) -> Any:
    async def work(conn: Any) -> Any:
        async with conn.transaction():
            await conn.execute(queries.ann_settings_sql(100))
            return await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *params)

    return work


async def test_scope_counts_only_embedded_rows(database_url: str) -> None:
    """Finding 3: a source with many documents still without an embedding was counted whole
    and searched by a filtered HNSW walk instead of its few vectors."""
    async with _indexed_store(database_url, 300) as store:
        pending = [
            Document(source_name="big", doc_path=f"big/{i}", content=f"pending {i}")
            for i in range(1_100)
        ]
        embedded = sample_documents(20, source="big", start=5_000)
        await store.documents.upsert_many([*pending, *embedded])
        await store.execute("ANALYZE documents")
        scope = await scopes.count_scope(store._vector._db, None, "big")
        assert scope.rows == 20
        results = await store.search(unit_vector(5_003), source_name="big")
        assert results.mode == "halfvec"
        assert {h.source_name for h in results} == {"big"}
        assert results[0].doc_path == "big/5003"


async def test_health_ignores_explicit_setting_searches(database_url: str) -> None:
    """Finding 4: measured searches with an explicit ef_search degraded health with a
    "(recalibrating)" warning, though only calibrated searches recalibrate."""
    async with docstore.connect(database_url) as store:
        live = store.tuner._live
        live.window.extend([0.5] * 40)  # measured searches that ran with ef_search=...
        health = await store.health()
        assert health.search_recall is not None
        assert health.search_recall.estimate == pytest.approx(0.5)
        assert not health.search_recall.below_target
        assert not any("recall" in w for w in health.warnings)
        live.window.extend([0.5] * 40)
        live.tuned.extend([0.5] * 40)  # ... and on the calibrated settings
        health = await store.health()
        assert health.degraded
        assert health.search_recall is not None and health.search_recall.below_target
        assert any("(recalibrating)" in w for w in health.warnings)


@pytest.mark.parametrize("seed", ["x", 5, -1.5, math.nan, math.inf, True, np.nan])
async def test_evaluate_recall_checks_the_seed(store: docstore.Store, seed: Any) -> None:
    """Finding 5: a bad seed came back as a QueryError after a round trip (a bool passed)."""
    with pytest.raises(ValidationError) as caught:
        await store.evaluate_recall(seed=seed)
    assert caught.value.field == "seed"


async def test_evaluate_recall_accepts_seeds_in_range(database_url: str) -> None:
    async with _indexed_store(database_url, 60, search_recall_sample=0.0) as store:
        for seed in (-1, 0, 1, 0.25, None):
            report = await store.evaluate_recall(sample=5, seed=seed)
            assert report.sample == 5


async def test_scope_cache_is_capped(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 7: the doc_type/source_name scope cache grew by one entry per source."""
    monkeypatch.setattr(scopes, "SCOPE_CACHE_ENTRIES", 5)
    async with _indexed_store(database_url, 100, search_recall_sample=0.0) as store:
        for i in range(12):
            await store.search(unit_vector(i), source_name=f"crate{i}")
        cache = store._vector._scope_cache
        assert len(cache) == 5
        assert (None, "crate11") in cache and (None, "crate0") not in cache
