"""A database a newer docstore upgraded: this docstore runs on it when every migration beyond
the ones it knows is recorded additive (a rolling deploy, a pod of the previous release
restarting, a rollback of the code), and refuses it, saying why, when one is not."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import asyncpg
import pytest
from typer.testing import CliRunner

import docstore
from docstore.cli import app
from docstore.errors import SchemaError
from docstore.schema.runner import ADDITIVE, BREAKING, LATEST_VERSION, MIGRATIONS, VERSION_TABLE
from tests.conftest import sample_documents, unit_vector, writer_role

runner = CliRunner()


def test_every_migration_says_whether_older_code_may_run_after_it() -> None:
    """A new migration must be classified: additive (the previous release keeps working
    after it) or breaking."""
    versions = {m.version for m in MIGRATIONS}
    assert versions == ADDITIVE | BREAKING, "classify the new migration in ADDITIVE or BREAKING"
    assert not ADDITIVE & BREAKING


async def _newer_docstore_applied(url: str, *, additive: bool) -> None:
    """What a newer docstore leaves: a version beyond this one's, and what it added."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE INDEX newer_docstore_index ON documents (created_at)")
        await conn.execute(
            f"INSERT INTO {VERSION_TABLE} (version, name, checksum, additive)"
            " VALUES ($1, 'from_the_future', 'x', $2)",
            LATEST_VERSION + 1,
            additive,
        )
    finally:
        await conn.close()


async def test_an_additive_newer_schema_is_used_as_it_is(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _newer_docstore_applied(database_url, additive=True)
    with caplog.at_level(logging.WARNING, logger="docstore"):
        async with docstore.connect(database_url) as store:
            await store.documents.upsert_many(sample_documents(5))
            hits = await store.search(unit_vector(2), limit=3)
            assert len(hits) == 3
            assert (await store.health()).schema_version == LATEST_VERSION + 1
            assert await store.migrate() == []
    assert f"newer than this docstore knows ({LATEST_VERSION})" in caplog.text


def test_init_on_an_additive_newer_schema_has_nothing_to_do(database_url: str) -> None:
    asyncio.run(_newer_docstore_applied(database_url, additive=True))
    result = runner.invoke(app, ["init", "--url", database_url])
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    health = runner.invoke(app, ["health", "--url", database_url])
    assert health.exit_code == 0, health.output


async def test_a_breaking_newer_schema_is_refused_saying_which(database_url: str) -> None:
    await _newer_docstore_applied(database_url, additive=False)
    for read_only in (False, True):
        with pytest.raises(SchemaError, match=f"after migration {LATEST_VERSION + 1}"):
            async with docstore.connect(database_url, read_only=read_only):
                pass


async def test_an_older_docstores_version_table_gets_the_column(database_url: str) -> None:
    """A version table made before the column (and a database one migration behind):
    upgrading adds it, and records the additive migrations; the older code's insert
    (columns named, no ``additive``) keeps working."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"ALTER TABLE {VERSION_TABLE} DROP COLUMN additive")
        await conn.execute(f"DELETE FROM {VERSION_TABLE} WHERE version = {LATEST_VERSION}")
        async with docstore.connect(database_url) as store:
            assert await store.schema_status() is not None
        rows = {
            r[0]: r[1] for r in await conn.fetch(f"SELECT version, additive FROM {VERSION_TABLE}")
        }
        assert rows == {m.version: m.version in ADDITIVE for m in MIGRATIONS}
        await conn.execute(
            f"INSERT INTO {VERSION_TABLE} (version, name, checksum) VALUES (1000, 'old', 'x')"
        )
        assert not await conn.fetchval(f"SELECT additive FROM {VERSION_TABLE} WHERE version = 1000")
    finally:
        await conn.close()


async def _as_before_the_column(url: str) -> asyncpg.Connection:
    """The database as a docstore before the ``additive`` column left it, one migration
    behind (9 not applied); returns an admin connection."""
    conn = await asyncpg.connect(url)
    await conn.execute(f"ALTER TABLE {VERSION_TABLE} DROP COLUMN additive")
    await conn.execute(f"DELETE FROM {VERSION_TABLE} WHERE version = {LATEST_VERSION}")
    await conn.execute("DROP STATISTICS IF EXISTS documents_scope_statistics")
    return conn


async def test_adding_the_column_does_not_hold_readers_during_the_migrations(
    database_url: str,
) -> None:
    """Added in its own short transaction: a migration waiting on a lock (here migration 9 on
    a CREATE INDEX CONCURRENTLY's lock on documents) keeps no connect or health() waiting on
    the version table."""
    admin = await _as_before_the_column(database_url)
    try:
        await admin.execute("BEGIN; LOCK documents IN SHARE UPDATE EXCLUSIVE MODE")
        upgrading = asyncio.create_task(docstore.connect(database_url).__aenter__())
        await asyncio.sleep(1.0)  # it added the column and now waits on documents
        assert not upgrading.done()
        async with docstore.connect(database_url, read_only=True) as reader:
            health = await asyncio.wait_for(reader.health(), 5)
            assert health.schema_version == LATEST_VERSION - 1
        await admin.execute("COMMIT")
        store = await asyncio.wait_for(upgrading, 30)
        await store.close()
        rows = {
            r[0]: r[1] for r in await admin.fetch(f"SELECT version, additive FROM {VERSION_TABLE}")
        }
        assert rows == {m.version: m.version in ADDITIVE for m in MIGRATIONS}
    finally:
        await admin.close()


async def test_a_role_that_may_not_alter_the_version_table_still_migrates(
    database_url: str,
) -> None:
    """It owns docstore's tables but not the version table: the migration is applied and
    recorded without the flag (the conservative reading), as before the column."""
    admin = await _as_before_the_column(database_url)
    try:
        async with writer_role(database_url) as url:
            role = urlsplit(url).username
            await admin.execute(f"ALTER TABLE documents OWNER TO {role}")
            await admin.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
            async with docstore.connect(url) as store:
                assert (await store.schema_status()).up_to_date
            assert not await admin.fetchval(
                "SELECT count(*) FROM pg_attribute WHERE attname = 'additive'"
                f" AND attrelid = '{VERSION_TABLE}'::regclass"
            )
            await admin.execute("ALTER TABLE documents OWNER TO CURRENT_USER")
    finally:
        await admin.close()


async def test_health_and_reload_say_the_schema_is_ahead(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _newer_docstore_applied(database_url, additive=True)
    async with docstore.connect(database_url) as store:
        assert any("newer than this docstore" in w for w in (await store.health()).warnings)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="docstore"):
            await store.reload(database_url)
        assert "newer than this docstore" in caplog.text


async def test_health_of_a_store_opened_before_a_breaking_upgrade_says_so(
    database_url: str,
) -> None:
    async with docstore.connect(database_url) as store:
        await _newer_docstore_applied(database_url, additive=False)
        warnings = (await store.health()).warnings
        assert any("cannot work after migration" in w for w in warnings), warnings
        assert not any("only add" in w for w in warnings)
