"""The legacy ``rust_docs_vectors`` database: what it holds, and SQL that reads it in the
target's row shapes (pure builders; the mapping is documented in ``docs/migration.md``).

Facts from ``legacy_schema.sql``: embeddings may be NULL; older deployments stored 1,536-dim
vectors; ``crates.version``/``last_updated`` may be NULL; ``doc_embeddings.crate_id`` may be
NULL (``crate_name`` is the real key); ``crate_configs`` and ``population_jobs`` exist only in
some deployments.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from docstore.embeddings import MAX_EMBEDDING_VALUE

LEGACY_TABLES = ("crates", "doc_embeddings", "crate_configs", "population_jobs")
REQUIRED_TABLES = ("crates", "doc_embeddings")
MIGRATED_FROM = "rust_docs_vectors"
# The target's rows that a migration of doc_type $1 wrote, and their legacy id: what every
# stage that matches target rows to legacy ranges selects (the copy's range delete, the delta
# pass, checkpoints, validation's stamps and digests). 1-18 digits always fit a bigint, so a
# row some other writer gave a longer legacy_id is not one of them instead of failing the cast.
MIGRATED_ROWS = (
    f"doc_type = $1 AND metadata->>'migrated_from' = '{MIGRATED_FROM}'"
    " AND metadata->>'legacy_id' ~ '^[0-9]{1,18}$'"
)
LEGACY_KEY = "(metadata->>'legacy_id')::bigint"
# Of the target's documents of a doc_type, those no migration wrote (the app's, after the
# cutover): validation counts them and compares nothing of them.
WRITTEN_IN_DOCSTORE = (
    "NOT coalesce(" + MIGRATED_ROWS.removeprefix("doc_type = $1 AND ") + ", false)"
)
# The legacy search_similar_docs query over the rows that have an embedding of dimension $3
# (validation's search parity).
PARITY_SEARCH = """
SELECT d.doc_path, d.embedding <=> $1::vector AS distance
  FROM doc_embeddings d
 WHERE d.crate_name = $2 AND vector_dims(d.embedding) = $3
 ORDER BY d.embedding <=> $1::vector, d.id LIMIT $4
"""

# The legacy DDL (a verbatim copy of the deployed schema), used to build legacy-shaped
# databases for rollback, tests and benchmarks.
LEGACY_SCHEMA_SQL = (resources.files("docstore.migrate") / "legacy_schema.sql").read_text(
    encoding="utf-8"
)
# The part without the optional population tables.
LEGACY_CORE_SCHEMA_SQL = LEGACY_SCHEMA_SQL.split("-- Optional tables", 1)[0].rsplit("\n-- -", 1)[0]

LEGACY_OPTIONAL_SCHEMA_SQL = LEGACY_SCHEMA_SQL[len(LEGACY_CORE_SCHEMA_SQL) :]

# ``readable``: whether this session's role may SELECT from the table (a read-only role may
# have been granted only some of them); ``grant_on`` names it as a GRANT would.
TABLES_PRESENT = """
SELECT c.relname AS name, c.reltuples::bigint AS estimate,
       pg_total_relation_size(c.oid) AS bytes,
       has_table_privilege(c.oid, 'SELECT') AS readable,
       CASE WHEN n.nspname = 'public' THEN quote_ident(c.relname)
            ELSE quote_ident(n.nspname) || '.' || quote_ident(c.relname) END AS grant_on,
       quote_ident(current_user) AS role
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND c.relname = ANY($1::text[])
   AND n.nspname = ANY(current_schemas(false))
"""


def sizes_vectors(conn: Any) -> bool:
    """Whether the server has ``pg_column_compression`` (PostgreSQL 14+), which
    :func:`dims_sql` needs to read a vector's dimension without detoasting it."""
    return bool(conn.get_server_version() >= (14,))


def dims_sql(expr: str, dim: int, cheap: bool) -> str:
    """``vector_dims(expr)``, without reading the vector when it is stored uncompressed out
    of line with exactly ``dim`` dimensions (``cheap``: see :func:`sizes_vectors`).

    Such a value's ``pg_column_size`` is its TOAST pointer's stored size, 4 + 4·dim (pgvector's
    dim/unused header and the floats), read from the row itself; every other value (another
    size, compressed, or a dimension small enough to be stored in line, where the size is
    ambiguous) is measured with ``vector_dims``. Saves detoasting 12 KB a row at 3,072 dims."""
    if not cheap or dim <= 2040:
        return f"vector_dims({expr})"
    return (
        f"(CASE WHEN pg_column_compression({expr}) IS NULL"
        f" AND pg_column_size({expr}) = {4 + 4 * int(dim)} THEN {int(dim)}"
        f" ELSE vector_dims({expr}) END)"
    )


def embedding_dims_query(dim: int, cheap: bool) -> str:
    """Rows per embedding dimension of ``doc_embeddings`` (NULL embeddings left out)."""
    return (
        f"SELECT {dims_sql('embedding', dim, cheap)} AS dims, count(*) AS rows"
        " FROM doc_embeddings WHERE embedding IS NOT NULL GROUP BY 1 ORDER BY 1"
    )


def beyond_half_query(dim: int, cheap: bool, *, id_range: bool, limit: int) -> str:
    """The first ``limit`` legacy ids (and, in ``found``, how many there are) whose embedding of
    the target's dimension holds a value beyond ±65,504 (:data:`MAX_EMBEDDING_VALUE`), which the
    legacy ``vector`` takes but half precision cannot hold: the target's ``embedding_half``
    refuses the row, and so does docstore's own upsert. ``id_range``: only ids ``($1, $2]``
    (one chunk's).

    Exact (every value is looked at) but only for rows whose norm is beyond the limit, which
    any such value makes it (``vector_norm`` sums in double precision); embeddings of another
    dimension are not copied (see :func:`documents_copy_query`) and are left out. Detoasts
    every embedding it reads: only after a chunk failed, or in a thorough preflight."""
    top = int(MAX_EMBEDDING_VALUE)
    within = " AND id > $1 AND id <= $2" if id_range else ""
    return (
        "SELECT id, count(*) OVER () AS found FROM doc_embeddings"
        f" WHERE embedding IS NOT NULL{within}"
        f" AND CASE WHEN vector_norm(embedding) > {top}"
        f" AND {dims_sql('embedding', dim, cheap)} = {int(dim)}"
        f" THEN EXISTS (SELECT 1 FROM unnest(embedding::real[]) x WHERE abs(x) > {top})"
        " ELSE false END"
        f" ORDER BY id LIMIT {int(limit)}"
    )


def per_crate_sql(dim: int, cheap: bool) -> str:
    """One scan for validation's per-crate facts, in crate-name order: ``documents``,
    ``unusable`` (an embedding the target can't hold: NULL, or of another dimension) and
    ``sample`` (the lowest id with a usable embedding, search parity's first candidate; NULL
    when there is none)."""
    dims = dims_sql("embedding", dim, cheap)
    return f"""
SELECT crate_name AS source_name, count(*) AS documents,
       count(*) FILTER (WHERE embedding IS NULL OR {dims} <> {int(dim)}) AS unusable,
       min(id) FILTER (WHERE embedding IS NOT NULL AND {dims} = {int(dim)}) AS sample
  FROM doc_embeddings GROUP BY 1 ORDER BY 1
"""


# The legacy keys the migration relies on, (table, columns), each enforced by a unique
# constraint in the deployed schema: a source per crate name (every document joins its crate
# by name), a document per (crate_name, doc_path) (docstore's key), chunks as id ranges.
UNIQUE_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("crates", ("name",)),
    ("doc_embeddings", ("crate_name", "doc_path")),
    ("doc_embeddings", ("id",)),
)
# Whether a valid unique index (a primary key's, a unique constraint's, or one on a subset of
# the columns) enforces each key: $1 the tables, $2 the columns joined by ','. The catalog
# only. Partial and expression indexes don't count.
KEYS_ENFORCED = """
SELECT k.tbl, k.cols, EXISTS (
    SELECT 1 FROM pg_index i
     WHERE i.indrelid = to_regclass(k.tbl) AND i.indisunique AND i.indisvalid
       AND i.indpred IS NULL AND i.indexprs IS NULL
       AND ARRAY(SELECT a.attname::text
                   FROM unnest(i.indkey) WITH ORDINALITY AS u(attnum, n)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum
                  WHERE u.n <= i.indnkeyatts) <@ string_to_array(k.cols, ',')
) AS enforced
  FROM unnest($1::text[], $2::text[]) AS k(tbl, cols)
"""


def duplicates_query(table: str, columns: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` values of ``columns`` that more than one row of ``table`` holds (with
    ``rows`` and the first five ``ids`` of those rows), and in ``keys`` how many such values
    there are. A scan of the key columns: run only when no unique index enforces them."""
    key = ", ".join(columns)
    return (
        f"SELECT {key}, count(*) AS rows, (array_agg(id::text ORDER BY id))[1:5] AS ids,"
        f" count(*) OVER () AS keys FROM {table} GROUP BY {key} HAVING count(*) > 1"
        f" ORDER BY {key} LIMIT {int(limit)}"
    )


def unreadable_date(column: str, *, zone: bool = False, ends: bool = False) -> str:
    """Whether ``column`` holds a value PostgreSQL stores and Python's datetime (the years
    1-9999; a ``timestamptz`` (``zone``) read in UTC) cannot hold. ±infinity reads fine.
    ``ends``: also the very first and last instants Python holds, which asyncpg reads
    ±infinity as and writes back as ±infinity (what is read into Python and written again)."""
    utc = "+00" if zone else ""
    first, last = ("<=", "0001-01-01 00:00:00") if ends else ("<", "0001-01-01 00:00:00")
    after = "9999-12-31 23:59:59.999999" if ends else "10000-01-01 00:00:00"
    return f"isfinite({column}) AND ({column} {first} '{last}{utc}' OR {column} >= '{after}{utc}')"


UNREADABLE_DATE = unreadable_date("created_at")
# The other legacy tables' date columns (crates' is a timestamp, the others' timestamptz),
# which the sources stage reads into Python.
SMALL_TABLE_DATES: dict[str, tuple[tuple[str, ...], bool]] = {
    "crates": (("last_updated",), False),
    "crate_configs": (("last_checked", "last_populated", "created_at", "updated_at"), True),
    "population_jobs": (("started_at", "completed_at", "created_at"), True),
}


def unreadable_dates_query(tables: Sequence[str]) -> str:
    """For each of ``tables`` (of :data:`SMALL_TABLE_DATES`) holding an unreadable date: how
    many rows, the first 5 ids and the columns that hold one. One statement, one round trip."""
    parts = []
    for table in tables:
        names, zone = SMALL_TABLE_DATES[table]
        tests = [unreadable_date(c, zone=zone, ends=True) for c in names]
        columns = ", ".join(
            f"CASE WHEN bool_or({t}) THEN '{c}' END" for c, t in zip(names, tests, strict=True)
        )
        parts.append(
            f"SELECT '{table}' AS name, count(*) AS rows,"
            " (array_agg(id::text ORDER BY id))[1:5] AS ids,"
            f" array_remove(ARRAY[{columns}], NULL) AS columns"
            f" FROM {table} WHERE {' OR '.join(f'({t})' for t in tests)} HAVING count(*) > 0"
        )
    return " UNION ALL ".join(parts)


# A hashed outer join, not NOT EXISTS per row: that ran as a sub-plan scanning crates for each
# document (13 ms of 14 for 4,133 documents of 83 crates; 1.4 ms this way).
DOCUMENT_FACTS = f"""
SELECT count(*) AS rows,
       count(*) FILTER (WHERE d.embedding IS NULL) AS null_embeddings,
       coalesce(max(d.id), 0) AS max_id,
       count(*) FILTER (WHERE c.name IS NULL) AS orphan_documents,
       count(*) FILTER (WHERE {UNREADABLE_DATE}) AS unreadable_dates
  FROM doc_embeddings d LEFT JOIN (SELECT DISTINCT name FROM crates) c ON c.name = d.crate_name
"""
UNREADABLE_DATES = f"SELECT id FROM doc_embeddings WHERE {UNREADABLE_DATE} ORDER BY id LIMIT 6"

CRATES_WITHOUT_DOCUMENTS = """
SELECT c.name FROM crates c
 WHERE NOT EXISTS (SELECT 1 FROM doc_embeddings d WHERE d.crate_name = c.name)
 ORDER BY c.name
"""

ORPHAN_CRATE_NAMES = """
SELECT DISTINCT d.crate_name FROM doc_embeddings d
 WHERE NOT EXISTS (SELECT 1 FROM crates c WHERE c.name = d.crate_name)
 ORDER BY 1
"""


# The chunks of doc_embeddings.id around the ranges an earlier run of the same migration
# checkpointed. $2 holds [first + 1, last + 1, ...] of those ranges in order (width_bucket's
# thresholds): odd buckets are those ranges, each one chunk whatever it holds now; even
# buckets are the ids before, between and after them, cut into parts of $1 rows. One row per
# non-empty chunk: its bucket, its last id and its rows. With no ranges (a first run), every
# id is in bucket 0: parts of $1 rows from the first id.
CHUNKS_AROUND = """
SELECT bucket, max(id) AS high, count(*) AS rows FROM (
    SELECT id, bucket, (row_number() OVER (PARTITION BY bucket ORDER BY id) - 1) / $1 AS part
      FROM (SELECT id, width_bucket(id, $2::text[]::bigint[]) AS bucket
              FROM doc_embeddings) s
) s GROUP BY bucket, CASE WHEN bucket % 2 = 1 THEN 0 ELSE part END ORDER BY bucket, high
"""


# A cheap version stamp of the rows in an id range (no detoasting): any insert, update or
# delete in the range changes it.
CHUNK_VERSION = """
SELECT md5(string_agg(id::text || ':' || xmin::text, ',' ORDER BY id))
  FROM doc_embeddings WHERE id > $1 AND id <= $2
"""
# The stamp, the row count and the ids of a range (one round trip after a range's COPY).
CHUNK_FACTS = """
SELECT md5(string_agg(id::text || ':' || xmin::text, ',' ORDER BY id)) AS stamp,
       count(*) AS rows, array_agg(id::text ORDER BY id) AS ids
  FROM doc_embeddings WHERE id > $1 AND id <= $2
"""
# CHUNK_VERSION of every range at once: $1 holds each range's first id and, last, the last
# range's last id + 1 (width_bucket's thresholds); bucket i is range i, 0 and n + 1 are the
# ids before the first and after the last range.
RANGE_STAMPS = """
SELECT width_bucket(id, $1::text[]::bigint[]) AS chunk, count(*) AS rows,
       md5(string_agg(id::text || ':' || xmin::text, ',' ORDER BY id)) AS checksum
  FROM doc_embeddings GROUP BY 1
"""


def documents_copy_query(doc_type_param: str, dim: int, cheap: bool = False) -> str:
    """``doc_embeddings`` rows ``(lo, hi]`` shaped exactly like the target's ``documents``
    columns (:data:`DOCUMENT_COLUMNS`), cast so binary COPY can pass them straight through.

    Embeddings of another dimension than the target's become NULL (reported by preflight and
    listed in the report); ``$2``/``$3`` are the id range. The embedding is passed as stored
    (the target's ``vector(dim)`` checks the dimension again on receipt): no cast, no second
    detoasting. ``cheap``: see :func:`dims_sql`.
    """
    return f"""
SELECT {doc_type_param}::varchar(50), d.crate_name::varchar(255), d.doc_path, d.content,
       jsonb_strip_nulls(jsonb_build_object(
           'crate_name', d.crate_name, 'crate_version', c.version, 'legacy_id', d.id,
           'legacy_crate_id', d.crate_id, 'migrated_from', '{MIGRATED_FROM}')),
       CASE WHEN {dims_sql("d.embedding", dim, cheap)} = {int(dim)} THEN d.embedding END,
       d.token_count, d.created_at
  FROM doc_embeddings d LEFT JOIN crates c ON c.name = d.crate_name
 WHERE d.id > $2 AND d.id <= $3
 ORDER BY d.id"""


DOCUMENT_COLUMNS = (
    "doc_type",
    "source_name",
    "doc_path",
    "content",
    "metadata",
    "embedding",
    "token_count",
    "created_at",
)

# crates (+ crate_configs when present) as document_sources rows. The lowest-id config of a
# name fills the top-level keys; every config of the name is kept under "crate_configs".
SOURCES_QUERY = """
WITH names AS (
    SELECT name FROM crates UNION SELECT DISTINCT crate_name FROM doc_embeddings
    __CONFIG_NAMES__
)
SELECT n.name AS source_name,
       c.id AS legacy_id, c.version, c.last_updated, c.total_docs, c.total_tokens
  FROM names n LEFT JOIN crates c ON c.name = n.name
 ORDER BY n.name
"""


def sources_query(with_configs: bool) -> str:
    """:data:`SOURCES_QUERY`; with ``crate_configs`` present, its names get sources too
    (configured crates that were never populated)."""
    names = "UNION SELECT name FROM crate_configs" if with_configs else ""
    return SOURCES_QUERY.replace("__CONFIG_NAMES__", names)


# The config keys the Migrator derives from the legacy tables: a re-copy replaces exactly
# these (keys others added to a migrated source's config are kept), validation compares them.
SOURCE_CONFIG_KEYS = (
    "migrated_from",
    "orphan",
    "legacy_id",
    "version",
    "total_docs",
    "total_tokens",
    "last_updated",
    "version_spec",
    "current_version",
    "features",
    "expected_docs",
    "crate_configs",
)

CONFIGS_QUERY = """
SELECT id, name, version_spec, current_version, features, expected_docs, enabled,
       last_checked, last_populated, created_at, updated_at
  FROM crate_configs ORDER BY name, id
"""

JOBS_QUERY = """
SELECT j.id, j.crate_config_id, cc.name AS source_name, cc.version_spec, j.status,
       j.started_at, j.completed_at, j.error_message, j.docs_populated, j.created_at
  FROM population_jobs j LEFT JOIN crate_configs cc ON cc.id = j.crate_config_id
 ORDER BY j.id
"""


# The parts of a row digest, in order (validation names the parts that differ).
DIGEST_FIELDS = (
    "legacy_id",
    "source_name",
    "doc_path",
    "content",
    "token_count",
    "created_at",
    "embedding",
    "metadata.legacy_crate_id",
    "metadata.crate_name",
)


def row_digest_sql(
    *,
    id_expr: str,
    crate_expr: str,
    embedding_expr: str,
    crate_id_expr: str,
    meta_crate_expr: str,
) -> str:
    """A text digest of one document row, identical on both sides when the row survived:
    the :data:`DIGEST_FIELDS`, joined by ``|`` (none of the parts can contain one).

    ``created_at`` is formatted with its era (``to_char`` alone prints 6 BC as 0006) and
    ``infinity`` / ``-infinity`` as themselves (``to_char`` gives NULL for them, which
    hashed like a NULL timestamp); neither form depends on the session's DateStyle.

    The embedding is hashed in pgvector's binary form (``vector_send``): the exact float bits,
    and ~10x cheaper than formatting 3,072 floats as text. ``meta_crate_expr`` is ``'='``
    when ``metadata.crate_name`` is the row's crate (always, on the legacy side: no second
    md5 per row there). ``metadata.crate_version`` is not in it: it is the crate's, checked
    per source (one aggregate instead of a join per row).
    """
    return (
        f"concat_ws('|', {id_expr}, md5({crate_expr}), md5(doc_path), md5(content),"
        " coalesce(token_count::text, '-'),"
        " coalesce(CASE WHEN isfinite(created_at)"
        " THEN to_char(created_at, 'YYYY-MM-DD HH24:MI:SS.US BC') ELSE created_at::text END,"
        " '-'),"
        f" coalesce(md5(vector_send({embedding_expr})), '-'),"
        f" coalesce({crate_id_expr}, '-'), {meta_crate_expr})"
    )


def legacy_digest_sql(dim: int, cheap: bool = False) -> str:
    """Per-row digests of ``doc_embeddings``, keyed by legacy id."""
    dims = dims_sql("embedding", dim, cheap)
    digest = row_digest_sql(
        id_expr="id",
        crate_expr="crate_name",
        embedding_expr=f"(CASE WHEN {dims} = {int(dim)} THEN embedding END)",
        crate_id_expr="crate_id::text",
        meta_crate_expr="'='",  # metadata.crate_name is derived from crate_name
    )
    return (
        f"SELECT id AS key, crate_name AS source_name, doc_path, {digest} AS digest"
        " FROM doc_embeddings"
    )


def target_digest_sql() -> str:
    """Per-row digests of migrated ``documents`` (``$1`` doc_type), keyed by legacy id."""
    # jsonb's text of the values, not ->>'s: the string "42" is not the number 42
    digest = row_digest_sql(
        id_expr="(metadata->'legacy_id')::text",
        crate_expr="source_name",
        embedding_expr="embedding",
        crate_id_expr="(metadata->'legacy_crate_id')::text",
        meta_crate_expr="CASE WHEN metadata->'crate_name' = to_jsonb(source_name::text) THEN '='"
        " ELSE coalesce(md5((metadata->'crate_name')::text), '-') END",
    )
    return (
        f"SELECT {LEGACY_KEY} AS key, source_name, doc_path,"
        f" {digest} AS digest FROM documents WHERE {MIGRATED_ROWS}"
    )


def digest_differences(legacy_digest: str, target_digest: str) -> list[str]:
    """The :data:`DIGEST_FIELDS` in which two row digests differ."""
    a, b = legacy_digest.split("|"), target_digest.split("|")
    if len(a) != len(DIGEST_FIELDS) or len(b) != len(DIGEST_FIELDS):
        return ["row"]
    return [name for name, x, y in zip(DIGEST_FIELDS, a, b, strict=True) if x != y]


def chunked_checksums_sql(digest_query: str, chunk: int) -> str:
    """md5 over each ``chunk``-wide key range of a digest query, in key order."""
    return (
        f"SELECT key / {int(chunk)} AS chunk, count(*) AS rows,"
        " md5(string_agg(digest, ',' ORDER BY key)) AS checksum"
        f" FROM ({digest_query}) r GROUP BY 1 ORDER BY 1"
    )


# -- rollback: docstore → legacy shapes ----------------------------------------------------


def legacy_integer_sql(expr: str) -> str:
    """``expr`` (a text id from a document's metadata) as the legacy ``integer`` it names, or
    NULL when it is not one: any decimal of at most 10 digits, optionally negative, within
    ``integer``'s range (the nested CASE keeps the cast from seeing anything else)."""
    return (
        f"CASE WHEN {expr} ~ '^-?[0-9]{{1,10}}$' THEN"
        f" CASE WHEN ({expr})::bigint BETWEEN -2147483648 AND 2147483647"
        f" THEN ({expr})::integer END END"
    )


# documents of doc_type $1 shaped exactly like doc_embeddings' columns, for binary COPY: the
# legacy ids a migration recorded (every ``integer``, up to 2,147,483,647), NULL for documents
# written in docstore.
ROLLBACK_DOCUMENTS_QUERY = f"""
SELECT CASE WHEN metadata->>'migrated_from' = '{MIGRATED_FROM}'
            THEN {legacy_integer_sql("metadata->>'legacy_id'")} END,
       {legacy_integer_sql("metadata->>'legacy_crate_id'")},
       source_name::varchar(255), doc_path, content, embedding, token_count, created_at
  FROM documents WHERE doc_type = $1 ORDER BY id"""

ROLLBACK_COLUMNS = (
    "id",
    "crate_id",
    "crate_name",
    "doc_path",
    "content",
    "embedding",
    "token_count",
    "created_at",
)
