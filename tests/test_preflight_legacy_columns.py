"""Review (operator rehearsal): preflight checked that the legacy tables exist, not their
columns. A column renamed or dropped made the dry run fail with "migration failed: Undefined
ColumnError … a re-run resumes after them" and the real run fail the same way after writing
the sources; a ``token_count`` widened to ``bigint`` passed the dry run and failed the real
run's binary COPY (22P03). Now a blocking finding names the table, the column and the types,
and the run refuses before writing anything; changes the copy reads as they are still pass.

And a mistyped ``--doc-type`` (``rsut``) on a target that holds this legacy database as
``rust`` passed the dry run ("0 documents of this doc_type") and copied every document a
second time: preflight now warns, naming ``rust``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

import docstore
from docstore.cli import app
from docstore.errors import MigrationError
from docstore.migrate import Migrator
from tests.conftest import PgCluster
from tests.legacy_db import legacy_database, legacy_execute

DOCS = 30
CHUNK = 10


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=4, docs=DOCS)


def target_rows(url: str) -> tuple[int, int]:
    async def count() -> tuple[int, int]:
        async with docstore.connect(url) as store:
            return (
                int(await store.fetchval("SELECT count(*) FROM documents")),
                int(await store.fetchval("SELECT count(*) FROM document_sources")),
            )

    return asyncio.run(count())


def flat(text: str) -> str:
    """CLI output without the table's borders and line wrapping."""
    for border in "│┃┏┓┗┛┡┩└┘┌┐├┤━─╇╈┼":
        text = text.replace(border, " ")
    return " ".join(text.split())


# the view uses doc_embeddings.crate_id and token_count: dropped to change them
BLOCKED = {
    "renamed content": (
        "ALTER TABLE doc_embeddings RENAME COLUMN content TO body",
        "legacy doc_embeddings has no column content (text)",
    ),
    "no token_count": (
        "DROP VIEW crate_stats; ALTER TABLE doc_embeddings DROP COLUMN token_count",
        "legacy doc_embeddings has no column token_count (integer)",
    ),
    "no created_at": (
        "ALTER TABLE doc_embeddings DROP COLUMN created_at",
        "legacy doc_embeddings has no column created_at (timestamp without time zone)",
    ),
    "no crate_id": (
        "DROP VIEW crate_stats; ALTER TABLE doc_embeddings DROP COLUMN crate_id",
        "legacy doc_embeddings has no column crate_id (integer)",
    ),
    "no crates.version": (
        "DROP VIEW crate_stats; ALTER TABLE crates DROP COLUMN version",
        "legacy crates has no column version (character varying(50))",
    ),
    "bigint token_count": (  # 22P03 incorrect binary data format in the COPY
        "DROP VIEW crate_stats; ALTER TABLE doc_embeddings ALTER COLUMN token_count TYPE bigint",
        "legacy doc_embeddings.token_count is bigint, the migration expects integer",
    ),
    "smallint token_count": (  # 08P01 insufficient data left in message
        "DROP VIEW crate_stats; ALTER TABLE doc_embeddings ALTER COLUMN token_count TYPE smallint",
        "legacy doc_embeddings.token_count is smallint, the migration expects integer",
    ),
    "date created_at": (
        "ALTER TABLE doc_embeddings ALTER COLUMN created_at TYPE date",
        "legacy doc_embeddings.created_at is date, the migration expects timestamp without"
        " time zone",
    ),
    "halfvec embedding": (
        "ALTER TABLE doc_embeddings ALTER COLUMN embedding TYPE halfvec(3072)",
        "legacy doc_embeddings.embedding is halfvec(3072), the migration expects vector",
    ),
    "numeric total_docs": (  # a Decimal the sources' JSON cannot hold
        "DROP VIEW crate_stats; ALTER TABLE crates ALTER COLUMN total_docs TYPE numeric",
        "legacy crates.total_docs is numeric, the migration expects integer",
    ),
    "naive job timestamp": (  # copied, then validation finds the jobs different
        "ALTER TABLE population_jobs ALTER COLUMN started_at TYPE timestamp",
        "legacy population_jobs.started_at is timestamp without time zone, the migration"
        " expects timestamp with time zone",
    ),
    "names too long": (  # the target's source_name is varchar(255)
        "DROP VIEW crate_stats;"
        " ALTER TABLE doc_embeddings ALTER COLUMN crate_name TYPE varchar(300);"
        " ALTER TABLE crates ALTER COLUMN name TYPE text;"
        " UPDATE crates SET name = repeat('x', 280) WHERE name = 'crate0';"
        " UPDATE doc_embeddings SET crate_name = repeat('x', 280) WHERE crate_name = 'crate0'",
        "legacy crates.name is text and 1 of its rows hold a name longer than 255 characters",
    ),
    "char(n) names": (  # padded on the wire, trimmed when compared: validation failed
        "DROP VIEW crate_stats; ALTER TABLE doc_embeddings ALTER COLUMN crate_name TYPE char(255)",
        "legacy doc_embeddings.crate_name is character(255), the migration expects"
        " character varying(255)",
    ),
}


@pytest.mark.parametrize("case", list(BLOCKED))
def test_legacy_columns_the_migration_cannot_read_block_the_dry_run_and_the_run(
    case: str, legacy_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    alter, finding = BLOCKED[case]
    asyncio.run(legacy_execute(legacy_url, alter))
    monkeypatch.setenv("COLUMNS", "200")

    async def preflight() -> list[str]:
        async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
            blocking = (await m.preflight(thorough=True)).blocking
            with pytest.raises(MigrationError, match="cannot migrate: legacy "):
                await m.run()
        return blocking

    blocking = asyncio.run(preflight())
    assert any(b.startswith(finding) for b in blocking), blocking
    assert target_rows(database_url) == (0, 0)  # refused before writing anything

    args = ["migrate", "--source", legacy_url, "--target", database_url]
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 1, dry.output
    assert finding in flat(dry.output) and "migration failed" not in dry.output
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 1 and "migration failed" not in run.output, run.output
    assert target_rows(database_url) == (0, 0)


def test_legacy_column_changes_the_copy_reads_as_they_are_still_migrate(
    legacy_url: str, database_url: str
) -> None:
    """No false NO-GO: extra columns, wider ids and counts, strings of another type or length
    (names that still fit), timestamps with a time zone, a text array of varchar: each was
    migrated and validated with these."""
    asyncio.run(
        legacy_execute(
            legacy_url,
            "DROP VIEW crate_stats;"
            " ALTER TABLE doc_embeddings ADD COLUMN extra text DEFAULT 'x',"
            "  ALTER COLUMN id TYPE bigint, ALTER COLUMN crate_id TYPE bigint,"
            "  ALTER COLUMN crate_name TYPE varchar(300), ALTER COLUMN doc_path TYPE varchar,"
            "  ALTER COLUMN content TYPE varchar, ALTER COLUMN created_at TYPE timestamptz;"
            " ALTER TABLE crates ADD COLUMN extra int, ALTER COLUMN id TYPE bigint,"
            "  ALTER COLUMN name TYPE text, ALTER COLUMN version TYPE text,"
            "  ALTER COLUMN last_updated TYPE timestamptz, ALTER COLUMN total_docs TYPE bigint;"
            " ALTER TABLE crate_configs ALTER COLUMN features TYPE varchar[],"
            "  ALTER COLUMN expected_docs TYPE bigint, ALTER COLUMN last_checked TYPE timestamp;"
            " ALTER TABLE population_jobs ALTER COLUMN status TYPE text,"
            "  ALTER COLUMN docs_populated TYPE bigint, ALTER COLUMN crate_config_id TYPE bigint;"
            # domains over domains are their base type (review 116)
            " CREATE DOMAIN path1 AS text; CREATE DOMAIN path2 AS path1;"
            " CREATE DOMAIN count1 AS integer; CREATE DOMAIN count2 AS count1;"
            " ALTER TABLE doc_embeddings ALTER COLUMN doc_path TYPE path2,"
            "  ALTER COLUMN token_count TYPE count2",
        )
    )

    async def migrate() -> None:
        async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
            pre = await m.preflight(thorough=True)
            assert not pre.blocking, pre.blocking
            report = await m.run()
        assert report.ok and report.copied_documents == DOCS

    asyncio.run(migrate())


# -- a mistyped --doc-type -------------------------------------------------------------------


def test_a_legacy_database_migrated_under_another_doc_type_is_named(
    legacy_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    args = ["migrate", "--source", legacy_url, "--target", database_url]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "already migrated" not in first.output  # nothing elsewhere: no warning

    dry = CliRunner().invoke(app, [*args, "--dry-run", "--doc-type", "rsut"])
    assert dry.exit_code == 0, dry.output  # a warning: migrate has no override to block with
    text = flat(dry.output)
    assert (
        f"this legacy database is already migrated into doc_type 'rust' ({DOCS} documents):"
        " migrating it as 'rsut' copies all its documents a second time" in text
    ), text
    assert "--doc-type rust instead" in text

    again = CliRunner().invoke(app, [*args, "--dry-run"])  # the right doc_type: no warning
    assert again.exit_code == 0 and "already migrated" not in again.output, again.output

    async def through_another_address() -> None:
        # the same database under another address (run id): its stamps still hold
        async with docstore.connect(database_url) as store:
            await store.execute(
                "UPDATE docstore_migration_checkpoints SET run_id = 'rust:elsewhere@10.0.0.1:5432'"
            )
        async with Migrator(legacy_url, database_url, doc_type="rsut") as m:
            (warning,) = [w for w in (await m.preflight()).warnings if "already" in w]
        assert "into doc_type 'rust'" in warning and "elsewhere@10.0.0.1:5432" in warning

    asyncio.run(through_another_address())


def test_another_legacy_database_under_another_doc_type_is_not_named(
    legacy_url: str, database_url: str, pg: PgCluster
) -> None:
    """A second legacy database (its own rows) into another doc_type is the usual case."""
    other = next(legacy := legacy_database(pg, crates=4, docs=DOCS))
    try:
        asyncio.run(legacy_execute(other, "UPDATE doc_embeddings SET content = content || '!'"))

        async def migrate() -> None:
            async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
                assert (await m.run()).ok
            async with Migrator(other, database_url, doc_type="rust-b", chunk_rows=CHUNK) as m:
                assert not [w for w in (await m.preflight()).warnings if "already" in w]
            async with docstore.connect(database_url) as store:  # rust emptied: not named
                await store.execute("DELETE FROM documents WHERE doc_type = 'rust'")
            async with Migrator(legacy_url, database_url, doc_type="rsut") as m:
                assert not [w for w in (await m.preflight()).warnings if "already" in w]

        asyncio.run(migrate())
    finally:
        next(legacy, None)
