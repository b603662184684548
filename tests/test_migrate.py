"""Migrator against real legacy and docstore databases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import numpy as np
import pytest

import docstore
from docstore.errors import MigrationError
from docstore.migrate import Migrator
from tests.conftest import PgCluster
from tests.legacy_db import legacy_database, legacy_execute

DOCS = 120
CRATES = 6


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=CRATES, docs=DOCS)


async def test_migration_accounts_for_every_legacy_row(legacy_url: str, database_url: str) -> None:
    """Acceptance 1: all four tables, NULL embeddings, an orphan, a crate without documents."""
    async with Migrator(legacy_url, database_url, chunk_rows=25) as migrator:
        report = await migrator.run()
    assert report.ok, report.validation
    pre = report.preflight
    assert pre.table() == {
        "crates": CRATES,
        "doc_embeddings": DOCS,
        "crate_configs": 3,
        "population_jobs": 3,
    }
    assert pre.null_embeddings == len([j for j in range(DOCS) if j % 7 == 3])
    assert pre.orphan_documents == 2 and pre.orphan_crates == ["orphan-crate"]
    assert pre.crates_without_documents == [f"crate{CRATES - 1}"]
    assert report.copied_documents == DOCS and sum(report.per_source.values()) == DOCS
    assert report.sources == CRATES + 1  # every crate, plus one for the orphan documents
    assert report.population_jobs == 3
    v = report.validation
    assert v is not None and v.ok
    assert v.legacy_documents == v.target_documents == DOCS
    assert v.legacy_null_embeddings == v.target_null_embeddings == pre.null_embeddings
    assert v.parity and all(p.same for p in v.parity)

    async with docstore.connect(database_url) as store:
        doc = await store.documents.get_by_key("rust", "crate1", "crate1/module1/index.html")
        assert doc is not None and "tab\t newline\n backslash \\ unicode ✓" in doc.content
        assert doc.metadata == {
            "crate_name": "crate1",
            "legacy_id": 2,
            "legacy_crate_id": 2,
            "migrated_from": "rust_docs_vectors",
        }  # crate1 has a NULL version: no crate_version key
        source = await store.sources.get("rust", "crate0")
        assert source is not None
        assert source.config["version_spec"] == "latest"
        assert len(source.config["crate_configs"]) == 2
        assert source.config["total_docs"] == 0 and source.config["legacy_id"] == 1
        orphan = await store.sources.get("rust", "orphan-crate")
        assert orphan is not None and orphan.config["orphan"] is True
        jobs = await store.fetch(
            "select status, source_name, source_id is not null as linked, error_message"
            " from source_population_jobs order by legacy_id"
        )
        assert [(j["status"], j["source_name"], j["linked"]) for j in jobs] == [
            ("completed", "crate0", True),
            ("failed", "crate0", True),
            ("running", "crate2", True),
        ]
        assert jobs[1]["error_message"] == "timeout after 3600s"


async def test_rerun_is_idempotent_and_skips_committed_chunks(
    legacy_url: str, database_url: str
) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=25, validate=False) as m:
        first = await m.run()
        second = await m.run()
    assert first.copied_documents == DOCS and first.skipped_chunks == 0
    assert second.copied_documents == 0 and second.skipped_chunks == 5
    async with Migrator(legacy_url, database_url, chunk_rows=25, restart=True) as m:
        third = await m.run()
    assert third.copied_documents == DOCS and third.ok  # upserted, never doubled
    async with docstore.connect(database_url) as store:
        assert await store.documents.count() == DOCS


async def test_interrupted_run_resumes_with_exact_rows(legacy_url: str, database_url: str) -> None:
    class Stop(Exception):
        pass

    def stop_after_two_chunks(stage: str, done: int, total: int, nbytes: int) -> None:
        if stage == "documents" and done >= 50:
            raise Stop

    with pytest.raises(Stop):
        async with Migrator(
            legacy_url, database_url, chunk_rows=25, progress=stop_after_two_chunks
        ) as m:
            await m.run()
    async with docstore.connect(database_url) as store:
        committed = await store.documents.count()
    # whole chunks only; with two copy streams the other stream's chunk may have committed too
    assert committed in (50, 75)
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        report = await m.run()
    assert report.ok and report.skipped_chunks == committed // 25
    assert report.copied_documents == DOCS - committed


async def test_legacy_writes_during_the_copy_are_caught_by_the_delta_pass(
    legacy_url: str, database_url: str
) -> None:
    import threading

    done: list[bool] = []

    def write_midway(stage: str, rows: int, total: int, nbytes: int) -> None:
        # after the first chunk is committed, the legacy application writes (and commits)
        if stage == "documents" and rows == 25 and not done:
            writer = threading.Thread(
                target=asyncio.run,
                args=(
                    legacy_execute(
                        legacy_url,
                        "update doc_embeddings set content = content || ' (edited)' where id = 3;"
                        " update doc_embeddings set doc_path = 'crate4/renamed.html'"
                        " where id = 10;"
                        " delete from doc_embeddings where id = 60;"
                        " insert into doc_embeddings (crate_name, doc_path, content)"
                        " values ('crate0', 'late/page.html', 'written during the copy')",
                    ),
                ),
            )
            writer.start()
            writer.join()
            done.append(True)

    async with Migrator(legacy_url, database_url, chunk_rows=25, progress=write_midway) as m:
        report = await m.run()
    assert done and report.ok, report.validation
    assert report.delta_documents > 0 and any(
        "changed during the copy" in w for w in report.warnings
    )
    assert report.validation is not None and report.validation.target_documents == DOCS
    async with docstore.connect(database_url) as store:
        assert await store.documents.get_by_key("rust", "crate0", "late/page.html")
        assert await store.documents.get_by_key("rust", "crate4", "crate4/renamed.html")
        assert (
            await store.fetchval(
                "select count(*) from documents where metadata->>'legacy_id' in ('10', '60')"
            )
            == 1
        )


async def test_the_last_documents_deleted_during_a_copy_into_an_empty_target_are_not_kept(
    legacy_url: str, database_url: str
) -> None:
    """A copy into an empty target skips the delta pass's whole-table clean-up only while the
    legacy table did not shrink below the copied ids: here it did."""
    import threading

    done: list[bool] = []

    def delete_the_last(stage: str, rows: int, total: int, nbytes: int) -> None:
        if stage == "documents" and not done:
            done.append(True)
            writer = threading.Thread(
                target=asyncio.run,
                args=(
                    legacy_execute(legacy_url, f"delete from doc_embeddings where id > {DOCS - 3}"),
                ),
            )
            writer.start()
            writer.join()

    async with Migrator(legacy_url, database_url, chunk_rows=25, progress=delete_the_last) as m:
        report = await m.run()
    assert done and report.ok, report.validation
    async with docstore.connect(database_url) as store:
        assert await store.documents.count() == DOCS - 3
        legacy_ids = await store.fetchval(
            "select max((metadata->>'legacy_id')::int) from documents"
        )
        assert legacy_ids == DOCS - 3


async def test_validate_names_an_edited_character_and_an_edited_float(
    legacy_url: str, database_url: str
) -> None:
    """Acceptance 3."""
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        assert (await m.run()).ok
        async with docstore.connect(database_url) as store:
            await store.execute(
                "update documents set content = overlay(content placing 'X' from 5 for 1)"
                " where doc_path = 'crate4/module4/index.html'"
            )
            bad = await m.validate()
            assert not bad.ok
            assert [(x.doc_path, x.problem) for x in bad.mismatches] == [
                ("crate4/module4/index.html", "differs")
            ]
            await store.execute(
                "update documents set content = overlay(content placing 'm' from 5 for 1)"
                " where doc_path = 'crate4/module4/index.html'"
            )
            assert (await m.validate()).ok
            doc = await store.documents.get_by_key("rust", "crate2", "crate2/module7/index.html")
            assert doc is not None and doc.embedding is not None
            nudged = doc.embedding.copy()
            nudged[1234] = np.nextafter(nudged[1234], np.float32(1))
            await store.documents.upsert(doc.model_copy(update={"embedding": nudged}))
            bad = await m.validate()
            assert [(x.source_name, x.doc_path) for x in bad.mismatches] == [
                ("crate2", "crate2/module7/index.html")
            ]
            assert not bad.ok


async def test_a_second_migrator_is_refused(legacy_url: str, database_url: str) -> None:
    from docstore.migrate.migrator import MIGRATION_LOCK_KEY

    holder = await asyncpg.connect(database_url, server_settings={"application_name": "other"})
    try:
        await holder.execute("select pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        pid = await holder.fetchval("select pg_backend_pid()")
        with pytest.raises(MigrationError, match="another docstore migrator is running") as e:
            async with Migrator(legacy_url, database_url) as m:
                await m.run()
        # the holder named, and how to end it if it is a cut-off migrator's orphaned session
        assert f"by server process {pid} 'other', connected " in str(e.value)
        assert f"SELECT pg_terminate_backend({pid}) releases it" in str(e.value)
    finally:
        await holder.close()


async def test_preflight_refuses_a_database_that_is_not_legacy(
    empty_database_url: str, database_url: str
) -> None:
    async with Migrator(empty_database_url, database_url) as m:
        dry = await m.run(dry_run=True)
        assert not dry.ok and "no crates, doc_embeddings table" in dry.preflight.blocking[0]
        with pytest.raises(MigrationError, match="is it the legacy rust_docs_vectors database"):
            await m.run()


async def test_mixed_dimensions_are_reported_and_copied_without_crashing(
    legacy_url: str, database_url: str
) -> None:
    await legacy_execute(
        legacy_url,
        "alter table doc_embeddings alter column embedding type vector;"
        " drop function search_similar_docs(vector, varchar, integer)",
    )
    await legacy_execute(
        legacy_url,
        "insert into doc_embeddings (crate_name, doc_path, content, embedding)"
        " values ('crate0', 'old/1536.html', 'embedded by the old model', $1)",
        np.ones(1536, dtype=np.float32),
    )
    async with Migrator(legacy_url, database_url, chunk_rows=50) as m:
        report = await m.run()
    assert report.preflight.wrong_dimension == 1
    assert report.preflight.embedding_dims[1536] == 1
    assert any("old/1536.html" in w for w in report.warnings)
    assert report.ok and report.copied_documents == DOCS + 1


async def test_report_is_saved_as_json_without_secrets(
    legacy_url: str, database_url: str, tmp_path: object
) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "report.json"
    async with Migrator(legacy_url, database_url, report_path=path, parity_queries=1) as m:
        report = await m.run()
    saved = json.loads(path.read_text())
    assert saved["copied_documents"] == DOCS and saved["validation"]["target_documents"] == DOCS
    assert report.timings["documents"] > 0


KILLABLE = """
import asyncio, sys, time
from docstore.migrate import Migrator

def progress(stage, done, total, nbytes):
    print(stage, done, total, flush=True)
    time.sleep(0.01)

async def main():
    async with Migrator(sys.argv[1], sys.argv[2], chunk_rows=5, validate=False,
                        progress=progress) as m:
        await m.run()
    print("finished", flush=True)

asyncio.run(main())
"""


def test_sigkilled_migrator_resumes_to_exact_rows(legacy_url: str, database_url: str) -> None:
    """Acceptance 2: SIGKILL at random points of the copy, five times; then finish."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    rng = random.Random(20261124)
    kills = 0
    for _ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", KILLABLE, legacy_url, database_url],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        assert child.stdout is not None
        wanted = rng.randint(1, 6)
        seen = 0
        for line in child.stdout:
            if line.startswith("documents"):
                seen += 1
                if seen >= wanted:
                    time.sleep(rng.uniform(0, 0.02))  # land inside the next chunk too
                    child.send_signal(signal.SIGKILL)
                    break
            if line.startswith("finished"):
                break
        child.wait(timeout=60)
        if child.returncode == -signal.SIGKILL:
            kills += 1
        if kills >= 5:
            break
    assert kills >= 5

    async def finish() -> None:
        async with Migrator(legacy_url, database_url, chunk_rows=5) as m:
            report = await m.run()
        assert report.ok, report.validation
        assert report.validation is not None
        assert report.validation.target_documents == DOCS
        assert report.skipped_chunks > 0
        async with docstore.connect(database_url) as store:
            assert await store.documents.count() == DOCS
            assert (
                await store.fetchval(
                    "select count(*) from (select doc_path from documents"
                    " group by doc_type, source_name, doc_path having count(*) > 1) d"
                )
                == 0
            )

    asyncio.run(finish())


async def legacy_snapshot(url: str) -> dict[str, object]:
    conn = await asyncpg.connect(url)
    try:
        docs = await conn.fetch(
            "select id, crate_id, crate_name, doc_path, md5(content) as content,"
            " embedding::text as embedding, token_count, created_at"
            " from doc_embeddings order by crate_name, doc_path"
        )
        crates = await conn.fetch("select * from crates order by name")
        configs = await conn.fetch("select * from crate_configs order by id")
        jobs = await conn.fetch("select * from population_jobs order by id")
        return {
            "docs": [tuple(r) for r in docs],
            "crates": [tuple(r) for r in crates],
            "configs": [tuple(r) for r in configs],
            "jobs": [tuple(r) for r in jobs],
        }
    finally:
        await conn.close()


async def test_round_trip_legacy_docstore_legacy_is_identical(
    legacy_url: str, database_url: str, empty_database_url: str
) -> None:
    """Acceptance 4: legacy → docstore → rollback into an empty database → identical."""
    async with Migrator(legacy_url, database_url) as m:
        assert (await m.run()).ok
    async with Migrator(empty_database_url, database_url) as back:
        result = await back.rollback()
    assert result.documents == DOCS and result.crates == CRATES
    assert (result.crate_configs, result.population_jobs) == (3, 3)
    assert await legacy_snapshot(empty_database_url) == await legacy_snapshot(legacy_url)


async def test_rollback_carries_writes_made_after_the_cutover(
    legacy_url: str, database_url: str
) -> None:
    async with Migrator(legacy_url, database_url) as m:
        assert (await m.run()).ok
    before = await legacy_snapshot(legacy_url)
    async with docstore.connect(database_url) as store:
        await store.documents.upsert(
            docstore.Document(
                source_name="crate3",
                doc_path="crate3/new.html",
                content="written after the cutover",
                embedding=np.full(3072, 0.5, dtype=np.float32),
            )
        )
        await store.execute(
            "update documents set content = 'changed after the cutover'"
            " where doc_path = 'crate0/module0/index.html'"
        )
        await store.execute("delete from documents where doc_path = 'crate1/module1/index.html'")
    async with Migrator(legacy_url, database_url) as back:
        result = await back.rollback()
    assert result.deleted_documents == 1 and result.documents == DOCS
    after = await legacy_snapshot(legacy_url)
    assert after["crates"] == before["crates"] and after["jobs"] == before["jobs"]
    docs = {(d[2], d[3]): d for d in after["docs"]}  # type: ignore[attr-defined]
    assert ("crate1", "crate1/module1/index.html") not in docs
    new = docs[("crate3", "crate3/new.html")]
    assert new[0] > DOCS and new[1] == 4  # a fresh legacy id, crate_id from crates
    import hashlib

    changed = docs[("crate0", "crate0/module0/index.html")]
    assert changed[4] == hashlib.md5(b"changed after the cutover").hexdigest()
    # the new document's legacy id is recorded on the target: the databases pair up again
    assert result.recorded_legacy_ids == 1
    async with docstore.connect(database_url) as store:
        doc = await store.documents.get_by_key("rust", "crate3", "crate3/new.html")
        assert doc is not None and doc.metadata["legacy_id"] == new[0]
        assert doc.metadata["legacy_crate_id"] == 4
    async with Migrator(legacy_url, database_url) as again:
        assert (await again.validate()).ok  # nothing "missing in target" right after rollback


async def test_rollback_writes_into_a_legacy_database_frozen_for_the_cutover(
    legacy_url: str, database_url: str, pg: PgCluster
) -> None:
    """docs/cutover.md freezes the legacy database with default_transaction_read_only; the
    rollback (an operator's explicit write) must still go through, and a rollback that fails
    is one clean MigrationError that changed nothing."""
    from urllib.parse import urlsplit

    name = urlsplit(legacy_url).path.lstrip("/")
    async with Migrator(legacy_url, database_url) as m:
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:
        await store.execute(
            "update documents set content = 'changed after the cutover'"
            " where doc_path = 'crate0/module0/index.html'"
        )
    await pg.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    try:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await legacy_execute(legacy_url, "update crates set version = 'x'")
        async with Migrator(legacy_url, database_url) as back:
            assert (await back.rollback()).documents == DOCS
    finally:
        await pg.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
    conn = await asyncpg.connect(legacy_url)
    try:
        assert (
            await conn.fetchval(
                "select content from doc_embeddings where doc_path = 'crate0/module0/index.html'"
            )
            == "changed after the cutover"
        )
        # a rollback that fails (here: a trigger refuses its DELETE) leaves no trace
        await conn.execute(
            "create function no_deletes() returns trigger language plpgsql as"
            " $$ begin raise exception 'kept'; end $$;"
            " create trigger keep before delete on doc_embeddings"
            " for each statement execute function no_deletes()"
        )
        before = await legacy_snapshot(legacy_url)
        async with docstore.connect(database_url) as store:
            await store.execute(
                "delete from documents where doc_path = 'crate1/module1/index.html'"
            )
        with pytest.raises(MigrationError, match=r"changed nothing.*kept"):
            async with Migrator(legacy_url, database_url) as back:
                await back.rollback()
        assert await legacy_snapshot(legacy_url) == before
    finally:
        await conn.close()


def test_cli_migrate_validate_rollback(
    legacy_url: str,
    database_url: str,
    empty_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: object,
) -> None:
    from pathlib import Path

    from typer.testing import CliRunner

    from docstore.cli import app

    runner = CliRunner()
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("LEGACY_DATABASE_URL", legacy_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    dry = runner.invoke(app, ["migrate", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "migration preflight" in dry.output and "nothing was written" in dry.output
    report = Path(str(tmp_path)) / "report.json"
    done = runner.invoke(
        app,
        [
            *("migrate", "--report", str(report), "--chunk-rows", "30", "--copy-streams", "3"),
            *("--reconnect-attempts", "2"),
        ],
    )
    assert done.exit_code == 0, done.output
    assert f"copied {DOCS} documents" in done.output and "validation: OK" in done.output
    assert "next steps" in done.output and json.loads(report.read_text())["run_id"]
    checked = runner.invoke(app, ["validate"])
    assert checked.exit_code == 0 and "validation: OK" in checked.output
    back = runner.invoke(app, ["rollback", "--source", empty_database_url])
    assert back.exit_code == 0, back.output
    assert f"legacy database now holds {DOCS} documents of {CRATES} crates" in back.output
    monkeypatch.delenv("LEGACY_DATABASE_URL")
    missing = runner.invoke(app, ["validate"])
    assert missing.exit_code == 1 and "LEGACY_DATABASE_URL" in missing.output


async def test_unreachable_legacy_database_error_never_shows_the_password(
    database_url: str,
) -> None:
    url = "postgresql://legacy:hunter2@127.0.0.1:1/rust_docs_vectors"
    migrator = Migrator(url, database_url)
    assert "hunter2" not in repr(migrator)
    with pytest.raises(MigrationError) as info:
        async with migrator:
            await migrator.preflight()
    assert "cannot reach the legacy database" in str(info.value)
    chain: BaseException | None = info.value
    while chain is not None:
        assert "hunter2" not in str(chain) and "hunter2" not in repr(chain)
        chain = chain.__cause__ or chain.__context__


async def test_a_rerun_after_a_deletion_copies_only_the_chunks_that_changed(
    legacy_url: str, database_url: str
) -> None:
    """Chunk boundaries were drawn every ``chunk_rows`` rows anew on each run: one deletion
    early in the table moved every later boundary, and the final run before a cutover copied
    every chunk again (an operator's rehearsal: 33 of 33 chunks after deleting one row). A
    re-run keeps the ranges the earlier run checkpointed: the chunks holding a deleted or
    edited row are copied again, the others skipped, rows added after the last range make a
    new chunk, and a range whose rows were all deleted loses them on the target too. No
    phantom delta (the legacy database did not change during this run)."""
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        first = await m.run()
    assert first.ok and first.copied_chunks == 5  # (0,25] … (100,120]
    await legacy_execute(
        legacy_url,
        "delete from doc_embeddings where id = 3;"
        " update doc_embeddings set content = content || ' edited' where id = 60;"
        " delete from doc_embeddings where id > 75 and id <= 100;"
        " insert into doc_embeddings (crate_name, doc_path, content)"
        " select 'crate1', 'added/' || g, 'added ' || g from generate_series(1, 30) g",
    )
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        report = await m.run()
    assert report.ok, report.validation
    assert report.skipped_chunks == 2  # (25,50] and (100,120]
    assert report.copied_chunks == 5  # (0,25], (50,75], the emptied (75,100], 30 new rows
    assert report.copied_documents == 24 + 25 + 0 + 30
    assert report.delta_documents == 0, report.warnings
    assert not [w for w in report.warnings if "changed during the copy" in w]
    async with docstore.connect(database_url) as store:
        assert await store.documents.count() == DOCS - 1 - 25 + 30
        ranges = await store.fetch(
            "select first_key, last_key, rows from docstore_migration_checkpoints"
            " order by first_key"
        )
        assert [tuple(r) for r in ranges] == [
            (0, 25, 24),
            (25, 50, 25),
            (50, 75, 25),
            (75, 100, 0),
            (100, 120, 20),
            (120, 145, 25),
            (145, 150, 5),
        ]
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        again = await m.run()
    assert again.ok and again.copied_chunks == 0 and again.skipped_chunks == 7


async def test_a_crate_gone_from_the_legacy_database_goes_with_its_jobs_on_a_rerun(
    legacy_url: str, database_url: str
) -> None:
    """A crate without documents deleted in the legacy database is deleted on the target by
    the next run, and so are the population jobs docstore made for it (on Citus, where no
    foreign key cascades, too)."""
    await legacy_execute(legacy_url, "insert into crates (name, version) values ('lonely', '1')")
    async with Migrator(legacy_url, database_url) as m:
        assert (await m.run()).ok
    async with docstore.connect(database_url) as store:
        await store.execute(
            "INSERT INTO source_population_jobs (source_id, doc_type, source_name)"
            " SELECT id, doc_type, source_name FROM document_sources WHERE source_name = 'lonely'"
        )
    await legacy_execute(legacy_url, "delete from crates where name = 'lonely'")
    async with Migrator(legacy_url, database_url) as m:
        report = await m.run()
    assert report.ok, report.validation
    async with docstore.connect(database_url) as store:
        assert await store.sources.get("rust", "lonely") is None
        assert not await store.fetchval(
            "SELECT count(*) FROM source_population_jobs WHERE source_name = 'lonely'"
        )


async def test_a_rerun_applies_legacy_renames_deletions_and_unpopulated_configs(
    legacy_url: str, database_url: str, empty_database_url: str
) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        assert (await m.run()).ok
    await legacy_execute(
        legacy_url,
        "update doc_embeddings set doc_path = 'crate4/renamed.html' where id = 5;"
        f" delete from doc_embeddings where id = {DOCS};"
        " insert into crate_configs (name, version_spec) values ('planned-crate', 'latest')",
    )
    async with Migrator(legacy_url, database_url, chunk_rows=25) as m:
        report = await m.run()
    assert report.ok, report.validation
    # the two changed chunks are copied again (their (id, xmin) stamps moved), the rest skipped
    assert report.skipped_chunks == 3 and 0 < report.copied_documents <= 50
    async with docstore.connect(database_url) as store:
        assert await store.documents.count() == DOCS - 1
        assert (
            await store.documents.get_by_key("rust", "crate4", "crate4/module4/index.html") is None
        )
        assert await store.documents.get_by_key("rust", "crate4", "crate4/renamed.html")
        planned = await store.sources.get("rust", "planned-crate")
        assert planned is not None and planned.config["version_spec"] == "latest"
        await store.documents.upsert(  # written after the cutover: needs a fresh legacy id
            docstore.Document(source_name="crate0", doc_path="crate0/new.html", content="new")
        )
    async with Migrator(empty_database_url, database_url) as back:
        result = await back.rollback()  # into an empty database: ids must not collide
    assert result.documents == DOCS and result.crate_configs == 4


async def has_documents_table(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("select to_regclass('documents') is not null"))
    finally:
        await conn.close()


async def test_api_dry_run_preflight_and_validate_leave_a_url_target_untouched(
    legacy_url: str, empty_database_url: str
) -> None:
    """Given a URL, the Migrator used to open the target with ``connect()``'s default and so
    create pgvector and docstore's schema in it for a dry run too; now only a write does."""
    async with Migrator(legacy_url, empty_database_url) as m:
        dry = await m.run(dry_run=True)
        assert dry.dry_run and not dry.preflight.blocking, dry.preflight.blocking
        await m.preflight()
        assert not await has_documents_table(empty_database_url)
        report = await m.run()  # the same Migrator: the target is reopened with the schema
        assert report.ok and report.copied_documents == DOCS
    assert await has_documents_table(empty_database_url)


def test_cli_checks_its_arguments_and_a_dry_run_writes_nothing(
    legacy_url: str, empty_database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    """A wrong argument is refused before the target is touched (migrate/validate/rollback
    used to create pgvector and docstore's schema in it first), and `migrate --dry-run`
    leaves even an uninitialised target as it was, as it says."""
    from typer.testing import CliRunner

    from docstore.cli import app

    runner = CliRunner()
    monkeypatch.delenv("LEGACY_DATABASE_URL", raising=False)
    target = ["--target", empty_database_url]
    source = ["--source", legacy_url]

    def untouched() -> bool:
        return not asyncio.run(has_documents_table(empty_database_url))

    for command in ("migrate", "validate", "rollback"):
        missing = runner.invoke(app, [command, *target])
        assert missing.exit_code == 1 and "LEGACY_DATABASE_URL" in missing.output
    for args in (
        ["--doc-type", ""],
        ["--doc-type", "x" * 51],
        ["--chunk-rows", "0"],
        ["--reconnect-attempts", "-1"],
        ["--report", str(Path(str(tmp_path)) / "no" / "such" / "dir" / "r.json")],
    ):
        usage = runner.invoke(app, ["migrate", *source, *target, *args])
        assert usage.exit_code == 2, (args, usage.output)
    assert untouched()
    dry = runner.invoke(app, ["migrate", "--dry-run", *source, *target])
    assert "nothing was written" in dry.output, dry.output
    assert untouched()
