"""Differential tests: the legacy operations as legacy SQL on a real legacy database, and the
same operations through ``LegacyDatabase`` on docstore — identical observable results."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np
import pytest

import docstore
from docstore.codecs import register_codecs
from docstore.compat import LegacyDatabase, LegacyDoc
from docstore.migrate.legacy import LEGACY_SCHEMA_SQL


class LegacySQL:
    """The legacy operations as the legacy server ran them (schema.sql + the README table)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def upsert_crate(self, name: str, version: str | None) -> int:
        return int(
            await self.conn.fetchval(
                """INSERT INTO crates (name, version) VALUES ($1, $2)
                   ON CONFLICT (name) DO UPDATE
                      SET version = COALESCE(EXCLUDED.version, crates.version),
                          last_updated = CURRENT_TIMESTAMP
                   RETURNING id""",
                name,
                version,
            )
        )

    async def has_embeddings(self, crate: str) -> bool:
        return bool(
            await self.conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM doc_embeddings WHERE crate_name = $1)", crate
            )
        )

    async def insert_embedding(
        self, crate_id: int, crate: str, path: str, content: str, emb: Any, tokens: Any
    ) -> None:
        await self.conn.execute(
            """INSERT INTO doc_embeddings
                   (crate_id, crate_name, doc_path, content, embedding, token_count)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (crate_name, doc_path) DO UPDATE
                  SET content = EXCLUDED.content, embedding = EXCLUDED.embedding,
                      token_count = EXCLUDED.token_count""",
            crate_id,
            crate,
            path,
            content,
            emb,
            tokens,
        )

    async def insert_embeddings_batch(self, crate_id: int, crate: str, docs: list[Any]) -> None:
        async with self.conn.transaction():
            for d in docs:
                await self.insert_embedding(crate_id, crate, *d)
            await self.conn.execute(
                """UPDATE crates SET
                       total_docs = (SELECT count(*) FROM doc_embeddings WHERE crate_name = $1),
                       total_tokens = (SELECT coalesce(sum(token_count), 0)
                                         FROM doc_embeddings WHERE crate_name = $1)
                   WHERE name = $1""",
                crate,
            )

    async def search_similar_docs(self, crate: str, emb: Any, limit: int = 5) -> list[Any]:
        rows = await self.conn.fetch(
            "SELECT doc_path, content, similarity FROM search_similar_docs($1, $2, $3)",
            emb,
            crate,
            limit,
        )
        return [(r["doc_path"], r["content"], r["similarity"]) for r in rows]

    async def get_crate_documents(self, crate: str) -> list[Any]:
        rows = await self.conn.fetch(
            "SELECT doc_path, content, embedding FROM doc_embeddings"
            " WHERE crate_name = $1 ORDER BY doc_path",
            crate,
        )
        return [tuple(r) for r in rows]

    async def delete_crate_embeddings(self, crate: str) -> int:
        status = await self.conn.execute("DELETE FROM doc_embeddings WHERE crate_name = $1", crate)
        return int(status.split()[-1])

    async def get_crate_stats(self) -> list[Any]:
        rows = await self.conn.fetch(
            "SELECT name, version, last_updated, total_docs, total_tokens FROM crates ORDER BY name"
        )
        return [tuple(r) for r in rows]

    async def count_crate_documents(self, crate: str) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM doc_embeddings WHERE crate_name = $1", crate
            )
        )


@pytest.fixture
async def both(
    empty_database_url: str, database_url: str
) -> AsyncIterator[tuple[LegacySQL, LegacyDatabase]]:
    conn = await asyncpg.connect(empty_database_url)
    await conn.execute(LEGACY_SCHEMA_SQL)
    await register_codecs(conn, "public")
    async with docstore.connect(database_url) as store:
        yield LegacySQL(conn), LegacyDatabase(store)
    await conn.close()


def docs(n: int, seed: int, prefix: str = "doc") -> list[LegacyDoc]:
    rng = np.random.default_rng(seed)
    return [
        LegacyDoc(
            f"{prefix}/{i}.html",
            f"content {i} with 'quotes' and \\ backslashes ✓",
            rng.normal(size=3072).astype(np.float32),
            None if i % 5 == 0 else 10 * i,
        )
        for i in range(n)
    ]


def without_time(stats: list[Any]) -> list[Any]:
    return [(s[0], s[1], s[3], s[4]) for s in stats]


async def same(legacy: LegacySQL, compat: LegacyDatabase, op: str, *args: Any) -> Any:
    a = await getattr(legacy, op)(*args)
    b = await getattr(compat, op)(*args)
    return a, b


async def test_every_legacy_operation_behaves_the_same(
    both: tuple[LegacySQL, LegacyDatabase],
) -> None:
    legacy, compat = both
    tokio_l = await legacy.upsert_crate("tokio", "1.0")
    tokio_c = await compat.upsert_crate("tokio", "1.0")
    assert isinstance(tokio_l, int) and isinstance(tokio_c, int)
    # a NULL version keeps the old one, and the id is stable
    assert await legacy.upsert_crate("tokio", None) == tokio_l
    assert await compat.upsert_crate("tokio", None) == tokio_c
    await legacy.upsert_crate("serde", "2.0")
    await compat.upsert_crate("serde", "2.0")
    a, b = await same(legacy, compat, "get_crate_stats")
    assert without_time(a) == without_time(b) == [("serde", "2.0", 0, 0), ("tokio", "1.0", 0, 0)]
    assert all(s[2] is not None for s in a + b)  # last_updated bumped on both

    assert await same(legacy, compat, "has_embeddings", "tokio") == (False, False)
    batch = docs(30, seed=1)
    await legacy.insert_embeddings_batch(tokio_l, "tokio", batch)
    await compat.insert_embeddings_batch(tokio_c, "tokio", batch)
    a, b = await same(legacy, compat, "get_crate_stats")
    assert without_time(a) == without_time(b)
    assert a[1][3] == 30 and a[1][4] == sum(d.token_count or 0 for d in batch)

    # single upserts: one update of an existing document, one new (totals not recomputed)
    changed = np.full(3072, 0.25, dtype=np.float32)
    for target in (legacy, compat):
        crate_id = tokio_l if target is legacy else tokio_c
        await target.insert_embedding(crate_id, "tokio", "doc/3.html", "changed", changed, 7)
        await target.insert_embedding(crate_id, "tokio", "extra.html", "new", changed, None)
    assert await same(legacy, compat, "count_crate_documents", "tokio") == (31, 31)
    assert await same(legacy, compat, "has_embeddings", "tokio") == (True, True)
    a, b = await same(legacy, compat, "get_crate_stats")
    assert without_time(a) == without_time(b)

    a, b = await same(legacy, compat, "get_crate_documents", "tokio")
    assert [(p, c) for p, c, _ in a] == [(p, c) for p, c, _ in b]
    assert all(np.array_equal(x[2], y[2]) for x, y in zip(a, b, strict=True))

    for query in (batch[7].embedding, changed):
        a, b = await same(legacy, compat, "search_similar_docs", "tokio", query, 5)
        assert [r[:2] for r in a] == [r[:2] for r in b]
        assert [r[2] for r in a] == pytest.approx([r[2] for r in b], abs=1e-6)
    a, b = await same(legacy, compat, "search_similar_docs", "serde", changed, 5)
    assert a == b == []

    assert await same(legacy, compat, "delete_crate_embeddings", "serde") == (0, 0)
    assert await same(legacy, compat, "delete_crate_embeddings", "tokio") == (31, 31)
    assert await same(legacy, compat, "count_crate_documents", "tokio") == (0, 0)
    assert await same(legacy, compat, "has_embeddings", "tokio") == (False, False)


async def test_compat_writes_keep_a_migrated_rows_legacy_id(database_url: str) -> None:
    async with docstore.connect(database_url) as store:
        await store.documents.upsert(
            docstore.Document(
                source_name="tokio",
                doc_path="a.html",
                content="old",
                metadata={"legacy_id": 42, "migrated_from": "rust_docs_vectors"},
            )
        )
        compat = LegacyDatabase(store)
        await compat.insert_embedding(None, "tokio", "a.html", "new", None, 3)
        doc = await store.documents.get_by_key("rust", "tokio", "a.html")
        assert doc is not None and doc.content == "new"
        assert doc.metadata["legacy_id"] == 42 and doc.metadata["crate_name"] == "tokio"


async def test_a_compat_write_never_loses_a_concurrent_metadata_change(
    database_url: str,
) -> None:
    """The stored metadata a legacy write keeps is read under the crate's source lock, in the
    writing transaction: a docstore writer holding the lock (here: adding a key to the row's
    metadata) is waited for, and its change survives the legacy write."""
    import asyncio

    from docstore.repositories.documents import lock_sources

    async with docstore.connect(database_url) as store:
        await store.documents.upsert(
            docstore.Document(
                source_name="tokio", doc_path="a.html", content="old", metadata={"legacy_id": 7}
            )
        )
        compat = LegacyDatabase(store)
        async with store.transaction() as conn:
            await lock_sources(conn, [("rust", "tokio")])
            await conn.execute(
                "UPDATE documents SET metadata = metadata || '{\"reviewed\": true}'"
                " WHERE source_name = 'tokio' AND doc_path = 'a.html'"
            )
            write = asyncio.create_task(
                compat.insert_embedding(None, "tokio", "a.html", "new", None, 3)
            )
            await asyncio.sleep(0.3)
            assert not write.done()  # waiting for the source lock
        await asyncio.wait_for(write, 30)
        doc = await store.documents.get_by_key("rust", "tokio", "a.html")
        assert doc is not None and doc.content == "new"
        assert doc.metadata["reviewed"] is True and doc.metadata["legacy_id"] == 7


async def test_a_batch_and_its_crate_totals_commit_together(database_url: str) -> None:
    """insert_embeddings_batch is one transaction: when recomputing the totals fails (here a
    CHECK constraint refuses the source's new total — a trigger would do on one node, but
    Citus has none on distributed tables), none of the batch's documents are written."""
    from tests.conftest import unit_vector

    async with docstore.connect(database_url) as store:
        compat = LegacyDatabase(store)
        await compat.upsert_crate("tokio", "1.0")
        await store.execute(
            "ALTER TABLE document_sources ADD CONSTRAINT refuse_totals"
            " CHECK (coalesce((config->>'total_docs')::int, 0) < 1)"
        )
        try:
            with pytest.raises(docstore.DocstoreError, match="refuse_totals"):
                await compat.insert_embeddings_batch(
                    None, "tokio", [("tokio/a.html", "text", unit_vector(1), 3)]
                )
            assert await compat.count_crate_documents("tokio") == 0
        finally:
            await store.execute("ALTER TABLE document_sources DROP CONSTRAINT refuse_totals")
        await compat.insert_embeddings_batch(
            None, "tokio", [("tokio/a.html", "text", unit_vector(1), 3)]
        )
        [stats] = await compat.get_crate_stats()
        assert (stats.total_docs, stats.total_tokens) == (1, 3)


async def test_connect_uses_the_legacy_variable_alone(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCPDOCS_DATABASE_URL", database_url)
    async with await LegacyDatabase.connect() as compat:
        assert compat.store.url_source.value == "MCPDOCS_DATABASE_URL"
        assert await compat.count_crate_documents("nothing") == 0


# -- legacy SQL through the views, after a migration --------------------------------------------

LEGACY_READS = [
    ("select crate_name, count(*) from doc_embeddings group by 1 order by 1", ()),
    ("select exists (select 1 from doc_embeddings where crate_name = 'crate1')", ()),
    ("select exists (select 1 from doc_embeddings where crate_name = 'nope')", ()),
    ("select count(*) from doc_embeddings where embedding is null", ()),
    (
        "select id, crate_id, crate_name, doc_path, md5(content), token_count, created_at"
        " from doc_embeddings order by id",
        (),
    ),
    ("select name, version, last_updated, total_docs, total_tokens from crates order by name", ()),
    (
        "select c.name, count(d.id) from crates c join doc_embeddings d on c.name = d.crate_name"
        " group by 1 order by 1",
        (),
    ),
    (
        "select name, version, last_updated, doc_count, total_tokens from crate_stats"
        " order by name",
        (),
    ),
]


@pytest.fixture
def migrated(pg: Any, database_url: str) -> Any:
    import asyncio

    from docstore.migrate import Migrator
    from tests.legacy_db import build_legacy

    name = pg.create_database(prefix="legacy")
    legacy_url = pg.url(name)

    async def setup() -> None:
        await build_legacy(legacy_url, crates=6, docs=120)
        async with Migrator(legacy_url, database_url) as m:
            assert (await m.run()).ok

    asyncio.run(setup())
    yield legacy_url, database_url
    pg.drop_database(name)


async def fetch_both(legacy_url: str, target_url: str, sql: str, *args: Any) -> tuple[Any, Any]:
    out = []
    for url in (legacy_url, target_url):
        conn = await asyncpg.connect(url)
        try:
            await register_codecs(conn, "public")
            out.append([tuple(r) for r in await conn.fetch(sql, *args)])
        finally:
            await conn.close()
    return out[0], out[1]


async def test_legacy_sql_reads_return_the_same_rows_after_migration(migrated: Any) -> None:
    """Acceptance 2: counts, EXISTS, rows, crates, crate_stats, the similarity query and
    search_similar_docs — row for row, with and without the ANN index."""
    legacy_url, target_url = migrated
    async with docstore.connect(target_url) as store:
        assert await LegacyDatabase(store).install_views() == "public"
    for sql, args in LEGACY_READS:
        a, b = await fetch_both(legacy_url, target_url, sql, *args)
        assert a == b, sql
    query = np.random.default_rng(5).normal(size=3072).astype(np.float32)
    similarity_sql = (
        "select id, doc_path, 1 - (embedding <=> $1) as similarity from doc_embeddings"
        " where crate_name = $2 and embedding is not null order by embedding <=> $1 limit 5"
    )
    function_sql = (
        "select id, crate_name, doc_path, md5(content), similarity"
        " from search_similar_docs($1, $2, 5)"
    )
    for with_index in (False, True):
        if with_index:
            async with docstore.connect(target_url) as store:
                await store.create_vector_index()
        for crate in ("crate0", "crate3", "orphan-crate"):
            a, b = await fetch_both(legacy_url, target_url, similarity_sql, query, crate)
            assert [r[:2] for r in a] == [r[:2] for r in b]
            assert [r[2] for r in a] == pytest.approx([r[2] for r in b], abs=1e-6)
            a, b = await fetch_both(legacy_url, target_url, function_sql, query, crate)
            # the legacy function also returns NULL-embedding rows last; docstore's ANN never does
            a = [r for r in a if r[4] is not None]
            b = [r for r in b if r[4] is not None]
            assert [r[:4] for r in a] == [r[:4] for r in b], (crate, with_index)


async def test_writes_through_the_views_point_to_the_facade(migrated: Any) -> None:
    _, target_url = migrated
    async with docstore.connect(target_url) as store:
        await LegacyDatabase(store).install_views()
        for sql in (
            "insert into crates (name) values ('x')",
            "update doc_embeddings set content = 'x'",
            "delete from doc_embeddings",
        ):
            with pytest.raises(docstore.QueryError, match="LegacyDatabase"):
                await store.execute(sql)
        assert await store.documents.count() == 120


async def test_views_refuse_a_schema_with_legacy_tables_and_uninstall_cleanly(
    database_url: str,
) -> None:
    async with docstore.connect(database_url) as store:
        compat = LegacyDatabase(store)
        await store.execute(  # a session's database may be reused (DOCSTORE_TEST_CITUS_URL)
            "drop schema if exists legacy_here cascade; create schema legacy_here;"
            " create table legacy_here.crates (id int)"
        )
        with pytest.raises(docstore.SchemaError, match="already has real legacy tables"):
            await compat.install_views("legacy_here")
        assert await compat.install_views("compat") == "compat"
        assert await store.fetchval("select count(*) from compat.doc_embeddings") == 0
        installed = await compat.installed_views("compat")
        assert {"crate_stats", "crates", "doc_embeddings", "search_similar_docs()"} <= set(
            installed
        )
        assert installed == sorted(installed)
        assert await compat.installed_views("legacy_here") == []  # a table is no view
        await compat.uninstall_views("compat")
        assert await store.fetchval("select to_regclass('compat.doc_embeddings')") is None
        assert await compat.installed_views("compat") == []


def test_cli_installs_and_removes_the_views(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from docstore.cli import app

    runner = CliRunner()
    monkeypatch.setenv("DATABASE_URL", database_url)
    done = runner.invoke(app, ["compat", "install-views", "--schema", "legacy_compat"])
    assert done.exit_code == 0 and "installed in schema 'legacy_compat'" in done.output
    gone = runner.invoke(app, ["compat", "uninstall-views", "--schema", "legacy_compat"])
    assert gone.exit_code == 0 and "legacy views removed from schema" in gone.output
    # run twice, it says there was nothing to remove (it had said "removed" again)
    again = runner.invoke(app, ["compat", "uninstall-views", "--schema", "legacy_compat"])
    assert again.exit_code == 0, again.output
    assert "no legacy views in schema 'legacy_compat': nothing to remove" in again.output
    # views dropped by hand, their function left: that is still something to remove
    assert (
        runner.invoke(app, ["compat", "install-views", "--schema", "legacy_compat"]).exit_code == 0
    )

    async def drop_views() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "DROP VIEW legacy_compat.crate_stats, legacy_compat.doc_embeddings,"
                " legacy_compat.crates"
            )
        finally:
            await conn.close()

    asyncio.run(drop_views())
    leftovers = runner.invoke(app, ["compat", "uninstall-views", "--schema", "legacy_compat"])
    assert "legacy views removed from schema" in leftovers.output, leftovers.output


# -- crate configs and population jobs ------------------------------------------------------


class LegacyConfigSQL:
    """The legacy config / job operations (only where those tables exist)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def create_crate_config(
        self,
        name: str,
        version_spec: str = "latest",
        current_version: str | None = None,
        features: list[str] | None = None,
        expected_docs: int = 1000,
        enabled: bool = True,
    ) -> int:
        return int(
            await self.conn.fetchval(
                """INSERT INTO crate_configs (name, version_spec, current_version, features,
                                         expected_docs, enabled)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (name, version_spec) DO UPDATE
                  SET current_version = EXCLUDED.current_version, features = EXCLUDED.features,
                      expected_docs = EXCLUDED.expected_docs, enabled = EXCLUDED.enabled,
                      updated_at = now()
               RETURNING id""",
                name,
                version_spec,
                current_version,
                features or [],
                expected_docs,
                enabled,
            )
        )

    async def get_crate_config(self, name: str, version_spec: str = "latest") -> Any:
        row = await self.conn.fetchrow(
            "SELECT * FROM crate_configs WHERE name = $1 AND version_spec = $2", name, version_spec
        )
        return None if row is None else dict(row)

    async def list_crate_configs(self, enabled_only: bool = False) -> list[Any]:
        rows = await self.conn.fetch(
            "SELECT * FROM crate_configs WHERE enabled OR NOT $1 ORDER BY name, version_spec",
            enabled_only,
        )
        return [dict(r) for r in rows]

    async def update_crate_config(self, config_id: int, **fields: Any) -> bool:
        sets = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(fields))
        status = await self.conn.execute(
            f"UPDATE crate_configs SET {sets}, updated_at = now() WHERE id = $1",
            config_id,
            *fields.values(),
        )
        return status.split()[-1] != "0"

    async def get_crates_needing_update(self, max_age: Any) -> list[Any]:
        rows = await self.conn.fetch(
            """SELECT * FROM crate_configs
                WHERE enabled AND (last_checked IS NULL OR last_checked < now() - $1::interval)
                ORDER BY last_checked NULLS FIRST, name""",
            max_age,
        )
        return [dict(r) for r in rows]

    async def create_population_job(self, crate_config_id: int) -> int:
        return int(
            await self.conn.fetchval(
                "INSERT INTO population_jobs (crate_config_id) VALUES ($1) RETURNING id",
                crate_config_id,
            )
        )

    async def update_population_job(
        self,
        job_id: int,
        status: str,
        *,
        error_message: str | None = None,
        docs_populated: int | None = None,
    ) -> bool:
        result = await self.conn.execute(
            """UPDATE population_jobs
                  SET status = $2::text,
                      started_at = CASE WHEN $2::text = 'running' THEN now() ELSE started_at END,
                      completed_at = CASE WHEN $2::text IN ('completed', 'failed') THEN now()
                                          ELSE completed_at END,
                      error_message = coalesce($3, error_message),
                      docs_populated = coalesce($4, docs_populated)
                WHERE id = $1""",
            job_id,
            status,
            error_message,
            docs_populated,
        )
        return result.split()[-1] != "0"

    async def get_population_job(self, job_id: int) -> Any:
        row = await self.conn.fetchrow(
            "SELECT id, crate_config_id, status, started_at, completed_at, error_message,"
            " docs_populated, created_at FROM population_jobs WHERE id = $1",
            job_id,
        )
        return None if row is None else dict(row)


CONFIG_FIELDS = (
    "id",
    "name",
    "version_spec",
    "current_version",
    "features",
    "expected_docs",
    "enabled",
)


def configs_view(rows: list[Any]) -> list[Any]:
    return [(*(r[k] for k in CONFIG_FIELDS), r["last_checked"] is None) for r in rows]


def job_view(job: Any) -> Any:
    return (
        job["id"],
        job["crate_config_id"],
        job["status"],
        job["started_at"] is None,
        job["completed_at"] is None,
        job["error_message"],
        job["docs_populated"],
    )


async def test_config_and_job_operations_behave_the_same(
    both: tuple[LegacySQL, LegacyDatabase],
) -> None:
    from datetime import UTC, datetime, timedelta

    legacy_db, compat = both
    legacy = LegacyConfigSQL(legacy_db.conn)
    for target in (legacy, compat):
        assert await target.create_crate_config("tokio", "latest", "1.40", ["full"]) == 1
        assert await target.create_crate_config("tokio", "1.x", None, [], 50, False) == 2
        assert await target.create_crate_config("serde", features=["derive"]) == 3
        # the same (name, version_spec) again updates, keeping the id
        assert await target.create_crate_config("serde", "latest", "1.0.200", ["derive"]) == 3
    a, b = await legacy.list_crate_configs(), await compat.list_crate_configs()
    assert configs_view(a) == configs_view(b)
    a, b = await legacy.list_crate_configs(True), await compat.list_crate_configs(True)
    assert configs_view(a) == configs_view(b) and len(a) == 2
    a = await legacy.get_crate_config("tokio", "1.x")
    b = await compat.get_crate_config("tokio", "1.x")
    assert configs_view([a]) == configs_view([b])
    assert await legacy.get_crate_config("nope") is None
    assert await compat.get_crate_config("nope") is None

    checked = datetime.now(UTC) - timedelta(hours=2)
    for target in (legacy, compat):
        assert await target.update_crate_config(1, last_checked=checked, current_version="1.41")
        assert not await target.update_crate_config(99, enabled=True)
    for max_age, expected in (
        (timedelta(hours=1), ["serde", "tokio"]),
        (timedelta(hours=3), ["serde"]),
    ):
        a = await legacy.get_crates_needing_update(max_age)
        b = await compat.get_crates_needing_update(max_age)
        assert [c["name"] for c in a] == [c["name"] for c in b] == expected

    made: dict[Any, list[int]] = {}
    for target in (legacy, compat):
        job = await target.create_population_job(3)
        assert await target.update_population_job(job, "running")
        assert await target.update_population_job(job, "failed", error_message="timeout")
        second = await target.create_population_job(1)
        assert await target.update_population_job(second, "completed", docs_populated=42)
        assert not await target.update_population_job(999, "running")
        made[target] = [job, second]
    # a job created after the cutover: its own id + 1,000,000,000 (never a legacy id)
    assert made[legacy] == [1, 2] and made[compat] == [1_000_000_001, 1_000_000_002]
    for legacy_id, compat_id in zip(made[legacy], made[compat], strict=True):
        a = await legacy.get_population_job(legacy_id)
        b = await compat.get_population_job(compat_id)
        assert job_view(a)[1:] == job_view(b)[1:] and b["id"] == compat_id


async def test_migrated_configs_are_served_by_the_facade(migrated: Any) -> None:
    legacy_url, target_url = migrated
    conn = await asyncpg.connect(legacy_url)
    try:
        expected = await LegacyConfigSQL(conn).list_crate_configs()
    finally:
        await conn.close()
    async with docstore.connect(target_url) as store:
        compat = LegacyDatabase(store)
        assert configs_view(await compat.list_crate_configs()) == configs_view(expected)
        # the next config id continues after the migrated ones
        assert await compat.create_crate_config("new-crate") == max(c["id"] for c in expected) + 1


async def test_upsert_crate_turns_a_crateless_source_into_a_crate(migrated: Any) -> None:
    _, target_url = migrated
    async with docstore.connect(target_url) as store:
        compat = LegacyDatabase(store)
        assert "orphan-crate" not in [s.name for s in await compat.get_crate_stats()]
        await compat.upsert_crate("orphan-crate", "0.1")
        stats = {s.name: s for s in await compat.get_crate_stats()}
        assert stats["orphan-crate"].version == "0.1"
        await compat.install_views()
        assert await store.fetchval("select count(*) from crates where name = 'orphan-crate'") == 1


async def test_crate_config_values_are_checked_and_naive_times_are_utc(
    store: docstore.Store,
) -> None:
    """What the legacy table's column types refused is refused before anything is written;
    a naive ``last_checked`` (legacy code's ``datetime.now()``/``utcnow()``) is UTC, and
    ``get_crates_needing_update`` keeps working for every config."""
    from datetime import UTC, datetime, timedelta

    from docstore.errors import ValidationError

    compat = LegacyDatabase(store)
    tokio = await compat.create_crate_config("tokio")
    serde = await compat.create_crate_config("serde")
    for bad in (
        lambda: compat.create_crate_config("a\x00b"),
        lambda: compat.create_crate_config("x" * 256),
        lambda: compat.create_crate_config("ok", features="full"),
        lambda: compat.create_crate_config("ok", expected_docs=-1),
        lambda: compat.create_crate_config("ok", enabled="yes"),
        lambda: compat.update_crate_config(tokio, last_checked="yesterday"),
        lambda: compat.update_crate_config(tokio, expected_docs=True),
        lambda: compat.update_crate_config(tokio, current_version="1\x00"),
    ):
        with pytest.raises(ValidationError):
            await bad()
    assert [c["name"] for c in await compat.list_crate_configs()] == ["serde", "tokio"]
    naive_utc_now = datetime.now(UTC).replace(tzinfo=None)
    assert await compat.update_crate_config(tokio, last_checked=naive_utc_now)
    assert await compat.update_crate_config(serde, last_checked=naive_utc_now - timedelta(hours=3))
    due = await compat.get_crates_needing_update(timedelta(hours=1))
    assert [c["name"] for c in due] == ["serde"]
    source = await store.sources.get("rust", "tokio")
    assert source is not None and source.last_checked is not None
    assert abs(source.last_checked - datetime.now(UTC)) < timedelta(minutes=1)


async def test_count_crate_documents_reads_what_was_just_written(
    database_url: str, pg: Any
) -> None:
    """With a read replica the count is read on the primary, like the other compat reads (a
    database that never sees the writes stands in for a lagging replica)."""
    from tests.conftest import unit_vector

    lagging = f"lagging_{os.getpid()}"
    await pg.execute(f'CREATE DATABASE "{lagging}" TEMPLATE "{pg.template}"')
    try:
        async with docstore.connect(database_url, database_read_url=pg.url(lagging)) as store:
            compat = LegacyDatabase(store)
            await compat.insert_embeddings_batch(
                None, "tokio", [("tokio/a.html", "text", unit_vector(1), 3)]
            )
            assert await compat.has_embeddings("tokio")
            assert await compat.count_crate_documents("tokio") == 1
    finally:
        await pg.execute(f'DROP DATABASE "{lagging}" WITH (FORCE)')
