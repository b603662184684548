"""What a run does once everything is copied (:meth:`~docstore.migrate.Migrator.run`): the
planner's statistics (ANALYZE, overlapping validation) and, with ``build_index``, the HNSW and
full-text indexes (built once after the bulk copy, not maintained row by row during it)."""

from __future__ import annotations

from collections.abc import Awaitable

from docstore.migrate import copy
from docstore.migrate.context import StageContext, now
from docstore.migrate.report import MigrationReport
from docstore.store import Store


async def build_indexes(
    store: Store,
    report: MigrationReport,
    readback: Awaitable[object] | None,
    analyzing: Awaitable[None],
) -> None:
    """``build_index``: the HNSW and full-text indexes, once the read-back's connections are
    back in the pool and ANALYZE is done (the build's planner wants the statistics)."""
    if readback is not None:
        await readback
    await analyzing
    t0 = now()
    await store.create_vector_index()
    await store.create_text_index()
    report.timings["index"] = now() - t0


async def analyze(store: Store, ctx: StageContext, report: MigrationReport, count: bool) -> None:
    """With ``count`` (no validation, whose scan counts them), the report's per-source counts;
    then ANALYZE (timed into the report)."""
    if count:
        await copy.count_per_source(ctx, store, report)
    t0 = now()
    # The planner's columns only: statistics on content and embedding (and the full-text
    # expression index) would detoast and re-tokenize every sampled document.
    await store.execute(
        "ANALYZE documents (doc_type, source_name, doc_path, metadata, token_count,"
        " created_at, updated_at)"
    )
    await store.execute("ANALYZE document_sources")
    report.timings["analyze"] = now() - t0
