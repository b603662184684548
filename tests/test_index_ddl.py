"""Index DDL when several sessions build at once, and when ``documents`` lives in another
schema than the first one on the ``search_path`` (a fresh-database exploration, 2026-12-07)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

import docstore
from docstore.search import index_ddl
from tests.conftest import sample_documents

INDEXES = (
    "SELECT n.nspname || '.' || c.relname, i.indisvalid FROM pg_index i"
    " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relname IN ('documents_embedding_hnsw_cosine', 'idx_documents_content_fts')"
    " ORDER BY 1"
)


@pytest.mark.parametrize("kind", ["vector", "text"])
async def test_stores_building_the_same_index_at_once_all_succeed_and_it_is_built_once(
    database_url: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: every caller ran DROP INDEX CONCURRENTLY IF EXISTS then CREATE INDEX; one dropped
    or deadlocked with another's build in progress (DuplicateTableError, 40P01, XX000 "tuple
    concurrently updated"), often no caller succeeded and an INVALID index was left. Now one
    builds and calibrates, the others wait for it and return the index it built (review 94:
    each of them calibrated it again)."""
    async with docstore.connect(database_url) as store:
        await store.documents.upsert_many(sample_documents(400))
    stores = [await docstore.connect(database_url, pool_max_size=3) for _ in range(3)]
    try:
        caplog.set_level(logging.INFO, logger="docstore")
        if kind == "vector":
            built = await asyncio.gather(*(s.create_vector_index() for s in stores))
            assert all(index.valid and index.usable for index in built)
            assert caplog.text.count("search calibrated (cosine") == 1
        else:
            await asyncio.gather(*(s.create_text_index() for s in stores))
            assert all([await s.text_index() for s in stores])
        rows = await stores[0].fetch(INDEXES)
        assert [valid for _, valid in rows] == [True]
        assert "waiting for another session's build" in caplog.text  # they did overlap
    finally:
        for s in stores:
            await s.close()


async def test_a_drop_waits_for_a_build_in_progress(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drop issued while another session builds the index waits for that build and then
    drops it, instead of dropping (or deadlocking with) an index half built."""
    monkeypatch.setattr(index_ddl, "LOCK_POLL_SECONDS", 0.05)
    async with docstore.connect(database_url) as builder, docstore.connect(database_url) as other:
        await builder.documents.upsert_many(sample_documents(400))
        build = asyncio.create_task(builder.create_vector_index(calibrate=False))
        while not await other.fetchval("SELECT count(*) FROM pg_stat_progress_create_index"):
            await asyncio.sleep(0.01)
        assert await other.drop_vector_index()  # waited for the build, then dropped it
        assert (await build).valid
        assert await other.fetch(INDEXES) == []


async def test_another_schemas_indexes_are_never_dropped(empty_database_url: str) -> None:
    """Was: with ``search_path = tenantb, public`` (tenant B's tables in ``tenantb``), B's
    drop_vector_index()/drop_text_index() returned False and dropped tenant A's indexes in
    ``public``: an unqualified DROP INDEX follows the search_path. Now the names are
    qualified with ``documents``' own schema."""
    url = empty_database_url
    admin = await asyncpg.connect(url)
    database = await admin.fetchval("SELECT current_database()")
    try:
        await admin.execute("CREATE EXTENSION vector SCHEMA public; CREATE SCHEMA tenantb")
        await admin.execute(f'ALTER DATABASE "{database}" SET search_path = tenantb, public')
        async with docstore.connect(url) as b:  # tenant B's schema, in tenantb
            await b.documents.upsert_many(sample_documents(20))
        await admin.execute(f'ALTER DATABASE "{database}" RESET search_path')
        async with docstore.connect(url) as a:  # tenant A, in public
            await a.documents.upsert_many(sample_documents(50))
            await a.create_vector_index(calibrate=False)
            await a.create_text_index()
        await admin.execute(f'ALTER DATABASE "{database}" SET search_path = tenantb, public')
        before = await admin.fetch(INDEXES)
        assert [name for name, _ in before] == [
            "public.documents_embedding_hnsw_cosine",
            "public.idx_documents_content_fts",
        ]
        async with docstore.connect(url) as b:
            assert await b.drop_vector_index() is False
            assert await b.drop_text_index() is False
            assert await admin.fetch(INDEXES) == before  # A's untouched
            await b.create_vector_index(calibrate=False)  # B's own, beside A's
            await b.create_text_index()
            assert await b.drop_vector_index() and await b.drop_text_index()
        assert await admin.fetch(INDEXES) == before
    finally:
        await admin.close()


async def test_a_caller_waiting_for_another_build_holds_no_pooled_connection(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 96: the wait for the DDL lock polled on a pooled connection, held for the whole
    of another session's build (hours on a large index): with a pool of 2 a second wait left
    the store's queries a PoolTimeoutError. The lock is asked for on a connection checked out
    per attempt now."""
    monkeypatch.setattr(index_ddl, "LOCK_POLL_SECONDS", 0.05)
    async with docstore.connect(database_url) as builder:
        await builder.documents.upsert_many(sample_documents(200))
        blocker = await asyncpg.connect(database_url)  # an open snapshot the build waits for
        await blocker.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await blocker.fetchval("SELECT count(*) FROM documents")
        waiter = await docstore.connect(database_url, pool_max_size=2, pool_acquire_timeout=3)
        try:
            build = asyncio.create_task(builder.create_vector_index(calibrate=False))
            while not await waiter.fetchval("SELECT count(*) FROM pg_stat_progress_create_index"):
                await asyncio.sleep(0.02)
            waits = [
                asyncio.create_task(waiter.create_vector_index(calibrate=False)),
                asyncio.create_task(waiter.create_text_index()),
            ]
            await asyncio.sleep(0.5)  # both polling the DDL lock
            assert await asyncio.gather(*(waiter.fetchval("SELECT 1") for _ in range(2))) == [1, 1]
            await blocker.execute("COMMIT")
            assert (await build).valid
            await asyncio.gather(*waits)
            assert await waiter.text_index()
        finally:
            await blocker.close()
            await waiter.close()


async def test_migration_9_fills_its_statistics_and_an_older_schema_estimates_each_alone(
    database_url: str,
) -> None:
    """Review 96: ``CREATE STATISTICS`` leaves an empty object until the next ANALYZE (after
    ~10 % of the rows changed), and a store that does not migrate has none: the planner took
    doc_type and source_name as independent again. Migration 9 now analyzes the two columns,
    and while no data is there the scope is sized by each condition alone."""
    from docstore.search import planner, scopes

    async with docstore.connect(database_url) as store:
        docs = [
            docstore.Document(
                doc_type="rust" if i < 3400 else "python",
                source_name="big" if i < 3400 else f"p{i % 10}",
                doc_path=f"d{i}",
                content="c",
            )
            for i in range(17_000)
        ]
        await store.documents.upsert_many(docs)
        await store.execute("UPDATE documents SET embedding = array_fill(0.5, ARRAY[3072])::vector")
        await store.execute(  # back to schema 8, analyzed there
            "DROP STATISTICS documents_scope_statistics;"
            " DELETE FROM docstore_schema_version WHERE version = 9; ANALYZE documents"
        )
    async with docstore.connect(database_url, migrate=False) as old:  # schema 8: each alone
        scope = await scopes.count_scope(old._vector._db, "rust", "big")
        assert scope.rows == pytest.approx(3400, rel=0.1)
    async with docstore.connect(database_url) as upgraded:  # applies migration 9, no ANALYZE
        assert await upgraded.fetchval(scopes._STATISTICS_READY)  # filled by the migration
        scope = await scopes.count_scope(upgraded._vector._db, "rust", "big")
        assert scope.rows == pytest.approx(3400, rel=0.1)
        assert planner.HALFVEC_SCOPE_ROWS < 3400
