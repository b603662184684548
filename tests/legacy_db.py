"""Build real legacy ``rust_docs_vectors`` databases (from the deployed schema) for tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import numpy as np

from docstore.codecs import register_codecs
from docstore.migrate.legacy import LEGACY_CORE_SCHEMA_SQL, LEGACY_SCHEMA_SQL

TRICKY = "quote ' double \" tab\t newline\n backslash \\ unicode ✓ é 漢字 emoji 🦀"


def legacy_rows(crates: int, docs: int, *, seed: int = 0) -> dict[str, list[tuple[Any, ...]]]:
    """Rows for a legacy database: ``crates`` crates (the last has no documents), ``docs``
    documents (every 7th without embedding, two of an orphan crate without a crates row)."""
    rng = np.random.default_rng(seed)
    base = datetime(2024, 1, 2, 3, 4, 5, 123456)
    crate_rows = [
        (i + 1, f"crate{i}", None if i == 1 else f"{i}.0.{i}", base + timedelta(days=i), 0, 0)
        for i in range(crates)
    ]
    doc_rows = []
    for j in range(docs):
        orphan = j >= docs - 2
        crate = j % (crates - 1)
        name = "orphan-crate" if orphan else f"crate{crate}"
        embedding = None if j % 7 == 3 else rng.normal(size=3072).astype(np.float32)
        doc_rows.append(
            (
                j + 1,
                None if orphan or j % 11 == 5 else crate + 1,
                name,
                f"{name}/module{j}/index.html",
                f"Document {j} of {name}. {TRICKY} " + "async runtime " * (j % 5),
                embedding,
                None if j % 13 == 0 else 10 + j,
                base + timedelta(minutes=j),
            )
        )
    configs = [
        (1, "crate0", "latest", "0.0.0", ["full"], 100, True),
        (2, "crate0", "1.x", "1.4.0", [], 50, False),
        (3, "crate2", "latest", None, ["rt", "macros"], 1000, True),
    ]
    jobs = [
        (1, 1, "completed", base, base + timedelta(hours=1), None, 42),
        (2, 1, "failed", base, base + timedelta(hours=2), "timeout after 3600s", 0),
        (3, 3, "running", base, None, None, 7),
    ]
    return {"crates": crate_rows, "docs": doc_rows, "configs": configs, "jobs": jobs}


async def build_legacy(
    url: str, *, crates: int = 6, docs: int = 120, optional_tables: bool = True, seed: int = 0
) -> dict[str, list[tuple[Any, ...]]]:
    """Create the legacy schema in the (empty) database at ``url`` and fill it."""
    rows = legacy_rows(crates, docs, seed=seed)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(LEGACY_SCHEMA_SQL if optional_tables else LEGACY_CORE_SCHEMA_SQL)
        await register_codecs(conn, "public")
        await conn.executemany(
            "INSERT INTO crates (id, name, version, last_updated, total_docs, total_tokens)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            rows["crates"],
        )
        await conn.executemany(
            "INSERT INTO doc_embeddings (id, crate_id, crate_name, doc_path, content, embedding,"
            " token_count, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            rows["docs"],
        )
        for table in ("crates", "doc_embeddings"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" (SELECT max(id) FROM {table}))"
            )
        if optional_tables:
            await conn.executemany(
                "INSERT INTO crate_configs (id, name, version_spec, current_version, features,"
                " expected_docs, enabled) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                rows["configs"],
            )
            await conn.executemany(
                "INSERT INTO population_jobs (id, crate_config_id, status, started_at,"
                " completed_at, error_message, docs_populated) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                rows["jobs"],
            )
            for table in ("crate_configs", "population_jobs"):
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" (SELECT max(id) FROM {table}))"
                )
    finally:
        await conn.close()
    return rows


def legacy_database(pg: Any, *, crates: int = 6, docs: int = 120) -> Iterator[str]:
    """The URL of a new legacy database on ``pg`` (a ``PgCluster``) filled by
    :func:`build_legacy`, dropped afterwards: a fixture's body (``yield from``)."""
    name = pg.create_database(prefix="legacy")
    url = pg.url(name)
    asyncio.run(build_legacy(url, crates=crates, docs=docs))
    yield url
    pg.drop_database(name)


async def legacy_execute(url: str, sql: str, *args: object) -> None:
    """Run ``sql`` on the legacy database at ``url`` (vector codecs registered)."""
    conn = await asyncpg.connect(url)
    try:
        await register_codecs(conn, "public")
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def legacy_fetch(url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on the legacy database at ``url``, as tuples."""
    conn = await asyncpg.connect(url)
    try:
        await register_codecs(conn, "public")
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


# Every legacy document and every migrated one, field by field in the same shape (content and
# embedding as md5s): equal lists mean nothing was lost, doubled or changed.
ROWS_LEGACY = """
SELECT id, crate_name, doc_path, md5(content), md5(embedding::text), token_count, created_at
  FROM doc_embeddings ORDER BY id
"""
ROWS_TARGET = """
SELECT (metadata->>'legacy_id')::int, source_name, doc_path, md5(content), md5(embedding::text),
       token_count, created_at
  FROM documents WHERE doc_type = 'rust' ORDER BY 1, id
"""
