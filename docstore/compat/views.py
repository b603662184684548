"""Legacy SQL on docstore's schema: read views ``crates``, ``doc_embeddings``, ``crate_stats``
and the function ``search_similar_docs(vector, varchar, integer)``, with the legacy column
names and types (pure SQL builders; :class:`~docstore.compat.LegacyDatabase` installs them).

Ids (:mod:`docstore.compat.ids`): a row that came from the legacy database keeps its legacy id
— a crate's ``crates.id`` (``config.legacy_id`` of its source), a document's
(``metadata.legacy_id``) — and a row created after the cutover shows its own id
``+ 1,000,000,000``: stable across calls, never colliding with a legacy id, and the same
:class:`~docstore.compat.LegacyDatabase` returns. ``doc_embeddings.crate_id`` is the crate's
id; a migrated row keeps the legacy row's ``crate_id`` (NULL where it was NULL; the legacy
schema let it name another crate than the row's ``crate_name``, and ``crate_stats`` counts the
row under that crate, as legacy did). ``crates.total_docs``/``total_tokens`` are NULL for a
recorded total beyond the legacy ``integer``, never an error for the whole view.

``search_similar_docs`` resolves docstore's tables, index and pgvector's operators in the
schemas it was installed against (its own ``SET search_path``), so a legacy client whose
search_path holds only the compatibility schema can call it. Like the legacy function it
ranks exactly (the whole crate, in the legacy order) when there is no HNSW index, when
``limit_results`` is NULL (no limit) or above 1,000, or when the query has a value beyond
half precision's ±65,504 (the index and the in-row copy are half precision).

On a distributed database (Citus) ids are ``bigint`` and a row written through a worker has
one from 2^48 up (:mod:`docstore.schema.citus`); the views keep the legacy ``integer``
columns, and an id beyond ``integer`` shows as NULL there (a document written through the
coordinator keeps ``id + 1,000,000,000``). Writes through the views are refused by rules
there (a function raising docstore's message) instead of ``INSTEAD OF`` triggers: Citus
plans a DML statement on a view over distributed tables before such a trigger could run, and
fails with its own "could not find valid entry for shard 0"; a rule rewrites the statement
before Citus sees it. An ``INSERT`` (also with ``RETURNING``) and a ``DELETE`` of every row get
docstore's message; an ``UPDATE`` or ``DELETE`` with a ``WHERE`` fails with Citus's or
PostgreSQL's own (see ``_write_rules``).

Two legacy writes get PostgreSQL's own error instead of docstore's message, on any database:
PostgreSQL refuses them before a trigger or rule could run, so no view can change that.
``INSERT … ON CONFLICT`` fails with "there is no unique or exclusion constraint matching the
ON CONFLICT specification" (SQLSTATE 42P10) and ``TRUNCATE`` with "… is not a table" (42809).
Both are still refused, nothing is written; port them to
:class:`~docstore.compat.LegacyDatabase` (``upsert_crate``, ``insert_embedding``,
``delete_crate_embeddings``).
"""

from __future__ import annotations

from collections.abc import Sequence

from docstore.compat.ids import (
    INT_MAX,
    NEW_ID_OFFSET,
    crate_id_sql,
    document_crate_id_sql,
    document_id_sql,
    integer_sql,
)
from docstore.embeddings import MAX_EMBEDDING_VALUE
from docstore.search.planner import (
    HALFVEC_ALWAYS_ROWS,
    HALFVEC_FILTER_ROWS,
    HALFVEC_MAX_SHARE,
    HALFVEC_SCOPE_ROWS,
    MAX_LIMIT,
    MIN_ANN_SHARE,
    MIN_CANDIDATES,
    MIN_HALFVEC_CANDIDATES,
)
from docstore.search.queries import (
    HALF_COLUMN,
    MAX_EF_SEARCH,
    half_query,
    index_expression,
    query_expression,
    unindexed,
    vector_index_name,
)
from docstore.search.tuning import CALIBRATION_K, SPREAD_RANK

VIEW_NAMES = ("crate_stats", "doc_embeddings", "crates")  # drop order
# what of install_sql's objects schema $1 holds: views named $2, functions $3, tables $4
INSTALLED = """
SELECT name FROM (
  SELECT viewname::text AS name FROM pg_views WHERE schemaname = $1 AND viewname = ANY($2::text[])
  UNION ALL
  SELECT p.proname || '()' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname = $1 AND p.proname = ANY($3::text[])
  UNION ALL
  SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = $1 AND c.relname = ANY($4::text[]) AND c.relkind = 'r'
) installed ORDER BY name
"""
GUARD_FUNCTION = "docstore_legacy_view_is_read_only"
RULE_FUNCTION = "docstore_legacy_view_refuse_write"
GUARD_TABLE = "docstore_legacy_view_guard"
"""Citus only: the table the views' write rules insert into (never a row: see _write_rules)."""
MESSAGE = (
    "% is a read-only docstore compatibility view over documents/document_sources: "
    "write through docstore.compat.LegacyDatabase (upsert_crate, insert_embedding, ...)"
)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _as_integer(column: str, offset: int = 0) -> str:
    """A ``bigint`` id as the legacy ``integer`` (NULL beyond it)."""
    shifted = f"{column} + {offset}" if offset else column
    return f"CASE WHEN {column} <= {INT_MAX - offset} THEN ({shifted})::integer END"


def total_sql(config: str, key: str) -> str:
    """SQL for a crate's recorded total ``key`` (``total_docs``/``total_tokens``) in the source
    config ``config``, as the legacy ``crates`` column: 0 when none is recorded (the legacy
    column's default), NULL when it is recorded as null (a legacy NULL, migrated) or is not an
    ``integer`` (beyond it, stored by ``refresh_stats`` or before the compat writes refused
    such totals: one such crate must not fail the view for every crate)."""
    text = f"{config}->>'{key}'"
    return f"CASE WHEN {config} ? '{key}' THEN {integer_sql(text)} ELSE 0 END"


def _new_id(column: str, distributed: bool) -> str:
    """A row's own id + :data:`NEW_ID_OFFSET` as the legacy ``integer``, NULL beyond it (a
    sequence past 1,147,483,647 — upserts use up ids — or Citus's bigint ids; ``distributed``
    kept for the callers' symmetry)."""
    del distributed
    return _as_integer(column, NEW_ID_OFFSET)


def install_sql(
    schema: str,
    doc_type: str,
    dim: int,
    *,
    distributed: bool = False,
    search_path: Sequence[str] = (),
) -> list[str]:
    """The statements that (re)create the views, their write guards and the function;
    ``distributed``: for a Citus database (bigint ids, rules as write guards);
    ``search_path``: the schemas of docstore's tables and of pgvector, where the function
    resolves names whatever its caller's search_path (empty: the caller's)."""
    s = _ident(schema)
    dt = doc_type.replace("'", "''")
    source_id = crate_id_sql("s", _new_id("s.id", distributed))
    crate_id = document_crate_id_sql("d", source_id)
    counted = "d.crate_name" if distributed else "d.id"  # d.id: NULL beyond integer there
    doc_id = document_id_sql("d", _new_id("d.id", distributed))
    # no cast: one source whose config holds a non-boolean orphan must not fail every crate
    not_orphan = "s.config->>'orphan' IS DISTINCT FROM 'true'"
    # the documents' bytes once a query (a subquery), not once a row; on Citus the shards'
    # (the coordinator's own table is an empty shell)
    sizer = "citus_total_relation_size" if distributed else "pg_total_relation_size"
    statements = [
        f"""CREATE OR REPLACE VIEW {s}.crates AS
SELECT {source_id} AS id, s.source_name::varchar(255) AS name,
       (s.config->>'version')::varchar(50) AS version,
       (s.last_populated AT TIME ZONE 'UTC')::timestamp AS last_updated,
       {total_sql("s.config", "total_docs")} AS total_docs,
       {total_sql("s.config", "total_tokens")} AS total_tokens
  FROM document_sources s
 WHERE s.doc_type = '{dt}' AND {not_orphan}""",
        f"""CREATE OR REPLACE VIEW {s}.doc_embeddings AS
SELECT {doc_id} AS id, {crate_id} AS crate_id,
       d.source_name::varchar(255) AS crate_name, d.doc_path, d.content,
       d.embedding::vector({int(dim)}) AS embedding, d.token_count, d.created_at
  FROM documents d
  LEFT JOIN document_sources s
    ON s.doc_type = d.doc_type AND s.source_name = d.source_name AND {not_orphan}
 WHERE d.doc_type = '{dt}'""",
        f"""CREATE OR REPLACE VIEW {s}.crate_stats AS
SELECT c.name, c.version, c.last_updated,
       COUNT({counted}) AS doc_count,
       COALESCE(SUM(d.token_count), 0) AS total_tokens,
       (SELECT pg_size_pretty({sizer}('documents'))) AS table_size
  FROM {s}.crates c
  LEFT JOIN {s}.doc_embeddings d ON c.id = d.crate_id
 GROUP BY c.id, c.name, c.version, c.last_updated""",
        f"""CREATE OR REPLACE FUNCTION {s}.{GUARD_FUNCTION}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{MESSAGE}', TG_TABLE_NAME USING ERRCODE = 'feature_not_supported';
END;
$$""",
    ]
    if distributed:
        statements += _write_rules(s)
    else:
        for view in ("crates", "doc_embeddings"):
            statements.append(
                "CREATE OR REPLACE TRIGGER docstore_read_only INSTEAD OF INSERT OR UPDATE OR"
                f" DELETE ON {s}.{view} FOR EACH ROW EXECUTE FUNCTION {s}.{GUARD_FUNCTION}()"
            )
    index = vector_index_name("cosine")
    scope = f"d.doc_type = '{dt}' AND d.source_name = target_crate_name"
    ann_order = (
        f"{index_expression(dim, 'd.embedding')} <=> {query_expression(dim, 'query_embedding')}"
    )
    half_order = unindexed(f"d.{HALF_COLUMN} <=> {half_query(dim, 'query_embedding')}")

    def ranked(source: str, tiebreak: str, *, bare: bool = False) -> str:
        """The legacy result columns of the best ``limit_results`` rows of ``source``: the
        distance computed once a row (in a select list and an ORDER BY it was computed, and
        the 12 KB vector read from TOAST, twice: 0.69x against 1.07x the legacy function),
        the legacy id only for the rows returned. ``bare``: then the crate's documents
        without an embedding up to the limit, as the legacy function lists them (its NULL
        distances last) — in the same statement, so one snapshot sees both (two statements
        of this VOLATILE function returned a row twice, or none, beside a writer)."""
        best = f"""SELECT d.id, d.source_name, d.doc_path, d.content, d.metadata,
                       {unindexed("d.embedding <=> query_embedding")} AS distance
                  FROM {source}
                 ORDER BY distance{tiebreak}
                 LIMIT limit_results"""
        if not bare:
            return f"""SELECT {doc_id}, d.source_name::varchar(255), d.doc_path, d.content,
               (1 - d.distance)::float
          FROM ({best}) d
         ORDER BY d.distance{tiebreak}"""
        # the second part runs only when the first is short (a one-time filter), and reads
        # no more rows than the limit
        return f"""WITH r AS MATERIALIZED ({best})
        SELECT {doc_id}, d.source_name::varchar(255), d.doc_path, d.content,
               (1 - d.distance)::float
          FROM (SELECT * FROM r UNION ALL
                (SELECT d.id, d.source_name, d.doc_path, d.content, d.metadata, NULL
                   FROM documents d
                  WHERE (SELECT count(*) FROM r) < limit_results
                    AND {scope} AND d.embedding IS NULL
                  LIMIT limit_results)) d
         ORDER BY d.distance NULLS LAST{tiebreak}
         LIMIT limit_results"""

    def candidates(order: str, count: str) -> str:
        return f"""(SELECT d.id, d.source_name, d.doc_path, d.content, d.metadata, d.embedding
                  FROM documents d
                 WHERE {scope} AND d.embedding IS NOT NULL
                 ORDER BY {order}
                 LIMIT {count}) d"""

    half_candidates = f"greatest(limit_results * 4, {MIN_HALFVEC_CANDIDATES})"
    ann_asked = f"greatest(limit_results * 4, {MIN_CANDIDATES})"
    by_half = f"""        RETURN QUERY
        {ranked(candidates(half_order, half_candidates), ", d.id", bare=True)};
"""
    if distributed:
        # Every crate by its in-row half-precision copy, re-ranked exactly: the HNSW scan needs
        # hnsw.ef_search and hnsw.iterative_scan on the shard, and Citus passes neither a
        # function's SET clauses nor set_config() on, and a SET LOCAL only inside a transaction
        # block, which a legacy caller's autocommit SELECT is not (measured: the shard scanned
        # with pgvector's defaults, recall 0.8 on a 3,500-document crate). The cost grows with
        # the crate: 13.6 ms at 3,500 documents, 68 ms at 14,500 on the test cluster.
        ranking = f"""    -- distributed: the in-row half-precision copy, the best re-ranked exactly
{by_half}"""
    else:
        ranking = f"""    SELECT count(*) INTO rows FROM (SELECT 1 FROM documents d WHERE {scope}
                                     LIMIT {HALFVEC_SCOPE_ROWS + 1}) s;
    SELECT reltuples INTO total FROM pg_class WHERE oid = 'documents'::regclass;
    IF rows <= {HALFVEC_ALWAYS_ROWS}
       OR (rows <= {HALFVEC_SCOPE_ROWS} AND (total <= 0 OR rows < {HALFVEC_MAX_SHARE} * total)) THEN
        -- a small crate: rank it by the in-row half-precision copy, re-rank the best exactly
        -- (the rule and its measurements: docstore.search.planner.halfvec_scope)
{by_half}    ELSE
        IF has_table_privilege('docstore_search_calibration', 'SELECT') THEN  -- else: none
            SELECT c.calibration INTO tuned FROM docstore_search_calibration c
             WHERE c.metric = 'cosine';
        END IF;
        IF rows > {HALFVEC_SCOPE_ROWS} THEN
            -- past the count, the planner's estimate of the crate (a capped count would
            -- make every crate of a large table look like a small share of it), from the
            -- extended statistics on (doc_type, source_name) (docstore.search.scopes)
            EXECUTE 'EXPLAIN (FORMAT JSON) SELECT 1 FROM documents d'
                    ' WHERE d.doc_type = $1 AND d.source_name = $2'
               INTO plan USING '{dt}'::text, target_crate_name;
            rows := greatest(rows, {_PLAN_ROWS});
        END IF;
        IF rows <= {HALFVEC_FILTER_ROWS} AND ((total > 0 AND rows < {MIN_ANN_SHARE} * total)
                OR (tuned->>'met_target')::boolean IS FALSE) THEN
            -- under {MIN_ANN_SHARE:.0%} of the table, or a calibration that missed its target: the
            -- in-row copy too, up to {HALFVEC_FILTER_ROWS:,} rows (planner.halfvec_scope)
    {by_half}            RETURN;
        END IF;
        -- ANN: candidates from the HNSW index (the indexed halfvec expression), exact re-rank;
        -- hnsw.ef_search as calibrated for this database (docstore.search.tuning; a beam
        -- limit_results / {CALIBRATION_K} times as wide above {CALIBRATION_K} hits), else 200
        ef := coalesce((tuned->>'ef_search')::int, 200);
        IF tuned IS NOT NULL AND limit_results > {CALIBRATION_K} THEN
            ef := least({MAX_EF_SEARCH}, ceil(ef * limit_results / {CALIBRATION_K}.0)::int);
        END IF;
        wide := coalesce((tuned->>'escalation_ef_search')::int, 0);
        asked := {ann_asked};
        FOR pass IN 1..2 LOOP
            PERFORM set_config('hnsw.ef_search', ef::text, true);
            -- the candidates' ids first: an iterative scan stops after hnsw.max_scan_tuples
            -- index tuples, so for a crate that is a small share of a large table it can
            -- return fewer candidates than asked for (and than the crate holds), missing near
            -- ones or even rows the legacy function returns; the crate is then ranked on its
            -- in-row copy
            SELECT array_agg(c.id ORDER BY c.half, c.id), array_agg(c.half ORDER BY c.half, c.id)
              INTO ann_ids, spreads
              FROM (SELECT d.id, {ann_order} AS half FROM documents d
                     WHERE {scope} AND d.embedding IS NOT NULL
                     ORDER BY {ann_order} LIMIT asked) c;
            ann_ids := coalesce(ann_ids, '{{}}');
            IF cardinality(ann_ids) < least(asked, rows) THEN
    {by_half}            RETURN;
            END IF;
            -- the calibrated second pass (docstore.search.vector): candidates as flat as
            -- those of a graph search lost far from the query's neighbourhood (the
            -- {SPREAD_RANK}th's distance minus the best's under escalate_below) are searched
            -- again with the wider escalation_ef_search, as store.search does
            EXIT WHEN pass = 2 OR wide <= ef OR cardinality(ann_ids) = 0
                   OR spreads[least({SPREAD_RANK}, cardinality(spreads))] - spreads[1]
                      >= coalesce((tuned->>'escalate_below')::float8, '-Infinity');
            first_ids := ann_ids;  -- merged with the second pass's, as store.search does
            asked := least(greatest(asked, wide / 4), {MAX_LIMIT});
            ef := greatest(wide, asked);
        END LOOP;
        RETURN QUERY
        {ranked("documents d WHERE d.id = ANY(first_ids || ann_ids)", ", d.id", bare=True)};
    END IF;
"""
    path = ", ".join(dict.fromkeys(_ident(p) for p in search_path))  # in order, once each
    set_path = f"SET search_path = {path}, pg_temp\n" if path else ""
    statements.append(
        f"""CREATE OR REPLACE FUNCTION {s}.search_similar_docs(
    query_embedding   vector({int(dim)}),
    target_crate_name VARCHAR(255),
    limit_results     INTEGER DEFAULT 5
) RETURNS TABLE (id INTEGER, crate_name VARCHAR(255), doc_path TEXT, content TEXT,
                 similarity FLOAT)
LANGUAGE plpgsql
SET hnsw.ef_search = 200 SET hnsw.iterative_scan = relaxed_order
SET enable_seqscan = off SET enable_sort = off
{set_path}AS $$
DECLARE
    indexed boolean;
    rows float8;
    total float8;
    plan json;
    ann_ids bigint[];
    first_ids bigint[] := '{{}}';
    spreads float8[];
    tuned jsonb;
    ef int;
    wide int;
    asked int;
BEGIN
    SELECT i.indisvalid INTO indexed FROM pg_index i
     WHERE i.indexrelid = to_regclass('{index}');
    IF indexed IS NOT TRUE OR limit_results IS NULL OR limit_results > {MAX_LIMIT}
       OR vector_dims(query_embedding) <> {int(dim)} OR {_beyond_half("query_embedding")} THEN
        -- no index, no limit (LIMIT NULL), a limit beyond ANN's, a query of another dimension
        -- (the legacy function's error, or no row for an empty crate) or one half precision
        -- cannot hold: exact, as the legacy function (same order, no tie-break)
        RETURN QUERY
        {ranked(f"documents d WHERE {scope}", "")};
        RETURN;
    END IF;
{ranking}END;
$$"""
    )
    return statements


_PLAN_ROWS = """(SELECT max(r::text::float8) FROM jsonb_path_query(plan::jsonb,
                        '$.** ? (@."Relation Name" == "documents")."Plan Rows"') r)"""


def _beyond_half(param: str) -> str:
    """Does the query vector ``param`` hold a value the ``halfvec`` cast would refuse? (The
    norm first: a cheap bound that is almost always below the limit.)"""
    top = float(MAX_EMBEDDING_VALUE)
    return (
        f"(vector_norm({param}) > {top} AND"
        f" (SELECT max(abs(v)) FROM unnest({param}::real[]) v) > {top})"
    )


def _write_rules(s: str) -> list[str]:
    """Rules that turn a write on a view into a call raising docstore's message (Citus: see
    the module's docstring); the function is evaluated once, on the coordinator.

    ``INSERT … RETURNING`` (legacy code inserting a row and reading its id back) needs a rule
    whose action returns the view's columns, so the ``INSERT`` rule's action is an insert into
    :data:`GUARD_TABLE` of that call's result: it raises before a row exists (and the table's
    ``CHECK (false)`` would refuse one); its ``RETURNING`` list, NULLs of the view's column
    types, is read from the catalog once the view exists. ``UPDATE``/``DELETE`` rules stay a
    ``SELECT`` of the call: Citus fails on such an action once the statement's ``WHERE`` is
    attached to it ("could not find attribute 2 in subquery targetlist"), so a
    ``RETURNING`` there still gets PostgreSQL's own refusal."""
    statements = [
        f"""CREATE OR REPLACE FUNCTION {s}.{RULE_FUNCTION}(view text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{MESSAGE}', view USING ERRCODE = 'feature_not_supported';
END;
$$""",
        f"CREATE TABLE IF NOT EXISTS {s}.{GUARD_TABLE} (refused text CHECK (false))",
    ]
    lit = s.replace("'", "''")  # the schema's identifier as a string literal's content
    tag = "$docstore$"
    while tag in s:  # a dollar quote the schema's name cannot end
        tag = tag[:-1] + "_$"
    for view in ("crates", "doc_embeddings"):
        statements.append(
            f"""DO {tag}
DECLARE
    sch constant text := '{lit}';  -- a format() argument: a % in the name stays a character
    cols text;
BEGIN
    SELECT string_agg(format('NULL::%s', format_type(atttypid, atttypmod)), ', '
                      ORDER BY attnum)
      INTO cols
      FROM pg_attribute
     WHERE attrelid = (sch || '.{view}')::regclass AND attnum > 0 AND NOT attisdropped;
    EXECUTE format('CREATE OR REPLACE RULE docstore_read_only_insert AS ON INSERT TO %s.{view}'
                   ' DO INSTEAD INSERT INTO %s.{GUARD_TABLE} (refused)'
                   ' VALUES (%s.{RULE_FUNCTION}(%L)::text) RETURNING %s',
                   sch, sch, sch, '{view}', cols);
END
{tag}"""
        )
        for event in ("UPDATE", "DELETE"):
            statements.append(
                f"CREATE OR REPLACE RULE docstore_read_only_{event.lower()} AS ON {event}"
                f" TO {s}.{view} DO INSTEAD SELECT {s}.{RULE_FUNCTION}('{view}')"
            )
    return statements


def function_signature(schema: str, dim: int) -> str:
    """``search_similar_docs``'s qualified name and argument types, as DDL names it."""
    return f"{_ident(schema)}.search_similar_docs(vector({int(dim)}), varchar, integer)"


def uninstall_sql(schema: str, dim: int) -> list[str]:
    s = _ident(schema)
    return [
        f"DROP FUNCTION IF EXISTS {function_signature(schema, dim)}",
        *(f"DROP VIEW IF EXISTS {s}.{view}" for view in VIEW_NAMES),
        f"DROP FUNCTION IF EXISTS {s}.{GUARD_FUNCTION}()",
        f"DROP FUNCTION IF EXISTS {s}.{RULE_FUNCTION}(text)",
        f"DROP TABLE IF EXISTS {s}.{GUARD_TABLE}",
    ]


# The schemas of documents and of pgvector, in that order: search_similar_docs' search_path.
FUNCTION_SEARCH_PATH = """
SELECT nspname FROM (
  SELECT 1 AS o, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.oid = 'documents'::regclass
  UNION ALL
  SELECT 2, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
   WHERE e.extname = 'vector'
) p ORDER BY o
"""

# Real tables (not our views) with a legacy name in the schema: installing would shadow them.
LEGACY_TABLES_IN_SCHEMA = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname IN ('crates', 'doc_embeddings', 'crate_stats')
   AND c.relkind <> 'v'
"""
