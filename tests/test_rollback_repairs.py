"""Rollback mirrors the target exactly: crates, configs and jobs removed after the cutover are
removed (and not written back into the target), documents that moved keep their legacy ids,
and legacy ids up to the top of ``integer`` survive the round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import numpy as np
import pytest

import docstore
from docstore.errors import MigrationError
from docstore.migrate import Migrator
from docstore.migrate.migrator import MIGRATION_LOCK_KEY
from tests.conftest import PgCluster
from tests.legacy_db import legacy_database, legacy_execute, legacy_fetch
from tests.test_migrate import CRATES, DOCS


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=CRATES, docs=DOCS)


async def migrated(legacy_url: str, database_url: str) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        report = await m.run()
    assert report.ok, report.validation


async def rolled_back(legacy_url: str, database_url: str) -> None:
    """Roll back, then check that validation passes right away (the docstring's promise)."""
    async with Migrator(legacy_url, database_url) as back:
        await back.rollback()
        check = await back.validate()
    assert check.ok, check.problems()


# -- crates, configs and jobs deleted after the cutover ----------------------------------------


async def test_rollback_deletes_crates_configs_and_jobs_removed_after_the_cutover(
    legacy_url: str, database_url: str
) -> None:
    await migrated(legacy_url, database_url)
    async with docstore.connect(database_url) as store:
        # crate0 goes with its documents, its two configs and their jobs 1 and 2; job 3 alone
        assert await store.sources.delete("rust", "crate0", with_documents=True)
        await store.execute("DELETE FROM source_population_jobs WHERE legacy_id = 3")
    await rolled_back(legacy_url, database_url)

    assert ("crate0",) not in await legacy_fetch(legacy_url, "SELECT name FROM crates")
    assert await legacy_fetch(legacy_url, "SELECT id, name FROM crate_configs ORDER BY id") == [
        (3, "crate2")
    ]
    assert await legacy_fetch(legacy_url, "SELECT id FROM population_jobs") == []
    assert await legacy_fetch(
        legacy_url, "SELECT count(*) FROM doc_embeddings WHERE crate_name = 'crate0'"
    ) == [(0,)]
    async with docstore.connect(database_url) as store:  # nothing written back into the target
        assert await store.sources.get("rust", "crate0") is None
        assert await store.fetchval("SELECT count(*) FROM source_population_jobs") == 0


async def test_rollback_keeps_a_crate_its_documents_still_point_at(
    legacy_url: str, database_url: str
) -> None:
    """A source row deleted by hand while its documents stay: deleting the crates row would
    cascade to those documents, so it stays (and the source comes back from it)."""
    await migrated(legacy_url, database_url)
    async with docstore.connect(database_url) as store:
        await store.execute(
            "DELETE FROM document_sources WHERE doc_type = 'rust' AND source_name = 'crate2'"
        )
        documents = await store.fetchval(
            "SELECT count(*) FROM documents WHERE source_name = 'crate2'"
        )
    await rolled_back(legacy_url, database_url)
    assert await legacy_fetch(
        legacy_url, "SELECT count(*) FROM doc_embeddings WHERE crate_name = 'crate2'"
    ) == [(documents,)]
    assert await legacy_fetch(legacy_url, "SELECT id FROM crates WHERE name = 'crate2'") == [(3,)]


# -- documents that moved ---------------------------------------------------------------------


async def test_rollback_after_a_move_and_a_new_document_at_the_old_path(
    legacy_url: str, database_url: str
) -> None:
    await migrated(legacy_url, database_url)
    async with docstore.connect(database_url) as store:
        await store.execute(
            "UPDATE documents SET doc_path = 'crate0/module0/moved.html'"
            " WHERE doc_path = 'crate0/module0/index.html'"
        )
        await store.documents.upsert(
            docstore.Document(
                source_name="crate0",
                doc_path="crate0/module0/index.html",
                content="new page at the old path",
            )
        )
    await rolled_back(legacy_url, database_url)
    rows = {
        path: (id_, content)
        for id_, path, content in await legacy_fetch(
            legacy_url,
            "SELECT id, doc_path, content FROM doc_embeddings"
            " WHERE doc_path LIKE 'crate0/module0/%'",
        )
    }
    assert rows["crate0/module0/moved.html"][0] == 1  # the moved document keeps its legacy id
    assert rows["crate0/module0/moved.html"][1].startswith("Document 0 of crate0.")
    assert rows["crate0/module0/index.html"] == (DOCS + 1, "new page at the old path")
    assert await legacy_fetch(legacy_url, "SELECT count(*) FROM doc_embeddings") == [(DOCS + 1,)]


async def test_rollback_after_two_documents_swapped_paths(
    legacy_url: str, database_url: str
) -> None:
    a, b = "crate0/module0/index.html", "crate0/module5/index.html"  # legacy ids 1 and 6
    await migrated(legacy_url, database_url)
    async with docstore.connect(database_url) as store:
        for old, new in ((a, "swapping"), (b, a), ("swapping", b)):
            await store.execute("UPDATE documents SET doc_path = $2 WHERE doc_path = $1", old, new)
    await rolled_back(legacy_url, database_url)
    rows = await legacy_fetch(
        legacy_url,
        "SELECT id, crate_id, doc_path, split_part(content, '.', 1) FROM doc_embeddings"
        " WHERE id IN (1, 6) ORDER BY id",
    )
    assert rows == [(1, 1, b, "Document 0 of crate0"), (6, None, a, "Document 5 of crate0")]
    assert await legacy_fetch(legacy_url, "SELECT count(*) FROM doc_embeddings") == [(DOCS,)]


async def test_rollback_of_two_documents_with_one_legacy_id_loses_neither(
    legacy_url: str, database_url: str
) -> None:
    """A target holding two documents that claim one legacy id (a copy gone wrong) still rolls
    back: the one at the legacy row's path keeps the id, the other gets a new one."""
    await migrated(legacy_url, database_url)
    async with docstore.connect(database_url) as store:
        await store.execute(
            "INSERT INTO documents (doc_type, source_name, doc_path, content, metadata)"
            " SELECT doc_type, source_name, doc_path || '.old', content, metadata"
            "   FROM documents WHERE doc_path = 'crate0/module0/index.html'"
        )
    await rolled_back(legacy_url, database_url)
    rows = await legacy_fetch(
        legacy_url,
        "SELECT id, doc_path FROM doc_embeddings WHERE doc_path LIKE 'crate0/module0/%'"
        " ORDER BY id",
    )
    assert rows == [(1, "crate0/module0/index.html"), (DOCS + 1, "crate0/module0/index.html.old")]


async def test_a_moved_document_keeps_the_embedding_the_target_could_not_hold(
    legacy_url: str, database_url: str
) -> None:
    await legacy_execute(
        legacy_url,
        "ALTER TABLE doc_embeddings ALTER COLUMN embedding TYPE vector;"
        " DROP FUNCTION search_similar_docs(vector, varchar, integer)",
    )
    await legacy_execute(
        legacy_url,
        "INSERT INTO doc_embeddings (crate_name, doc_path, content, embedding)"
        " VALUES ('crate0', 'old/1536.html', 'embedded by the old model', $1)",
        np.ones(1536, dtype=np.float32),
    )
    await migrated(legacy_url, database_url)
    async with docstore.connect(database_url) as store:
        await store.execute(
            "UPDATE documents SET doc_path = 'old/moved.html' WHERE doc_path = 'old/1536.html'"
        )
    await rolled_back(legacy_url, database_url)
    assert await legacy_fetch(
        legacy_url,
        "SELECT id, doc_path, vector_dims(embedding) FROM doc_embeddings"
        " WHERE doc_path LIKE 'old/%'",
    ) == [(DOCS + 1, "old/moved.html", 1536)]


# -- legacy ids beyond 999,999,999 ------------------------------------------------------------

_HUGE = (
    "INSERT INTO doc_embeddings (id, crate_id, crate_name, doc_path, content) VALUES"
    " (2147483647, NULL, 'crate3', 'crate3/huge.html', 'max int4 id'),"
    " (1500000000, NULL, 'crate3', 'crate3/big.html', 'id above 1e9')"
)
_HUGE_ROWS = (
    "SELECT id, crate_id, crate_name, doc_path FROM doc_embeddings"
    " WHERE doc_path IN ('crate3/huge.html', 'crate3/big.html') ORDER BY id"
)


async def test_rollback_keeps_legacy_ids_up_to_the_top_of_integer(
    legacy_url: str, database_url: str, empty_database_url: str
) -> None:
    await legacy_execute(legacy_url, _HUGE)
    await migrated(legacy_url, database_url)
    before = await legacy_fetch(legacy_url, _HUGE_ROWS)
    assert before == [
        (1500000000, None, "crate3", "crate3/big.html"),
        (2147483647, None, "crate3", "crate3/huge.html"),
    ]
    async with Migrator(empty_database_url, database_url) as back:
        await back.rollback()
    assert await legacy_fetch(empty_database_url, _HUGE_ROWS) == before
    await rolled_back(legacy_url, database_url)  # and into the legacy database itself
    assert await legacy_fetch(legacy_url, _HUGE_ROWS) == before


# -- what a rollback refuses to delete ----------------------------------------------------------


async def legacy_state(legacy_url: str) -> list[tuple[object, ...]]:
    return [
        *await legacy_fetch(legacy_url, "SELECT id, crate_name, doc_path FROM doc_embeddings"),
        *await legacy_fetch(legacy_url, "SELECT id, name FROM crates"),
        *await legacy_fetch(legacy_url, "SELECT id FROM crate_configs"),
        *await legacy_fetch(legacy_url, "SELECT id FROM population_jobs"),
    ]


async def test_a_rollback_never_deletes_legacy_documents_the_target_never_received(
    legacy_url: str, database_url: str
) -> None:
    """A mistyped doc_type (the target holds none of its documents), or rows the migration did
    not carry over (written to the legacy database after it), used to be deleted from the
    legacy database by a rollback that exited 0: it is refused, naming them and changing
    nothing; a dry run counts them; force=True deletes them."""
    await migrated(legacy_url, database_url)
    before = sorted(await legacy_state(legacy_url))
    async with Migrator(legacy_url, database_url, doc_type="rsut") as typo:
        with pytest.raises(MigrationError, match=rf"would delete {DOCS} legacy documents"):
            await typo.rollback()
    assert sorted(await legacy_state(legacy_url)) == before

    await legacy_execute(
        legacy_url,
        "INSERT INTO doc_embeddings (id, crate_id, crate_name, doc_path, content)"
        " VALUES (5000, 1, 'crate0', 'written/after/the/migration', 'late')",
    )
    before = sorted(await legacy_state(legacy_url))
    async with Migrator(legacy_url, database_url) as back:
        with pytest.raises(MigrationError, match=r"would delete 1 legacy documents \(ids 5000\)"):
            await back.rollback()
        assert sorted(await legacy_state(legacy_url)) == before
        dry = await back.rollback(dry_run=True, force=True)
        assert dry.dry_run and dry.deleted_documents == 1 and dry.documents == DOCS
        assert sorted(await legacy_state(legacy_url)) == before
        done = await back.rollback(force=True)
        assert not done.dry_run and done.deleted_documents == 1
        assert (await back.validate()).ok
    assert await legacy_fetch(legacy_url, "SELECT count(*) FROM doc_embeddings") == [(DOCS,)]


async def test_a_rollback_waits_for_no_migrator(legacy_url: str, database_url: str) -> None:
    """A rollback copied a half-finished target back while a migration ran: it now takes the
    migration lock like a migration does, and is refused while another holds it."""
    await migrated(legacy_url, database_url)
    holder = await asyncpg.connect(database_url)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY)
        before = sorted(await legacy_state(legacy_url))
        async with Migrator(legacy_url, database_url) as back:
            with pytest.raises(MigrationError, match="another docstore migrator is running"):
                await back.rollback()
        assert sorted(await legacy_state(legacy_url)) == before
    finally:
        await holder.close()
    await rolled_back(legacy_url, database_url)


def test_cli_rollback_refuses_dry_runs_and_forces(
    legacy_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from docstore.cli import app

    asyncio.run(migrated(legacy_url, database_url))
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    args = ["rollback", "--source", legacy_url, "--target", database_url, "--doc-type", "rsut"]
    before = sorted(asyncio.run(legacy_state(legacy_url)))
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1, refused.output
    assert "rollback refused, nothing was changed" in refused.output
    dry = runner.invoke(app, [*args, "--dry-run", "--force"])
    assert dry.exit_code == 0, dry.output
    assert f"would hold 0 documents of 0 crates ({DOCS} removed)" in dry.output
    assert "dry run: nothing was changed" in dry.output
    assert sorted(asyncio.run(legacy_state(legacy_url))) == before
    assert "password" not in dry.output.lower()


async def test_a_dry_run_leaves_the_legacy_sequences_where_the_next_insert_needs_them(
    legacy_url: str, database_url: str
) -> None:
    """A dry run after the target deleted the highest-id document set doc_embeddings' sequence
    back to the id below it inside the transaction it then rolled back — setval is not rolled
    back — so the legacy application's next insert collided with the row that came back."""
    await migrated(legacy_url, database_url)
    async with docstore.connect(database_url) as store:
        await store.execute("DELETE FROM documents WHERE metadata->>'legacy_id' = $1", str(DOCS))
    seq = "SELECT last_value FROM doc_embeddings_id_seq"
    before = await legacy_fetch(legacy_url, seq)
    async with Migrator(legacy_url, database_url) as back:
        dry = await back.rollback(dry_run=True)
    assert dry.dry_run and dry.deleted_documents == 1
    assert await legacy_fetch(legacy_url, seq) >= before
    await legacy_execute(  # what the legacy application does next
        legacy_url,
        "INSERT INTO doc_embeddings (crate_name, doc_path, content)"
        " VALUES ('crate0', 'after/the/dry/run', 'new')",
    )
    async with Migrator(legacy_url, database_url) as back:  # that row: never received
        assert (await back.rollback(force=True)).deleted_documents == 2
        assert (await back.validate()).ok


# -- what a rollback rewrites ------------------------------------------------------------------


async def test_a_rollback_rewrites_only_the_legacy_rows_that_differ(
    legacy_url: str, database_url: str
) -> None:
    """An operator's rehearsal: a rollback of an unchanged target updated all 16,174 legacy
    rows (each 12 KB embedding written again, a dead tuple each), and the retried migration
    after it copied every chunk again, their stamps (``xmin``) all moved. Only the rows that
    differ are written now: the next run skips every chunk but the changed row's."""
    await migrated(legacy_url, database_url)
    versions = "SELECT id, xmin::text FROM doc_embeddings ORDER BY id"
    before = dict(await legacy_fetch(legacy_url, versions))
    await rolled_back(legacy_url, database_url)
    assert dict(await legacy_fetch(legacy_url, versions)) == before
    async with docstore.connect(database_url) as store:
        await store.execute(
            "UPDATE documents SET content = 'changed after the cutover'"
            " WHERE metadata->>'legacy_id' = '60'"
        )
    await rolled_back(legacy_url, database_url)
    after = dict(await legacy_fetch(legacy_url, versions))
    assert [i for i in before if after[i] != before[i]] == [60]
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        report = await m.run()
    assert report.ok, report.validation
    assert (report.copied_chunks, report.skipped_chunks) == (1, 4)
