"""The methods ``bench/migrate.py`` compares with ``Migrator.run()``, and emptying their targets.

* (a) :func:`plan_scripts` — the seed plan's own CSV export and ``migration.sql`` into the
  plan's schema (:func:`plan_schema_sql`: the plan's Phase 1.1, its ``CREATE TABLE``s,
  indexes and triggers);
* (b) :func:`binary_pipe` — ``psql … COPY … TO STDOUT (FORMAT binary) | psql … COPY … FROM
  STDIN`` of the same rows into the plan's schema;
* (d) :func:`floor_of_migrator` — what any migrator into docstore's schema that proves what it
  stored must do at least: two such pipes, then every stored row read back.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import asyncpg
import common

from docstore.migrate.legacy import DOCUMENT_COLUMNS, documents_copy_query
from docstore.migrate.verify import READ_BACK, READ_BACK_FOLDED
from docstore.testing import plan

SHARED = common.shared_dir()
PLAN = SHARED / "seed" / "migration-plan.md"

PLAN_IMPORT_SQL = """
CREATE TEMP TABLE temp_crates (id integer, name varchar(255), version varchar(50),
    last_updated timestamp, total_docs integer, total_tokens integer);
CREATE TEMP TABLE temp_doc_embeddings (id integer, crate_id integer, crate_name varchar(255),
    doc_path text, content text, embedding vector(3072), token_count integer,
    created_at timestamp);
\\COPY temp_crates FROM 'crates.csv' WITH CSV HEADER
\\COPY temp_doc_embeddings FROM 'doc_embeddings.csv' WITH CSV HEADER
INSERT INTO documents (doc_type, source_name, doc_path, content, embedding, token_count, created_at)
SELECT 'rust' as doc_type, de.crate_name as source_name, de.doc_path, de.content, de.embedding,
       de.token_count, de.created_at
FROM temp_doc_embeddings de;
INSERT INTO document_sources (doc_type, source_name, config, enabled, last_populated)
SELECT DISTINCT 'rust' as doc_type, c.name as source_name,
    jsonb_build_object('version', c.version, 'total_docs', c.total_docs,
                       'total_tokens', c.total_tokens) as config,
    true as enabled, c.last_updated as last_populated
FROM temp_crates c;
"""

SOURCES_PIPE_QUERY = (
    "SELECT 'rust'::varchar(50), c.name::varchar(255), jsonb_build_object('version',"
    " c.version, 'total_docs', c.total_docs, 'total_tokens', c.total_tokens), true,"
    " c.last_updated::timestamptz FROM crates c"
)


def plan_schema_sql() -> str:
    """The ``sql`` block of the plan's Phase 1.1 (its CREATE TABLEs, indexes, triggers)."""
    return plan.plan_schema_sql(PLAN)


def sh(command: str, cwd: Path | None = None) -> None:
    subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], check=True, cwd=cwd, stdout=subprocess.DEVNULL
    )


async def execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def empty_docstore(url: str) -> None:
    await execute(
        url,
        "TRUNCATE documents, document_sources, docstore_migration_checkpoints,"
        " source_population_jobs RESTART IDENTITY CASCADE; CHECKPOINT",
    )


async def empty_plan(url: str) -> None:
    await execute(url, "TRUNCATE documents, document_sources RESTART IDENTITY; CHECKPOINT")


def plan_scripts(psql: str, src: str, plan: str, workdir: Path) -> None:
    for table in ("crates", "doc_embeddings"):
        export = f"\\COPY {table} TO '{workdir}/{table}.csv' WITH CSV HEADER"
        sh(f"{psql} {shlex.quote(src)} -c {shlex.quote(export)}")
    (workdir / "migration.sql").write_text(PLAN_IMPORT_SQL)
    sh(f"{psql} -v ON_ERROR_STOP=1 {shlex.quote(plan)} -f migration.sql", cwd=workdir)


def piped(psql: str, src: str, out: str, tgt: str, into: str) -> str:
    return f"{psql} {shlex.quote(src)} -c {shlex.quote(out)} | {psql} {shlex.quote(tgt)}" + (
        f" -c {shlex.quote(into)}"
    )


def documents_pipe(psql: str, src: str, tgt: str, low: int, high: int) -> str:
    """The shell pipe of the legacy rows ``(low, high]`` into ``documents`` on ``tgt``."""
    query = documents_copy_query("'rust'", 3072).replace("$2", str(low)).replace("$3", str(high))
    out = f"COPY ({' '.join(query.split())}) TO STDOUT (FORMAT binary)"
    into = f"COPY documents ({', '.join(DOCUMENT_COLUMNS)}) FROM STDIN (FORMAT binary)"
    return piped(psql, src, out, tgt, into)


def binary_pipe(psql: str, src: str, plan: str, max_id: int) -> None:
    sh(documents_pipe(psql, src, plan, 0, max_id))
    out = f"COPY ({SOURCES_PIPE_QUERY}) TO STDOUT (FORMAT binary)"
    into = (
        "COPY document_sources (doc_type, source_name, config, enabled, last_populated)"
        " FROM STDIN (FORMAT binary)"
    )
    sh(piped(psql, src, out, plan, into))


def at_once(commands: list[str]) -> None:
    """Run shell commands side by side; fail if any fails."""
    children = [
        subprocess.Popen(["bash", "-o", "pipefail", "-c", c], stdout=subprocess.DEVNULL)
        for c in commands
    ]
    if any(child.wait() for child in children):
        raise RuntimeError("a shell pipe failed")


def floor_of_migrator(psql: str, src: str, tgt: str, max_id: int, *, folded: bool) -> None:
    """(d): the least work any migrator into docstore's schema that proves what it stored
    must do — the rows piped in two streams (as ``Migrator.run()`` copies them), then every
    stored row read back in two streams (``verify.READ_BACK``'s columns, or with ``folded``
    ``READ_BACK_FOLDED``'s: each embedding's CRC-32C, as ``Migrator.run()`` reads back where
    the target computes it) into /dev/null: no hashing, no preflight, sources, delta pass,
    stamps, counts, jobs or parity."""
    half = max_id // 2
    at_once([documents_pipe(psql, src, tgt, 0, half), documents_pipe(psql, src, tgt, half, max_id)])
    back = (
        (READ_BACK_FOLDED if folded else READ_BACK)
        .replace("$1", "'rust'")
        .replace(
            "metadata->>'legacy_id' = ANY($2::text[])",
            "(metadata->>'legacy_id')::bigint > {} AND (metadata->>'legacy_id')::bigint <= {}",
        )
    )
    at_once(
        [
            f"{psql} {shlex.quote(tgt)} -c "
            + shlex.quote(f"COPY ({back.format(low, high)}) TO STDOUT (FORMAT binary)")
            + " > /dev/null"
            for low, high in ((0, half), (half, max_id))
        ]
    )
