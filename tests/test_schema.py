"""Schema bootstrap: versioned, idempotent, safe under concurrent appliers."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import pytest

import docstore
from docstore import Document
from docstore.errors import SchemaError
from docstore.schema.runner import LATEST_VERSION, MIGRATIONS
from tests.conftest import PgCluster

FINGERPRINT = """
select 'col' as kind, table_name || '.' || column_name || ' ' || data_type || ' '
       || coalesce(column_default, '') || ' ' || is_nullable as what
  from information_schema.columns where table_schema = 'public'
union all
select 'idx', indexdef from pg_indexes where schemaname = 'public'
union all
select 'trg', tgname || ' on ' || tgrelid::regclass::text from pg_trigger where not tgisinternal
union all
select 'typ', a.attrelid::regclass::text || '.' || a.attname || ' '
       || format_type(a.atttypid, a.atttypmod)
  from pg_attribute a join pg_class c on c.oid = a.attrelid
 where c.relname in ('documents', 'document_sources') and a.attnum > 0
order by 1, 2
"""


async def _fingerprint(url: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(url)
    try:
        return [(r["kind"], r["what"]) for r in await conn.fetch(FINGERPRINT)]
    finally:
        await conn.close()


async def _versions(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [
            r["version"] for r in await conn.fetch("select version from docstore_schema_version")
        ]
    finally:
        await conn.close()


def _docstore_init(url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.Popen(
        [sys.executable, "-m", "docstore", "init"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_four_processes_applying_at_once_end_with_one_version(pg: PgCluster) -> None:
    concurrent = pg.create_database()
    single = pg.create_database()
    try:
        procs = [_docstore_init(pg.url(concurrent)) for _ in range(4)]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
        applied = [out for out, _ in outputs if "applied schema migrations" in out]
        assert len(applied) == 1, outputs
        assert asyncio.run(_versions(pg.url(concurrent))) == [m.version for m in MIGRATIONS]

        once = _docstore_init(pg.url(single))
        once.communicate(timeout=120)
        assert asyncio.run(_fingerprint(pg.url(concurrent))) == asyncio.run(
            _fingerprint(pg.url(single))
        )

        again = _docstore_init(pg.url(concurrent))
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, err
        assert "nothing to do" in out
        assert asyncio.run(_versions(pg.url(concurrent))) == [m.version for m in MIGRATIONS]
    finally:
        pg.drop_database(concurrent)
        pg.drop_database(single)


async def test_connect_applies_schema_by_default_and_records_it(empty_database_url: str) -> None:
    async with docstore.connect(empty_database_url) as store:
        status = await store.schema_status()
        assert status.current == LATEST_VERSION and status.up_to_date
        assert status.embedding_dim == 3072
        assert await store.migrate() == []


async def test_auto_migrate_off_leaves_database_untouched(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCSTORE_AUTO_MIGRATE", "false")
    async with docstore.connect(empty_database_url) as store:
        assert (await store.schema_status()).current is None
        assert await store.migrate() == [m.version for m in MIGRATIONS]


async def test_embedding_dimension_comes_from_settings(empty_database_url: str) -> None:
    async with docstore.connect(empty_database_url, embedding_dim=1536) as store:
        assert (await store.schema_status()).embedding_dim == 1536


async def test_dimension_mismatch_is_a_schema_error(database_url: str) -> None:
    with pytest.raises(SchemaError, match="DOCSTORE_EMBEDDING_DIM=3072"):
        await docstore.connect(database_url, embedding_dim=1536)


async def test_a_missing_table_is_a_schema_error_a_wrong_alias_a_query_error(
    store: docstore.Store,
) -> None:
    """Both are SQLSTATE 42P01; only a table that does not exist points to `docstore init`
    (a statement naming an alias its FROM lacks — or a write rule Citus attaches a WHERE to —
    is the statement's own problem)."""
    with pytest.raises(SchemaError, match="docstore init"):
        await store.fetch("SELECT * FROM no_such_table")
    with pytest.raises(docstore.QueryError, match="missing FROM-clause") as raised:
        await store.fetch("SELECT x.id FROM documents d")
    assert not isinstance(raised.value, SchemaError) and "docstore init" not in str(raised.value)


async def test_plan_schema_indexes_and_triggers_exist(store: docstore.Store) -> None:
    indexes = {r["indexname"] for r in await store.fetch("select indexname from pg_indexes")}
    assert {
        "documents_doc_type_source_name_doc_path_key",
        "idx_documents_metadata",
        "idx_documents_legacy_id",
    } <= indexes
    # Migration 4: the B-trees that compete with the unique key are gone (a planner without
    # statistics chose them for key lookups and walked a whole source per key).
    trap = {"idx_documents_doc_type", "idx_documents_type_source", "idx_documents_source_name"}
    assert not trap & indexes
    await store.execute(
        "insert into documents (source_name, doc_path, content) values ('s', 'p', 'c')"
    )
    before = await store.fetchval("select updated_at from documents")
    await store.execute("update documents set content = 'd'")
    assert await store.fetchval("select updated_at from documents") > before


EMBEDDING_HALF = """
select a.attstorage::text, a.attgenerated::text, format_type(a.atttypid, a.atttypmod) as type
  from pg_attribute a where a.attrelid = 'documents'::regclass and a.attname = 'embedding_half'
"""


async def test_embedding_half_is_a_generated_in_row_halfvec_copy(store: docstore.Store) -> None:
    """Migration 3: stored PLAIN (in the row, never TOASTed), always equal to the cast."""
    column = await store.fetchrow(EMBEDDING_HALF)
    assert dict(column) == {"attstorage": "p", "attgenerated": "s", "type": "halfvec(3072)"}
    # small fields stay in the row beside it (only what overflows a page goes to TOAST)
    options = await store.fetchval(
        "select reloptions from pg_class where oid = 'documents'::regclass"
    )
    assert "toast_tuple_target=8160" in options
    vector = np.linspace(-1, 1, 3072, dtype=np.float32)
    await store.documents.upsert_many(
        [
            Document(source_name="s", doc_path="a", content="c", embedding=vector),
            Document(source_name="s", doc_path="b", content="c"),
        ]
    )
    rows = await store.fetch(
        "select doc_path, embedding_half is not distinct from embedding::halfvec(3072) as same,"
        " embedding_half is null as missing from documents order by doc_path"
    )
    assert [tuple(r) for r in rows] == [("a", True, False), ("b", True, True)]
    with pytest.raises(asyncpg.GeneratedAlwaysError):
        await store.pool.execute("update documents set embedding_half = NULL")


async def test_migration_3_fills_embedding_half_for_rows_written_before_it(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("alter table documents drop column embedding_half")
        await conn.execute("delete from docstore_schema_version where version = 3")
        await conn.execute(
            "insert into documents (source_name, doc_path, content, embedding)"
            " select 's', 'p' || i, 'c', array_fill(i::real / 10, array[3072])::vector"
            " from generate_series(1, 20) i"
        )
    finally:
        await conn.close()
    async with docstore.connect(database_url) as store:  # applies migration 3
        assert (await store.schema_status()).current == LATEST_VERSION
        assert (await store.fetchrow(EMBEDDING_HALF))["attstorage"] == "p"
        assert (
            await store.fetchval(
                "select count(*) from documents where embedding_half = embedding::halfvec(3072)"
            )
            == 20
        )


async def test_vector_extension_without_privilege_is_a_clear_schema_error(
    pg: PgCluster, empty_database_url: str
) -> None:
    role = "docstore_plain_role"
    database = urlsplit(empty_database_url).path.lstrip("/")
    await pg.execute(
        f"DROP ROLE IF EXISTS {role}",
        f"CREATE ROLE {role} LOGIN",
        f'GRANT ALL ON DATABASE "{database}" TO {role}',
    )
    try:
        conn = await asyncpg.connect(empty_database_url)
        await conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
        await conn.close()
        parts = urlsplit(empty_database_url)
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=f"{role}@{host}"))
        with pytest.raises(SchemaError, match="CREATE EXTENSION vector"):
            await docstore.connect(url)
    finally:
        await pg.execute(f'REVOKE ALL ON DATABASE "{database}" FROM {role}')
        conn = await asyncpg.connect(empty_database_url)
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.close()
        await pg.execute(f"DROP ROLE IF EXISTS {role}")


async def test_init_of_a_new_database_warns_nothing_and_the_store_then_decodes_vectors(
    empty_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`docstore init` opens a store without migrating, then migrates: no spurious "pgvector
    is not enabled" warning, and the same store's connections decode vectors afterwards."""
    caplog.set_level(logging.DEBUG, logger="docstore")
    vector = np.random.default_rng(0).standard_normal(3072).astype(np.float32)
    async with docstore.connect(empty_database_url, migrate=False) as store:
        assert await store.migrate()
        await store.documents.upsert(
            docstore.Document(source_name="s", doc_path="p", content="c", embedding=vector)
        )
        stored = await store.fetchval("SELECT embedding FROM documents")
    assert isinstance(stored, np.ndarray) and np.array_equal(stored, vector)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_embeddings_are_stored_out_of_line_without_a_compression_attempt(
    store: docstore.Store,
) -> None:
    """Migration 6: `embedding` is EXTERNAL — moved to TOAST as it is, never run through pglz
    (which fails on dense floats after compressing the whole 12 KB)."""
    storage = await store.fetchval(
        "select attstorage::text from pg_attribute"
        " where attrelid = 'documents'::regclass and attname = 'embedding'"
    )
    assert storage == "e"
    # a vector pglz could compress (constant values) is stored uncompressed all the same
    vector = np.full(3072, 0.25, dtype=np.float32)
    await store.documents.upsert_many(
        [Document(source_name="s", doc_path="a", content="c", embedding=vector)]
    )
    row = await store.fetchrow(
        "select pg_column_compression(embedding) as method, pg_column_size(embedding) as size"
        " from documents"
    )
    assert row["method"] is None and row["size"] >= 3072 * 4
