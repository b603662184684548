"""The Migrator's stages, each run alone against real databases, and validation that streams
with the copy (what it proves, and what it leaves to a re-read)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

import docstore
from docstore.codecs import register_codecs
from docstore.migrate import Migrator, checkpoints, legacy
from docstore.migrate import copy as copy_stage
from docstore.migrate import delta as delta_stage
from docstore.migrate import preflight as preflight_stage
from docstore.migrate import validate as validate_stage
from docstore.migrate.context import StageContext, run_id, side_by_side
from docstore.migrate.report import MigrationReport
from docstore.migrate.verify import StreamVerifier
from tests.conftest import PgCluster
from tests.legacy_db import legacy_database, legacy_execute, legacy_fetch

DOCS = 120
CRATES = 6
CHUNK = 25  # 5 chunks: (0, 25], (25, 50], (50, 75], (75, 100], (100, 120]


@pytest.fixture
def legacy_url(pg: PgCluster) -> Iterator[str]:
    yield from legacy_database(pg, crates=CRATES, docs=DOCS)


class Stages:
    """What a stage is run with: a legacy connection, the target store and a connection of it."""

    def __init__(self, src: asyncpg.Connection, store: docstore.Store, tgt: Any) -> None:
        self.src, self.store, self.tgt = src, store, tgt

    async def context(self) -> StageContext:
        return StageContext(
            doc_type="rust",
            run_id=await run_id(self.src, "rust"),
            embedding_dim=self.store.embedding_dim,
            chunk_rows=CHUNK,
        )

    async def validate(self, **kwargs: Any) -> Any:
        ctx = await self.context()
        async with self.src.transaction(isolation="repeatable_read", readonly=True):
            return await validate_stage.validate(ctx, self.src, self.tgt, self.store, **kwargs)


@pytest.fixture
async def stages(legacy_url: str, database_url: str) -> AsyncIterator[Stages]:
    src = await asyncpg.connect(legacy_url)
    await register_codecs(src, "public")
    try:
        async with docstore.connect(database_url) as store, store.acquire() as tgt:
            yield Stages(src, store, tgt)
    finally:
        await src.close()


async def test_preflight_stage_alone_reads_and_writes_nothing(stages: Stages) -> None:
    pre = await preflight_stage.preflight(stages.src, stages.store, "rust")
    nulls = len([j for j in range(DOCS) if j % 7 == 3])
    assert pre.ok and pre.documents == DOCS and pre.embedding_dims == {3072: DOCS - nulls}
    assert pre.null_embeddings == nulls and pre.target_existing_documents == 0
    assert await stages.store.documents.count() == 0


async def test_copy_stage_alone_verifies_every_chunk_while_streaming(stages: Stages) -> None:
    ctx = await stages.context()
    report = MigrationReport(run_id=ctx.run_id, doc_type="rust", preflight=_preflight())
    seen: list[tuple[str, int]] = []
    ctx.progress = lambda stage, done, total, nbytes: seen.append((stage, done))
    async with StreamVerifier(ctx, stages.store) as verifier:
        await copy_stage.copy(ctx, stages.src, stages.tgt, report, verifier)
        await verifier.drain()
    assert report.copied_documents == DOCS and report.sources == CRATES + 1
    assert sorted(verifier.verified) == [0, 25, 50, 75, 100]
    assert all(v.same and v.rows == v.target_rows for v in verifier.verified.values())
    assert ("verified", DOCS) in seen and ("documents", DOCS) in seen
    cps = await checkpoints.load(stages.tgt, ctx.run_id)
    assert [(c.first_key, c.last_key, c.rows) for c in cps][-1] == (100, 120, 20)
    # validation accepts every range the stream proved, reading none again
    result = await stages.validate(streamed=verifier.verified)
    assert result.ok, result.problems()
    assert (result.streamed_chunks, result.reread_chunks, result.checksum_chunks) == (5, 0, 5)


async def test_validate_stage_alone_on_a_copied_database(
    stages: Stages, legacy_url: str, database_url: str
) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK, validate=False) as m:
        assert (await m.run()).validation is None
    full = await stages.validate()
    assert full.ok and full.legacy_documents == DOCS and full.streamed_chunks == 0
    # the streamed mode with nothing streamed re-reads every range on both sides
    reread = await stages.validate(streamed={})
    assert reread.ok and (reread.streamed_chunks, reread.reread_chunks) == (0, 5)
    await stages.store.execute(
        "UPDATE documents SET token_count = token_count + 1 WHERE metadata->>'legacy_id' = '60'"
    )
    for result in (await stages.validate(), await stages.validate(streamed={})):
        assert not result.ok and result.mismatched_chunks == 1
        assert [(m.legacy_id, m.fields) for m in result.mismatches] == [(60, ["token_count"])]


async def test_validation_reads_each_side_once_for_its_counts(
    stages: Stages, legacy_url: str, database_url: str
) -> None:
    """Validation's per-crate facts (documents, unusable embeddings, parity's sample) come
    from one legacy scan, and the target's per-source counts with the documents written in
    docstore from one target scan (2026-12-06; they were five scans): each answers what its
    separate query answered, in both modes."""
    crate, first = (
        await legacy_fetch(
            legacy_url,
            "SELECT crate_name, min(id) FROM doc_embeddings"
            " WHERE embedding IS NOT NULL GROUP BY 1 ORDER BY 1 LIMIT 1",
        )
    )[0]
    # the crate's lowest id has no embedding now: its parity sample is the next usable row
    await legacy_execute(
        legacy_url, "UPDATE doc_embeddings SET embedding = NULL WHERE id = $1", first
    )
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        assert (await m.run()).ok
    src = stages.src
    fused = await src.fetch(legacy.per_crate_sql(3072, legacy.sizes_vectors(src)))
    assert {r["source_name"]: r["documents"] for r in fused} == dict(
        await src.fetch("SELECT crate_name, count(*) FROM doc_embeddings GROUP BY 1")
    )
    assert sum(r["unusable"] for r in fused) == await src.fetchval(
        "SELECT count(*) FROM doc_embeddings WHERE embedding IS NULL"
        " OR vector_dims(embedding) <> 3072"
    )
    samples = await src.fetch(
        "SELECT DISTINCT ON (crate_name) crate_name, id FROM doc_embeddings"
        " WHERE embedding IS NOT NULL AND vector_dims(embedding) = 3072 ORDER BY crate_name, id"
    )
    assert [(r["source_name"], r["sample"]) for r in fused if r["sample"] is not None] == [
        tuple(r) for r in samples
    ]
    assert dict(samples)[crate] > first
    # documents the app wrote: one in a migrated source, one in a source of its own
    await stages.store.documents.upsert_many(
        [
            docstore.Document(source_name=crate, doc_path=f"{crate}/app.html", content="app"),
            docstore.Document(source_name="app-only", doc_path="app/1.html", content="app"),
        ]
    )
    legacy_counts = {r["source_name"]: r["documents"] for r in fused}
    for result in (await stages.validate(), await stages.validate(streamed={})):
        assert result.ok, result.problems()
        assert result.target_own_documents == 2
        assert result.target_per_source == legacy_counts  # migrated documents only
        assert result.legacy_null_embeddings == result.target_null_embeddings
        assert result.parity[0].source_name == crate and all(p.same for p in result.parity)


async def test_a_migration_makes_asyncpg_introspect_no_type(
    legacy_url: str, database_url: str, introspections: list[list[int]]
) -> None:
    """asyncpg introspects an array type other than text[] the first time a connection meets
    it, with a catalog query of 5-10 ms on a new session (three per run, one before the copy
    and two in validation, 2026-12-06): the migration's statements pass and return ids as
    text[] instead. A first run, a resumed one, a full validation and a run after legacy
    deletions (a population job, a crate's documents), each on new sessions."""
    for step in ("run", "run", "validate", "delete", "run"):
        if step == "delete":  # a job and a crate's documents gone: their deletions
            await legacy_execute(legacy_url, "DELETE FROM population_jobs WHERE id = 2")
            await legacy_execute(
                legacy_url, "DELETE FROM doc_embeddings WHERE crate_name = 'orphan-crate'"
            )
            continue
        async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
            assert (await getattr(m, step)()).ok
    assert introspections == []


async def test_a_failing_check_on_one_side_fails_validation_with_its_own_error(
    stages: Stages, legacy_url: str, database_url: str
) -> None:
    """The two databases are checked side by side; a statement failing on one side cancels the
    other and comes out as itself (a ``MigrationError`` from the Migrator), not wrapped in an
    ExceptionGroup, and both connections stay usable."""
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK, validate=False) as m:
        await m.run()
    await stages.store.execute("ALTER TABLE source_population_jobs RENAME TO jobs_elsewhere")
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await stages.validate()
        async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
            with pytest.raises(docstore.MigrationError, match=r"validation failed.*jobs"):
                await m.validate()
    finally:
        await stages.store.execute("ALTER TABLE jobs_elsewhere RENAME TO source_population_jobs")
    assert (await stages.validate()).ok  # the same connections, after the failure


async def test_side_by_side_returns_both_results_or_the_first_failure() -> None:
    async def value(x: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return x

    cancelled = asyncio.Event()

    async def slow() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    async def fails() -> int:
        raise KeyError("boom")

    assert await side_by_side(value(1, 0.02), value(2, 0)) == (1, 2)
    with pytest.raises(KeyError, match="boom"):
        await side_by_side(slow(), fails())
    assert cancelled.is_set()


async def test_delta_stage_alone_after_a_legacy_change(
    stages: Stages, legacy_url: str, database_url: str
) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK, validate=False) as m:
        await m.run()
    await legacy_execute(
        legacy_url,
        "UPDATE doc_embeddings SET content = 'edited' WHERE id = 30;"
        " DELETE FROM doc_embeddings WHERE id = 80;"
        " INSERT INTO doc_embeddings (crate_name, doc_path, content)"
        " VALUES ('crate0', 'late.html', 'new')",
    )
    assert not (await stages.validate()).ok
    ctx = await stages.context()
    async with StreamVerifier(ctx, stages.store) as verifier:
        recopied = await delta_stage.delta_documents(ctx, stages.src, stages.tgt, verifier)
        await verifier.drain()
    # (25, 50] and (75, 100] changed, (120, 121] is new: re-copied (and id 80 deleted), and
    # verified as streamed
    assert recopied == 25 + (24 + 1) + 1
    assert sorted(verifier.verified) == [25, 75, 120]
    assert all(v.same for v in verifier.verified.values())
    result = await stages.validate(streamed=verifier.verified)
    assert result.ok, result.problems()
    assert (result.streamed_chunks, result.reread_chunks) == (3, 3)  # 3 re-copied, 3 skipped


async def test_delta_stage_after_every_row_of_a_range_was_deleted(
    stages: Stages, legacy_url: str, database_url: str
) -> None:
    """Review of 2026-12-05: the emptied range's ids (array_agg of no rows: NULL) raised
    TypeError, the CLI's "internal error"; and the deletions were not counted as a change."""
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK, validate=False) as m:
        await m.run()
    await legacy_execute(legacy_url, "DELETE FROM doc_embeddings WHERE id > 25 AND id <= 50")
    ctx = await stages.context()
    async with StreamVerifier(ctx, stages.store) as verifier:
        changed = await delta_stage.delta_documents(ctx, stages.src, stages.tgt, verifier)
        await verifier.drain()
    assert changed == 25  # the range's rows, deleted from the target
    assert sorted(verifier.verified) == [25] and verifier.verified[25].same
    result = await stages.validate(streamed=verifier.verified)
    assert result.ok, result.problems()


async def test_the_verifier_stops_when_giving_its_connection_back_fails(
    stages: Stages, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review of 2026-12-05: the reader had taken its stop marker, then releasing its
    connection raised and it waited for another marker: stop() and the run hung."""
    ctx = await stages.context()
    verifier = StreamVerifier(ctx, stages.store)
    await verifier.__aenter__()
    await asyncio.sleep(0.3)  # the reader holds its connection
    real = asyncpg.pool.Pool.release

    async def release_fails(self: Any, connection: Any, *, timeout: Any = None) -> None:
        await real(self, connection, timeout=timeout)
        raise OSError("the release failed")

    monkeypatch.setattr(asyncpg.pool.Pool, "release", release_fails)
    await asyncio.wait_for(verifier.stop(), 20)
    monkeypatch.undo()
    assert verifier.failed is None  # every range it was given was done


async def test_run_reports_the_chunks_verified_while_streaming(
    legacy_url: str, database_url: str
) -> None:
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        report = await m.run()
    assert report.ok, report.validation
    assert report.verified_chunks == [(0, 25), (25, 50), (50, 75), (75, 100), (100, 120)]
    assert report.validation is not None and report.validation.streamed_chunks == 5
    assert report.validation.reread_chunks == 0 and "verify_streaming" in report.timings
    # validate() alone re-reads both databases in full, as before
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        again = await m.validate()
    assert again.ok and again.streamed_chunks == 0 and again.checksum_chunks == 5


async def test_a_stored_row_that_differs_from_the_stream_is_caught_and_copied_again(
    legacy_url: str, database_url: str
) -> None:
    """The check proves what is stored, not what was sent: a target row changed between its
    chunk's commit and the read-back is found by the streamed check itself."""
    done: list[bool] = []

    def corrupt_first_chunk(stage: str, rows: int, total: int, nbytes: int) -> None:
        # runs right after chunk (0, 25] committed, before its read-back can start
        if stage == "documents" and rows == CHUNK and not done:
            sql = "UPDATE documents SET content = content || '!' WHERE metadata->>'legacy_id' = '7'"
            writer = threading.Thread(target=asyncio.run, args=(legacy_execute(database_url, sql),))
            writer.start()
            writer.join()
            done.append(True)

    async with Migrator(
        legacy_url, database_url, chunk_rows=CHUNK, progress=corrupt_first_chunk
    ) as m:
        report = await m.run()
    assert done and report.ok, report.validation
    assert (0, 25) not in report.verified_chunks and len(report.verified_chunks) == 4
    assert report.repaired_documents == 1
    assert any("legacy id 7): differs (content)" in w for w in report.warnings), report.warnings


class TargetEditor(Migrator):
    """A Migrator whose target is edited after the streaming checks, right before validation."""

    def __init__(self, *args: Any, edits: list[str], target_url: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.edits, self.target_url = edits, target_url

    async def _validate(
        self, src: Any, ctx: Any, streamed: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        if self.edits:
            if streamed is not None:
                await streamed  # the last ranges read back: every streaming check is done
            await legacy_execute(self.target_url, self.edits.pop(0))
        return await super()._validate(src, ctx, streamed, *args, **kwargs)


async def test_a_target_change_after_the_streamed_check_is_re_read_and_repaired(
    legacy_url: str, database_url: str
) -> None:
    edits = [
        "UPDATE documents SET embedding = NULL WHERE metadata->>'legacy_id' = '33';"
        " INSERT INTO documents (doc_type, source_name, doc_path, content, metadata)"
        " VALUES ('rust', 'crate0', 'stray.html', 'x',"
        ' \'{"legacy_id": 999, "migrated_from": "rust_docs_vectors"}\')'
    ]
    async with TargetEditor(
        legacy_url, database_url, chunk_rows=CHUNK, edits=edits, target_url=database_url
    ) as m:
        report = await m.run()
    assert report.ok, report.validation
    assert len(report.verified_chunks) == 5  # all verified while streaming, then edited
    warning = next(w for w in report.warnings if "copied again" in w)
    assert "legacy id 33): differs (embedding)" in warning
    assert "legacy id 999): extra in target" in warning
    async with docstore.connect(database_url) as store:
        assert await store.documents.count() == DOCS


async def test_a_resumed_run_re_reads_the_chunks_an_earlier_run_committed(
    legacy_url: str, database_url: str
) -> None:
    class Stop(Exception):
        pass

    def stop_after_two_chunks(stage: str, done: int, total: int, nbytes: int) -> None:
        if stage == "documents" and done >= 2 * CHUNK:
            raise Stop

    with pytest.raises(Stop):
        async with Migrator(
            legacy_url, database_url, chunk_rows=CHUNK, progress=stop_after_two_chunks
        ) as m:
            await m.run()
    async with docstore.connect(database_url) as store:
        # whole chunks: two, or three when the other copy stream's chunk committed too
        committed = await store.documents.count() // CHUNK
    assert committed in (2, 3)
    async with Migrator(legacy_url, database_url, chunk_rows=CHUNK) as m:
        report = await m.run()
    assert report.ok and report.skipped_chunks == committed
    assert report.validation is not None
    assert (report.validation.streamed_chunks, report.validation.reread_chunks) == (
        5 - committed,
        committed,
    )


def _preflight() -> Any:
    from docstore.migrate.report import Preflight

    return Preflight(tables=[])


async def test_copy_streams_share_one_snapshot_and_give_the_same_target(
    legacy_url: str, pg: PgCluster
) -> None:
    """Chunks copied by 1, 2 or 3 streams at once: the same rows, each chunk verified while
    streaming, and a legacy write during the copy (after the snapshot) left to the delta pass
    whatever stream copies its chunk."""
    results = []
    for streams in (1, 2, 3):
        target = pg.url(await asyncio.to_thread(pg.create_database, prefix="streams"))
        seen: list[str] = []

        def progress(
            stage: str, done: int, total: int, nbytes: int, seen: list[str] = seen
        ) -> None:
            if stage == "documents" and "documents" not in seen:  # the first chunk committed
                edit = threading.Thread(
                    target=asyncio.run,
                    args=(
                        legacy_execute(
                            legacy_url,
                            "UPDATE doc_embeddings SET content = 'changed during the copy'"
                            " WHERE id = 110",
                        ),
                    ),
                )
                edit.start()
                edit.join()
            seen.append(stage)

        async with Migrator(
            legacy_url, target, chunk_rows=CHUNK, copy_streams=streams, progress=progress
        ) as m:
            report = await m.run()
        # the delta pass copies again the chunk (100, 120] that holds the edited row
        assert report.ok and report.copied_documents == DOCS and report.delta_documents == 20
        assert "verified" in seen
        assert len(report.verified_chunks) == 5 and report.validation is not None
        assert report.validation.streamed_chunks + report.validation.reread_chunks == 5
        async with docstore.connect(target) as store:
            rows = await store.fetch(
                "SELECT doc_path, content, embedding::text AS e, metadata FROM documents"
                " ORDER BY doc_path"
            )
        results.append([tuple(r) for r in rows])
    assert results[0] == results[1] == results[2]
    with pytest.raises(docstore.MigrationError, match="copy_streams"):
        Migrator(legacy_url, legacy_url, copy_streams=0)


async def test_a_run_building_the_indexes_fits_a_small_pool(
    legacy_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock's connection and two copy streams' verification readers fill a pool of three:
    the readers give theirs back before ANALYZE and the index builds need one."""
    monkeypatch.setenv("DOCSTORE_POOL_MAX_SIZE", "3")
    monkeypatch.setenv("DOCSTORE_POOL_ACQUIRE_TIMEOUT", "4")
    async with Migrator(
        legacy_url, database_url, chunk_rows=CHUNK, copy_streams=2, build_index=True
    ) as m:
        report = await m.run()
    assert report.ok, report.validation
    assert "index" in report.timings and len(report.verified_chunks) == 5
    async with docstore.connect(database_url) as store:
        health = await store.health()
    assert health.vector_indexes and all(health.vector_indexes.values())
