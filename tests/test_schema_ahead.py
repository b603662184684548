"""A database a newer docstore upgraded: this docstore runs on it when every migration beyond
the ones it knows is recorded additive (a rolling deploy, a pod of the previous release
restarting, a rollback of the code), and refuses it, saying why, when one is not."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from typer.testing import CliRunner

import docstore
from docstore.cli import app
from docstore.errors import SchemaError
from docstore.schema.runner import ADDITIVE, BREAKING, LATEST_VERSION, MIGRATIONS, VERSION_TABLE
from tests.conftest import sample_documents, unit_vector

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
        rows = dict(await conn.fetch(f"SELECT version, additive FROM {VERSION_TABLE}"))
        assert rows == {m.version: m.version in ADDITIVE for m in MIGRATIONS}
        await conn.execute(
            f"INSERT INTO {VERSION_TABLE} (version, name, checksum) VALUES (1000, 'old', 'x')"
        )
        assert not await conn.fetchval(f"SELECT additive FROM {VERSION_TABLE} WHERE version = 1000")
    finally:
        await conn.close()
