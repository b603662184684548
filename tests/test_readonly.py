"""Read-only mode: refused in Python before the database, and by the database itself."""

from __future__ import annotations

import pytest

import docstore
from docstore.errors import ReadOnlyError
from docstore.schema.runner import LATEST_VERSION


async def test_read_only_env_blocks_ddl_and_nothing_is_created(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("READ_ONLY", "true")
    async with docstore.connect(database_url) as store:
        assert store.read_only
        with pytest.raises(ReadOnlyError):
            await store.execute("create table t(x int)")
        with pytest.raises(ReadOnlyError):
            await store.execute(
                "insert into documents (source_name, doc_path, content) values ('a','b','c')"
            )
        async with store.transaction() as conn:
            assert await conn.fetchval("show default_transaction_read_only") == "on"
    monkeypatch.delenv("READ_ONLY")
    async with docstore.connect(database_url) as writer:
        assert await writer.fetchval("select to_regclass('t')") is None
        assert await writer.fetchval("select count(*) from documents") == 0


async def test_read_only_argument_refuses_migrate_before_touching_the_database(
    database_url: str,
) -> None:
    async with docstore.connect(database_url, read_only=True) as store:
        with pytest.raises(ReadOnlyError):
            await store.migrate()
        with pytest.raises(ReadOnlyError):
            store.ensure_writable()


async def test_read_only_connect_never_applies_the_schema(empty_database_url: str) -> None:
    async with docstore.connect(empty_database_url, read_only=True, migrate=True) as store:
        status = await store.schema_status()
        assert status.current is None
        assert await store.fetchval("select to_regclass('documents')") is None


async def test_health_reports_read_only(database_url: str) -> None:
    async with docstore.connect(database_url, read_only=True) as store:
        health = await store.health()
    assert health.read_only and health.ok and health.schema_version == LATEST_VERSION
