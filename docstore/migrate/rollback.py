"""Stage 5, rollback (the plan's Phase 7): the target's documents, sources and population jobs
copied back into a legacy-shaped database, so switching ``DATABASE_URL`` back loses nothing
written after the cutover.

The legacy tables end up mirroring the target: migrated rows keep their legacy ids (also a
document that moved to another path, or swapped paths with another), rows written after the
cutover get new ones, rows deleted after the cutover are deleted — documents, crates, crate
configs and population jobs alike. One transaction on the legacy database: all or nothing.

It refuses (and changes nothing) when it would delete legacy documents the target never
received — rows outside every range the target's migration from this legacy database copied:
a migration that never finished, rows written to the legacy database after it, the wrong
doc_type or target — unless forced. A dry run does all the work and rolls it back, so its
report says what a rollback would write and delete.
Afterwards the target records what the legacy database gave it (legacy ids of documents and
jobs written after the cutover, the sources' derived config and the documents' crate
versions), so validation passes right after."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from docstore.errors import MigrationError
from docstore.failures import describe
from docstore.migrate import checkpoints, legacy, sequences, state
from docstore.migrate.compare import config_dict
from docstore.migrate.context import LONG_TIMEOUT, run_id
from docstore.migrate.lock import migration_lock
from docstore.migrate.pipe import pipe
from docstore.migrate.report import RollbackReport
from docstore.migrate.rollback_guard import refuse_deleting_unreceived
from docstore.models import naive_utc, parse_timestamp

_ROLLBACK_STAGE = "docstore_rollback_stage"
# What a rollback writes into a legacy row's embedding: the target's, except where the target
# could not hold the legacy one (another dimension: copied as NULL), which is kept.
_KEPT_EMBEDDING = """CASE WHEN EXCLUDED.embedding IS NULL
                                     AND doc_embeddings.embedding IS NOT NULL
                                     AND vector_dims(doc_embeddings.embedding) <> $1
                                    THEN doc_embeddings.embedding
                                    ELSE EXCLUDED.embedding END"""


class _DryRun(Exception):
    """Raised inside the legacy transaction of a dry run, to roll it back."""


async def run(
    doc_type: str,
    embedding_dim: int,
    leg: asyncpg.Connection,
    tgt: asyncpg.Connection,
    report: RollbackReport,
    secrets: tuple[str, ...] = (),
    *,
    force: bool = False,
) -> None:
    """The rollback as :meth:`~docstore.migrate.Migrator.rollback` runs it, on a writable
    legacy connection ``leg`` and a target connection ``tgt``: under the migration lock,
    :func:`rollback` (a dry run when ``report.dry_run``); then the doc_type pairs with the
    legacy database rolled back into, whatever it was copied from: the checkpoints of other
    runs into it are forgotten (else a migration from that database would be refused as a
    second legacy database). Database errors are :class:`MigrationError`s saying what
    happened to the legacy database."""
    try:
        async with migration_lock(tgt):
            await rollback(
                doc_type,
                embedding_dim,
                leg,
                tgt,
                report,
                secrets,
                force=force,
                dry_run=report.dry_run,
            )
            if report.dry_run:
                return
            try:
                await checkpoints.forget_others(tgt, doc_type, await run_id(leg, doc_type))
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    "rollback committed in the legacy database, but forgetting the target's "
                    f"checkpoints of other legacy databases failed ({describe(exc, secrets)}): "
                    "a migration from this legacy database into the doc_type is refused until "
                    "they are gone"
                ) from None
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            "rollback failed and changed nothing in the legacy database (one transaction): "
            + describe(exc, secrets)
        ) from None


async def rollback(
    doc_type: str,
    embedding_dim: int,
    leg: asyncpg.Connection,
    tgt: asyncpg.Connection,
    report: RollbackReport,
    secrets: tuple[str, ...] = (),
    *,
    force: bool = False,
    dry_run: bool = False,
) -> None:
    """The rollback stage on a writable legacy connection ``leg`` and the target ``tgt``;
    see :meth:`docstore.migrate.Migrator.rollback`. Raises ``asyncpg.PostgresError`` when the
    legacy transaction fails (nothing changed there), :class:`MigrationError` when it would
    delete legacy documents the target never received and not ``force`` (nothing changed),
    or when it committed but recording the legacy ids on the target failed. ``dry_run``:
    ``report`` filled, the legacy transaction rolled back, nothing recorded on the target."""
    received = await checkpoints.load(tgt, await run_id(leg, doc_type))
    sources = await tgt.fetch(
        "SELECT source_name, config, enabled, last_checked, last_populated"
        " FROM document_sources WHERE doc_type = $1 ORDER BY source_name",
        doc_type,
    )
    jobs = await tgt.fetch(
        "SELECT id, legacy_id, source_name, status, started_at, completed_at,"
        " error_message, docs_populated, created_at, metadata"
        " FROM source_population_jobs WHERE doc_type = $1 ORDER BY id",
        doc_type,
    )
    configs = []
    for r in sources:
        mine = config_dict(r["config"]).get("crate_configs", [])
        if mine:  # the source's live enabled / last_checked belong to its first config
            mine[0] = {
                **mine[0],
                "enabled": state.config_enabled(mine[0], r["enabled"]),
                "last_checked": r["last_checked"],
            }
        configs.extend(mine)
    try:
        async with leg.transaction():
            await leg.execute(legacy.LEGACY_CORE_SCHEMA_SQL)
            has_optional = await leg.fetchval("SELECT to_regclass('crate_configs') IS NOT NULL")
            if (configs or jobs) and not has_optional:
                await leg.execute(legacy.LEGACY_OPTIONAL_SCHEMA_SQL)
                has_optional = True
            report.crates, crate_names = await _rollback_crates(leg, sources, dry_run=dry_run)
            (
                report.documents,
                report.deleted_documents,
                assigned,
            ) = await _rollback_documents(
                doc_type, embedding_dim, leg, tgt, received, force=force, dry_run=dry_run
            )
            # after the documents: a crates row's delete cascades to the rows pointing at it
            await _delete_gone_crates(leg, crate_names)
            job_ids: list[tuple[int, int]] = []
            if has_optional:
                report.crate_configs = await _rollback_configs(leg, configs, jobs, dry_run)
                report.population_jobs, job_ids = await _rollback_jobs(leg, jobs, dry_run)
            if dry_run:  # everything written and counted: rolled back (temporary sequences)
                raise _DryRun
            for table in ("crates", "doc_embeddings", "crate_configs", "population_jobs"):
                if await leg.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                    await sequences.advance(leg, table, [], dry_run=False)
    except _DryRun:
        report.dry_run = True
        return
    # Committed. The documents written after the cutover now have legacy ids: record
    # them on the target, so the two databases pair up (validate, compat views' ids).
    # Then the sources' derived config and the documents' crate versions, from what
    # the legacy database now holds (crates written for new sources got ids, …).
    try:
        async with tgt.transaction():
            report.recorded_legacy_ids = await _record_legacy_ids(tgt, doc_type, assigned)
            report.recorded_job_ids = await _record_job_ids(tgt, job_ids)
            async with leg.transaction(isolation="repeatable_read", readonly=True):
                snapshot = await state.read_legacy_state(leg)
            await state.sync_sources(doc_type, snapshot, tgt, delete=False)
            await state.sync_jobs(doc_type, snapshot, tgt, delete=False)
            await state.sync_versions(doc_type, snapshot, tgt)
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            "rollback committed in the legacy database, but recording the legacy ids of "
            f"{len(assigned)} documents and {len(job_ids)} population jobs written after "
            f"the cutover in the target failed ({describe(exc, secrets)}): "
            "`docstore validate` lists them until the next `docstore migrate`"
        ) from None


async def _rollback_crates(
    leg: asyncpg.Connection, sources: list[Any], *, dry_run: bool
) -> tuple[int, list[str]]:
    """Upsert a ``crates`` row per source that has one; returns (rows written, their names)."""
    rows = []
    for r in sources:
        config = config_dict(r["config"])
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
    seq = await sequences.advance(leg, "crates", [r[0] for r in rows], dry_run=dry_run)
    await leg.executemany(
        """INSERT INTO crates (id, name, version, last_updated, total_docs, total_tokens)
           VALUES (coalesce($1, nextval($7::regclass)), $2, $3, $4, $5, $6)
           ON CONFLICT (name) DO UPDATE
              SET version = EXCLUDED.version, last_updated = EXCLUDED.last_updated,
                  total_docs = EXCLUDED.total_docs, total_tokens = EXCLUDED.total_tokens""",
        [(*r, seq) for r in rows],
    )
    return len(rows), [r[1] for r in rows]


async def _delete_gone_crates(leg: asyncpg.Connection, names: list[str]) -> int:
    """Delete the ``crates`` rows of sources the target no longer has (deleted after the
    cutover), once ``doc_embeddings`` mirrors the target: a row still pointed at by a document
    the target holds stays (its delete would cascade to that document)."""
    status = await leg.execute(
        """DELETE FROM crates c WHERE NOT c.name = ANY($1::text[])
              AND NOT EXISTS (SELECT 1 FROM doc_embeddings d WHERE d.crate_id = c.id)""",
        names,
    )
    return int(status.split()[-1])


async def _rollback_documents(
    doc_type: str,
    embedding_dim: int,
    leg: asyncpg.Connection,
    tgt: asyncpg.Connection,
    received: list[checkpoints.Checkpoint],
    *,
    force: bool,
    dry_run: bool,
) -> tuple[int, int, list[Any]]:
    """Mirror the target's documents into ``doc_embeddings``; returns (copied, deleted,
    the (id, crate_id, crate_name, doc_path) the legacy side gave documents it had no id
    for).

    A legacy row stays (and is updated) only where the target has a document at its
    ``(crate_name, doc_path)`` with its id, or without a legacy id when no other document
    claims that id. Every other row is deleted first: those whose key the target no longer
    has (counted as deleted), and those whose key now belongs to another id — a document that
    moved, swapped paths, or was replaced by a new one at its old path — which the insert then
    writes again under the right id, so no id or key ever collides."""
    await leg.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_ROLLBACK_STAGE} ON COMMIT DROP AS"
        f" SELECT {', '.join(legacy.ROLLBACK_COLUMNS)} FROM doc_embeddings WITH NO DATA"
    )
    copied = await pipe(
        tgt,
        legacy.ROLLBACK_DOCUMENTS_QUERY,
        (doc_type,),
        leg,
        _ROLLBACK_STAGE,
        legacy.ROLLBACK_COLUMNS,
        timeout=LONG_TIMEOUT,
    )
    # Two target documents claiming one legacy id (a copy gone wrong): the one at the legacy
    # row's key keeps it (else the first by key), the others get new ids like new documents.
    await leg.execute(
        f"""UPDATE {_ROLLBACK_STAGE} s SET id = NULL
              FROM (SELECT s.ctid AS tid,
                           row_number() OVER (PARTITION BY s.id
                                              ORDER BY d.id IS NULL, s.crate_name, s.doc_path) AS n
                      FROM {_ROLLBACK_STAGE} s
                      LEFT JOIN doc_embeddings d
                        ON d.id = s.id AND d.crate_name = s.crate_name AND d.doc_path = s.doc_path
                     WHERE s.id IN (SELECT id FROM {_ROLLBACK_STAGE}
                                     GROUP BY id HAVING count(*) > 1)) r
             WHERE s.ctid = r.tid AND r.n > 1"""
    )
    # An embedding the target could not hold (another dimension) stays with its legacy id,
    # wherever the document now lives.
    await leg.execute(
        f"""UPDATE {_ROLLBACK_STAGE} s SET embedding = d.embedding FROM doc_embeddings d
             WHERE d.id = s.id AND s.embedding IS NULL AND d.embedding IS NOT NULL
               AND vector_dims(d.embedding) <> $1""",
        embedding_dim,
    )
    seq = await sequences.advance(
        leg,
        "doc_embeddings",
        [await leg.fetchval(f"SELECT max(id) FROM {_ROLLBACK_STAGE}")],
        dry_run=dry_run,
    )
    if not force:
        await refuse_deleting_unreceived(leg, doc_type, received, _ROLLBACK_STAGE)
    deleted = await leg.execute(
        f"""DELETE FROM doc_embeddings d WHERE NOT EXISTS (
                SELECT 1 FROM {_ROLLBACK_STAGE} s
                 WHERE s.crate_name = d.crate_name AND s.doc_path = d.doc_path)"""
    )
    await leg.execute(
        f"""DELETE FROM doc_embeddings d USING {_ROLLBACK_STAGE} s
             WHERE s.crate_name = d.crate_name AND s.doc_path = d.doc_path
               AND (s.id <> d.id
                    OR s.id IS NULL
                       AND EXISTS (SELECT 1 FROM {_ROLLBACK_STAGE} o WHERE o.id = d.id))"""
    )
    # Only rows that differ are written (compared as stored, the vector by its bytes, as the
    # forward copy compares): a row rewritten unchanged gets a new version (xmin), 12 KB of
    # TOAST and WAL, a dead tuple — and the next `docstore migrate` copies its chunk again. A
    # rollback of an unchanged target rewrote every legacy row, and the retried cutover
    # after it copied everything again.
    await leg.execute(
        f"""INSERT INTO doc_embeddings
                (id, crate_id, crate_name, doc_path, content, embedding, token_count,
                 created_at)
            SELECT coalesce(s.id, nextval($2::regclass)),
                   CASE WHEN s.id IS NOT NULL THEN s.crate_id ELSE c.id END,
                   s.crate_name, s.doc_path, s.content, s.embedding, s.token_count,
                   s.created_at
              FROM {_ROLLBACK_STAGE} s LEFT JOIN crates c ON c.name = s.crate_name
             ORDER BY s.id NULLS LAST
            ON CONFLICT (crate_name, doc_path) DO UPDATE
               SET crate_id = EXCLUDED.crate_id, content = EXCLUDED.content,
                   token_count = EXCLUDED.token_count, created_at = EXCLUDED.created_at,
                   embedding = {_KEPT_EMBEDDING}
             WHERE (doc_embeddings.crate_id, doc_embeddings.content,
                    doc_embeddings.token_count, doc_embeddings.created_at,
                    vector_send(doc_embeddings.embedding))
                   IS DISTINCT FROM (EXCLUDED.crate_id, EXCLUDED.content,
                                     EXCLUDED.token_count, EXCLUDED.created_at,
                                     vector_send({_KEPT_EMBEDDING}))""",
        embedding_dim,
        seq,
    )
    assigned = await leg.fetch(
        f"""SELECT d.id, d.crate_id, d.crate_name, d.doc_path
              FROM {_ROLLBACK_STAGE} s
              JOIN doc_embeddings d ON d.crate_name = s.crate_name AND d.doc_path = s.doc_path
             WHERE s.id IS NULL"""
    )
    return copied, int(deleted.split()[-1]), assigned


async def _rollback_configs(
    leg: asyncpg.Connection, configs: list[dict[str, Any]], jobs: list[Any], dry_run: bool
) -> int:
    """Mirror the sources' crate configs into ``crate_configs``: configs the target no longer
    has are deleted first (their jobs with them, by the legacy cascade), unless a target job
    still names one (deleting it would fail that job's insert), then the rest upserted."""
    await leg.execute(
        "DELETE FROM crate_configs WHERE NOT id = ANY($1::int[])",
        [c["id"] for c in configs]
        + [i for j in jobs if (i := config_dict(j["metadata"]).get("crate_config_id")) is not None],
    )
    await sequences.advance(leg, "crate_configs", [c["id"] for c in configs], dry_run=dry_run)
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
    leg: asyncpg.Connection, jobs: list[Any], dry_run: bool
) -> tuple[int, list[tuple[int, int]]]:
    """Mirror the target's jobs into ``population_jobs`` (jobs the target no longer has are
    deleted); returns (jobs written, the (target id, legacy id) of jobs that had no legacy
    id)."""
    await leg.execute(
        "DELETE FROM population_jobs WHERE NOT id = ANY($1::int[])",
        [j["legacy_id"] for j in jobs if j["legacy_id"] is not None],
    )
    seq = await sequences.advance(
        leg, "population_jobs", [j["legacy_id"] for j in jobs], dry_run=dry_run
    )

    def values(j: Any) -> tuple[Any, ...]:
        return (
            j["legacy_id"],
            config_dict(j["metadata"]).get("crate_config_id"),
            j["status"],
            j["started_at"],
            j["completed_at"],
            j["error_message"],
            j["docs_populated"],
            j["created_at"],
            seq,
        )

    sql = """INSERT INTO population_jobs
               (id, crate_config_id, status, started_at, completed_at, error_message,
                docs_populated, created_at)
           VALUES (coalesce($1, nextval($9::regclass)), $2, $3, $4, $5, $6, $7, $8)
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


async def _record_legacy_ids(tgt: asyncpg.Connection, doc_type: str, assigned: list[Any]) -> int:
    """Mark target documents with the legacy ids a rollback gave them, as a migration would."""
    if not assigned:
        return 0
    # The keys are built here, not with jsonb_build_object over the unnest's columns in the
    # UPDATE: Citus refuses STABLE functions with column references there (sent as text and
    # cast, so it works with or without a jsonb codec on the connection).
    marks = [
        json.dumps(
            {
                k: v
                for k, v in (
                    ("crate_name", r["crate_name"]),
                    ("legacy_id", r["id"]),
                    ("legacy_crate_id", r["crate_id"]),
                    ("migrated_from", legacy.MIGRATED_FROM),
                )
                if v is not None
            }
        )
        for r in assigned
    ]
    status = await tgt.execute(
        """UPDATE documents t SET metadata = coalesce(t.metadata, '{}') || a.mark::jsonb
              FROM unnest($2::text[], $3::text[], $4::text[]) AS a(crate_name, doc_path, mark)
             WHERE t.doc_type = $1 AND t.source_name = a.crate_name AND t.doc_path = a.doc_path""",
        doc_type,
        [r["crate_name"] for r in assigned],
        [r["doc_path"] for r in assigned],
        marks,
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
