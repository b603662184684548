"""Stage 1, preflight: read-only findings on the legacy database and the target before
anything is written (which legacy tables exist, sizes, embedding dimensions, NULL embeddings,
orphans; the target's pgvector, schema, existing rows and checkpoints).

``Preflight.blocking`` lists what stops a run. Nothing here detoasts an embedding stored
uncompressed with the target's dimension (:func:`~docstore.migrate.legacy.dims_sql`).
"""

from __future__ import annotations

import asyncio

import asyncpg

from docstore.migrate import checkpoints, legacy
from docstore.migrate.context import run_id
from docstore.migrate.report import Preflight, TableInfo
from docstore.store import Store


async def preflight(src: asyncpg.Connection, store: Store, doc_type: str) -> Preflight:
    """Preflight of migrating ``src`` (a legacy database) into ``store`` as ``doc_type``.

    The target's findings are read (through the store's pool) while the legacy database's
    are (on ``src``)."""
    target = asyncio.create_task(_target_findings(store, doc_type, await run_id(src, doc_type)))
    try:
        pre = await _source_findings(src, store.embedding_dim)
    finally:
        found = await target
    if not pre.blocking:
        for name, value in found.items():
            setattr(pre, name, value)
    if store.read_only:
        pre.blocking.append("the target store is read-only: unset READ_ONLY to migrate")
    return pre


async def _target_findings(store: Store, doc_type: str, run: str) -> dict[str, object]:
    health = await store.health()
    return {
        "target_pgvector": health.pgvector_version,
        "target_schema_version": health.schema_version,
        "target_existing_documents": await store.documents.count(doc_type=doc_type),
        "target_existing_sources": len(await store.sources.list(doc_type=doc_type)),
        "checkpoints": await checkpoints.count(store, run),
    }


async def _source_findings(src: asyncpg.Connection, dim: int) -> Preflight:
    present = {
        r["name"]: r for r in await src.fetch(legacy.TABLES_PRESENT, list(legacy.LEGACY_TABLES))
    }
    tables = []
    for name in legacy.LEGACY_TABLES:
        if name in present:
            rows = await src.fetchval(f"SELECT count(*) FROM {name}")
            tables.append(TableInfo(name=name, rows=rows, bytes=present[name]["bytes"]))
    pre = Preflight(tables=tables, target_embedding_dim=dim)
    missing = [t for t in legacy.REQUIRED_TABLES if t not in present]
    if missing:
        pre.blocking.append(
            f"the source has no {', '.join(missing)} table: is it the legacy "
            "rust_docs_vectors database? (check --source / LEGACY_DATABASE_URL)"
        )
        return pre
    facts = await src.fetchrow(legacy.DOCUMENT_FACTS)
    assert facts is not None
    pre.documents = facts["rows"]
    pre.null_embeddings = facts["null_embeddings"]
    pre.orphan_documents = facts["orphan_documents"]
    pre.max_id = facts["max_id"]
    cheap = legacy.sizes_vectors(src)
    pre.embedding_dims = {
        r["dims"]: r["rows"] for r in await src.fetch(legacy.embedding_dims_query(dim, cheap))
    }
    pre.wrong_dimension = sum(n for d, n in pre.embedding_dims.items() if d != dim)
    pre.orphan_crates = [r[0] for r in await src.fetch(legacy.ORPHAN_CRATE_NAMES)]
    pre.crates_without_documents = [r[0] for r in await src.fetch(legacy.CRATES_WITHOUT_DOCUMENTS)]
    if pre.wrong_dimension:
        pre.warnings.append(
            f"{pre.wrong_dimension} embeddings are not {dim}-dimensional "
            f"({pre.embedding_dims}); their documents are copied with a NULL embedding "
            "and listed in the report: re-embed them"
        )
    if pre.null_embeddings:
        pre.warnings.append(
            f"{pre.null_embeddings} documents have no embedding; they are copied and "
            "counted, and never match a vector search until embedded"
        )
    if pre.orphan_documents:
        pre.warnings.append(
            f"{pre.orphan_documents} documents belong to crates without a crates row "
            f"({', '.join(pre.orphan_crates[:5])}); each still gets a source"
        )
    return pre
