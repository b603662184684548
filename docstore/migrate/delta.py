"""Stage 3, the delta pass: what the legacy application changed while the copy ran, each part
read again in a fresh snapshot.

* documents: every checkpoint's ``(id, xmin)`` stamp is read again; ranges whose stamp moved
  are re-copied through staging (deletions removed, renames re-keyed), rows beyond the last
  checkpoint are new, rows deleted from the end are removed from the target. Each re-copy is
  hashed as it streams and handed to the verifier like the copy's chunks;
* sources (``crates``, ``crate_configs``), population jobs and the documents'
  ``metadata.crate_version``: re-read and rewritten where the target differs.
"""

from __future__ import annotations

import asyncpg

from docstore.migrate import checkpoints, legacy, state
from docstore.migrate.compare import LegacyState
from docstore.migrate.context import StageContext
from docstore.migrate.copy import copy_range
from docstore.migrate.pipe import transaction
from docstore.migrate.report import MigrationReport
from docstore.migrate.verify import StreamedRange, StreamVerifier


async def delta_documents(
    ctx: StageContext,
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    verifier: StreamVerifier | None = None,
) -> int:
    """Re-copy what the legacy database changed since each range was copied; returns the
    documents re-copied or deleted."""
    ranges = []
    done = await checkpoints.load(tgt, ctx.run_id)
    for c in done:
        if c.stamp != (await src.fetchval(legacy.CHUNK_VERSION, c.first_key, c.last_key) or ""):
            ranges.append((c.first_key, c.last_key))
    last = done[-1].last_key if done else 0
    newest = await src.fetchval("SELECT coalesce(max(id), 0) FROM doc_embeddings")
    if newest > last:
        ranges.append((last, newest))
    # Rows deleted from the end of the legacy table are beyond every range. A copy into an
    # empty target wrote no legacy id above its last range: then only a shrunk table leaves
    # any (the statement scans every document: ~13 ms for 4,133 x 3,072).
    changed = 0
    if newest < last or not ctx.copied_into_empty:
        status = await tgt.execute(
            f"DELETE FROM documents WHERE {legacy.MIGRATED_ROWS} AND {legacy.LEGACY_KEY} > $2",
            ctx.doc_type,
            newest,
        )
        if newest < last:  # deleted during the copy (else: left by an earlier run)
            changed += int(status.split()[-1])
    for low, high in ranges:
        # one snapshot per range: the rows copied, their count and their stamp agree
        async with (
            transaction(src, isolation="repeatable_read", readonly=True),
            transaction(tgt),
        ):
            n, sent, deleted = await copy_range(ctx, src, tgt, low, high, direct=False)
            facts = await src.fetchrow(legacy.CHUNK_FACTS, low, high)
            assert facts is not None
            await checkpoints.record(tgt, ctx.run_id, low, high, facts["rows"], facts["stamp"])
        changed += n + deleted
        if verifier is not None:
            verifier.total_rows += n
            # a range every row of which was deleted has no ids (array_agg of none is NULL)
            ids = list(facts["ids"] or ())
            verifier.submit(
                StreamedRange(low, high, facts["rows"], facts["stamp"] or "", sent, ids)
            )
    return changed


async def delta_small_tables(
    ctx: StageContext,
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    before: LegacyState,
    report: MigrationReport,
    *,
    recopied: bool,
) -> list[str]:
    """The delta pass for everything but document rows: sources (crates, crate_configs),
    population jobs and the documents' ``metadata.crate_version``, re-read in one fresh
    snapshot and written where the target differs; migrated sources and jobs the legacy
    database no longer has are removed. Counts into ``report.delta_*`` what the legacy
    database changed since the copy's snapshot (``before``); returns what changed.

    Crate versions: the documents of crates whose version changed since ``before`` are
    rewritten (indexed updates); only when document ranges were ``recopied`` (each in its
    own snapshot) are all sources checked, with one aggregate over the documents."""
    async with transaction(src, isolation="repeatable_read", readonly=True):
        current = await state.read_legacy_state(src)
    moved = None
    if not recopied:
        moved = [
            name
            for name, source in current.sources.items()
            if (old := before.sources.get(name)) is None or old.version != source.version
        ]
    async with transaction(tgt):
        await state.sync_sources(ctx.doc_type, current, tgt, delete=True)
        await state.sync_jobs(ctx.doc_type, current, tgt, delete=True)
        report.delta_documents += await state.sync_versions(ctx.doc_type, current, tgt, moved)
    changed = []
    for name in sorted(set(before.sources) | set(current.sources)):
        a, b = before.sources.get(name), current.sources.get(name)
        if a == b:
            continue
        report.delta_sources += 1
        if a is None or b is None:
            changed.append(f"source {name} {'added' if a is None else 'removed'}")
            continue
        fields = [
            f"config.{k}" for k in legacy.SOURCE_CONFIG_KEYS if a.config.get(k) != b.config.get(k)
        ] + [
            k
            for k in ("enabled", "last_checked", "last_populated")
            if getattr(a, k) != getattr(b, k)
        ]
        changed.append(f"source {name}: {', '.join(fields)}")
    for key in sorted(set(before.jobs) | set(current.jobs)):
        if before.jobs.get(key) != current.jobs.get(key):
            report.delta_population_jobs += 1
            changed.append(f"population job {key}")
    return changed


async def delta(
    ctx: StageContext,
    src: asyncpg.Connection,
    tgt: asyncpg.Connection,
    before: LegacyState,
    report: MigrationReport,
    verifier: StreamVerifier | None = None,
) -> None:
    """The delta stage: documents, then the small tables; warns in the report when the legacy
    database changed during the copy."""
    report.delta_documents = await delta_documents(ctx, src, tgt, verifier)
    changed = await delta_small_tables(
        ctx, src, tgt, before, report, recopied=bool(report.delta_documents)
    )
    if report.delta_documents or changed:
        report.warnings.append(
            "the legacy database changed during the copy: the delta pass copied again "
            f"{report.delta_documents} documents (the whole id ranges holding changed rows, a "
            f"range as often as it changed), {report.delta_sources} sources and "
            f"{report.delta_population_jobs} population jobs"
            + (f" ({'; '.join(changed[:10])})" if changed else "")
            + "; keep it read-only for the cutover"
        )
