"""``Migrator``: legacy ``rust_docs_vectors`` → docstore, over streaming binary COPY.

    report = await Migrator(legacy_url, target_url).run()

How :meth:`Migrator.run` works (``docs/migration.md`` has the column mapping):

1. **Preflight**, read-only on the source: which legacy tables exist, sizes, embedding
   dimensions, NULL embeddings, orphans; on the target: pgvector, schema (upgraded by
   connecting), existing rows and checkpoints. Blocking problems stop here.
2. A PostgreSQL **advisory lock** on the target: a second migrator fails at once.
3. The source is read on a read-only connection in **one REPEATABLE READ snapshot**.
   Sources (crates + crate_configs), then documents in **id-ranged chunks**: each chunk is
   piped ``COPY (SELECT … shaped like documents …) TO STDOUT (FORMAT binary)`` →
   ``COPY documents FROM STDIN (FORMAT binary)`` and committed *together with its
   checkpoint row*. A killed run resumes after its last committed chunk. Chunks go straight
   into ``documents`` while the target holds nothing of them; otherwise (re-runs, merges)
   through a temporary staging table and ``INSERT … ON CONFLICT DO UPDATE``.
4. Population jobs, when the legacy table exists. Sources and jobs are compared with the
   target and only what differs is written (the derived config keys replaced, keys others
   added kept); ``metadata.crate_version`` of documents in chunks skipped as unchanged is
   brought up to their crate's version.
5. **Delta pass**: everything is compared again in fresh snapshots: chunks the legacy
   application changed during the copy (``(id, xmin)`` stamps) are re-copied, deletions
   removed; sources, configs and jobs are re-read and rewritten where they differ; documents
   whose crate's version changed get the new ``metadata.crate_version``.
6. ``ANALYZE``, optionally the HNSW index, then :meth:`validate` (every document row, source,
   derived metadata and job); ranges with differing documents are copied again and
   validated once more.

:meth:`run` and :meth:`rollback` refuse a read-only target with
:class:`~docstore.ReadOnlyError` before writing anything anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from docstore.codecs import register_codecs
from docstore.config import redact_url, url_secrets
from docstore.errors import DocstoreError, MigrationError, ReadOnlyError
from docstore.failures import connect_problem, describe
from docstore.migrate import legacy
from docstore.migrate.compare import (
    LegacySource,
    LegacyState,
    diff_jobs,
    diff_sources,
    diff_versions,
)
from docstore.migrate.pipe import pipe
from docstore.migrate.report import (
    JobMismatch,
    MigrationReport,
    Mismatch,
    ParityCheck,
    Preflight,
    RollbackReport,
    SourceMismatch,
    TableInfo,
    Validation,
)
from docstore.models import naive_utc, parse_timestamp
from docstore.store import Store, connect

logger = logging.getLogger("docstore")

# "docstore migrate" in the advisory-lock key space.
MIGRATION_LOCK_KEY = 0x646F6373_6D696772 & 0x7FFFFFFFFFFFFFFF
DEFAULT_CHUNK_ROWS = 2000
# Whole-table statements (checksums, rollback's COPY) are not bound by DOCSTORE_COMMAND_TIMEOUT.
LONG_TIMEOUT = 24 * 3600.0
# progress(stage, rows done, rows total, bytes streamed so far)
Progress = Callable[[str, int, int, int], None]

_STAGE = "docstore_migrate_stage"
_RECORD_CHECKPOINT = """
INSERT INTO docstore_migration_checkpoints
       (run_id, table_name, first_key, last_key, rows, checksum)
VALUES ($1, 'doc_embeddings', $2, $3, $4, $5)
ON CONFLICT (run_id, table_name, first_key) DO UPDATE
   SET last_key = EXCLUDED.last_key, rows = EXCLUDED.rows, checksum = EXCLUDED.checksum,
       created_at = now()
"""
_UPSERT_FROM_STAGE = f"""
INSERT INTO documents ({", ".join(legacy.DOCUMENT_COLUMNS)})
SELECT {", ".join(legacy.DOCUMENT_COLUMNS)} FROM {_STAGE}
ON CONFLICT (doc_type, source_name, doc_path) DO UPDATE
   SET content = EXCLUDED.content, metadata = EXCLUDED.metadata,
       embedding = EXCLUDED.embedding, token_count = EXCLUDED.token_count,
       created_at = EXCLUDED.created_at
 WHERE (documents.content, documents.metadata, documents.embedding, documents.token_count,
        documents.created_at)
       IS DISTINCT FROM (EXCLUDED.content, EXCLUDED.metadata, EXCLUDED.embedding,
                         EXCLUDED.token_count, EXCLUDED.created_at)
"""
# Migrated rows of an id range that the legacy range no longer has (deleted, or renamed:
# the upsert from staging inserted the new key, this removes the old one).
_DELETE_RANGE_NOT_STAGED = f"""
DELETE FROM documents d
 WHERE d.doc_type = $1 AND d.metadata->>'migrated_from' = 'rust_docs_vectors'
   AND d.metadata->>'legacy_id' ~ '^[0-9]{{1,18}}$'
   AND (d.metadata->>'legacy_id')::bigint > $2 AND (d.metadata->>'legacy_id')::bigint <= $3
   AND NOT EXISTS (SELECT 1 FROM {_STAGE} s
                    WHERE s.source_name = d.source_name AND s.doc_path = d.doc_path)
"""

_UPSERT_SOURCE = """
INSERT INTO document_sources (doc_type, source_name, config, enabled, last_checked, last_populated)
VALUES ($1, $2, $3::jsonb, $4, $5, $6)
ON CONFLICT (doc_type, source_name) DO UPDATE
   SET config = (document_sources.config - $7::text[]) || EXCLUDED.config,
       enabled = EXCLUDED.enabled, last_checked = EXCLUDED.last_checked,
       last_populated = EXCLUDED.last_populated
"""
_TARGET_SOURCES = """
SELECT source_name, config, enabled, last_checked, last_populated
  FROM document_sources WHERE doc_type = $1
"""
_UPSERT_JOB = """
INSERT INTO source_population_jobs
       (source_id, doc_type, source_name, status, started_at, completed_at,
        error_message, docs_populated, created_at, legacy_id, metadata)
SELECT s.id, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb
  FROM (SELECT 1) one
  LEFT JOIN document_sources s ON s.doc_type = $1 AND s.source_name = $2
ON CONFLICT (doc_type, legacy_id) DO UPDATE
   SET source_id = EXCLUDED.source_id, source_name = EXCLUDED.source_name,
       status = EXCLUDED.status, started_at = EXCLUDED.started_at,
       completed_at = EXCLUDED.completed_at, error_message = EXCLUDED.error_message,
       docs_populated = EXCLUDED.docs_populated, created_at = EXCLUDED.created_at,
       metadata = source_population_jobs.metadata || EXCLUDED.metadata
"""
# source_id must be the id of the job's source (by name) on the target
_TARGET_JOBS = """
SELECT j.id, j.legacy_id, j.source_name, j.source_id, s.id AS linked_id, j.status,
       j.started_at, j.completed_at, j.error_message, j.docs_populated, j.created_at,
       j.metadata
  FROM source_population_jobs j
  LEFT JOIN document_sources s ON s.doc_type = j.doc_type AND s.source_name = j.source_name
 WHERE j.doc_type = $1
"""
_MIGRATED_DOCUMENT = (
    "doc_type = $1 AND metadata->>'migrated_from' = 'rust_docs_vectors' AND metadata ? 'legacy_id'"
)
# Per source: migrated documents, those without embedding, and the distinct
# metadata.crate_version among them (NULL when absent): one scan, no detoasting.
_TARGET_PER_SOURCE = f"""
SELECT source_name, count(*) AS documents,
       count(*) FILTER (WHERE embedding IS NULL) AS null_embeddings,
       array_agg(DISTINCT metadata->>'crate_version') AS versions
  FROM documents WHERE {_MIGRATED_DOCUMENT} GROUP BY 1
"""
_SET_CRATE_VERSION = f"""
UPDATE documents
   SET metadata = CASE WHEN $3::text IS NULL THEN metadata - 'crate_version'
                       ELSE metadata || jsonb_build_object('crate_version', $3::text) END
 WHERE {_MIGRATED_DOCUMENT} AND source_name = $2
   AND (metadata->>'crate_version') IS DISTINCT FROM $3::text
"""


def _now() -> float:
    return time.perf_counter()


class Migrator:
    """Copies a legacy ``rust_docs_vectors`` database into docstore; see the module docs.

    ``source`` and ``target`` are URLs or open :class:`~docstore.Store` objects (a Store
    given as source is only read through its pool's connections). ``doc_type`` is what the
    legacy documents become. ``restart`` forgets earlier checkpoints (rows are then upserted,
    never doubled). ``build_index`` builds the HNSW and full-text indexes after the copy.
    ``validate`` runs :meth:`validate` at the end of :meth:`run`. ``report_path`` saves the
    report as JSON. ``progress(stage, done, total, nbytes)`` is called after every committed
    chunk.
    """

    def __init__(
        self,
        source: str | Store,
        target: str | Store,
        *,
        doc_type: str = "rust",
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        restart: bool = False,
        build_index: bool = False,
        validate: bool = True,
        parity_queries: int = 5,
        report_path: str | Path | None = None,
        progress: Progress | None = None,
    ) -> None:
        if chunk_rows < 1:
            raise MigrationError("chunk_rows must be at least 1")
        if not 1 <= len(doc_type) <= 50 or "\x00" in doc_type:
            raise MigrationError("doc_type must be 1 to 50 characters without NUL bytes")
        self._source_arg = source
        self._target_arg = target
        self.doc_type = doc_type
        self.chunk_rows = chunk_rows
        self.restart = restart
        self.build_index = build_index
        self.run_validation = validate
        self.parity_queries = parity_queries
        self.report_path = Path(report_path) if report_path else None
        self._progress = progress
        self._bytes = 0
        self._target: Store | None = None
        self._owns_target = False
        self._secrets = url_secrets(*(a for a in (source, target) if isinstance(a, str)))

    def __repr__(self) -> str:
        def show(x: str | Store) -> str:
            return redact_url(x) if isinstance(x, str) else repr(x)

        return f"<Migrator {show(self._source_arg)} -> {show(self._target_arg)} {self.doc_type}>"

    # -- connections -------------------------------------------------------------------------
    async def _target_store(self) -> Store:
        if self._target is None:
            if isinstance(self._target_arg, Store):
                self._target = self._target_arg
            else:
                self._target = await connect(self._target_arg)
                self._owns_target = True
        return self._target

    @contextlib.asynccontextmanager
    async def _source(self, *, writable: bool = False) -> Any:
        """A connection to the legacy database; read-only unless ``writable`` (rollback).

        The session setting is explicit both ways: a rollback still writes into a legacy
        database frozen with ``ALTER DATABASE … SET default_transaction_read_only = on``
        (docs/cutover.md), which keeps the legacy application out while it runs.
        """
        settings = {
            "application_name": "docstore-migrate",
            "default_transaction_read_only": "off" if writable else "on",
        }
        if isinstance(self._source_arg, Store):
            async with self._source_arg.acquire() as pooled:
                if not writable:
                    await pooled.execute("SET default_transaction_read_only = on")
                yield pooled
            return
        try:
            conn = await asyncpg.connect(self._source_arg, server_settings=settings)
        except DocstoreError:
            raise
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            problem = connect_problem(exc, self._secrets) or describe(exc, self._secrets)
            raise MigrationError(f"cannot reach the legacy database: {problem}") from None
        try:
            schema = await conn.fetchval(
                "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
                " WHERE t.typname = 'vector' LIMIT 1"
            )
            if schema:
                await register_codecs(conn, schema)
            yield conn
        finally:
            await conn.close()

    async def close(self) -> None:
        """Close the target store if this Migrator opened it."""
        if self._owns_target and self._target is not None:
            await self._target.close()
            self._target = None

    async def __aenter__(self) -> Migrator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _report_progress(self, stage: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(stage, done, total, self._bytes)

    def _count_bytes(self, n: int) -> None:
        self._bytes += n

    async def _ensure_writable(self, store: Store, action: str) -> None:
        """Raise :class:`ReadOnlyError` unless the target accepts writes (checked before
        anything is written anywhere)."""
        if store.read_only:
            raise ReadOnlyError(
                f"the target store is read-only: unset READ_ONLY to {action} (in the shell that "
                "runs docstore, not the app's); nothing was written"
            )
        read_only = await store.fetchval(
            "SELECT current_setting('transaction_read_only') = 'on' OR pg_is_in_recovery()"
        )
        if read_only:
            raise ReadOnlyError(
                f"the target database is read-only (a standby, or default_transaction_read_only "
                f"is on): cannot {action}; nothing was written"
            )

    # -- preflight ---------------------------------------------------------------------------
    async def _run_id(self, src: asyncpg.Connection) -> str:
        where = await src.fetchval(
            "SELECT current_database() || '@' || coalesce(inet_server_addr()::text, 'socket')"
            " || ':' || coalesce(inet_server_port()::text, '')"
        )
        return f"{self.doc_type}:{where}"

    async def preflight(self) -> Preflight:
        """Read-only checks of source and target; ``.blocking`` lists what stops a run."""
        store = await self._target_store()
        async with self._source() as src:
            return await self._preflight(src, store)

    async def _preflight(self, src: asyncpg.Connection, store: Store) -> Preflight:
        present = {
            r["name"]: r for r in await src.fetch(legacy.TABLES_PRESENT, list(legacy.LEGACY_TABLES))
        }
        tables = []
        for name in legacy.LEGACY_TABLES:
            if name in present:
                rows = await src.fetchval(f"SELECT count(*) FROM {name}")
                tables.append(TableInfo(name=name, rows=rows, bytes=present[name]["bytes"]))
        pre = Preflight(tables=tables, target_embedding_dim=store.embedding_dim)
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
        pre.embedding_dims = {r["dims"]: r["rows"] for r in await src.fetch(legacy.EMBEDDING_DIMS)}
        pre.wrong_dimension = sum(
            n for d, n in pre.embedding_dims.items() if d != store.embedding_dim
        )
        pre.orphan_crates = [r[0] for r in await src.fetch(legacy.ORPHAN_CRATE_NAMES)]
        pre.crates_without_documents = [
            r[0] for r in await src.fetch(legacy.CRATES_WITHOUT_DOCUMENTS)
        ]
        if pre.wrong_dimension:
            pre.warnings.append(
                f"{pre.wrong_dimension} embeddings are not {store.embedding_dim}-dimensional "
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
        health = await store.health()
        pre.target_pgvector = health.pgvector_version
        pre.target_schema_version = health.schema_version
        pre.target_existing_documents = await store.documents.count(doc_type=self.doc_type)
        pre.target_existing_sources = len(await store.sources.list(doc_type=self.doc_type))
        run_id = await self._run_id(src)
        pre.checkpoints = int(
            await store.fetchval(
                "SELECT count(*) FROM docstore_migration_checkpoints WHERE run_id = $1", run_id
            )
        )
        if store.read_only:
            pre.blocking.append("the target store is read-only: unset READ_ONLY to migrate")
        return pre

    # -- run ---------------------------------------------------------------------------------
    async def run(self, *, dry_run: bool = False) -> MigrationReport:
        """Preflight, copy, delta pass, ANALYZE, (index), validate; see the module docs.

        ``dry_run`` stops after preflight and writes nothing. Raises
        :class:`~docstore.ReadOnlyError` before reading or writing anything when the target is
        read-only (``READ_ONLY``, ``connect(read_only=True)``, a standby or a database with
        ``default_transaction_read_only``), :class:`MigrationError` on a blocking preflight
        problem or when another migrator holds the lock.

        With validation on, ``report.ok`` means the target equals the legacy database as of
        the validation's snapshot, taken at the end of the run: documents, sources and their
        configs, derived document metadata and population jobs.
        """
        started = _now()
        store = await self._target_store()
        if not dry_run:
            await self._ensure_writable(store, "migrate")
        async with self._source() as src:
            run_id = await self._run_id(src)
            pre = await self._preflight(src, store)
            report = MigrationReport(
                run_id=run_id, doc_type=self.doc_type, dry_run=dry_run, preflight=pre
            )
            report.warnings.extend(pre.warnings)
            report.timings["preflight"] = _now() - started
            if dry_run:
                return report
            if pre.blocking:
                raise MigrationError("cannot migrate: " + "; ".join(pre.blocking))
            async with store.acquire() as tgt:
                if not await tgt.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):
                    raise MigrationError(
                        "another docstore migrator is running against this target "
                        "(advisory lock held); wait for it or stop it first"
                    )
                try:
                    await self._copy_all(src, tgt, report)
                finally:
                    await tgt.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        t0 = _now()
        # The planner's columns only: statistics on content and embedding (and the full-text
        # expression index) would detoast and re-tokenize every sampled document.
        await store.execute(
            "ANALYZE documents (doc_type, source_name, doc_path, metadata, token_count,"
            " created_at, updated_at)"
        )
        await store.execute("ANALYZE document_sources")
        report.timings["analyze"] = _now() - t0
        if self.build_index:
            t0 = _now()
            await store.create_vector_index()
            await store.create_text_index()
            report.timings["index"] = _now() - t0
        if self.run_validation:
            report.validation = await self.validate()
            report.timings["validate"] = report.validation.seconds
            if _repairable(report.validation):
                # What the stamps and the delta pass can't see: rows edited in the target, or
                # legacy changes after the delta pass. Copy them again, then check again.
                t0 = _now()
                found = report.validation.problems()
                report.repaired_documents = await self._repair(report.validation)
                report.validation = await self.validate()
                report.timings["repair"] = _now() - t0
                report.warnings.append(
                    f"validation found {len(found)} differences from the legacy database after "
                    "the copy (edited in the target, or changed in the legacy database after the "
                    f"delta pass), copied again: {'; '.join(found[:10])}"
                    + (f"; and {len(found) - 10} more" if len(found) > 10 else "")
                )
        report.timings["total"] = _now() - started
        if self.report_path is not None:
            self.report_path.write_text(report.model_dump_json(indent=2))
        return report

    async def _copy_all(
        self, src: asyncpg.Connection, tgt: asyncpg.Connection, report: MigrationReport
    ) -> None:
        if self.restart:
            await tgt.execute(
                "DELETE FROM docstore_migration_checkpoints WHERE run_id = $1", report.run_id
            )
        async with src.transaction(isolation="repeatable_read", readonly=True):
            t0 = _now()
            state = await self._legacy_state(src)
            report.sources = len(state.sources)
            async with tgt.transaction():
                stale = await self._sync_sources(state, tgt, delete=False)
            report.timings["sources"] = _now() - t0
            t0 = _now()
            await self._copy_documents(src, tgt, report)
            report.timings["documents"] = _now() - t0
            t0 = _now()
            report.population_jobs = len(state.jobs)
            async with tgt.transaction():
                await self._sync_jobs(state, tgt, delete=True)
                if report.skipped_chunks:
                    # chunks skipped as unchanged carry the crate version of an earlier run:
                    # rewrite it where the crate's version changed since
                    report.refreshed_documents = await self._sync_versions(
                        state,
                        tgt,
                        [
                            d.source_name
                            for d in stale
                            if d.problem == "missing in target" or "config.version" in d.fields
                        ],
                    )
            report.timings["population_jobs"] = _now() - t0
        # Delta pass in fresh snapshots: what the legacy application changed meanwhile.
        t0 = _now()
        report.delta_documents = await self._delta(src, tgt, report.run_id)
        changed = await self._delta_small_tables(
            src, tgt, state, report, recopied=bool(report.delta_documents)
        )
        report.timings["delta"] = _now() - t0
        if report.delta_documents or changed:
            report.warnings.append(
                f"the legacy database changed during the copy: {report.delta_documents} "
                f"documents, {report.delta_sources} sources and {report.delta_population_jobs} "
                "population jobs were re-copied by the delta pass"
                + (f" ({'; '.join(changed[:10])})" if changed else "")
                + "; keep it read-only for the cutover"
            )
        for r in await tgt.fetch(
            "SELECT source_name, count(*) AS n FROM documents WHERE doc_type = $1"
            " AND metadata->>'migrated_from' = $2 GROUP BY 1 ORDER BY 1",
            self.doc_type,
            legacy.MIGRATED_FROM,
        ):
            report.per_source[r["source_name"]] = r["n"]
        if report.preflight.wrong_dimension:
            rows = await src.fetch(
                "SELECT id, crate_name, doc_path FROM doc_embeddings"
                " WHERE vector_dims(embedding) <> $1 ORDER BY id LIMIT 50",
                report.preflight.target_embedding_dim,
            )
            report.warnings.append(
                "documents copied without their wrong-dimension embedding: "
                + ", ".join(f"{r['crate_name']}/{r['doc_path']}" for r in rows)
            )

    # -- sources, population jobs, derived metadata -------------------------------------------
    async def _legacy_state(self, src: asyncpg.Connection) -> LegacyState:
        """What the legacy ``crates``, ``crate_configs`` and ``population_jobs`` give the
        target's sources, jobs and per-crate document metadata (read in the caller's
        snapshot; small tables)."""
        configs: dict[str, list[dict[str, Any]]] = {}
        optional = await src.fetchrow(
            "SELECT to_regclass('crate_configs') IS NOT NULL AS configs,"
            " to_regclass('population_jobs') IS NOT NULL AS jobs"
        )
        assert optional is not None
        has_configs = bool(optional["configs"])
        if has_configs:
            for r in await src.fetch(legacy.CONFIGS_QUERY):
                configs.setdefault(r["name"], []).append(_jsonable(dict(r)))
        sources: dict[str, LegacySource] = {}
        for r in await src.fetch(legacy.sources_query(has_configs)):
            config: dict[str, Any] = {"migrated_from": legacy.MIGRATED_FROM}
            if r["legacy_id"] is None:
                config["orphan"] = True  # documents without a crates row
            else:
                config.update(
                    orphan=False,
                    legacy_id=r["legacy_id"],
                    version=r["version"],
                    total_docs=r["total_docs"],
                    total_tokens=r["total_tokens"],
                    last_updated=_iso(r["last_updated"]),
                )
            enabled, last_checked = True, None
            mine = configs.get(r["source_name"])
            if mine:
                first = mine[0]
                config.update(
                    version_spec=first["version_spec"],
                    current_version=first["current_version"],
                    features=first["features"],
                    expected_docs=first["expected_docs"],
                    crate_configs=mine,
                )
                enabled = bool(first["enabled"]) if first["enabled"] is not None else True
                last_checked = first["last_checked"]
            sources[r["source_name"]] = LegacySource(
                config=json.loads(json.dumps(config)),  # exactly what jsonb gives back
                enabled=enabled,
                last_checked=parse_timestamp(last_checked),
                last_populated=_as_utc(r["last_updated"]),
                version=None if r["legacy_id"] is None else r["version"],
            )
        jobs: dict[int, dict[str, Any]] = {}
        if has_configs and optional["jobs"]:
            for r in await src.fetch(legacy.JOBS_QUERY):
                jobs[r["id"]] = {
                    "source_name": r["source_name"] or "",
                    "status": r["status"],
                    "started_at": r["started_at"],
                    "completed_at": r["completed_at"],
                    "error_message": r["error_message"],
                    "docs_populated": r["docs_populated"],
                    "created_at": r["created_at"],
                    "metadata": {
                        "crate_config_id": r["crate_config_id"],
                        "version_spec": r["version_spec"],
                    },
                }
        return LegacyState(sources=sources, jobs=jobs)

    async def _source_diffs(
        self, state: LegacyState, tgt: asyncpg.Connection
    ) -> tuple[list[SourceMismatch], dict[str, Any]]:
        """Sources whose target row differs from ``state`` (and the target rows by name)."""
        have = {r["source_name"]: r for r in await tgt.fetch(_TARGET_SOURCES, self.doc_type)}
        return diff_sources(state.sources, have), have

    async def _sync_sources(
        self, state: LegacyState, tgt: asyncpg.Connection, *, delete: bool
    ) -> list[SourceMismatch]:
        """Make the target's sources what ``state`` gives: rows that differ or are missing are
        written (the derived config keys replaced, other keys kept); with ``delete``, migrated
        sources the legacy database no longer has are removed once no document uses them.
        Returns the differences found (before the writes)."""
        diffs, _ = await self._source_diffs(state, tgt)
        rows = [
            (
                self.doc_type,
                d.source_name,
                json.dumps(state.sources[d.source_name].config),
                state.sources[d.source_name].enabled,
                state.sources[d.source_name].last_checked,
                state.sources[d.source_name].last_populated,
                list(legacy.SOURCE_CONFIG_KEYS),
            )
            for d in diffs
            if d.source_name in state.sources
        ]
        if rows:
            await tgt.executemany(_UPSERT_SOURCE, rows)
        extra = [d.source_name for d in diffs if d.source_name not in state.sources]
        if delete and extra:
            await tgt.execute(
                "DELETE FROM document_sources s WHERE s.doc_type = $1"
                " AND s.source_name = ANY($2::text[])"
                " AND NOT EXISTS (SELECT 1 FROM documents d WHERE d.doc_type = s.doc_type"
                "                 AND d.source_name = s.source_name)",
                self.doc_type,
                extra,
            )
        return diffs

    async def _job_diffs(self, state: LegacyState, tgt: asyncpg.Connection) -> list[JobMismatch]:
        return diff_jobs(state.jobs, await tgt.fetch(_TARGET_JOBS, self.doc_type))

    async def _sync_jobs(
        self, state: LegacyState, tgt: asyncpg.Connection, *, delete: bool
    ) -> list[JobMismatch]:
        """Make the target's migrated population jobs what ``state`` gives (``delete``: jobs
        whose legacy row is gone are removed; jobs written in docstore, without a legacy id,
        are never touched). Returns the differences found (before the writes)."""
        diffs = await self._job_diffs(state, tgt)
        rows = [
            (
                self.doc_type,
                job["source_name"],
                job["status"],
                job["started_at"],
                job["completed_at"],
                job["error_message"],
                job["docs_populated"],
                job["created_at"],
                d.legacy_id,
                json.dumps(job["metadata"]),
            )
            for d in diffs
            if d.legacy_id is not None and (job := state.jobs.get(d.legacy_id)) is not None
        ]
        if rows:
            await tgt.executemany(_UPSERT_JOB, rows)
        gone = [
            d.legacy_id for d in diffs if d.legacy_id is not None and d.legacy_id not in state.jobs
        ]
        if delete and gone:
            await tgt.execute(
                "DELETE FROM source_population_jobs WHERE doc_type = $1"
                " AND legacy_id = ANY($2::int[])",
                self.doc_type,
                gone,
            )
        return diffs

    async def _version_diffs(
        self, state: LegacyState, tgt: asyncpg.Connection
    ) -> tuple[list[SourceMismatch], dict[str, int], int]:
        """Sources whose migrated documents' ``metadata.crate_version`` is not their crate's
        version (one aggregate over the target), the target's per-source document counts and
        its migrated documents without embedding."""
        per_source = await tgt.fetch(_TARGET_PER_SOURCE, self.doc_type, timeout=LONG_TIMEOUT)
        counts = {r["source_name"]: r["documents"] for r in per_source}
        nulls = sum(r["null_embeddings"] for r in per_source)
        return diff_versions(state.sources, per_source), counts, nulls

    async def _sync_versions(
        self, state: LegacyState, tgt: asyncpg.Connection, names: Iterable[str] | None = None
    ) -> int:
        """Rewrite ``metadata.crate_version`` of migrated documents that don't carry their
        crate's version; returns how many documents were rewritten. ``names``: only these
        sources (an indexed update each, no scan); None: find them with one aggregate over
        the target's documents."""
        if names is None:
            diffs, _, _ = await self._version_diffs(state, tgt)
            names = [d.source_name for d in diffs]
        rewritten = 0
        for name in names:
            if name not in state.sources:
                continue
            status = await tgt.execute(
                _SET_CRATE_VERSION,
                self.doc_type,
                name,
                state.sources[name].version,
                timeout=LONG_TIMEOUT,
            )
            rewritten += int(status.split()[-1])
        return rewritten

    async def _chunks(self, src: asyncpg.Connection) -> list[tuple[int, int, int]]:
        """(exclusive low id, inclusive high id, rows) of every chunk, in the snapshot."""
        bounds = [r["id"] for r in await src.fetch(legacy.CHUNK_BOUNDARIES, self.chunk_rows)]
        chunks, low = [], 0
        total = await src.fetchval("SELECT count(*) FROM doc_embeddings")
        for i, high in enumerate(bounds):
            rows = self.chunk_rows if i < len(bounds) - 1 else total - self.chunk_rows * i
            chunks.append((low, high, rows))
            low = high
        return chunks

    async def _copy_documents(
        self, src: asyncpg.Connection, tgt: asyncpg.Connection, report: MigrationReport
    ) -> None:
        chunks = await self._chunks(src)
        # Checkpoints whose first key is no longer a chunk boundary (a deletion since the last
        # run moved every later boundary) cover ranges the current chunks copy anew. Kept,
        # their stale stamps would make the delta pass re-copy those ranges and report that
        # the legacy database changed during this run.
        await tgt.execute(
            "DELETE FROM docstore_migration_checkpoints WHERE run_id = $1"
            " AND table_name = 'doc_embeddings' AND NOT (first_key = ANY($2::bigint[]))",
            report.run_id,
            [low for low, _, _ in chunks],
        )
        done = {
            r["first_key"]: r
            for r in await tgt.fetch(
                "SELECT first_key, last_key, rows, checksum FROM docstore_migration_checkpoints"
                " WHERE run_id = $1 AND table_name = 'doc_embeddings'",
                report.run_id,
            )
        }
        existing = await tgt.fetchval(
            "SELECT count(*) FROM documents WHERE doc_type = $1", self.doc_type
        )
        # Straight COPY is safe while the target holds nothing but already-checkpointed rows.
        direct = existing == sum(r["rows"] for r in done.values())
        query = legacy.documents_copy_query("$1", report.preflight.target_embedding_dim)
        total_rows = sum(rows for _, _, rows in chunks)
        copied = 0
        for low, high, rows in chunks:
            previous = done.get(low)
            if (
                previous is not None
                and previous["last_key"] == high
                and previous["rows"] == rows
                and previous["checksum"] == await src.fetchval(legacy.CHUNK_VERSION, low, high)
            ):
                report.skipped_chunks += 1
                copied += rows
                self._report_progress("documents", copied, total_rows)
                continue
            async with tgt.transaction():
                n = await self._copy_chunk(src, tgt, query, low, high, direct)
                if n != rows:
                    raise MigrationError(
                        f"chunk ({low}, {high}] copied {n} rows, the snapshot has {rows}"
                    )
                checksum = await src.fetchval(legacy.CHUNK_VERSION, low, high)
                await tgt.execute(
                    _RECORD_CHECKPOINT,
                    report.run_id,
                    low,
                    high,
                    rows,
                    checksum or "",
                )
            report.copied_documents += n
            copied += rows
            self._report_progress("documents", copied, total_rows)

    async def _copy_chunk(
        self,
        src: asyncpg.Connection,
        tgt: asyncpg.Connection,
        query: str,
        low: int,
        high: int,
        direct: bool,
    ) -> int:
        args = (self.doc_type, low, high)
        if direct:
            try:
                async with tgt.transaction():  # a savepoint: fall back on a key collision
                    return await pipe(
                        src,
                        query,
                        args,
                        tgt,
                        "documents",
                        legacy.DOCUMENT_COLUMNS,
                        on_bytes=self._count_bytes,
                        timeout=LONG_TIMEOUT,
                    )
            except asyncpg.UniqueViolationError:
                logger.info("chunk (%d, %d] collides with existing rows: upserting it", low, high)
        await tgt.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS"
            f" SELECT {', '.join(legacy.DOCUMENT_COLUMNS)} FROM documents WITH NO DATA"
        )
        n = await pipe(
            src,
            query,
            args,
            tgt,
            _STAGE,
            legacy.DOCUMENT_COLUMNS,
            on_bytes=self._count_bytes,
            timeout=LONG_TIMEOUT,
        )
        await tgt.execute(_UPSERT_FROM_STAGE)
        await tgt.execute(_DELETE_RANGE_NOT_STAGED, self.doc_type, low, high)
        return n

    # -- delta & validation ------------------------------------------------------------------
    async def _checksums(
        self, src: asyncpg.Connection, tgt: asyncpg.Connection
    ) -> tuple[dict[int, tuple[int, str]], dict[int, tuple[int, str]]]:
        dim = (await self._target_store()).embedding_dim
        chunk = self.chunk_rows
        # Both sides at once: they are different servers (or at least different backends).
        async with asyncio.TaskGroup() as group:  # a failure cancels (and awaits) the other
            legacy_rows = group.create_task(
                src.fetch(
                    legacy.chunked_checksums_sql(legacy.legacy_digest_sql(dim), chunk),
                    timeout=LONG_TIMEOUT,
                )
            )
            target_rows = group.create_task(
                tgt.fetch(
                    legacy.chunked_checksums_sql(legacy.target_digest_sql(), chunk),
                    self.doc_type,
                    timeout=LONG_TIMEOUT,
                )
            )
        legacy_sums = {r["chunk"]: (r["rows"], r["checksum"]) for r in legacy_rows.result()}
        target_sums = {r["chunk"]: (r["rows"], r["checksum"]) for r in target_rows.result()}
        return legacy_sums, target_sums

    async def _delta(self, src: asyncpg.Connection, tgt: asyncpg.Connection, run_id: str) -> int:
        """Re-copy what the legacy database changed since each chunk was copied.

        Every checkpoint holds an md5 of its rows' ``(id, xmin)``: any insert, update or
        delete in its id range changes it, and reading it costs no detoasting. Rows beyond the
        last checkpoint are new. Changed ranges are upserted through staging and rows deleted
        from the legacy database are deleted from the target.
        """
        checkpoints = await tgt.fetch(
            "SELECT first_key, last_key, checksum FROM docstore_migration_checkpoints"
            " WHERE run_id = $1 AND table_name = 'doc_embeddings' ORDER BY first_key",
            run_id,
        )
        ranges = [
            (c["first_key"], c["last_key"])
            for c in checkpoints
            if c["checksum"]
            != await src.fetchval(legacy.CHUNK_VERSION, c["first_key"], c["last_key"])
        ]
        last = checkpoints[-1]["last_key"] if checkpoints else 0
        newest = await src.fetchval("SELECT coalesce(max(id), 0) FROM doc_embeddings")
        if newest > last:
            ranges.append((last, newest))
        # rows deleted from the end of the legacy table are beyond every range
        await tgt.execute(
            "DELETE FROM documents WHERE doc_type = $1"
            " AND metadata->>'migrated_from' = 'rust_docs_vectors'"
            " AND metadata->>'legacy_id' ~ '^[0-9]{1,18}$'"
            " AND (metadata->>'legacy_id')::bigint > $2",
            self.doc_type,
            newest,
        )
        recopied = 0
        query = legacy.documents_copy_query("$1", (await self._target_store()).embedding_dim)
        for low, high in ranges:
            # one snapshot per range: the rows copied, their count and their stamp agree
            async with (
                src.transaction(isolation="repeatable_read", readonly=True),
                tgt.transaction(),
            ):
                recopied += await self._copy_chunk(src, tgt, query, low, high, direct=False)
                rows = await src.fetchval(
                    "SELECT count(*) FROM doc_embeddings WHERE id > $1 AND id <= $2", low, high
                )
                await tgt.execute(
                    _RECORD_CHECKPOINT,
                    run_id,
                    low,
                    high,
                    rows,
                    await src.fetchval(legacy.CHUNK_VERSION, low, high) or "",
                )
        return recopied

    async def _repair(self, validation: Validation) -> int:
        """Copy again what ``validation`` found different, under the migration lock: the id
        ranges of differing documents (one snapshot each), then sources, jobs and crate
        versions from one fresh snapshot. Returns the documents rewritten."""
        store = await self._target_store()
        query = legacy.documents_copy_query("$1", store.embedding_dim)
        chunks = sorted({m.legacy_id // self.chunk_rows for m in validation.mismatches})
        async with self._source() as src, store.acquire() as tgt:
            if not await tgt.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):
                raise MigrationError(
                    "another docstore migrator is running against this target "
                    "(advisory lock held); wait for it or stop it first"
                )
            try:
                for c in chunks:
                    low, high = c * self.chunk_rows - 1, (c + 1) * self.chunk_rows - 1
                    async with (
                        src.transaction(isolation="repeatable_read", readonly=True),
                        tgt.transaction(),
                    ):
                        await self._copy_chunk(src, tgt, query, low, high, direct=False)
                async with src.transaction(isolation="repeatable_read", readonly=True):
                    state = await self._legacy_state(src)
                async with tgt.transaction():
                    await self._sync_sources(state, tgt, delete=True)
                    await self._sync_jobs(state, tgt, delete=True)
                    versions = await self._sync_versions(state, tgt)
            finally:
                await tgt.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        return len(validation.mismatches) + versions

    async def _delta_small_tables(
        self,
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
        async with src.transaction(isolation="repeatable_read", readonly=True):
            now = await self._legacy_state(src)
        moved = None
        if not recopied:
            moved = [
                name
                for name, source in now.sources.items()
                if (old := before.sources.get(name)) is None or old.version != source.version
            ]
        async with tgt.transaction():
            await self._sync_sources(now, tgt, delete=True)
            await self._sync_jobs(now, tgt, delete=True)
            report.delta_documents += await self._sync_versions(now, tgt, moved)
        changed = []
        for name in sorted(set(before.sources) | set(now.sources)):
            a, b = before.sources.get(name), now.sources.get(name)
            if a == b:
                continue
            report.delta_sources += 1
            if a is None or b is None:
                changed.append(f"source {name} {'added' if a is None else 'removed'}")
                continue
            fields = [
                f"config.{k}"
                for k in legacy.SOURCE_CONFIG_KEYS
                if a.config.get(k) != b.config.get(k)
            ] + [
                k
                for k in ("enabled", "last_checked", "last_populated")
                if getattr(a, k) != getattr(b, k)
            ]
            changed.append(f"source {name}: {', '.join(fields)}")
        for key in sorted(set(before.jobs) | set(now.jobs)):
            if before.jobs.get(key) != now.jobs.get(key):
                report.delta_population_jobs += 1
                changed.append(f"population job {key}")
        return changed

    async def validate(self) -> Validation:
        """Compare the target with the legacy database as it is now (one legacy snapshot):
        counts (total, per crate, NULL embeddings); every document row through chunked
        checksums (columns, embedding bytes, ``metadata.legacy_id``/``legacy_crate_id``/
        ``crate_name``) drilled down to the differing documents and fields; every source's
        derived config, ``enabled``/``last_checked``/``last_populated`` and its documents'
        ``metadata.crate_version`` (per source, one aggregate); every population job; and exact
        top-k search parity with timings. ``.ok`` is False on any mismatch;
        :meth:`Validation.problems` names each. Reads only: works on a read-only store."""
        started = _now()
        store = await self._target_store()
        async with self._source() as src, store.acquire() as tgt:
            present = {
                r["name"]
                for r in await src.fetch(legacy.TABLES_PRESENT, list(legacy.LEGACY_TABLES))
            }
            missing = [t for t in legacy.REQUIRED_TABLES if t not in present]
            if missing:
                raise MigrationError(
                    f"cannot validate: the source has no {', '.join(missing)} table: is it the "
                    "legacy rust_docs_vectors database? (check --source / LEGACY_DATABASE_URL)"
                )
            try:
                # one legacy snapshot: every check compares the target with the same moment
                async with src.transaction(isolation="repeatable_read", readonly=True):
                    return await self._validate(src, tgt, store, started)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise MigrationError(f"validation failed: {describe(exc, self._secrets)}") from exc

    async def _validate(
        self, src: asyncpg.Connection, tgt: asyncpg.Connection, store: Store, started: float
    ) -> Validation:
        dim = store.embedding_dim
        state = await self._legacy_state(src)
        legacy_counts = {r[0]: r[1] for r in await src.fetch(legacy.PER_CRATE_COUNTS)}
        # counts, NULL embeddings and metadata.crate_version per source: one scan
        version_diffs, target_counts, target_nulls = await self._version_diffs(state, tgt)
        per_source = {
            name: (legacy_counts.get(name, 0), target_counts.get(name, 0))
            for name in set(legacy_counts) | set(target_counts)
            if legacy_counts.get(name, 0) != target_counts.get(name, 0)
        }
        legacy_nulls = await src.fetchval(
            "SELECT count(*) FROM doc_embeddings"
            " WHERE embedding IS NULL OR vector_dims(embedding) <> $1",
            dim,
        )
        legacy_sums, target_sums = await self._checksums(src, tgt)
        bad = sorted(
            c
            for c in set(legacy_sums) | set(target_sums)
            if legacy_sums.get(c) != target_sums.get(c)
        )
        mismatches = []
        for c in bad:
            low, high = c * self.chunk_rows, (c + 1) * self.chunk_rows
            rows_l = {
                r["key"]: r
                for r in await src.fetch(
                    f"SELECT * FROM ({legacy.legacy_digest_sql(dim)}) r"
                    " WHERE key >= $1 AND key < $2",
                    low,
                    high,
                )
            }
            rows_t = {
                r["key"]: r
                for r in await tgt.fetch(
                    f"SELECT * FROM ({legacy.target_digest_sql()}) r WHERE key >= $2 AND key < $3",
                    self.doc_type,
                    low,
                    high,
                )
            }
            for key in sorted(set(rows_l) | set(rows_t)):
                a, b = rows_l.get(key), rows_t.get(key)
                if a is not None and b is not None and a["digest"] == b["digest"]:
                    continue
                row = a if a is not None else b
                assert row is not None
                problem = (
                    "missing in target"
                    if b is None
                    else "extra in target"
                    if a is None
                    else "differs"
                )
                mismatches.append(
                    Mismatch(
                        legacy_id=key,
                        source_name=row["source_name"],
                        doc_path=row["doc_path"],
                        problem=problem,
                        fields=legacy.digest_differences(a["digest"], b["digest"])
                        if a is not None and b is not None
                        else [],
                    )
                )
        source_diffs, target_sources = await self._source_diffs(state, tgt)
        legacy_names = set(legacy_counts) | {
            r[0] for r in await src.fetch("SELECT name FROM crates")
        }
        job_diffs = await self._job_diffs(state, tgt)
        jobs = (0, 0)
        if await src.fetchval("SELECT to_regclass('population_jobs') IS NOT NULL"):
            jobs = (
                await src.fetchval("SELECT count(*) FROM population_jobs"),
                await tgt.fetchval(
                    "SELECT count(*) FROM source_population_jobs WHERE doc_type = $1",
                    self.doc_type,
                ),
            )
        return Validation(
            legacy_documents=sum(legacy_counts.values()),
            target_documents=sum(target_counts.values()),
            per_source_mismatch=per_source,
            legacy_null_embeddings=legacy_nulls,
            target_null_embeddings=target_nulls,
            checksum_chunks=len(set(legacy_sums) | set(target_sums)),
            mismatched_chunks=len(bad),
            mismatches=mismatches,
            missing_sources=sorted(legacy_names - set(target_sources)),
            source_mismatches=source_diffs + version_diffs,
            population_jobs=jobs,
            job_mismatches=job_diffs,
            parity=await self._parity(src, store, dim),
            seconds=_now() - started,
        )

    async def _parity(self, src: asyncpg.Connection, store: Store, dim: int) -> list[ParityCheck]:
        """Exact top-5 per sampled crate: the legacy search_similar_docs query vs docstore."""
        if self.parity_queries < 1:
            return []
        samples = await src.fetch(
            """SELECT DISTINCT ON (crate_name) crate_name, embedding FROM doc_embeddings
                WHERE embedding IS NOT NULL AND vector_dims(embedding) = $1
                ORDER BY crate_name, id""",
            dim,
        )
        step = max(1, len(samples) // self.parity_queries)
        checks = []
        for sample in samples[::step][: self.parity_queries]:
            crate, q = sample["crate_name"], sample["embedding"]
            t0 = _now()
            # the legacy search_similar_docs query, over the rows that have an embedding
            # (legacy sorted NULL-embedding rows last; docstore never returns them)
            legacy_rows = await src.fetch(
                """SELECT d.doc_path FROM doc_embeddings d
                    WHERE d.crate_name = $2 AND vector_dims(d.embedding) = $3
                    ORDER BY d.embedding <=> $1::vector, d.id LIMIT 5""",
                q,
                crate,
                dim,
            )
            t1 = _now()
            hits = await store.search(
                q, doc_type=self.doc_type, source_name=crate, limit=5, exact=True
            )
            t2 = _now()
            checks.append(
                ParityCheck(
                    source_name=crate,
                    legacy_top=[r["doc_path"] for r in legacy_rows],
                    docstore_top=[h.doc_path for h in hits],
                    legacy_ms=(t1 - t0) * 1000,
                    docstore_ms=(t2 - t1) * 1000,
                )
            )
        return checks

    # -- rollback ----------------------------------------------------------------------------
    async def rollback(self) -> RollbackReport:
        """Copy the target's ``doc_type`` documents, sources and population jobs back into the
        legacy-shaped ``source`` database (created if empty), so switching ``DATABASE_URL``
        back (the plan's Phase 7) loses nothing written after the cutover.

        The legacy tables end up mirroring the target: migrated rows keep their legacy ids,
        rows written after the cutover get new ones, rows deleted after the cutover are
        deleted. One transaction on the legacy database: all or nothing. Afterwards the target
        records what the legacy database gave it (legacy ids of documents and jobs written
        after the cutover, and the sources' derived config and documents' crate versions), so
        :meth:`validate` passes right after a rollback.

        Raises :class:`~docstore.ReadOnlyError` before writing anything anywhere when the
        target (or a :class:`~docstore.Store` given as source) is read-only: the rollback
        writes both databases. Run it from a shell without ``READ_ONLY``; the app keeps it.
        """
        started = _now()
        store = await self._target_store()
        await self._ensure_writable(store, "roll back")
        if isinstance(self._source_arg, Store) and self._source_arg.read_only:
            raise ReadOnlyError(
                "the legacy store given as source is read-only: a rollback writes it; "
                "nothing was written"
            )
        report = RollbackReport()
        try:
            await self._rollback(store, report)
        except asyncpg.PostgresError as exc:
            raise MigrationError(
                "rollback failed and changed nothing in the legacy database (one transaction): "
                + describe(exc, self._secrets)
            ) from None
        report.seconds = _now() - started
        return report

    async def _rollback(self, store: Store, report: RollbackReport) -> None:
        async with self._source(writable=True) as leg, store.acquire() as tgt:
            sources = await tgt.fetch(
                "SELECT source_name, config, enabled, last_checked, last_populated"
                " FROM document_sources WHERE doc_type = $1 ORDER BY source_name",
                self.doc_type,
            )
            jobs = await tgt.fetch(
                "SELECT id, legacy_id, source_name, status, started_at, completed_at,"
                " error_message, docs_populated, created_at, metadata"
                " FROM source_population_jobs WHERE doc_type = $1 ORDER BY id",
                self.doc_type,
            )
            configs = []
            for r in sources:
                mine = _config(r["config"]).get("crate_configs", [])
                if mine:  # the source's live enabled / last_checked belong to its first config
                    mine[0] = {
                        **mine[0],
                        "enabled": r["enabled"],
                        "last_checked": r["last_checked"],
                    }
                configs.extend(mine)
            async with leg.transaction():
                await leg.execute(legacy.LEGACY_CORE_SCHEMA_SQL)
                has_optional = await leg.fetchval("SELECT to_regclass('crate_configs') IS NOT NULL")
                if (configs or jobs) and not has_optional:
                    await leg.execute(legacy.LEGACY_OPTIONAL_SCHEMA_SQL)
                    has_optional = True
                report.crates = await self._rollback_crates(leg, sources)
                (
                    report.documents,
                    report.deleted_documents,
                    assigned,
                ) = await self._rollback_documents(leg, tgt)
                job_ids: list[tuple[int, int]] = []
                if has_optional:
                    report.crate_configs = await self._rollback_configs(leg, configs)
                    report.population_jobs, job_ids = await self._rollback_jobs(leg, jobs)
                for table in ("crates", "doc_embeddings", "crate_configs", "population_jobs"):
                    if await leg.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                        await leg.execute(
                            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                            f" greatest((SELECT max(id) FROM {table}), 1))"
                        )
            # Committed. The documents written after the cutover now have legacy ids: record
            # them on the target, so the two databases pair up (validate, compat views' ids).
            # Then the sources' derived config and the documents' crate versions, from what
            # the legacy database now holds (crates written for new sources got ids, …).
            try:
                async with tgt.transaction():
                    report.recorded_legacy_ids = await _record_legacy_ids(
                        tgt, self.doc_type, assigned
                    )
                    report.recorded_job_ids = await _record_job_ids(tgt, job_ids)
                    async with leg.transaction(isolation="repeatable_read", readonly=True):
                        state = await self._legacy_state(leg)
                    await self._sync_sources(state, tgt, delete=False)
                    await self._sync_jobs(state, tgt, delete=False)
                    await self._sync_versions(state, tgt)
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    "rollback committed in the legacy database, but recording the legacy ids of "
                    f"{len(assigned)} documents and {len(job_ids)} population jobs written after "
                    f"the cutover in the target failed ({describe(exc, self._secrets)}): "
                    "`docstore validate` lists them until the next `docstore migrate`"
                ) from None

    async def _rollback_crates(self, leg: asyncpg.Connection, sources: list[Any]) -> int:
        rows = []
        for r in sources:
            config = _config(r["config"])
            if config.get("orphan"):
                continue  # documents whose crate never had a crates row
            rows.append(
                (
                    config.get("legacy_id"),
                    r["source_name"],
                    config.get("version"),
                    naive_utc(r["last_populated"]),  # live: crates.last_updated
                    config.get("total_docs", 0),
                    config.get("total_tokens", 0),
                )
            )
        await _advance_sequence(leg, "crates", [r[0] for r in rows])
        await leg.executemany(
            """INSERT INTO crates (id, name, version, last_updated, total_docs, total_tokens)
               VALUES (coalesce($1, nextval(pg_get_serial_sequence('crates', 'id'))),
                       $2, $3, $4, $5, $6)
               ON CONFLICT (name) DO UPDATE
                  SET version = EXCLUDED.version, last_updated = EXCLUDED.last_updated,
                      total_docs = EXCLUDED.total_docs, total_tokens = EXCLUDED.total_tokens""",
            rows,
        )
        return len(rows)

    async def _rollback_documents(
        self, leg: asyncpg.Connection, tgt: asyncpg.Connection
    ) -> tuple[int, int, list[Any]]:
        """Mirror the target's documents into ``doc_embeddings``; returns (copied, deleted,
        the (id, crate_id, crate_name, doc_path) the legacy side gave documents it had no id
        for)."""
        await leg.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_ROLLBACK_STAGE} ON COMMIT DROP AS"
            f" SELECT {', '.join(legacy.ROLLBACK_COLUMNS)} FROM doc_embeddings WITH NO DATA"
        )
        copied = await pipe(
            tgt,
            legacy.ROLLBACK_DOCUMENTS_QUERY,
            (self.doc_type,),
            leg,
            _ROLLBACK_STAGE,
            legacy.ROLLBACK_COLUMNS,
            timeout=LONG_TIMEOUT,
        )
        await _advance_sequence(
            leg, "doc_embeddings", [await leg.fetchval(f"SELECT max(id) FROM {_ROLLBACK_STAGE}")]
        )
        deleted = await leg.execute(
            f"""DELETE FROM doc_embeddings d WHERE NOT EXISTS (
                    SELECT 1 FROM {_ROLLBACK_STAGE} s
                     WHERE s.crate_name = d.crate_name AND s.doc_path = d.doc_path)"""
        )
        await leg.execute(
            f"""INSERT INTO doc_embeddings
                    (id, crate_id, crate_name, doc_path, content, embedding, token_count,
                     created_at)
                SELECT coalesce(s.id, nextval(pg_get_serial_sequence('doc_embeddings', 'id'))),
                       CASE WHEN s.id IS NOT NULL THEN s.crate_id ELSE c.id END,
                       s.crate_name, s.doc_path, s.content, s.embedding, s.token_count,
                       s.created_at
                  FROM {_ROLLBACK_STAGE} s LEFT JOIN crates c ON c.name = s.crate_name
                 ORDER BY s.id NULLS LAST
                ON CONFLICT (crate_name, doc_path) DO UPDATE
                   SET crate_id = EXCLUDED.crate_id, content = EXCLUDED.content,
                       token_count = EXCLUDED.token_count, created_at = EXCLUDED.created_at,
                       -- an embedding the target could not hold (another dimension) is kept
                       embedding = CASE WHEN EXCLUDED.embedding IS NULL
                                         AND doc_embeddings.embedding IS NOT NULL
                                         AND vector_dims(doc_embeddings.embedding) <> $1
                                        THEN doc_embeddings.embedding
                                        ELSE EXCLUDED.embedding END""",
            (await self._target_store()).embedding_dim,
        )
        assigned = await leg.fetch(
            f"""SELECT d.id, d.crate_id, d.crate_name, d.doc_path
                  FROM {_ROLLBACK_STAGE} s
                  JOIN doc_embeddings d ON d.crate_name = s.crate_name AND d.doc_path = s.doc_path
                 WHERE s.id IS NULL"""
        )
        return copied, int(deleted.split()[-1]), assigned

    async def _rollback_configs(
        self, leg: asyncpg.Connection, configs: list[dict[str, Any]]
    ) -> int:
        await _advance_sequence(leg, "crate_configs", [c["id"] for c in configs])
        await leg.executemany(
            """INSERT INTO crate_configs
                   (id, name, version_spec, current_version, features, expected_docs, enabled,
                    last_checked, last_populated, created_at, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT (id) DO UPDATE
                  SET name = EXCLUDED.name, version_spec = EXCLUDED.version_spec,
                      current_version = EXCLUDED.current_version, features = EXCLUDED.features,
                      expected_docs = EXCLUDED.expected_docs, enabled = EXCLUDED.enabled,
                      last_checked = EXCLUDED.last_checked,
                      last_populated = EXCLUDED.last_populated,
                      created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at""",
            [
                (
                    c["id"],
                    c["name"],
                    c["version_spec"],
                    c["current_version"],
                    c["features"],
                    c["expected_docs"],
                    c["enabled"],
                    parse_timestamp(c["last_checked"]),
                    parse_timestamp(c["last_populated"]),
                    parse_timestamp(c["created_at"]),
                    parse_timestamp(c["updated_at"]),
                )
                for c in configs
            ],
        )
        return len(configs)

    async def _rollback_jobs(
        self, leg: asyncpg.Connection, jobs: list[Any]
    ) -> tuple[int, list[tuple[int, int]]]:
        """Mirror the target's jobs into ``population_jobs``; returns (jobs written, the
        (target id, legacy id) of jobs that had no legacy id)."""
        await _advance_sequence(leg, "population_jobs", [j["legacy_id"] for j in jobs])

        def values(j: Any) -> tuple[Any, ...]:
            return (
                j["legacy_id"],
                _config(j["metadata"]).get("crate_config_id"),
                j["status"],
                j["started_at"],
                j["completed_at"],
                j["error_message"],
                j["docs_populated"],
                j["created_at"],
            )

        sql = """INSERT INTO population_jobs
                   (id, crate_config_id, status, started_at, completed_at, error_message,
                    docs_populated, created_at)
               VALUES (coalesce($1, nextval(pg_get_serial_sequence('population_jobs', 'id'))),
                       $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (id) DO UPDATE
                  SET crate_config_id = EXCLUDED.crate_config_id, status = EXCLUDED.status,
                      started_at = EXCLUDED.started_at, completed_at = EXCLUDED.completed_at,
                      error_message = EXCLUDED.error_message,
                      docs_populated = EXCLUDED.docs_populated"""
        await leg.executemany(sql, [values(j) for j in jobs if j["legacy_id"] is not None])
        assigned = [
            (j["id"], await leg.fetchval(sql + " RETURNING id", *values(j)))
            for j in jobs
            if j["legacy_id"] is None
        ]
        return len(jobs), assigned


_ROLLBACK_STAGE = "docstore_rollback_stage"


def _repairable(v: Validation) -> bool:
    """Whether a re-copy can fix what ``v`` found (search parity alone can't be)."""
    return bool(
        v.mismatched_chunks
        or v.per_source_mismatch
        or v.legacy_documents != v.target_documents
        or v.missing_sources
        or v.source_mismatches
        or v.job_mismatches
    )


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _iso(v) for k, v in row.items()}


async def _record_legacy_ids(tgt: asyncpg.Connection, doc_type: str, assigned: list[Any]) -> int:
    """Mark target documents with the legacy ids a rollback gave them, as a migration would."""
    if not assigned:
        return 0
    status = await tgt.execute(
        f"""UPDATE documents t
               SET metadata = coalesce(t.metadata, '{{}}') || jsonb_strip_nulls(jsonb_build_object(
                       'crate_name', a.crate_name, 'legacy_id', a.id,
                       'legacy_crate_id', a.crate_id, 'migrated_from', '{legacy.MIGRATED_FROM}'))
              FROM unnest($2::int[], $3::int[], $4::text[], $5::text[])
                   AS a(id, crate_id, crate_name, doc_path)
             WHERE t.doc_type = $1 AND t.source_name = a.crate_name AND t.doc_path = a.doc_path""",
        doc_type,
        [r["id"] for r in assigned],
        [r["crate_id"] for r in assigned],
        [r["crate_name"] for r in assigned],
        [r["doc_path"] for r in assigned],
        timeout=LONG_TIMEOUT,
    )
    return int(status.split()[-1])


async def _record_job_ids(tgt: asyncpg.Connection, assigned: list[tuple[int, int]]) -> int:
    """Mark target population jobs with the legacy ids a rollback gave them."""
    if not assigned:
        return 0
    status = await tgt.execute(
        """UPDATE source_population_jobs j SET legacy_id = a.legacy_id
             FROM unnest($1::int[], $2::int[]) AS a(id, legacy_id) WHERE j.id = a.id""",
        [a[0] for a in assigned],
        [a[1] for a in assigned],
    )
    return int(status.split()[-1])


async def _advance_sequence(leg: asyncpg.Connection, table: str, explicit: list[Any]) -> None:
    """Move ``table``'s id sequence past its rows and the explicit ids about to be inserted,
    so rows without an id (written after the cutover) never collide with them."""
    top = max((int(i) for i in explicit if i is not None), default=0)
    await leg.execute(
        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
        f" greatest((SELECT max(id) FROM {table}), $1::bigint, 1))",
        top,
    )


def _config(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def _as_utc(value: datetime | None) -> datetime | None:
    """A legacy TIMESTAMP (naive, UTC by convention) as an aware datetime."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
