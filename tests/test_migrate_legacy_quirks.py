"""Regression tests of confirmed migration defects with legacy databases that differ from the
deployed schema's promises (review of the migration tool): embedding values half precision
cannot hold, a read-only role without SELECT on an optional table, keys whose unique constraint
was dropped, infinite timestamps and a NULL ``crate_configs.enabled``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest
from typer.testing import CliRunner

import docstore
from docstore.cli import app
from docstore.cli.base import EXIT_ERROR
from docstore.errors import MigrationError
from docstore.migrate import Migrator
from docstore.migrate import preflight as preflight_stage
from docstore.migrate.context import open_legacy
from docstore.migrate.report import Preflight
from tests.conftest import PgCluster
from tests.legacy_db import legacy_database, legacy_execute, legacy_fetch

DOCS = 60
CHUNK = 10  # 6 chunks: (0, 10], (10, 20], …, (50, 60]


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=4, docs=DOCS)


async def target_count(url: str) -> int:
    async with docstore.connect(url) as store:
        return int(await store.fetchval("SELECT count(*) FROM documents"))


def beyond_half(value: float, seed: int = 0) -> np.ndarray:
    """A 3,072-dim embedding legal in the legacy ``vector`` with one value ``value``."""
    v = np.random.default_rng(seed).normal(size=3072).astype(np.float32)
    v[7] = value
    return v


async def thorough_preflight(legacy_url: str, database_url: str, *, thorough: bool) -> Preflight:
    async with (
        open_legacy(legacy_url) as src,
        docstore.connect(database_url, migrate=False) as store,
    ):
        return await preflight_stage.preflight(src, store, "rust", thorough=thorough)


# -- A: embedding values beyond half precision (|x| > 65,504) -------------------------------


async def test_an_embedding_beyond_half_precision_stops_the_copy_naming_its_legacy_ids(
    legacy_url: str, database_url: str
) -> None:
    """Was: NumericValueOutOfRangeError (exit 70, "a bug in docstore") half-way through,
    at the same chunk on every re-run, without naming the row."""
    await legacy_execute(
        legacy_url, "UPDATE doc_embeddings SET embedding = $1 WHERE id = 34", beyond_half(1e6)
    )
    await legacy_execute(
        legacy_url, "UPDATE doc_embeddings SET embedding = $1 WHERE id = 38", beyond_half(-7e4)
    )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        for _ in range(2):  # a re-run fails at the same chunk, as clearly
            with pytest.raises(MigrationError) as failed:
                await m.run()
            message = str(failed.value)
            assert "doc_embeddings ids (30, 40]" in message, message
            assert "2 legacy embeddings hold values beyond ±65,504 (doc_embeddings ids 34, 38)" in (
                message
            )
            assert "docstore cannot store them" in message and "upsert" in message, message
            assert "resumes after the chunks already committed" in message, message
        committed = await target_count(database_url)
        assert 30 <= committed < DOCS
        # fixed in the legacy database: the re-run resumes after the committed chunks
        await legacy_execute(
            legacy_url, "UPDATE doc_embeddings SET embedding = NULL WHERE id IN (34, 38)"
        )
        report = await m.run()
    assert report.ok, report.warnings
    assert report.skipped_chunks >= 3
    assert await target_count(database_url) == DOCS


def test_cli_migrate_names_an_embedding_beyond_half_precision_instead_of_an_internal_error(
    legacy_url: str, database_url: str
) -> None:
    asyncio.run(
        legacy_execute(
            legacy_url,
            "UPDATE doc_embeddings SET embedding = $1 WHERE id = 40",
            beyond_half(70000.0),
        )
    )
    env = {"COLUMNS": "200", "LEGACY_DATABASE_URL": legacy_url, "DATABASE_URL": database_url}
    result = CliRunner().invoke(app, ["migrate", "--chunk-rows", str(CHUNK)], env=env)
    output = " ".join(result.output.split())
    assert result.exit_code == EXIT_ERROR, result.output
    assert "doc_embeddings ids 40)" in output, output
    assert "bug in docstore" not in output


async def test_a_thorough_preflight_names_embeddings_beyond_half_precision(
    legacy_url: str, database_url: str
) -> None:
    """``preflight(thorough=True)`` (what a dry run asks for) scans every embedding; the
    default preflight reads none of them."""
    for i, legacy_id in enumerate((22, 2, 9, 12, 30, 50, 59)):
        await legacy_execute(
            legacy_url,
            "UPDATE doc_embeddings SET embedding = $1 WHERE id = $2",
            beyond_half(-65505.0 if i % 2 else 1e30, seed=i),
            legacy_id,
        )
    # the largest half-precision magnitude itself is fine
    await legacy_execute(
        legacy_url, "UPDATE doc_embeddings SET embedding = $1 WHERE id = 1", beyond_half(65504.0)
    )
    pre = await thorough_preflight(legacy_url, database_url, thorough=True)
    assert [b for b in pre.blocking if "±65,504" in b] == [
        "7 legacy embeddings hold values beyond ±65,504 (doc_embeddings ids 2, 9, 12, 22, 30, …):"
        " the legacy vector column takes them but docstore cannot store them, since every"
        " embedding is also kept in half precision (embedding_half, its search index), whose"
        " range ends there; docstore's own writes (documents.upsert) refuse such a vector too."
        " Fix them in the legacy database (re-embed them, or SET embedding = NULL) and run again"
    ], pre.blocking
    cheap = await thorough_preflight(legacy_url, database_url, thorough=False)
    assert not cheap.blocking, cheap.blocking


# -- B: a read-only role without SELECT on some legacy tables -------------------------------


@pytest.fixture
def reader(pg: PgCluster, legacy_url: str) -> Iterator[tuple[str, str]]:
    """A LOGIN role without any grant yet and the legacy URL as that role."""
    role = "ro_" + uuid.uuid4().hex[:8]
    pg.run(f"CREATE ROLE {role} LOGIN")
    parts = urlsplit(legacy_url)
    host = parts.netloc.split("@", 1)[-1]
    yield role, urlunsplit((parts.scheme, f"{role}:@{host}", parts.path, parts.query, ""))
    asyncio.run(legacy_execute(legacy_url, f"DROP OWNED BY {role}"))
    pg.run(f"DROP ROLE {role}")


@pytest.mark.parametrize(
    ("granted", "missing"),
    [
        ("crates, doc_embeddings", "crate_configs, population_jobs"),
        ("crates, crate_configs, population_jobs", "doc_embeddings"),
    ],
)
async def test_a_role_without_select_on_a_legacy_table_is_blocked_naming_the_grant(
    granted: str, missing: str, reader: tuple[str, str], legacy_url: str, database_url: str
) -> None:
    """Was: InsufficientPrivilegeError out of preflight and the copy (exit 70)."""
    role, url = reader
    await legacy_execute(legacy_url, f"GRANT SELECT ON {granted} TO {role}")
    async with Migrator(url, database_url, chunk_rows=CHUNK) as m:
        pre = await m.preflight()
        grant = f"GRANT SELECT ON {missing} TO {role}"
        assert any(grant in b for b in pre.blocking), pre.blocking
        dry = await m.run(dry_run=True)
        assert any(grant in b for b in dry.preflight.blocking)
        with pytest.raises(MigrationError, match=grant):
            await m.run()
    assert await target_count(database_url) == 0
    await legacy_execute(legacy_url, f"GRANT SELECT ON {missing} TO {role}")
    async with Migrator(url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.preflight()).blocking == []


# -- C: legacy keys whose unique constraint was dropped --------------------------------------


async def blocked_run(legacy_url: str, database_url: str, expected: str) -> None:
    """Preflight and run both name ``expected``; nothing is written."""
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        pre = await m.preflight()
        assert any(expected in b for b in pre.blocking), pre.blocking
        with pytest.raises(MigrationError) as failed:
            await m.run()
        assert expected in str(failed.value)
    assert await target_count(database_url) == 0


async def test_duplicate_crate_names_without_their_unique_constraint_block_the_run(
    legacy_url: str, database_url: str
) -> None:
    """Was: every document of the crate joined twice; the copy died of a
    CardinalityViolationError (exit 70)."""
    await legacy_execute(legacy_url, "ALTER TABLE crates DROP CONSTRAINT crates_name_key")
    await legacy_execute(legacy_url, "INSERT INTO crates (id, name) VALUES (50, 'crate2')")
    await blocked_run(
        legacy_url,
        database_url,
        "crates has 1 name held by more than one row ('crate2' (ids 3, 50)) and no unique"
        " constraint on crates.name (the deployed schema's crates_name_key)",
    )


async def test_duplicate_document_keys_without_their_unique_constraint_block_the_run(
    legacy_url: str, database_url: str
) -> None:
    """Was: one row of each silently kept; validation then reported the others "missing in
    target" with a repair that could never succeed."""
    await legacy_execute(
        legacy_url,
        "ALTER TABLE doc_embeddings DROP CONSTRAINT doc_embeddings_crate_name_doc_path_key",
    )
    await legacy_execute(
        legacy_url,
        "INSERT INTO doc_embeddings (id, crate_id, crate_name, doc_path, content)"
        " SELECT 1000 + id, crate_id, crate_name, doc_path, 'again' FROM doc_embeddings"
        " WHERE id <= 7",
    )
    await blocked_run(
        legacy_url,
        database_url,
        "doc_embeddings has 7 (crate_name, doc_path) keys held by more than one row"
        " (crate0/crate0/module0/index.html (ids 1, 1001); crate0/crate0/module3/index.html"
        " (ids 4, 1004); crate0/crate0/module6/index.html (ids 7, 1007);"
        " crate1/crate1/module1/index.html (ids 2, 1002); crate1/crate1/module4/index.html"
        " (ids 5, 1005), …) and no unique constraint on them",
    )


@pytest.mark.parametrize("duplicated", [5, 10])  # inside a chunk, and at a chunk's last id
async def test_duplicate_ids_without_a_primary_key_block_the_run(
    duplicated: int, legacy_url: str, database_url: str
) -> None:
    """Was: a confusing "chunk copied 11 rows" error, or rows lost."""
    await legacy_execute(
        legacy_url, "ALTER TABLE doc_embeddings DROP CONSTRAINT doc_embeddings_pkey"
    )
    await legacy_execute(
        legacy_url, f"UPDATE doc_embeddings SET id = {duplicated} WHERE id = {duplicated + 1}"
    )
    await blocked_run(
        legacy_url,
        database_url,
        f"doc_embeddings has 1 id held by more than one row ({duplicated} (2 rows)) and no"
        " primary key on id",
    )


async def test_a_dropped_constraint_blocks_nothing_while_its_key_is_unique(
    legacy_url: str, database_url: str
) -> None:
    """The catalog says a key is enforced (also by another unique index, or one on fewer of
    its columns); when it is not, the rows are counted and only duplicates block."""
    await legacy_execute(
        legacy_url,
        "ALTER TABLE crates DROP CONSTRAINT crates_name_key;"
        " CREATE UNIQUE INDEX crates_by_name ON crates (name);"
        " ALTER TABLE doc_embeddings DROP CONSTRAINT doc_embeddings_crate_name_doc_path_key;"
        " ALTER TABLE doc_embeddings DROP CONSTRAINT doc_embeddings_pkey;"
        " CREATE UNIQUE INDEX doc_embeddings_ids ON doc_embeddings (id)",
    )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.preflight()).blocking == []
        report = await m.run()
    assert report.ok, report.warnings


# -- D: infinite timestamps, a NULL crate_configs.enabled -----------------------------------


CRATES = "SELECT id, name, version, last_updated, total_docs, total_tokens FROM crates ORDER BY id"
CONFIGS = "SELECT id, name, enabled FROM crate_configs ORDER BY id"


async def test_infinite_crate_timestamps_validate_and_round_trip_exactly(
    legacy_url: str, database_url: str, empty_database_url: str
) -> None:
    """Was: every validation reported the source as differing (legacy an aware
    ``datetime.max``, target the naive one asyncpg reads infinity as)."""
    await legacy_execute(
        legacy_url,
        "UPDATE crates SET last_updated = 'infinity' WHERE id = 1;"
        " UPDATE crates SET last_updated = '-infinity' WHERE id = 2",
    )
    before = await legacy_fetch(legacy_url, CRATES)
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        report = await m.run()
        assert report.ok, report.warnings
        validation = await m.validate()
        assert validation.ok, validation.problems()
    async with Migrator(empty_database_url, database_url) as m:
        await m.rollback()
    assert await legacy_fetch(empty_database_url, CRATES) == before
    written = await legacy_fetch(empty_database_url, "SELECT last_updated::text FROM crates")
    assert ("infinity",) in written and ("-infinity",) in written


async def test_a_null_crate_config_enabled_survives_migrate_and_rollback(
    legacy_url: str, database_url: str
) -> None:
    """Was: NULL came back ``true`` after migrate → rollback."""
    await legacy_execute(legacy_url, "UPDATE crate_configs SET enabled = NULL WHERE id = 1")
    before = await legacy_fetch(legacy_url, CONFIGS)
    assert before[0] == (1, "crate0", None)
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
        await m.rollback()
        assert await legacy_fetch(legacy_url, CONFIGS) == before
        assert (await m.validate()).ok
        # switched off in docstore after the cutover: the rollback carries that over
        async with docstore.connect(database_url) as store:
            assert await store.sources.set_enabled("rust", "crate0", False)
        await m.rollback()
    after: list[Any] = await legacy_fetch(legacy_url, CONFIGS)
    assert after[0] == (1, "crate0", False)


async def test_legacy_ids_the_compatibility_layer_cannot_show_are_warned_about(
    legacy_url: str, database_url: str
) -> None:
    """The compatibility views and LegacyDatabase show legacy ids only below 1,000,000,000
    (they number rows created after the cutover from there): preflight says which tables
    reach it, and blocks nothing."""
    pre = await thorough_preflight(legacy_url, database_url, thorough=False)
    assert not [w for w in pre.warnings if "reach 1,000,000,000" in w]
    await legacy_execute(
        legacy_url, "INSERT INTO crates (id, name, version) VALUES (1500000000, 'late', '1')"
    )
    pre = await thorough_preflight(legacy_url, database_url, thorough=False)
    assert any("legacy ids of crates reach 1,000,000,000" in w for w in pre.warnings)
    assert not pre.blocking
