"""Stage 2, copy: sources, then documents in id-ranged chunks, then population jobs — all read
in one ``REPEATABLE READ`` snapshot of the legacy database.

Each chunk is piped ``COPY (SELECT … shaped like documents …) TO STDOUT (FORMAT binary)`` →
``COPY documents FROM STDIN (FORMAT binary)`` (:mod:`docstore.migrate.pipe`) and committed
together with its checkpoint (:mod:`docstore.migrate.checkpoints`): a killed run resumes after
its last committed chunk, and a re-run skips chunks whose stamp still holds. Chunks go
straight into ``documents`` while the target holds nothing of them; otherwise (re-runs,
merges, a committed chunk whose stamp moved) through a temporary staging table and
``INSERT … ON CONFLICT DO UPDATE``, which never doubles a row, then the range's migrated rows
the legacy range no longer has (deleted or renamed) are deleted. The stream of every chunk is
hashed as it passes and, once committed, handed to a
:class:`~docstore.migrate.verify.StreamVerifier` that checks the stored rows while the next
chunks copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import asyncpg

from docstore.codecs import keys_param
from docstore.errors import DocstoreError, MigrationError
from docstore.failures import is_unique_violation
from docstore.migrate import checkpoints, keys, legacy, state
from docstore.migrate.compare import LegacyState
from docstore.migrate.context import LONG_TIMEOUT, StageContext, now
from docstore.migrate.digest import sent_digest
from docstore.migrate.pipe import pipe, transaction
from docstore.migrate.preflight import beyond_half_problem, nonpositive_ids
from docstore.migrate.report import MigrationReport, Validation
from docstore.migrate.verify import StreamedRange, StreamVerifier
from docstore.store import Store
from docstore.transient import describe

logger = logging.getLogger("docstore")

STAGE_TABLE = "docstore_migrate_stage"
MAX_LEGACY_ID = 2**31 - 1  # doc_embeddings.id is a SERIAL (int4)
# Rows are compared as validation compares them, by what is stored: the vectors' bytes
# (pgvector's = holds 0.0 equal to -0.0) and jsonb's text (jsonb's = holds 1.0 equal to 1.00);
# compared by value, such a change was never written and the repair never converged.
_UPSERT_FROM_STAGE = f"""
INSERT INTO documents ({", ".join(legacy.DOCUMENT_COLUMNS)})
SELECT {", ".join(legacy.DOCUMENT_COLUMNS)} FROM {STAGE_TABLE}
ON CONFLICT (doc_type, source_name, doc_path) DO UPDATE
   SET content = EXCLUDED.content, metadata = EXCLUDED.metadata,
       embedding = EXCLUDED.embedding, token_count = EXCLUDED.token_count,
       created_at = EXCLUDED.created_at
 WHERE (documents.content, documents.metadata::text, vector_send(documents.embedding),
        documents.token_count, documents.created_at)
       IS DISTINCT FROM (EXCLUDED.content, EXCLUDED.metadata::text,
                         vector_send(EXCLUDED.embedding), EXCLUDED.token_count,
                         EXCLUDED.created_at)
"""
# Migrated rows of an id range that the legacy range no longer has (deleted, or renamed:
# the upsert from staging inserted the new key, this removes the old one). The staged keys
# are a materialized CTE: Citus refuses a local (TEMP) table inside DML on a distributed
# table, but ships a CTE's result to the shards. NOT IN, not NOT EXISTS: it runs as a hashed
# sub-plan, where the planner chose a nested-loop anti-join over the unanalysed stage
# (measured on one node, 5,000 staged rows: 50 ms vs 6 s). No staged key is NULL: the
# upsert into documents (NOT NULL keys) before it would have failed.
_DELETE_RANGE_NOT_STAGED = f"""
WITH staged AS MATERIALIZED (SELECT source_name, doc_path FROM {STAGE_TABLE})
DELETE FROM documents d
 WHERE {legacy.MIGRATED_ROWS}
   AND {legacy.LEGACY_KEY} > $2 AND {legacy.LEGACY_KEY} <= $3
   AND (d.source_name, d.doc_path) NOT IN (SELECT source_name, doc_path FROM staged)
"""


async def plan_chunks(
    src: asyncpg.Connection, chunk_rows: int, kept: Sequence[checkpoints.Checkpoint] = ()
) -> list[tuple[int, int, int]]:
    """(exclusive low id, inclusive high id, rows) of every chunk, in the caller's snapshot.

    The ranges an earlier run of this migration checkpointed (``kept``) stay chunks as they
    are, whatever the legacy application inserted into or deleted from them since; only the
    ids around them — new rows above the last range, above all — are cut into chunks of
    ``chunk_rows``. So a deletion changes the one chunk that held the row (copied again) and
    the chunks after it are still skipped, where boundaries drawn every ``chunk_rows`` rows
    anew would all move and the final run before a cutover would copy everything again.
    (Overlapping ``kept`` ranges — never written by one plan — are not kept: a plan anew.)

    Chunks start after id 0: a row with an id <= 0 (preflight blocks on them, but one may
    have been written since) raises :class:`MigrationError` naming them."""
    if problem := await nonpositive_ids(src):
        raise MigrationError(f"cannot migrate: {problem}")
    ranges = sorted(kept, key=lambda c: c.first_key)
    if any(a.last_key > b.first_key for a, b in itertools.pairwise(ranges)):
        ranges = []
    bounds = [key for c in ranges for key in (c.first_key + 1, c.last_key + 1)]
    parts: dict[int, list[tuple[int, int]]] = {}
    for r in await src.fetch(legacy.CHUNKS_AROUND, chunk_rows, keys_param(bounds)):
        parts.setdefault(r["bucket"], []).append((r["high"], r["rows"]))
    chunks: list[tuple[int, int, int]] = []
    low = 0
    for bucket in range(2 * len(ranges) + 1):
        if bucket % 2:  # a kept range: one chunk, even one whose rows were all deleted
            c = ranges[bucket // 2]
            chunks.append((c.first_key, c.last_key, sum(n for _, n in parts.get(bucket, ()))))
            low = c.last_key
            continue
        found = parts.get(bucket, [])
        if bucket < 2 * len(ranges):  # up to the next kept range: the chunks leave no hole
            end = ranges[bucket // 2].first_key
            if not found and low < end:
                found = [(end, 0)]
            elif found:
                found[-1] = (end, found[-1][1])
        for high, rows in found:
            chunks.append((low, high, rows))
            low = high
    return chunks


class Copied(NamedTuple):
    """What :func:`copy_range` did."""

    rows: int
    """Legacy rows copied."""
    sent: bytes
    """The digest of the binary stream that left the legacy database."""
    deleted: int = 0
    """Migrated rows of the range the legacy range no longer has, deleted (staging only)."""


async def copy_range(
    ctx: StageContext,
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    low: int,
    high: int,
    *,
    direct: bool,
) -> Copied:
    """Copy the legacy rows ``(low, high]`` into ``documents`` inside the caller's target
    transaction; returns the rows copied, the digest of the binary stream that left the
    legacy database (:mod:`~docstore.migrate.digest`, in ``ctx.fold_embeddings``' form) and
    the rows deleted.
    ``direct``: COPY straight into ``documents`` (a key collision falls back to staging);
    otherwise upsert through the staging table and delete the range's migrated
    rows the legacy range no longer has.

    An embedding value beyond half precision's range (legal in the legacy ``vector``; the
    target's ``embedding_half`` refuses it) raises :class:`MigrationError` naming the range's
    rows that hold one (:func:`~docstore.migrate.legacy.beyond_half_query`, run only then: the
    copy itself looks at no value); the caller's transaction must roll back."""
    try:
        return await _copy_range(ctx, src, tgt, low, high, direct=direct)
    except asyncpg.PostgresError as exc:
        found: MigrationError | None
        if keys.too_long(exc):  # an index row too large: a long key
            found = await keys.chunk_error(src, ctx.doc_type, low, high)
        elif _out_of_range(exc):
            found = await _beyond_half(ctx, src, low, high)
        else:
            raise
        if found is None:
            raise
        raise found from exc


async def _beyond_half(
    ctx: StageContext, src: asyncpg.Connection, low: int, high: int
) -> MigrationError | None:
    """The range's legacy embeddings beyond half precision, as the chunk's error."""
    query = legacy.beyond_half_query(
        ctx.embedding_dim, legacy.sizes_vectors(src), id_range=True, limit=10
    )
    rows = await src.fetch(query, low, high, timeout=LONG_TIMEOUT)
    if not rows:
        return None
    problem = beyond_half_problem([r["id"] for r in rows], rows[0]["found"])
    return MigrationError(
        f"cannot copy doc_embeddings ids ({low}, {high}]: {problem}, then run again: the "
        "run resumes after the chunks already committed. `docstore migrate --dry-run` "
        "lists every such row"
    )


def _out_of_range(exc: asyncpg.PostgresError) -> bool:
    """A value the target refused as out of range: what ``embedding_half`` (a halfvec
    generated from the embedding) raises for one beyond ±65,504; on Citus, a worker's error
    during a COPY arrives as XX000 with the worker's message."""
    return exc.sqlstate == "22003" or (exc.sqlstate == "XX000" and "halfvec" in str(exc))


async def _copy_range(
    ctx: StageContext,
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    low: int,
    high: int,
    *,
    direct: bool,
) -> Copied:
    query = legacy.documents_copy_query("$1", ctx.embedding_dim, legacy.sizes_vectors(src))
    args = (ctx.doc_type, low, high)
    if direct:
        try:
            async with transaction(tgt):  # a savepoint: fall back on a key collision
                return Copied(*await _hashed_pipe(ctx, src, query, args, tgt, "documents"))
        except asyncpg.PostgresError as exc:  # Citus: a worker's violation is XX000
            if not is_unique_violation(exc):
                raise
            logger.info("chunk (%d, %d] collides with existing rows: upserting it", low, high)
    await tgt.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} ON COMMIT DELETE ROWS AS"
        f" SELECT {', '.join(legacy.DOCUMENT_COLUMNS)} FROM documents WITH NO DATA"
    )
    n, sent = await _hashed_pipe(ctx, src, query, args, tgt, STAGE_TABLE)
    await tgt.execute(_UPSERT_FROM_STAGE)
    # NOT IN is a hashed sub-plan only while the staged keys fit in work_mem (x
    # hash_mem_multiplier); above it (~40,000 keys at the default 4 MB, a large --chunk-rows)
    # PostgreSQL rescans them for every row. For this chunk's transaction only.
    await tgt.execute("SET LOCAL work_mem = '256MB'")
    status = await tgt.execute(_DELETE_RANGE_NOT_STAGED, ctx.doc_type, low, high)
    return Copied(n, sent, int(status.split()[-1]))


async def _hashed_pipe(
    ctx: StageContext,
    src: asyncpg.Connection,
    query: str,
    args: tuple[object, ...],
    tgt: asyncpg.Connection,
    table: str,
) -> tuple[int, bytes]:
    """Pipe ``query``'s rows into ``table``, hashing the stream as it passes; returns the rows
    and the stream's digest (in ``ctx.fold_embeddings``' form)."""
    sent = sent_digest(ctx.fold_embeddings)
    n = await pipe(
        src,
        query,
        args,
        tgt,
        table,
        legacy.DOCUMENT_COLUMNS,
        on_bytes=ctx.count_bytes,
        digest=sent,
        timeout=LONG_TIMEOUT,
    )
    return n, sent.digest()


# (legacy connection in a transaction importing the copy's snapshot, target connection)
Stream = tuple[asyncpg.Connection, asyncpg.Connection]
OpenStream = Callable[[str], contextlib.AbstractAsyncContextManager[Stream]]
_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")


async def copy_documents(
    ctx: StageContext,
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    report: MigrationReport,
    verifier: StreamVerifier | None = None,
    open_stream: OpenStream | None = None,
) -> None:
    """Every chunk of ``doc_embeddings`` in the caller's legacy snapshot, each committed with
    its checkpoint; chunks an earlier run committed and that did not change are skipped.

    With ``open_stream`` and ``ctx.copy_streams`` > 1, chunks are copied by that many
    streams at once: ``open_stream(snapshot_id)`` yields another legacy connection whose
    transaction imports this snapshot (``SET TRANSACTION SNAPSHOT``) and another target
    connection. Each chunk is still one target transaction with its checkpoint, so a resume
    sees committed chunks whatever the order; a stream that cannot be opened is done without.
    """
    earlier = await checkpoints.load(tgt, ctx.run_id)
    chunks = await plan_chunks(src, ctx.chunk_rows, earlier)
    done = await checkpoints.prune(tgt, ctx.run_id, [low for low, _, _ in chunks], earlier)
    done = await checkpoints.still_held(tgt, ctx.doc_type, done)
    existing = await tgt.fetchval(
        "SELECT count(*) FROM documents WHERE doc_type = $1", ctx.doc_type
    )
    # Straight COPY is safe while the target holds nothing but already-checkpointed rows
    # (the legacy key (crate_name, doc_path) is unique, so chunks never collide), and only
    # for a chunk no checkpoint overlaps: a committed chunk that changed since may have
    # rows whose keys the legacy range no longer has (renamed), which only staging deletes.
    direct = existing == sum(c.rows for c in done.values())
    ctx.copied_into_empty = existing == 0
    total_rows = sum(rows for _, _, rows in chunks)
    if verifier is not None:
        verifier.total_rows = total_rows
    progress = {"copied": 0}
    pending: list[tuple[int, int, int]] = []
    for low, high, rows in chunks:
        previous = done.get(low)
        if (
            previous is not None
            and previous.last_key == high
            and previous.rows == rows
            # a range whose rows were all deleted has no stamp (recorded as "")
            and previous.stamp == (await src.fetchval(legacy.CHUNK_VERSION, low, high) or "")
        ):
            report.skipped_chunks += 1
            progress["copied"] += rows
            if verifier is not None:
                verifier.total_rows -= rows  # nothing of it streams: validation re-reads it
            ctx.report("documents", progress["copied"], total_rows)
        else:
            pending.append((low, high, rows))

    failures: list[BaseException] = []

    async def stream(s: asyncpg.Connection, t: asyncpg.Connection) -> None:
        # After a failure elsewhere the other streams finish the chunk they are copying and
        # stop: cancelling a COPY half-way can leave an asyncpg connection unusable.
        try:
            while pending and not failures:
                low, high, rows = pending.pop(0)
                straight = direct and not _overlaps(done.values(), low, high)
                n = await _copy_chunk(ctx, s, t, low, high, rows, straight, verifier)
                report.copied_documents += n
                report.copied_chunks += 1
                progress["copied"] += rows
                ctx.report("documents", progress["copied"], total_rows)
        except Exception as exc:
            failures.append(exc)

    async def another(snapshot: str) -> None:
        # opens while the first stream already copies (a connection, codecs: ~10 ms)
        # A failure is collected, never raised: gather() would return at once while the
        # first stream still copies on the run's own connections.
        assert open_stream is not None
        opened = False
        try:
            async with open_stream(snapshot) as (s, t):
                opened = True
                await stream(s, t)  # never raises: failures are collected
        except (DocstoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            if opened:  # leaving it (a lost connection's rollback) failed
                failures.append(exc)
            else:
                logger.info(
                    "a copy stream fewer: it could not open (%s)", describe(exc, ctx.secrets)
                )
        except Exception as exc:
            failures.append(exc)

    wanted = min(ctx.copy_streams, len(pending)) - 1
    snapshot = await _export_snapshot(src) if open_stream is not None and wanted > 0 else None
    more = [another(snapshot) for _ in range(wanted)] if snapshot is not None else []
    await asyncio.gather(stream(src, tgt), *more)
    if failures:
        raise failures[0]


def _overlaps(done: Iterable[checkpoints.Checkpoint], low: int, high: int) -> bool:
    """Whether a checkpoint's range overlaps the chunk ``(low, high]``."""
    return any(c.first_key < high and c.last_key > low for c in done)


async def _export_snapshot(src: asyncpg.Connection) -> str | None:
    """The caller's legacy snapshot, for more streams to import; None if it can't be shared."""
    try:
        snapshot = await src.fetchval("SELECT pg_export_snapshot()")
    except asyncpg.PostgresError as exc:  # a standby, say: one stream
        logger.info("one copy stream: cannot export the legacy snapshot (%s)", describe(exc))
        return None
    return str(snapshot) if _SNAPSHOT_ID.match(str(snapshot)) else None


async def _copy_chunk(
    ctx: StageContext,
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    low: int,
    high: int,
    rows: int,
    direct: bool,
    verifier: StreamVerifier | None,
) -> int:
    """One chunk in one target transaction with its checkpoint; handed to the verifier once
    committed."""
    try:
        async with transaction(tgt):
            n, sent, _ = await copy_range(ctx, src, tgt, low, high, direct=direct)
            if n != rows:
                raise MigrationError(
                    f"chunk ({low}, {high}] copied {n} rows, the snapshot has {rows}"
                )
            facts = await src.fetchrow(legacy.CHUNK_FACTS, low, high)
            assert facts is not None
            await checkpoints.record(tgt, ctx.run_id, low, high, rows, facts["stamp"])
    except keys.KeyTooLong as exc:  # rolled back: which of its long keys the index refuses
        raise await keys.proven(tgt, ctx.doc_type, exc) from exc.__cause__
    if verifier is not None:
        verifier.submit(
            # a kept range whose rows were all deleted has none (array_agg of none is NULL)
            StreamedRange(low, high, rows, facts["stamp"] or "", sent, list(facts["ids"] or ()))
        )
    return n


async def copy(
    ctx: StageContext,
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    report: MigrationReport,
    verifier: StreamVerifier | None = None,
    open_stream: OpenStream | None = None,
) -> LegacyState:
    """The copy stage: sources, documents, population jobs from one legacy snapshot; returns
    that snapshot's :class:`LegacyState` (the delta pass compares against it). Fills the
    report's counts and ``timings`` (sources, documents, population_jobs)."""
    async with transaction(src, isolation="repeatable_read", readonly=True):
        t0 = now()
        snapshot = await state.read_legacy_state(src)
        report.sources = len(snapshot.sources)
        async with transaction(tgt):
            await state.sync_sources(ctx.doc_type, snapshot, tgt, delete=False)
        report.timings["sources"] = now() - t0
        t0 = now()
        await copy_documents(ctx, src, tgt, report, verifier, open_stream)
        report.timings["documents"] = now() - t0
        t0 = now()
        report.population_jobs = len(snapshot.jobs)
        async with transaction(tgt):
            await state.sync_jobs(ctx.doc_type, snapshot, tgt, delete=True)
            if report.skipped_chunks:
                # Chunks skipped as unchanged carry the crate version of an earlier run:
                # rewrite it wherever it is not the crate's version now. All sources, found by
                # one aggregate: an earlier run killed after its source sync already wrote a
                # changed crates.version into the config, so this run's stale names miss it.
                report.refreshed_documents = await state.sync_versions(ctx.doc_type, snapshot, tgt)
        report.timings["population_jobs"] = now() - t0
    return snapshot


async def count_per_source(
    ctx: StageContext, tgt: asyncpg.Connection | Store, report: MigrationReport
) -> None:
    """The report's per-source counts of migrated documents (a scan of the target's
    documents: the Migrator runs it beside validation, on a pooled connection)."""
    for r in await tgt.fetch(
        "SELECT source_name, count(*) AS n FROM documents WHERE doc_type = $1"
        " AND metadata->>'migrated_from' = $2 GROUP BY 1 ORDER BY 1",
        ctx.doc_type,
        legacy.MIGRATED_FROM,
    ):
        report.per_source[r["source_name"]] = r["n"]


async def warn_wrong_dimension(
    ctx: StageContext, src: asyncpg.Connection, report: MigrationReport
) -> None:
    """A warning naming (up to 50) documents copied without their wrong-dimension embedding."""
    if report.preflight.wrong_dimension:
        dim = report.preflight.target_embedding_dim
        rows = await src.fetch(
            "SELECT id, crate_name, doc_path FROM doc_embeddings WHERE"
            f" {legacy.dims_sql('embedding', dim, legacy.sizes_vectors(src))} <> $1"
            " ORDER BY id LIMIT 50",
            dim,
        )
        report.warnings.append(
            "documents copied without their wrong-dimension embedding: "
            + ", ".join(f"{r['crate_name']}/{r['doc_path']}" for r in rows)
        )


async def repair(
    ctx: StageContext, src: asyncpg.Connection, tgt: asyncpg.Connection, validation: Validation
) -> int:
    """Copy again what ``validation`` found different: the id ranges of differing documents
    (one snapshot each, through staging), then sources, jobs and crate versions from one fresh
    snapshot. Returns the documents rewritten. The caller holds the migration lock."""
    chunks = sorted({m.legacy_id // ctx.chunk_rows for m in validation.mismatches})
    for c in chunks:
        # doc_embeddings.id is an int4: the bounds (bound as int4) end at its maximum
        first, last = c * ctx.chunk_rows - 1, (c + 1) * ctx.chunk_rows - 1
        low, high = min(first, MAX_LEGACY_ID), min(last, MAX_LEGACY_ID)
        async with (
            transaction(src, isolation="repeatable_read", readonly=True),
            transaction(tgt),
        ):
            await copy_range(ctx, src, tgt, low, high, direct=False)
    async with transaction(src, isolation="repeatable_read", readonly=True):
        snapshot = await state.read_legacy_state(src)
    async with transaction(tgt):
        await state.sync_sources(ctx.doc_type, snapshot, tgt, delete=True)
        await state.sync_jobs(ctx.doc_type, snapshot, tgt, delete=True)
        versions = await state.sync_versions(ctx.doc_type, snapshot, tgt)
    return len(validation.mismatches) + versions
