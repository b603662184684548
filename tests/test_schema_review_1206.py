"""Schema runner findings of the 2026-12-06 review: connecting without DDL rights, dimensions
near 4,000, upgrading embeddings beyond half precision, tables docstore did not create."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import pytest

import docstore
from docstore.errors import SchemaError
from docstore.schema.runner import LATEST_VERSION
from tests.conftest import PgCluster, error_texts


def _as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


@pytest.mark.parametrize("read_only_role", [False, True], ids=["dml-only", "read-only-role"])
async def test_a_role_without_ddl_rights_connects_to_an_up_to_date_database(
    pg: PgCluster, database_url: str, read_only_role: bool
) -> None:
    """Nothing pending: connect() takes no lock and runs no DDL, so an app role with DML
    grants only (PostgreSQL 15+ grants no CREATE on public) or a role whose sessions are read
    only connects with the default settings, and can read (and, DML-only, write)."""
    role = "docstore_app_only" + ("_ro" if read_only_role else "")
    database = urlsplit(database_url).path.lstrip("/")
    setup = [f"DROP ROLE IF EXISTS {role}", f"CREATE ROLE {role} LOGIN"]
    if read_only_role:
        setup.append(f"ALTER ROLE {role} SET default_transaction_read_only = on")
    await pg.execute(*setup, f'GRANT CONNECT ON DATABASE "{database}" TO {role}')
    owner = await asyncpg.connect(database_url)
    try:
        await owner.execute(
            f"GRANT USAGE ON SCHEMA public TO {role};"
            f" GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};"
            f" GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"
        )
        async with docstore.connect(_as_role(database_url, role)) as store:
            assert (await store.schema_status()).current == LATEST_VERSION
            assert await store.fetchval("select count(*) from documents") == 0
            if not read_only_role:
                vector = np.ones(3072, dtype=np.float32)
                await store.documents.upsert(
                    docstore.Document(source_name="s", doc_path="p", content="c", embedding=vector)
                )
                assert await store.fetchval("select count(*) from documents") == 1
    finally:
        await owner.execute(f"DROP OWNED BY {role}")
        await owner.close()
        await pg.execute(f'REVOKE ALL ON DATABASE "{database}" FROM {role}', f"DROP ROLE {role}")


def _shapes(dim: int) -> list[docstore.Document]:
    """The rows that leave embedding_half the least room: every other field as long as it can
    be while staying in the row (24 bytes), and ones with long text moved to TOAST."""
    rng = np.random.default_rng(dim)
    short = "x" * 24
    return [
        docstore.Document(
            doc_type=doc_type,
            source_name=source,
            doc_path=f"{path}{i}",
            content=content,
            metadata=metadata,
            token_count=7,
            embedding=rng.standard_normal(dim).astype(np.float32),
        )
        for i, (doc_type, source, path, content, metadata) in enumerate(
            [
                (short, short, short[:-2], short, {"k": "y" * 14}),
                ("rust", "tokio", "a/b", short, {}),
                ("python-stdlib-docs", "google-cloud-storage", "x" * 300, "word " * 2000, {}),
                (short, "s" * 200, short[:-2], "c" * 5000, {"k": "v" * 500}),
            ]
        )
    ]


@pytest.mark.parametrize(("dim", "storage"), [(3800, "p"), (3801, "m"), (3990, "m"), (4000, "m")])
async def test_every_document_fits_at_dimensions_up_to_4000(
    empty_database_url: str, dim: int, storage: str
) -> None:
    """Migration 8: up to 3,800 dimensions embedding_half stays PLAIN and the fullest row fits;
    above, it is MAIN, so no document fails with "row is too big" (4,000 did)."""
    async with docstore.connect(empty_database_url, embedding_dim=dim) as store:
        assert (
            await store.fetchval(
                "select attstorage::text from pg_attribute"
                " where attrelid = 'documents'::regclass and attname = 'embedding_half'"
            )
            == storage
        )
        docs = _shapes(dim)
        await store.documents.upsert_many(docs)
        assert await store.fetchval("select count(*) from documents") == len(docs)
        assert await store.fetchval(
            f"select count(*) from documents where embedding_half = embedding::halfvec({dim})"
        ) == len(docs)
        hits = await store.search(docs[2].embedding, limit=1)
        assert hits[0].doc_path == docs[2].doc_path


async def _without_migration_3(url: str) -> None:
    """A database as docstore wrote it before migration 3 (no embedding_half, no ±65,504 rule;
    the later migrations do not touch it), holding two embeddings beyond half precision."""
    async with docstore.connect(url):
        pass
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "alter table documents drop column embedding_half;"
            " delete from docstore_schema_version where version = 3"
        )
        await conn.execute(
            "insert into documents (source_name, doc_path, content, embedding)"
            " select 's', 'p' || i, 'c', array_fill(i * 35000::real, array[3072])::vector"
            " from generate_series(1, 3) i"
        )
    finally:
        await conn.close()


async def test_upgrading_embeddings_beyond_half_precision_names_them_not_their_values(
    empty_database_url: str,
) -> None:
    await _without_migration_3(empty_database_url)
    with pytest.raises(SchemaError) as raised:
        await docstore.connect(empty_database_url)
    text = error_texts(raised.value)
    assert "2 stored embedding(s)" in text and "documents.id 2, 3" in text
    assert "70000" not in text and "105000" not in text
    async with docstore.connect(empty_database_url, migrate=False) as store:
        status = await store.schema_status()
        assert status.pending == [3]
        await store.execute("update documents set embedding = null where id >= 2")
    async with docstore.connect(empty_database_url) as store:  # now it upgrades
        assert (await store.schema_status()).current == LATEST_VERSION


async def test_tables_docstore_did_not_create_are_a_schema_error(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await conn.execute(
            "create extension if not exists vector;"
            " create table documents (id serial primary key, content text)"
        )
    finally:
        await conn.close()
    with pytest.raises(SchemaError, match="already has documents but no docstore_schema_version"):
        await docstore.connect(empty_database_url)
