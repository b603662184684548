"""Sources, population jobs and the documents' ``metadata.crate_version``: read from the legacy
``crates`` / ``crate_configs`` / ``population_jobs`` (:func:`read_legacy_state`), compared
with the target (:mod:`docstore.migrate.compare`) and written where they differ.

Shared by the copy, the delta pass, validation, repair and rollback: the small tables are
always handled whole (a few hundred rows), in the caller's legacy snapshot and target
transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import asyncpg

from docstore.codecs import keys_param
from docstore.migrate import legacy
from docstore.migrate.compare import (
    LegacySource,
    LegacyState,
    diff_jobs,
    diff_sources,
    diff_versions,
)
from docstore.migrate.context import (
    LONG_TIMEOUT,
    MIGRATED_DOCUMENT,
    as_utc,
    iso,
)
from docstore.migrate.report import JobMismatch, SourceMismatch
from docstore.models import parse_timestamp
from docstore.repositories.sources import delete_source_jobs

# Parameters are sent as text and cast on the server: the same statement works whether or not
# the connection has a jsonb codec registered.
_UPSERT_SOURCE = """
INSERT INTO document_sources (doc_type, source_name, config, enabled, last_checked, last_populated)
VALUES ($1, $2, $3::text::jsonb, $4, $5, $6)
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
SELECT s.id, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb
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
# Per source of the doc_type: migrated documents, those without embedding, the distinct
# metadata.crate_version among them (NULL when absent) and the documents written in docstore
# (legacy.WRITTEN_IN_DOCSTORE): one scan, no detoasting.
_MIGRATED = MIGRATED_DOCUMENT.removeprefix("doc_type = $1 AND ")
TARGET_PER_SOURCE = f"""
SELECT source_name, count(*) FILTER (WHERE {_MIGRATED}) AS documents,
       count(*) FILTER (WHERE {_MIGRATED} AND embedding IS NULL) AS null_embeddings,
       array_agg(DISTINCT metadata->>'crate_version') FILTER (WHERE {_MIGRATED}) AS versions,
       count(*) FILTER (WHERE {legacy.WRITTEN_IN_DOCSTORE}) AS own
  FROM documents WHERE doc_type = $1 GROUP BY 1
"""
# Validation's stamps of the target's migrated rows per checkpoint range (legacy.RANGE_STAMPS'
# buckets), stamped like the verifier's read-back (verify.READ_BACK_STAMP).
TARGET_RANGE_STAMPS = f"""
SELECT width_bucket({legacy.LEGACY_KEY}, $2::text[]::bigint[]) AS chunk,
       count(*) AS rows,
       md5(string_agg(id::text || ':' || xmin::text, ','
                      ORDER BY {legacy.LEGACY_KEY}, id)) AS checksum
  FROM documents WHERE {legacy.MIGRATED_ROWS}
 GROUP BY 1
"""
# Two statements, not one CASE on $3: Citus refuses a non-IMMUTABLE function
# (jsonb_build_object) inside CASE in an UPDATE of a distributed table.
_SET_CRATE_VERSION = f"""
UPDATE documents SET metadata = metadata || jsonb_build_object('crate_version', $3::text)
 WHERE {MIGRATED_DOCUMENT} AND source_name = $2
   AND (metadata->>'crate_version') IS DISTINCT FROM $3::text
"""
_UNSET_CRATE_VERSION = f"""
UPDATE documents SET metadata = metadata - 'crate_version'
 WHERE {MIGRATED_DOCUMENT} AND source_name = $2 AND (metadata->>'crate_version') IS NOT NULL
"""


async def read_legacy_state(src: asyncpg.Connection) -> LegacyState:
    """What the legacy ``crates``, ``crate_configs`` and ``population_jobs`` give the
    target's sources, jobs and per-crate document metadata (read in the caller's snapshot)."""
    configs: dict[str, list[dict[str, Any]]] = {}
    optional = await src.fetchrow(
        "SELECT to_regclass('crate_configs') IS NOT NULL AS configs,"
        " to_regclass('population_jobs') IS NOT NULL AS jobs"
    )
    assert optional is not None
    has_configs = bool(optional["configs"])
    if has_configs:
        for r in await src.fetch(legacy.CONFIGS_QUERY):
            configs.setdefault(r["name"], []).append({k: iso(v) for k, v in dict(r).items()})
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
                last_updated=iso(r["last_updated"]),
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
            enabled = source_enabled(first)
            last_checked = first["last_checked"]
        sources[r["source_name"]] = LegacySource(
            config=json.loads(json.dumps(config)),  # exactly what jsonb gives back
            enabled=enabled,
            last_checked=parse_timestamp(last_checked),
            last_populated=as_utc(r["last_updated"]),
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


def source_enabled(config: Mapping[str, Any]) -> bool:
    """A source's ``enabled`` from its first legacy crate config: the config's, NULL as true
    (the legacy column's default; ``document_sources.enabled`` holds a bool)."""
    return True if config["enabled"] is None else bool(config["enabled"])


def config_enabled(config: Mapping[str, Any], live: bool | None) -> bool | None:
    """The first crate config's ``enabled`` for a rollback, from the source's ``live`` one: a
    NULL the migration recorded in the config (``config["enabled"]``) stays NULL while the
    source is enabled, as :func:`source_enabled` made it; otherwise ``live``."""
    return None if config.get("enabled", False) is None and live else live


async def source_diffs(
    doc_type: str, state: LegacyState, tgt: asyncpg.Connection
) -> tuple[list[SourceMismatch], dict[str, Any]]:
    """Sources whose target row differs from ``state`` (and the target rows by name)."""
    have = {r["source_name"]: r for r in await tgt.fetch(_TARGET_SOURCES, doc_type)}
    return diff_sources(state.sources, have), have


async def sync_sources(
    doc_type: str, state: LegacyState, tgt: asyncpg.Connection, *, delete: bool
) -> list[SourceMismatch]:
    """Make the target's sources what ``state`` gives: rows that differ or are missing are
    written (the derived config keys replaced, other keys kept); with ``delete``, migrated
    sources the legacy database no longer has are removed once no document uses them.
    Returns the differences found (before the writes)."""
    diffs, _ = await source_diffs(doc_type, state, tgt)
    rows = [
        (
            doc_type,
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
        deleted = await tgt.fetch(
            "DELETE FROM document_sources s WHERE s.doc_type = $1"
            " AND s.source_name = ANY($2::text[])"
            " AND NOT EXISTS (SELECT 1 FROM documents d WHERE d.doc_type = s.doc_type"
            "                 AND d.source_name = s.source_name) RETURNING s.id",
            doc_type,
            extra,
        )
        await delete_source_jobs(tgt, [r["id"] for r in deleted])
    return diffs


async def job_diffs(
    doc_type: str, state: LegacyState, tgt: asyncpg.Connection
) -> list[JobMismatch]:
    return diff_jobs(state.jobs, await tgt.fetch(_TARGET_JOBS, doc_type))


async def sync_jobs(
    doc_type: str, state: LegacyState, tgt: asyncpg.Connection, *, delete: bool
) -> list[JobMismatch]:
    """Make the target's migrated population jobs what ``state`` gives (``delete``: jobs
    whose legacy row is gone are removed; jobs written in docstore, without a legacy id, are
    never touched). Returns the differences found (before the writes)."""
    diffs = await job_diffs(doc_type, state, tgt)
    rows = [
        (
            doc_type,
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
    gone = [d.legacy_id for d in diffs if d.legacy_id is not None and d.legacy_id not in state.jobs]
    if delete and gone:
        await tgt.execute(
            "DELETE FROM source_population_jobs"
            " WHERE doc_type = $1 AND legacy_id = ANY($2::text[]::int[])",
            doc_type,
            keys_param(gone),
        )
    return diffs


class TargetCounts(NamedTuple):
    """What :func:`version_diffs` found in the target's documents of a doc_type."""

    diffs: list[SourceMismatch]
    """Sources whose migrated documents' ``metadata.crate_version`` is not their crate's."""
    counts: dict[str, int]
    """Migrated documents per source (sources that have some)."""
    nulls: int
    """Migrated documents without embedding."""
    own: int
    """Documents written in docstore, not migrated (``legacy.WRITTEN_IN_DOCSTORE``)."""


async def version_diffs(doc_type: str, state: LegacyState, tgt: asyncpg.Connection) -> TargetCounts:
    """The sources whose migrated documents' ``metadata.crate_version`` is not their crate's
    version, with the target's document counts: one aggregate over the target."""
    rows = await tgt.fetch(TARGET_PER_SOURCE, doc_type, timeout=LONG_TIMEOUT)
    migrated = [r for r in rows if r["documents"]]
    return TargetCounts(
        diff_versions(state.sources, migrated),
        {r["source_name"]: r["documents"] for r in migrated},
        sum(r["null_embeddings"] for r in migrated),
        sum(r["own"] for r in rows),
    )


async def sync_versions(
    doc_type: str,
    state: LegacyState,
    tgt: asyncpg.Connection,
    names: Iterable[str] | None = None,
) -> int:
    """Rewrite ``metadata.crate_version`` of migrated documents that don't carry their
    crate's version; returns how many documents were rewritten. ``names``: only these sources
    (an indexed update each, no scan); None: find them with one aggregate over the target."""
    if names is None:
        names = [d.source_name for d in (await version_diffs(doc_type, state, tgt)).diffs]
    rewritten = 0
    for name in names:
        if name not in state.sources:
            continue
        version = state.sources[name].version
        if version is None:
            status = await tgt.execute(_UNSET_CRATE_VERSION, doc_type, name, timeout=LONG_TIMEOUT)
        else:
            status = await tgt.execute(
                _SET_CRATE_VERSION, doc_type, name, version, timeout=LONG_TIMEOUT
            )
        rewritten += int(status.split()[-1])
    return rewritten


# Documents written in docstore (no migration wrote them) of doc_type $1, by key: the rows a
# migration's upsert would replace when the legacy database holds the same key.
_OWN_KEYS = f"""
SELECT source_name, doc_path FROM documents
 WHERE doc_type = $1 AND {legacy.WRITTEN_IN_DOCSTORE} ORDER BY source_name, doc_path
"""
# Of the keys ($1 crate names, $2 doc paths, in pairs), how many the legacy database holds,
# and the first $3 of them.
_LEGACY_HOLDS = """
SELECT count(*) AS n,
       (array_agg(k.crate_name || '/' || k.doc_path ORDER BY k.crate_name, k.doc_path))[1:$3]
           AS shown
  FROM unnest($1::text[], $2::text[]) AS k(crate_name, doc_path)
 WHERE EXISTS (SELECT 1 FROM doc_embeddings d
                WHERE d.crate_name = k.crate_name AND d.doc_path = k.doc_path)
"""
REPLACED_PAGE = 10_000
"""Keys of documents written in docstore sent to the legacy database at once."""


async def replaced_documents(
    src: asyncpg.Connection, store: Any, doc_type: str, shown: int = 5
) -> tuple[int, list[str]]:
    """How many documents written in docstore (not migrated) the legacy database also holds
    — a migration's upsert replaces each with the legacy row — and the first ``shown`` of them
    (``source/path``). The doc_type's documents are read on one target connection through a
    cursor, their keys looked up on the legacy database :data:`REPLACED_PAGE` at a time
    (indexed): memory and parameters stay bounded however many there are."""
    found = 0
    first: list[str] = []

    async def look_up(page: list[Any]) -> None:
        nonlocal found
        row = await src.fetchrow(
            _LEGACY_HOLDS,
            [r["source_name"] for r in page],
            [r["doc_path"] for r in page],
            shown,
            timeout=LONG_TIMEOUT,
        )
        assert row is not None  # an aggregate: one row
        found += row["n"]
        first.extend((row["shown"] or [])[: shown - len(first)])

    async with store.acquire() as tgt, tgt.transaction(readonly=True):
        page: list[Any] = []
        async for r in tgt.cursor(_OWN_KEYS, doc_type, prefetch=REPLACED_PAGE):
            page.append(r)
            if len(page) == REPLACED_PAGE:
                await look_up(page)
                page = []
        if page:
            await look_up(page)
    return found, first
