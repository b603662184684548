"""The Migrator's truth: ``report.ok`` / ``validate()`` mean the target equals the legacy
database now — documents, sources and their configs, the metadata docstore derives from the
legacy tables, population jobs — and read-only targets are refused before any write."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import asyncpg
import numpy as np
import pytest

import docstore
from docstore.errors import ReadOnlyError
from docstore.migrate import Migrator
from tests.conftest import PgCluster
from tests.legacy_db import legacy_database, legacy_execute
from tests.test_migrate import CRATES, DOCS, legacy_snapshot

CRATE0_DOCS = len([j for j in range(DOCS - 2) if j % (CRATES - 1) == 0])


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=CRATES, docs=DOCS)


def run_elsewhere(url: str, sql: str) -> None:
    """The legacy application's write: another connection, committed, from another thread
    (the Migrator's event loop is blocked in its progress callback meanwhile)."""
    writer = threading.Thread(target=asyncio.run, args=(legacy_execute(url, sql),))
    writer.start()
    writer.join()


async def crate_versions(url: str, source: str) -> dict[str | None, int]:
    async with docstore.connect(url) as store:
        rows = await store.fetch(
            "select metadata->>'crate_version' as v, count(*) as n from documents"
            " where source_name = $1 group by 1",
            source,
        )
    return {r["v"]: r["n"] for r in rows}


async def target_snapshot(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        return {
            table: [tuple(r) for r in await conn.fetch(f"select * from {table} order by 1")]
            for table in (
                "documents",
                "document_sources",
                "source_population_jobs",
                "docstore_migration_checkpoints",
            )
        }
    finally:
        await conn.close()


# -- (1) changes during the copy --------------------------------------------------------------


async def test_a_crate_version_changed_during_the_copy_reaches_config_and_documents(
    legacy_url: str, database_url: str
) -> None:
    """Issue 13 part 2: the legacy server's upsert_crate bumps a version mid-copy."""
    done: list[bool] = []

    def bump_midway(stage: str, rows: int, total: int, nbytes: int) -> None:
        if stage == "documents" and rows == 25 and not done:
            run_elsewhere(legacy_url, "UPDATE crates SET version = '2.0' WHERE name = 'crate0'")
            done.append(True)

    async with Migrator(legacy_url, database_url, chunk_rows=25, progress=bump_midway) as m:
        report = await m.run()
        assert done and report.ok, report.validation
        assert report.delta_sources == 1 and report.delta_documents == CRATE0_DOCS
        assert any("source crate0: config.version" in w for w in report.warnings), report.warnings
        assert (await m.validate()).ok
        again = await m.run()  # nothing changed since: nothing to re-copy
    assert again.ok and again.delta_documents == again.delta_sources == 0
    assert not [w for w in again.warnings if "changed during the copy" in w]
    assert await crate_versions(database_url, "crate0") == {"2.0": CRATE0_DOCS}
    async with docstore.connect(database_url) as store:
        source = await store.sources.get("rust", "crate0")
        assert source is not None and source.config["version"] == "2.0"
        probe = np.ones(3072, dtype=np.float32)
        hits = await store.search(
            probe, filter={"metadata.crate_version": "2.0"}, limit=100, exact=True
        )
        with_embedding = await store.fetchval(
            "select count(*) from documents where source_name = 'crate0' and embedding is not null"
        )
        assert {h.source_name for h in hits} == {"crate0"} and len(hits) == with_embedding


async def test_every_small_table_changed_during_the_copy_is_recopied(
    legacy_url: str, database_url: str
) -> None:
    done: list[bool] = []

    def write_midway(stage: str, rows: int, total: int, nbytes: int) -> None:
        if stage == "documents" and rows == 50 and not done:
            run_elsewhere(
                legacy_url,
                "UPDATE crates SET total_docs = 24, total_tokens = 4096,"
                "  last_updated = '2025-05-05 05:05:05' WHERE name = 'crate3';"
                " UPDATE crate_configs SET current_version = '9.9.9', enabled = false"
                "  WHERE id = 1;"
                " UPDATE population_jobs SET status = 'completed', docs_populated = 99,"
                "  completed_at = '2025-05-05 06:00:00+00' WHERE id = 3;"
                " INSERT INTO crates (name, version) VALUES ('brand-new', '0.1.0');"
                " DELETE FROM population_jobs WHERE id = 2;"
                " UPDATE doc_embeddings SET crate_id = NULL WHERE id = 2",
            )
            done.append(True)

    async with Migrator(legacy_url, database_url, chunk_rows=25, progress=write_midway) as m:
        report = await m.run()
    assert done and report.ok, report.validation
    # crate3 (totals), crate0 (its first config), brand-new (added); jobs 2 (gone) and 3
    assert report.delta_sources == 3 and report.delta_population_jobs == 2
    async with docstore.connect(database_url) as store:
        crate3 = await store.sources.get("rust", "crate3")
        assert crate3 is not None
        assert (crate3.config["total_docs"], crate3.config["total_tokens"]) == (24, 4096)
        assert crate3.config["last_updated"] == "2025-05-05T05:05:05"
        crate0 = await store.sources.get("rust", "crate0")
        assert crate0 is not None and crate0.enabled is False
        assert crate0.config["current_version"] == "9.9.9"
        assert crate0.config["crate_configs"][0]["current_version"] == "9.9.9"
        assert await store.sources.get("rust", "brand-new") is not None
        jobs = await store.fetch(
            "select legacy_id, status, docs_populated from source_population_jobs"
            " order by legacy_id"
        )
        assert [tuple(j) for j in jobs] == [(1, "completed", 42), (3, "completed", 99)]
        doc = await store.documents.get_by_key("rust", "crate1", "crate1/module1/index.html")
        assert doc is not None and "legacy_crate_id" not in doc.metadata


class LateWriter(Migrator):
    """A Migrator during whose run the legacy application writes after the delta pass, right
    before each validation (``writes``: one statement per validation, then none)."""

    def __init__(self, *args: Any, writes: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes = writes

    async def _validate(
        self, src: Any, ctx: Any, streamed: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        if self.writes:
            await legacy_execute(self._legacy_url, self.writes.pop(0))
        return await super()._validate(src, ctx, streamed, *args, **kwargs)

    @property
    def _legacy_url(self) -> str:
        assert isinstance(self._source_arg, str)
        return self._source_arg


async def test_a_change_after_the_delta_pass_is_copied_again_or_reported(
    legacy_url: str, database_url: str
) -> None:
    bump = "UPDATE crates SET version = '{}' WHERE name = 'crate0'"
    async with LateWriter(
        legacy_url, database_url, chunk_rows=25, writes=[bump.format("2.0")]
    ) as m:
        report = await m.run()
    assert report.ok, report.validation
    assert report.repaired_documents == CRATE0_DOCS
    assert any("copied again" in w and "source crate0" in w for w in report.warnings)
    assert await crate_versions(database_url, "crate0") == {"2.0": CRATE0_DOCS}

    # a write after the last validation's snapshot began is not seen; one between the two
    # validations is reported: ok=False, naming what differs
    async with LateWriter(
        legacy_url,
        database_url,
        chunk_rows=25,
        writes=[bump.format("3.0"), bump.format("4.0")],
    ) as m:
        report = await m.run()
    assert not report.ok and report.validation is not None
    problems = "\n".join(report.validation.problems())
    assert "source crate0: differs (config.version: legacy '4.0', target '3.0')" in problems
    assert "legacy crates.version '4.0', target '3.0'" in problems


# -- (2) changes after the copy: validate() names them, a re-run fixes them ------------------

LEGACY_CHANGES = {
    "crate version": (
        "UPDATE crates SET version = '2.0' WHERE name = 'crate0'",
        [
            "source crate0: differs (config.version: legacy '2.0', target '0.0.0')",
            "metadata.crate_version of its 24 documents: legacy crates.version '2.0'",
        ],
    ),
    "crate totals": (
        "UPDATE crates SET total_docs = 24, total_tokens = 777,"
        " last_updated = '2025-01-01 00:00:00' WHERE name = 'crate3'",
        [
            "config.total_docs: legacy 24, target 0",
            "config.total_tokens: legacy 777, target 0",
            "config.last_updated",
            "last_populated",
        ],
    ),
    "crate_configs row": (
        "UPDATE crate_configs SET current_version = '9.9.9', features = '{a,b}' WHERE id = 1",
        [
            "source crate0: differs",
            "config.current_version: legacy '9.9.9', target '0.0.0'",
            "config.features",
            "config.crate_configs: legacy 2 rows, target 2 (contents differ)",
        ],
    ),
    "crate_configs deleted": (
        "DELETE FROM crate_configs WHERE id = 3",  # cascades to population job 3
        [
            "source crate2: differs (config.version_spec: legacy absent, target 'latest'",
            "population job 3 of crate2: extra in target",
        ],
    ),
    "population job status": (
        "UPDATE population_jobs SET status = 'failed', error_message = 'oom' WHERE id = 3",
        [
            "population job 3 of crate2: differs (status: legacy 'failed', target 'running';"
            " error_message: legacy 'oom', target None)"
        ],
    ),
    "new crate": (
        "INSERT INTO crates (name, version) VALUES ('brand-new', '0.1.0')",
        ["source brand-new: missing in target"],
    ),
    "document content": (
        "UPDATE doc_embeddings SET content = content || ' edited' WHERE id = 7",
        ["document crate1/crate1/module6/index.html (legacy id 7): differs (content)"],
    ),
    "document crate_id": (
        "UPDATE doc_embeddings SET crate_id = NULL WHERE id = 1",
        [
            "document crate0/crate0/module0/index.html (legacy id 1): differs"
            " (metadata.legacy_crate_id)"
        ],
    ),
}


@pytest.mark.parametrize("change", list(LEGACY_CHANGES))
async def test_a_legacy_change_after_the_copy_is_named_by_validate_and_fixed_by_a_rerun(
    legacy_url: str, database_url: str, change: str
) -> None:
    sql, expected = LEGACY_CHANGES[change]
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        assert (await m.run()).ok
        await legacy_execute(legacy_url, sql)
        stale = await m.validate()
        assert not stale.ok
        problems = "\n".join(stale.problems())
        for text in expected:
            assert text in problems, problems
        rerun = await m.run()
        assert rerun.ok, "\n".join(rerun.validation.problems() if rerun.validation else [])
        assert not [w for w in rerun.warnings if "changed during the copy" in w]
        assert (await m.validate()).ok
    if change == "crate version":
        assert rerun.refreshed_documents == CRATE0_DOCS
        assert await crate_versions(database_url, "crate0") == {"2.0": CRATE0_DOCS}
    if change == "crate_configs deleted":
        async with docstore.connect(database_url) as store:
            crate2 = await store.sources.get("rust", "crate2")
            assert crate2 is not None and "version_spec" not in crate2.config
            assert "crate_configs" not in crate2.config
            assert await store.fetchval("select count(*) from source_population_jobs") == 2


TARGET_CHANGES = {
    "a document's crate_version": (
        'UPDATE documents SET metadata = metadata || \'{"crate_version": "6.6.6"}\''
        " WHERE metadata->>'legacy_id' = '6'",
        "source crate0: differs (metadata.crate_version of its 24 documents: legacy"
        " crates.version '0.0.0', target '0.0.0', '6.6.6')",
    ),
    "a source's config": (
        'UPDATE document_sources SET config = config || \'{"version": "1.2.3"}\''
        " WHERE source_name = 'crate2'",
        "source crate2: differs (config.version: legacy '2.0.2', target '1.2.3')",
    ),
    "a document's metadata.crate_name": (
        'UPDATE documents SET metadata = metadata || \'{"crate_name": "other"}\''
        " WHERE metadata->>'legacy_id' = '4'",
        "(legacy id 4): differs (metadata.crate_name)",
    ),
    "a job's version_spec": (
        'UPDATE source_population_jobs SET metadata = metadata || \'{"version_spec": "x"}\''
        " WHERE legacy_id = 1",
        "population job 1 of crate0: differs (metadata.version_spec: legacy 'latest', target 'x')",
    ),
}


@pytest.mark.parametrize("change", list(TARGET_CHANGES))
async def test_stale_target_data_is_named_by_validate_and_fixed_by_a_rerun(
    legacy_url: str, database_url: str, change: str
) -> None:
    sql, expected = TARGET_CHANGES[change]
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        assert (await m.run()).ok
        async with docstore.connect(database_url) as store:
            await store.execute(sql)
        stale = await m.validate()
        assert not stale.ok and expected in "\n".join(stale.problems()), stale.problems()
        rerun = await m.run()
        assert rerun.ok, rerun.validation
        # sources and jobs are compared on every run, and a run that skips unchanged chunks
        # rewrites every document's crate version; other document edits only validation sees
        # (the legacy stamps did not move), which has the run copy them again
        repaired = any("copied again" in w for w in rerun.warnings)
        assert repaired == (change == "a document's metadata.crate_name"), rerun.warnings
        assert (await m.validate()).ok


async def test_keys_others_added_to_a_migrated_config_survive_a_rerun(
    legacy_url: str, database_url: str
) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        assert (await m.run()).ok
        async with docstore.connect(database_url) as store:
            await store.execute(
                'UPDATE document_sources SET config = config || \'{"owner": "docs-team"}\''
                " WHERE source_name = 'crate2'"
            )
        await legacy_execute(legacy_url, "DELETE FROM crate_configs WHERE name = 'crate2'")
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:
        crate2 = await store.sources.get("rust", "crate2")
        assert crate2 is not None and crate2.config["owner"] == "docs-team"
        assert "version_spec" not in crate2.config


# -- (3) read-only targets: refused before anything is written anywhere -----------------------


async def test_rollback_and_run_with_read_only_set_write_nothing_anywhere(
    legacy_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:  # what a rollback would carry back
        await store.documents.upsert_many(
            [
                docstore.Document(
                    source_name="crate3", doc_path=f"crate3/after-{i}.html", content="new"
                )
                for i in range(20)
            ]
        )
        await store.execute("UPDATE documents SET content = 'edited' WHERE id = 1")
    await legacy_execute(legacy_url, "UPDATE crates SET version = '2.0' WHERE name = 'crate0'")
    legacy_before = await legacy_snapshot(legacy_url)
    target_before = await target_snapshot(database_url)

    monkeypatch.setenv("READ_ONLY", "true")
    with pytest.raises(ReadOnlyError, match="unset READ_ONLY to roll back"):
        async with Migrator(legacy_url, database_url) as back:
            await back.rollback()
    with pytest.raises(ReadOnlyError, match="unset READ_ONLY to migrate"):
        async with Migrator(legacy_url, database_url, chunk_rows=25) as again:
            await again.run()
    async with docstore.connect(database_url, read_only=True) as read_only:
        assert read_only.read_only
        with pytest.raises(ReadOnlyError):
            await Migrator(legacy_url, read_only).rollback()
        with pytest.raises(ReadOnlyError):
            await Migrator(legacy_url, read_only).run()
        dry = await Migrator(legacy_url, read_only).run(dry_run=True)  # preflight only: fine
        assert not dry.ok and "read-only" in dry.preflight.blocking[0]
        assert not (await Migrator(legacy_url, read_only).validate()).ok  # reads are fine
    monkeypatch.delenv("READ_ONLY")

    assert await legacy_snapshot(legacy_url) == legacy_before
    assert await target_snapshot(database_url) == target_before


async def test_a_target_database_in_read_only_mode_is_refused_before_any_write(
    legacy_url: str, database_url: str, pg: PgCluster
) -> None:
    from urllib.parse import urlsplit

    name = urlsplit(database_url).path.lstrip("/")
    async with docstore.connect(database_url) as store:
        await store.documents.upsert(
            docstore.Document(source_name="crate3", doc_path="crate3/x.html", content="new")
        )
    legacy_before = await legacy_snapshot(legacy_url)
    target_before = await target_snapshot(database_url)
    await pg.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    try:
        # READ_ONLY is not set: the store itself believes it may write
        async with docstore.connect(database_url, migrate=False) as store:
            assert not store.read_only
            with pytest.raises(ReadOnlyError, match="target database is read-only"):
                await Migrator(legacy_url, store).rollback()
            with pytest.raises(ReadOnlyError, match="target database is read-only"):
                await Migrator(legacy_url, store).run()
    finally:
        await pg.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
    assert await legacy_snapshot(legacy_url) == legacy_before
    assert await target_snapshot(database_url) == target_before


def test_cli_rollback_with_read_only_shows_the_error_without_a_traceback(
    legacy_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from docstore.cli import app

    async def migrate() -> None:
        async with Migrator(legacy_url, database_url) as m:
            assert (await m.run()).ok

    asyncio.run(migrate())
    before = asyncio.run(legacy_snapshot(legacy_url))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("LEGACY_DATABASE_URL", legacy_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("READ_ONLY", "true")
    result = CliRunner().invoke(app, ["rollback"])
    assert result.exit_code == 1
    assert "ReadOnlyError" in result.output and "unset READ_ONLY" in result.output
    assert "Traceback" not in result.output
    assert asyncio.run(legacy_snapshot(legacy_url)) == before


# -- rollback keeps validate green with jobs and sources written after the cutover ------------


async def test_validate_passes_right_after_a_rollback_of_new_jobs_and_sources(
    legacy_url: str, database_url: str
) -> None:
    from docstore.compat import LegacyDatabase

    async with Migrator(legacy_url, database_url) as m:
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:
        legacy_api = LegacyDatabase(store)
        config_id = await legacy_api.create_crate_config("fresh-crate", "latest")
        job = await legacy_api.create_population_job(config_id)
        await legacy_api.update_population_job(job, "running")
        await store.documents.upsert(
            docstore.Document(
                source_name="fresh-crate", doc_path="fresh/index.html", content="after"
            )
        )
        await store.sources.upsert(docstore.Source(source_name="another", config={}))
        await store.documents.upsert(
            docstore.Document(source_name="another", doc_path="a.html", content="after")
        )
    async with Migrator(legacy_url, database_url) as back:
        result = await back.rollback()
        assert result.recorded_job_ids == 1 and result.recorded_legacy_ids == 2
        check = await back.validate()
        assert check.ok, check.problems()


async def test_all_zero_legacy_embeddings_neither_break_nor_fail_validation(
    legacy_url: str, database_url: str
) -> None:
    """A crate whose first embedding is all zeros made validation's search parity send it as
    the query (docstore refuses a zero vector: run() and validate() raised ValidationError);
    in a small crate the legacy top-k held the zero vector's NaN distance, which docstore never
    returns, so parity failed while problems() listed nothing. Now the crate's next vector is
    the query, NaN distances are not compared, and problems() is [] exactly when ok."""
    rng = np.random.default_rng(5)
    rows = [
        (9001, "zeros-first", "z", np.zeros(3072, dtype=np.float32)),
        (9002, "zeros-first", "a", rng.normal(size=3072).astype(np.float32)),
        (9003, "zeros-first", "b", rng.normal(size=3072).astype(np.float32)),
        (9004, "only-zeros", "z", np.zeros(3072, dtype=np.float32)),
    ]
    for id_, crate, path, vector in rows:
        await legacy_execute(
            legacy_url,
            "INSERT INTO doc_embeddings (id, crate_name, doc_path, content, embedding)"
            " VALUES ($1, $2, $3, 'text', $4)",
            id_,
            crate,
            path,
            vector,
        )
    async with Migrator(legacy_url, database_url, parity_queries=100) as m:
        report = await m.run()
        assert report.validation is not None
        assert report.ok, report.validation.problems()
        checked = {p.source_name: p for p in report.validation.parity}
        assert checked["zeros-first"].legacy_top == checked["zeros-first"].docstore_top
        assert "only-zeros" not in checked
        again = await m.validate()
        assert again.ok and again.problems() == []
    async with docstore.connect(database_url) as store:
        await store.execute("DELETE FROM source_population_jobs WHERE legacy_id = 3")
        await store.execute("DELETE FROM documents WHERE doc_path = 'a'")
    async with Migrator(legacy_url, database_url) as m:
        broken = await m.validate()
    assert not broken.ok
    problems = broken.problems()
    assert f"documents: legacy {DOCS + 4:,}, target {DOCS + 3:,}" in problems, problems
    assert "population jobs: legacy 3, target 2" in problems, problems


async def test_a_stray_row_with_a_legacy_id_too_long_for_bigint_is_reported_not_a_crash(
    legacy_url: str, database_url: str
) -> None:
    # every stage selects migrated rows with one predicate (legacy.MIGRATED_ROWS); the row
    # digests once took any run of digits and failed casting this one to bigint
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        assert (await m.run()).ok
        async with docstore.connect(database_url) as store:
            await store.execute(
                "insert into documents (source_name, doc_path, content, metadata)"
                " values ('crate0', 'stray', 'text', jsonb_build_object("
                "'migrated_from', 'rust_docs_vectors', 'legacy_id', repeat('9', 22)))"
            )
        stale = await m.validate()
        assert not stale.ok and stale.problems()
        async with docstore.connect(database_url) as store:
            await store.execute("delete from documents where doc_path = 'stray'")
        assert (await m.validate()).ok
