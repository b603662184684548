"""Regression tests of migration defects a review found on 2026-12-05: a re-run after the
target's migrated rows were deleted, a repair that never converged on -0.0, infinite
timestamps the row digest could not tell from NULL, a re-copied range that became empty."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

import docstore
from docstore.errors import MigrationError
from docstore.migrate import Migrator
from tests.conftest import PgCluster
from tests.legacy_db import legacy_database, legacy_execute, legacy_fetch

DOCS = 60
CHUNK = 20  # 3 chunks: (0, 20], (20, 40], (40, 60]


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=4, docs=DOCS)


async def _target_count(url: str, where: str = "TRUE") -> int:
    async with docstore.connect(url) as store:
        return int(await store.fetchval(f"SELECT count(*) FROM documents WHERE {where}"))


@pytest.mark.parametrize(
    ("deleted", "skipped"),
    [
        ("TRUE", 0),  # everything: the doc_type is empty again
        ("(metadata->>'legacy_id')::int BETWEEN 25 AND 31", 2),  # part of one chunk
    ],
)
async def test_a_rerun_copies_again_the_migrated_rows_deleted_from_the_target(
    legacy_url: str, database_url: str, deleted: str, skipped: int
) -> None:
    """Before: the checkpoints and legacy stamps still held, so every chunk was skipped and,
    without validation, the target stayed without the deleted rows."""
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:
        await store.execute(f"DELETE FROM documents WHERE doc_type = 'rust' AND {deleted}")
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK, validate=False) as m:
        report = await m.run()
        assert report.skipped_chunks == skipped
        assert (await m.validate()).ok
    assert await _target_count(database_url) == DOCS


def _set_first_element(value: str) -> str:
    return (
        "UPDATE doc_embeddings SET embedding = array_cat(ARRAY['" + value + "'::real],"
        " (embedding::real[])[2:3072])::vector WHERE id = 5"
    )


async def test_a_legacy_vector_changed_from_zero_to_minus_zero_is_repaired_and_converges(
    legacy_url: str, database_url: str
) -> None:
    """Before: the upsert from staging compared vectors with pgvector's = (0.0 = -0.0), so
    the repair never wrote the change validation kept finding."""
    await legacy_execute(legacy_url, _set_first_element("0"))
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    await legacy_execute(legacy_url, _set_first_element("-0"))
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        report = await m.run()
        assert report.ok, report.validation.problems() if report.validation else report
        assert (await m.validate()).ok
    (legacy_bytes,) = await legacy_fetch(
        legacy_url, "SELECT vector_send(embedding) FROM doc_embeddings WHERE id = 5"
    )
    async with docstore.connect(database_url) as store:
        stored = await store.fetchval(
            "SELECT vector_send(embedding) FROM documents WHERE metadata->>'legacy_id' = '5'"
        )
    assert stored == legacy_bytes[0]


@pytest.mark.parametrize("stored", ["infinity", "-infinity"])
async def test_full_validation_tells_an_infinite_timestamp_from_null(
    legacy_url: str, database_url: str, stored: str
) -> None:
    """Before: ``to_char`` made ±infinity hash like NULL, so a target row holding NULL
    where the legacy row said infinity passed full validation."""
    other = None
    await legacy_execute(
        legacy_url,
        "UPDATE doc_embeddings SET created_at = $1::text::timestamp WHERE id = 5",
        stored,
    )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:
        await store.execute(
            "UPDATE documents SET created_at = $1::text::timestamp"
            " WHERE metadata->>'legacy_id' = '5'",
            other,
        )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        found = await m.validate()
        assert [x.legacy_id for x in found.mismatches] == [5]
        assert (await m.run()).ok  # and the repair restores it


async def test_a_rollback_through_a_legacy_store_writes_into_a_frozen_legacy_database(
    legacy_url: str, database_url: str, pg: PgCluster
) -> None:
    """Before: with the legacy database given as a Store, ``writable`` was ignored, so the
    rollback failed on a legacy database frozen for the cutover (docs/cutover.md) where it
    succeeds given a URL."""
    name = urlsplit(legacy_url).path.lstrip("/")
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    await pg.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    try:
        async with (
            docstore.connect(legacy_url, migrate=False) as legacy,
            Migrator(legacy, database_url, chunk_rows=CHUNK) as back,
        ):
            assert (await back.rollback()).documents == DOCS
            # the pooled connection went back as it came: read-only again
            assert await legacy.fetchval("SHOW default_transaction_read_only") == "on"
    finally:
        await pg.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")


async def test_work_under_the_migration_lock_stands_when_unlocking_fails(
    database_url: str,
) -> None:
    """Before: a connection that broke after the rollback committed made unlocking raise, and
    the rollback was reported failed although it had committed."""
    from docstore.migrate.lock import MIGRATION_LOCK_KEY, migration_lock

    async with docstore.connect(database_url) as store:
        async with store.acquire() as conn, migration_lock(conn):
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            async with docstore.connect(database_url) as other:
                await other.fetchval("SELECT pg_terminate_backend($1)", pid)
        # the lock went with the session: the next holder takes it
        async with store.acquire() as conn:
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


@pytest.mark.parametrize("stored", ["0006-01-01 00:00:00 BC", "12000-01-01 00:00:00"])
async def test_a_created_at_python_cannot_read_back_is_a_blocking_preflight_problem(
    legacy_url: str, database_url: str, stored: str
) -> None:
    """Before: the copy stored it and the run failed later, in its search-parity check, with
    an untyped QueryError (OverflowError: date value out of range) — as would every read of
    the document afterwards. ±infinity stays fine (asyncpg reads it as datetime.max/min)."""
    await legacy_execute(
        legacy_url,
        "UPDATE doc_embeddings SET created_at = $1::text::timestamp WHERE id IN (5, 9)",
        stored,
    )
    await legacy_execute(
        legacy_url, "UPDATE doc_embeddings SET created_at = '-infinity' WHERE id = 11"
    )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        pre = await m.preflight()
        (problem,) = [p for p in pre.blocking if "created_at" in p]
        assert "2 legacy documents (doc_embeddings ids 5, 9)" in problem
        with pytest.raises(MigrationError, match="outside the years 1–9999"):
            await m.run()
    assert await _target_count(database_url) == 0


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "UPDATE crates SET last_updated = '0006-01-01 BC' WHERE id IN (1, 2)",
            "2 crates rows (ids 1, 2) hold a date outside the years 1–9999 in last_updated",
        ),
        (
            "UPDATE crate_configs SET last_checked = '12000-01-01 00:00+00',"
            " updated_at = '0001-01-01 00:30+01' WHERE id = 1",
            "1 crate_configs row (id 1) holds a date outside the years 1–9999 in last_checked,"
            " updated_at",
        ),
        (
            "UPDATE population_jobs SET completed_at = '0006-01-01 00:00+00 BC' WHERE id = 1",
            "1 population_jobs row (id 1) holds a date outside the years 1–9999 in completed_at",
        ),
    ],
)
async def test_a_date_python_cannot_hold_in_a_small_legacy_table_blocks_preflight(
    legacy_url: str, database_url: str, sql: str, expected: str
) -> None:
    """Before: no preflight finding, and run() ended in a raw OverflowError from the sources
    stage (the CLI's "internal error"). 00:30 on 1 January of year 1 at +01:00 is year 0 in
    UTC, where asyncpg reads a timestamptz."""
    await legacy_execute(legacy_url, sql)
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        pre = await m.preflight()
        assert [p for p in pre.blocking if expected in p], pre.blocking
        with pytest.raises(MigrationError, match="outside the years 1–9999"):
            await m.run()
    assert await _target_count(database_url) == 0


async def test_a_legacy_date_changed_past_9999_after_the_run_fails_validate_typed(
    legacy_url: str, database_url: str
) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
        await legacy_execute(
            legacy_url, "UPDATE crates SET last_updated = '12000-01-01' WHERE id = 1"
        )
        with pytest.raises(MigrationError, match="outside the years 1-9999") as info:
            await m.validate()
        assert isinstance(info.value.__cause__, OverflowError)
