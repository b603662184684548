"""Stage 1, preflight: read-only findings on the legacy database and the target before
anything is written (which legacy tables exist, sizes, embedding dimensions, NULL embeddings,
orphans; the target's pgvector, schema, existing rows and checkpoints).

``Preflight.blocking`` lists what stops a run: a source that is not a legacy database,
legacy tables this role may not read (:func:`missing_grants`), or without a column the
migration reads, or with one of a type it cannot read as it is
(:func:`~docstore.migrate.legacy_columns.problems`), legacy ids <= 0
(:func:`nonpositive_ids`), keys whose unique constraint was dropped and that rows share
(:func:`duplicate_keys`), a read-only target (``READ_ONLY``, a standby,
``default_transaction_read_only``), a target the run's ``connect()`` refuses or whose tables
this role may not write (:func:`~docstore.migrate.target_access.problems`: pgvector it may not
create, tables of docstore's names docstore did not create, no CREATE on the schema, missing
GRANTs — what the run says, computed from the catalog), a doc_type that already holds documents
migrated from another legacy database
(:func:`~docstore.migrate.claims.other_legacy_database`) and, in a thorough
preflight (a dry run), embedding values half precision cannot hold
(:func:`beyond_half_precision`); a thorough preflight also warns of rows the copy keeps but
docstore's own writes refuse (:func:`refused_by_docstore`), and every preflight of a legacy
database already migrated into another doc_type (a mistyped ``--doc-type``:
:func:`~docstore.migrate.claims.migrated_elsewhere`). Otherwise nothing here detoasts
an embedding stored uncompressed with the target's dimension
(:func:`~docstore.migrate.legacy.dims_sql`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, cast

import asyncpg

from docstore.core.opener import IS_LEGACY_DATABASE
from docstore.embeddings import MAX_EMBEDDING_VALUE, MAX_HALF_PRECISION_ERROR
from docstore.migrate import checkpoints, claims, keys, legacy, legacy_columns, state, target_access
from docstore.migrate.context import LONG_TIMEOUT, run_id
from docstore.migrate.report import Preflight, TableInfo
from docstore.models import MAX_CONTENT_CHARS, MAX_DOC_PATH_BYTES, MAX_KEY_BYTES
from docstore.store import Store


async def preflight(
    src: asyncpg.Connection,
    store: Store,
    doc_type: str,
    *,
    thorough: bool = False,
    use: target_access.TargetUse = target_access.PLAIN_RUN,
) -> Preflight:
    """Preflight of migrating ``src`` (a legacy database) into ``store`` as ``doc_type``.

    The target's findings are read (through the store's pool) while the legacy database's
    are (on ``src``). ``thorough`` (a dry run) also reads every embedding, for values half
    precision cannot hold (:func:`beyond_half_precision`); otherwise nothing here scans a
    table beyond counting it, unless a legacy key lost its unique constraint
    (:func:`duplicate_keys`). ``use``: what else the run does to the target, which this
    role must be able to do, and whether it creates or upgrades docstore's schema there."""
    run = await run_id(src, doc_type)
    target = asyncio.create_task(_target_findings(store, doc_type, run, use))
    try:
        pre, readable = await _source_findings(src, store.embedding_dim)
    finally:
        found = await target
    target_is_legacy = found.pop("target_is_legacy", False)
    refused = cast(list[str], found.pop("target_refuses", []))
    if readable:  # a legacy database whose tables this role may read
        for name, value in found.items():
            setattr(pre, name, value)
        if problem := await nonpositive_ids(src):
            pre.blocking.append(problem)
        pre.blocking.extend(await duplicate_keys(src))
        if thorough and (problem := await beyond_half_precision(src, store.embedding_dim)):
            pre.blocking.append(problem)
        if thorough:
            unheld, untried = await keys.unindexable(src, store, doc_type)
            pre.blocking.extend([unheld] if unheld else [])
            pre.warnings.extend([untried] if untried else [])
        if thorough:
            pre.warnings.extend(await refused_by_docstore(src, store.embedding_dim, doc_type))
        if thorough and pre.target_existing_documents:
            n, shown = await state.replaced_documents(src, store, doc_type)
            if n:
                pre.warnings.append(
                    f"{_count(n, 'document')} written in docstore (not migrated) "
                    f"{'has' if n == 1 else 'have'} the key of a legacy document "
                    f"({', '.join(shown)}{', …' if n > len(shown) else ''}): the run replaces "
                    f"{'it with the legacy row' if n == 1 else 'them with the legacy rows'};"
                    f" keep a copy, or move {'it' if n == 1 else 'them'} to another path, if"
                    " that matters"
                )
    if target_is_legacy:  # what the run itself refuses (core.opener.refuse_legacy)
        pre.blocking.append(
            "the target is a legacy rust_docs_vectors database (it has doc_embeddings and no"
            " docstore schema): point --target / DATABASE_URL at docstore's database"
        )
    elif refused:  # what connect() (creating or upgrading the schema) or the copy refuses
        pre.blocking.extend(refused)
    elif not found["target_schema_version"]:  # a dry run on a target nobody initialised yet
        pre.warnings.append(
            "the target has no docstore schema yet: the run creates it (as `docstore init`)"
        )
    elif readable:  # another legacy database in this doc_type; this one in another doc_type
        if problem := await claims.other_legacy_database(store, doc_type, run, src):
            pre.blocking.append(problem)
        pre.warnings.extend(await claims.migrated_elsewhere(store, doc_type, run, src))
    if problem := await target_access.read_only(store):
        pre.blocking.append(problem)
    return pre


async def _target_findings(
    store: Store, doc_type: str, run: str, use: target_access.TargetUse
) -> dict[str, object]:
    """What the target holds; only its versions when docstore's schema is not there yet (a
    dry run connects without creating it: nothing to count) or when this role could not
    migrate into it (``target_refuses``: :func:`~docstore.migrate.target_access.problems`)."""
    health = await store.health()
    if not health.schema_version:
        legacy_target = await store.fetchval(IS_LEGACY_DATABASE)
        return {
            "target_pgvector": health.pgvector_version,
            "target_schema_version": health.schema_version,
            "target_is_legacy": legacy_target,
            "target_refuses": []
            if legacy_target
            else await target_access.problems(store, None, health.latest_schema_version, use),
        }
    found: dict[str, object] = {
        "target_pgvector": health.pgvector_version,
        "target_schema_version": health.schema_version,
        "target_refuses": await target_access.problems(
            store, health.schema_version, health.latest_schema_version, use
        ),
    }
    if found["target_refuses"]:  # this role may not even read them, perhaps: not counted
        return found
    return {
        **found,
        "target_existing_documents": await store.documents.count(doc_type=doc_type),
        "target_existing_sources": len(await store.sources.list(doc_type=doc_type)),
        "checkpoints": await checkpoints.count(store, run),
    }


async def nonpositive_ids(src: asyncpg.Connection) -> str | None:
    """Why legacy rows with an id <= 0 stop a run (naming up to 5), or None: chunks are id
    ranges after 0 (``doc_embeddings.id`` is a SERIAL from 1). Reads through the primary key."""
    ids = [
        r["id"]
        for r in await src.fetch("SELECT id FROM doc_embeddings WHERE id <= 0 ORDER BY id LIMIT 6")
    ]
    if not ids:
        return None
    shown = ", ".join(str(i) for i in ids[:5]) + (", …" if len(ids) > 5 else "")
    return (
        f"doc_embeddings has rows with an id <= 0 (ids {shown}), which the migration cannot "
        "copy (its ranges start after 0; doc_embeddings.id is a SERIAL from 1): give them "
        "positive ids (UPDATE doc_embeddings SET id = nextval(pg_get_serial_sequence("
        "'doc_embeddings', 'id')) WHERE id <= 0) and run again"
    )


def missing_grants(tables: Sequence[Mapping[str, Any]]) -> str | None:
    """Why this role can't read the legacy tables a migration reads, naming the GRANT that
    fixes it, or None. ``tables``: rows of :data:`~docstore.migrate.legacy.TABLES_PRESENT`
    (``population_jobs`` is read only with ``crate_configs``). The catalog only."""
    names = {t["name"] for t in tables}
    unreadable = [
        t
        for t in tables
        if not t["readable"] and (t["name"] != "population_jobs" or "crate_configs" in names)
    ]
    if not unreadable:
        return None
    role = unreadable[0]["role"]
    grant_on = ", ".join(t["grant_on"] for t in unreadable)
    return (
        f"the legacy database's role {role} may not read {grant_on}, which the migration "
        f"copies: GRANT SELECT ON {grant_on} TO {role} (as the tables' owner) and run again"
    )


async def duplicate_keys(src: asyncpg.Connection) -> list[str]:
    """Why the legacy rows can't be migrated as they are (one problem per key, naming up to
    5 duplicated values and how many there are): a key of
    :data:`~docstore.migrate.legacy.UNIQUE_KEYS` that no unique index enforces any more and
    that rows share. The catalog only, unless such an index is missing: then that key's
    columns are scanned."""
    enforced = {
        (r["tbl"], r["cols"]): r["enforced"]
        for r in await src.fetch(
            legacy.KEYS_ENFORCED,
            [table for table, _ in legacy.UNIQUE_KEYS],
            [",".join(columns) for _, columns in legacy.UNIQUE_KEYS],
        )
    }
    problems = []
    for table, columns in legacy.UNIQUE_KEYS:
        if enforced.get((table, ",".join(columns)), True):
            continue
        rows = await src.fetch(legacy.duplicates_query(table, columns), timeout=LONG_TIMEOUT)
        if rows:
            problems.append(_duplicates_problem(table, columns, rows))
    return problems


def _duplicates_problem(table: str, columns: Sequence[str], rows: Sequence[Any]) -> str:
    keys = rows[0]["keys"]

    def ids(r: Any) -> str:
        more = ", …" if r["rows"] > len(r["ids"]) else ""
        return f"ids {', '.join(str(i) for i in r['ids'])}{more}"

    if columns == ("id",):
        shown = [f"{r['id']} ({r['rows']} rows)" for r in rows]
        what = (
            f"doc_embeddings has {_count(keys, 'id')} held by more than one row",
            "no primary key on id (the deployed schema's doc_embeddings_pkey): the migration "
            "copies and checks id ranges, and a legacy id names one document. Give the extra "
            "rows new ids (nextval(pg_get_serial_sequence('doc_embeddings', 'id'))), restore "
            "the key (ALTER TABLE doc_embeddings ADD PRIMARY KEY (id))",
        )
    elif table == "crates":
        shown = [f"{r['name']!r} ({ids(r)})" for r in rows]
        what = (
            f"crates has {_count(keys, 'name')} held by more than one row",
            "no unique constraint on crates.name (the deployed schema's crates_name_key): "
            "every document joins its crate by name, so these crates' documents would be "
            "copied once per row. Delete or rename the extra crates rows, restore the "
            "constraint (ALTER TABLE crates ADD CONSTRAINT crates_name_key UNIQUE (name))",
        )
    else:
        shown = [f"{r['crate_name']}/{r['doc_path']} ({ids(r)})" for r in rows]
        what = (
            f"doc_embeddings has {_count(keys, '(crate_name, doc_path) key')} held by more "
            "than one row",
            "no unique constraint on them (the deployed schema's "
            "doc_embeddings_crate_name_doc_path_key): docstore keeps one document per source "
            "and path, so all but one row of each would be lost. Delete the extra rows or "
            "give them other paths, restore the constraint (ALTER TABLE doc_embeddings ADD "
            "CONSTRAINT doc_embeddings_crate_name_doc_path_key UNIQUE (crate_name, doc_path))",
        )
    more = ", …" if keys > len(rows) else ""
    return f"{what[0]} ({'; '.join(shown)}{more}) and {what[1]} and run again"


async def _unreadable_dates(src: asyncpg.Connection, found: int) -> str:
    """Why legacy rows whose ``created_at`` lies outside the years 1–9999 stop a run."""
    ids = [r["id"] for r in await src.fetch(legacy.UNREADABLE_DATES)]
    shown = ", ".join(str(i) for i in ids[:5]) + (", …" if found > 5 else "")
    return (
        f"{_count(found, 'legacy document')} (doc_embeddings ids {shown}) "
        f"{'has' if found == 1 else 'have'} a created_at outside the years 1–9999 (BC, or "
        "past 9999): PostgreSQL stores it, but Python's datetime — and so docstore, reading "
        "the document back — cannot hold it. Fix them in the legacy database (UPDATE "
        f"doc_embeddings SET created_at = NULL WHERE {legacy.UNREADABLE_DATE}) and run again"
    )


def _unreadable_small(found: asyncpg.Record) -> str:
    """Why rows of crates, crate_configs or population_jobs with a date outside the years
    1–9999, or at their very ends, stop a run (the sources stage reads them into Python)."""
    more = ", …" if found["rows"] > len(found["ids"]) else ""
    columns = ", ".join(found["columns"])
    ids = ", ".join(str(i) for i in found["ids"])
    return (
        f"{_count(found['rows'], found['name'] + ' row')} (id{'s' if found['rows'] > 1 else ''}"
        f" {ids}{more}) {'holds' if found['rows'] == 1 else 'hold'} a date outside the years "
        f"1–9999 in {columns} (BC, or past 9999), or at their very ends (0001-01-01 00:00:00 or"
        " 9999-12-31 23:59:59.999999 UTC): PostgreSQL stores it, but Python's datetime — and so"
        " the migration, reading it — cannot hold the former, and the driver reads and writes"
        " the latter as -infinity / infinity. Fix them in the legacy database (set"
        f" {columns} to NULL, '-infinity', 'infinity' or a real date there) and run again"
    )


def _count(n: int, thing: str) -> str:
    return f"{n:,} {thing}" + ("" if n == 1 else "s")


async def beyond_half_precision(src: asyncpg.Connection, dim: int) -> str | None:
    """Why legacy embeddings (of the target's dimension ``dim``) with a value beyond ±65,504
    stop a run (naming up to 5 and how many), or None. Reads every embedding whose norm is
    that large (:func:`~docstore.migrate.legacy.beyond_half_query`): a thorough preflight's
    full scan, detoasting every embedding."""
    query = legacy.beyond_half_query(dim, legacy.sizes_vectors(src), id_range=False, limit=5)
    rows = await src.fetch(query, timeout=LONG_TIMEOUT)
    if not rows:
        return None
    return beyond_half_problem([r["id"] for r in rows], rows[0]["found"]) + " and run again"


# Legacy rows the copy takes as they are but docstore's own writes refuse (models.Document,
# embeddings.half_precision_problem): name, condition (over doc_embeddings; $1 the target's
# dimension, $2 the doc_type's UTF-8 bytes).
_REFUSED = {
    "an empty content": "content = ''",
    f"a content over {MAX_CONTENT_CHARS:,} characters": (  # octet_length: no decompression
        f"octet_length(content) > {MAX_CONTENT_CHARS}"
        f" AND char_length(content) > {MAX_CONTENT_CHARS}"
    ),
    "an empty doc_path": "doc_path = ''",
    "a negative token_count": "token_count < 0",
    f"a doc_path over {MAX_DOC_PATH_BYTES:,} bytes": (
        f"octet_length(doc_path) > {MAX_DOC_PATH_BYTES}"
    ),
    f"a key (doc_type, crate, doc_path) over {MAX_KEY_BYTES:,} bytes": (
        f"$2 + octet_length(crate_name) + octet_length(doc_path) > {MAX_KEY_BYTES}"
    ),
    "an all-zero embedding (no search finds it)": (
        "embedding IS NOT NULL AND vector_dims(embedding) = $1 AND vector_norm(embedding) = 0"
    ),
    "an embedding half precision loses (ANN and scoped searches miss it)": (
        "embedding IS NOT NULL AND vector_dims(embedding) = $1 AND CASE WHEN"
        f" vector_norm(embedding) > 0 AND vector_norm(embedding) <= {int(MAX_EMBEDDING_VALUE)}"
        " THEN l2_distance(embedding::halfvec::vector, embedding)"
        f" > {MAX_HALF_PRECISION_ERROR} * vector_norm(embedding) ELSE false END"
    ),
}


async def refused_by_docstore(src: asyncpg.Connection, dim: int, doc_type: str) -> list[str]:
    """Warnings for legacy documents the copy keeps as they are although docstore's own
    writes refuse them (re-upserting one unchanged raises ``ValidationError``): how many of
    each kind, and the first ids. A thorough preflight's full scan (every embedding read)."""
    columns = ", ".join(
        f"count(*) FILTER (WHERE {condition}),"
        f" (array_agg(id::text ORDER BY id) FILTER (WHERE {condition}))[1:3]"
        for condition in _REFUSED.values()
    )
    row = await src.fetchrow(
        f"SELECT {columns} FROM doc_embeddings", dim, len(doc_type.encode()), timeout=LONG_TIMEOUT
    )
    assert row is not None  # an aggregate: one row
    found = []
    for i, what in enumerate(_REFUSED):
        count, ids = row[2 * i], row[2 * i + 1]
        if count:
            shown = ", ".join(map(str, ids)) + (", …" if count > len(ids) else "")
            found.append(
                f"{_count(count, 'legacy document')} with {what} (doc_embeddings ids {shown}):"
                " copied as they are, but docstore's own writes refuse such a document"
                " (re-writing it unchanged raises ValidationError); fix it in the legacy"
                " database if that matters"
            )
    return found


def beyond_half_problem(ids: Sequence[int], found: int) -> str:
    """What is wrong with legacy embeddings holding values beyond ±65,504 (``ids``: the first
    of them, ``found`` in all) and how to fix it; preflight and the copy say the same."""
    shown = ", ".join(str(i) for i in ids) + (", …" if found > len(ids) else "")
    return (
        f"{_count(found, 'legacy embedding')} {'holds' if found == 1 else 'hold'} values "
        f"beyond ±{MAX_EMBEDDING_VALUE:,.0f} "
        f"(doc_embeddings ids {shown}): the legacy vector column takes them but docstore "
        "cannot store them, since every embedding is also kept in half precision "
        "(embedding_half, its search index), whose range ends there; docstore's own writes "
        "(documents.upsert) refuse such a vector too. Fix them in the legacy database "
        "(re-embed them, or SET embedding = NULL)"
    )


async def _source_findings(src: asyncpg.Connection, dim: int) -> tuple[Preflight, bool]:
    """The legacy database's findings, and whether its required tables are there and this
    role may read them (the other stages' checks then can)."""
    present = {
        r["name"]: r for r in await src.fetch(legacy.TABLES_PRESENT, list(legacy.LEGACY_TABLES))
    }
    tables = []
    for name in legacy.LEGACY_TABLES:
        if name in present:
            readable = present[name]["readable"]
            # a table this role can't read: the planner's estimate (blocked below anyway)
            rows = (
                await src.fetchval(f"SELECT count(*) FROM {name}")
                if readable
                else max(present[name]["estimate"], 0)
            )
            tables.append(TableInfo(name=name, rows=rows, bytes=present[name]["bytes"]))
    pre = Preflight(tables=tables, target_embedding_dim=dim)
    missing = [t for t in legacy.REQUIRED_TABLES if t not in present]
    if missing:
        pre.blocking.append(
            f"the source has no {', '.join(missing)} table: is it the legacy "
            "rust_docs_vectors database? (check --source / LEGACY_DATABASE_URL)"
        )
        return pre, False
    if problem := missing_grants([dict(present[t]) for t in legacy.LEGACY_TABLES if t in present]):
        pre.blocking.append(problem)
        if any(not present[t]["readable"] for t in legacy.REQUIRED_TABLES):
            return pre, False
    if columns := await legacy_columns.problems(src, present):
        pre.blocking.extend(columns)  # (what follows reads those columns)
        return pre, False
    facts = await src.fetchrow(legacy.DOCUMENT_FACTS)
    assert facts is not None
    pre.documents = facts["rows"]
    pre.null_embeddings = facts["null_embeddings"]
    pre.orphan_documents = facts["orphan_documents"]
    pre.max_id = facts["max_id"]
    if facts["unreadable_dates"]:
        pre.blocking.append(await _unreadable_dates(src, facts["unreadable_dates"]))
    small = [t for t in legacy.SMALL_TABLE_DATES if t in present and present[t]["readable"]]
    pre.blocking += [
        _unreadable_small(r) for r in await src.fetch(legacy.unreadable_dates_query(small))
    ]
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
            f"{_count(pre.orphan_documents, 'document')}"
            f" {'belongs' if pre.orphan_documents == 1 else 'belong'} to crates without a"
            f" crates row ({', '.join(pre.orphan_crates[:5])}); each still gets a source"
        )
    if high := await _ids_past_compat(src, present, pre.max_id):
        pre.warnings.append(
            f"legacy ids of {high} reach {COMPAT_NEW_IDS:,}: the compatibility views and "
            "LegacyDatabase show legacy ids only below that (rows created after the cutover "
            "are numbered from there), so legacy SQL or code naming those rows by id will "
            "not find them; everything else migrates as usual"
        )
    return pre, True


# docstore.compat.ids.NEW_ID_OFFSET (a module beside this one): where the compatibility layer
# numbers rows created after the cutover, so legacy ids must stay below it to be shown
COMPAT_NEW_IDS = 1_000_000_000


async def _ids_past_compat(
    src: asyncpg.Connection, present: Mapping[str, Any], max_document_id: int | None
) -> str:
    """Which legacy tables hold ids at or past :data:`COMPAT_NEW_IDS` ("" if none)."""
    high = ["doc_embeddings"] if (max_document_id or 0) >= COMPAT_NEW_IDS else []
    for table in ("crates", "population_jobs"):
        if table in present and present[table]["readable"]:
            top = await src.fetchval(f"SELECT max(id) FROM {table}")  # a fixed name
            if (top or 0) >= COMPAT_NEW_IDS:
                high.append(table)
    return ", ".join(high)
