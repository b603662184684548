"""Search SQL builders: pure functions from search options to ``(sql, params)``.

Nothing here touches a database; :mod:`docstore.search.api` runs what these build. Every
value is a bound parameter; the only things formatted into SQL are fixed fragments from the
tables below and integers (the vector dimension) that were checked first.

Vector search has three shapes:

* **exact** — ``ORDER BY (embedding <op> $1) + 0`` over every row: a full scan (no index can
  serve the ``+ 0``), always correct;
* **ann** — the inner query asks the HNSW index for ``candidates`` rows ordered by exactly
  the indexed expression (``embedding::halfvec(N)`` above 2,000 dimensions, where pgvector
  cannot index ``vector``), the outer query re-ranks them by full-precision distance;
* **halfvec** — the inner query ranks the rows in scope by ``embedding_half``, the
  half-precision copy stored in the row itself (no TOAST reads), and keeps ``candidates``;
  the outer query re-ranks them by full-precision distance. For small scopes (one source).

All order by ``(distance, id)`` so ties break the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from docstore.errors import FilterError, ValidationError
from docstore.models import as_int, bounded_int, flag
from docstore.search.filters import build_filter
from docstore.search.tuning import SPREAD_RANK

MetricName = Literal["cosine", "l2", "inner_product"]

# pgvector indexes `vector` up to 2,000 dimensions and `halfvec` up to 4,000.
MAX_VECTOR_INDEX_DIM = 2000
MAX_HALFVEC_INDEX_DIM = 4000
MAX_LIMIT = 1000
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
MAX_OVERSAMPLE = 100
HALF_COLUMN = "embedding_half"  # the generated halfvec copy of embedding (migration 3)


@dataclass(frozen=True)
class Metric:
    """One distance metric: its pgvector operator and operator classes, and how distance
    relates to the similarity docstore reports."""

    name: str
    operator: str
    vector_ops: str
    halfvec_ops: str
    similarity: Callable[[float], float]
    # the largest distance whose similarity is still >= s (None: no bound)
    max_distance: Callable[[float], float | None]
    # the similarities there are (None: unbounded): a min_similarity outside is refused
    similarity_bounds: tuple[float, float] | None = None


METRICS: dict[str, Metric] = {
    # similarity = 1 - cosine distance, exactly as the legacy search_similar_docs computed it
    "cosine": Metric(
        "cosine",
        "<=>",
        "vector_cosine_ops",
        "halfvec_cosine_ops",
        lambda d: 1.0 - d,
        lambda s: 1.0 - s,
        (-1.0, 1.0),
    ),
    # similarity = 1 / (1 + euclidean distance): 1 for identical vectors, towards 0 far away
    "l2": Metric(
        "l2",
        "<->",
        "vector_l2_ops",
        "halfvec_l2_ops",
        lambda d: 1.0 / (1.0 + d),
        lambda s: None if s <= 0 else 1.0 / s - 1.0,
        (0.0, 1.0),
    ),
    # pgvector's <#> is the *negative* inner product; similarity is the inner product itself
    "inner_product": Metric(
        "inner_product",
        "<#>",
        "vector_ip_ops",
        "halfvec_ip_ops",
        lambda d: -d,
        lambda s: -s,
    ),
}

DOCUMENT_COLUMNS = (
    "id",
    "doc_type",
    "source_name",
    "doc_path",
    "content",
    "metadata",
    "token_count",
    "created_at",
    "updated_at",
)


def metric(name: str) -> Metric:
    """The :class:`Metric` called ``name``; :class:`ValidationError` for anything else."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise ValidationError(
            f"unknown metric {str(name)[:40]!r}: use one of {', '.join(METRICS)}", field="metric"
        ) from None


def check_limit(limit: int, field: str = "limit") -> int:
    return bounded_int(limit, field, MAX_LIMIT)


def index_expression(dim: int, column: str = "embedding") -> str:
    """The expression an HNSW index is built on for this dimension (and queries must use)."""
    if dim <= MAX_VECTOR_INDEX_DIM:
        return column
    return f"({column}::halfvec({int(dim)}))"


def query_expression(dim: int, param: str) -> str:
    """The query vector cast to match :func:`index_expression`."""
    if dim <= MAX_VECTOR_INDEX_DIM:
        return f"{param}::vector"
    return f"{param}::vector::halfvec({int(dim)})"


def half_query(dim: int, param: str) -> str:
    """The query vector as ``halfvec``, computed once per execution (a sub-select), for
    comparing with ``embedding_half``."""
    return f"(SELECT {param}::vector::halfvec({int(dim)}))"


@dataclass(frozen=True)
class VectorRefs:
    """How one statement refers to its query vector, bound as ``$1``.

    ``prefix`` goes before the whole statement; ``vector`` is the vector (exact distances),
    ``half`` its ``halfvec`` cast computed once (for ``embedding_half``), ``indexed`` what the
    HNSW index's expression is compared with (:func:`query_expression`).

    On one node each is ``$1`` itself. On a Citus cluster the coordinator prints every
    constant into each shard's query text, so a 3,072-float vector referred to four times in
    an ANN statement made ~135 KB of SQL per shard (~1 MB for a fan-out over 8 shards) to
    print and to parse again; instead ``$1`` is a ``MATERIALIZED`` CTE, which Citus sends to
    each worker once, in binary, as an intermediate result, and the shards read it in
    one-row sub-selects (InitPlans: the HNSW index still orders by them).
    """

    prefix: str
    vector: str
    half: str
    indexed: str


def vector_refs(dim: int, *, distributed: bool = False) -> VectorRefs:
    """The :class:`VectorRefs` of a statement on one node, or on a Citus cluster."""
    if not distributed:
        return VectorRefs("", "$1::vector", half_query(dim, "$1"), query_expression(dim, "$1"))
    half = f"(SELECT q.v::halfvec({int(dim)}) FROM q)"
    vector = "(SELECT q.v FROM q)"
    return VectorRefs(
        "WITH q AS MATERIALIZED (SELECT $1::vector AS v) ",
        vector,
        half,
        vector if dim <= MAX_VECTOR_INDEX_DIM else half,
    )


def scoped_filter(
    doc_type: str | None, source_name: str | None, filter: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """``doc_type``/``source_name`` shortcuts folded into one filter document."""
    if filter is not None and not isinstance(filter, Mapping):
        raise FilterError(f"a filter must be a mapping, got {type(filter).__name__}")
    parts: list[Mapping[str, Any]] = []
    if doc_type is not None:
        parts.append({"doc_type": doc_type})
    if source_name is not None:
        parts.append({"source_name": source_name})
    if filter:
        parts.append(filter)
    if not parts:
        return None
    return dict(parts[0]) if len(parts) == 1 else {"$and": parts}


def select_list(alias: str, include_embedding: bool) -> str:
    """The document columns a search returns, qualified by ``alias``."""
    columns = [*DOCUMENT_COLUMNS, *(("embedding",) if include_embedding else ())]
    return ", ".join(f"{alias}.{c}" for c in columns)


def unindexed(distance: str) -> str:
    """``distance`` as an expression no index can order by, for an exact scan: at <= 2,000
    dimensions the HNSW index is on ``embedding`` itself, which would answer ``ORDER BY
    embedding <=> q`` (either way round) with at most ``hnsw.ef_search`` approximate rows.
    ``+ 0`` is exact, costs one addition a row and runs on each Citus shard as it is."""
    return f"({distance}) + 0"


def vector_search_sql(
    query: Any,
    *,
    dim: int,
    metric_name: str = "cosine",
    limit: int = 10,
    filter: Mapping[str, Any] | None = None,
    candidates: int | None = None,
    max_distance: float | None = None,
    include_embedding: bool = False,
    candidate_source: Literal["index", "halfvec"] = "index",
    distributed: bool = False,
) -> tuple[str, list[Any]]:
    """SQL for a vector search; exact when ``candidates`` is None, else ``candidates`` rows
    ranked by the HNSW index's expression (``candidate_source="index"``, the ANN shape) or by
    the in-row ``embedding_half`` column (``"halfvec"``), re-ranked exactly.

    ``query`` is bound as ``$1`` (as given: encoding is the connection's job). Rows with a
    NULL embedding never match. ``max_distance`` drops hits beyond it *after* the top
    ``limit`` is chosen, which returns the same rows as filtering first (the order is the same
    distance) without computing each distance twice. ``distributed`` (Citus): the query
    vector reaches the shards once, not printed into their SQL (:class:`VectorRefs`).
    """
    m = metric(metric_name)
    limit = check_limit(limit)
    where, filter_params = build_filter(filter, first_param=3)
    params: list[Any] = [query, limit, *filter_params]
    q = vector_refs(dim, distributed=distributed)
    distance = f"d.embedding {m.operator} {q.vector}"
    if candidates is None:
        inner = (
            f"SELECT {select_list('d', include_embedding)}, {unindexed(distance)} AS distance"
            f" FROM documents d WHERE d.embedding IS NOT NULL AND {where}"
            " ORDER BY distance, d.id LIMIT $2"
        )
    else:
        params.append(check_limit(max(candidates, limit), "candidates"))
        if candidate_source == "halfvec":
            # the cast in a sub-select (an InitPlan) runs once; inline, a generic plan of the
            # prepared statement converted the query vector again for every row (2x the CPU)
            ann_order = unindexed(f"d.{HALF_COLUMN} {m.operator} {q.half}")  # a scan, always
        else:
            ann_order = f"{index_expression(dim, 'd.embedding')} {m.operator} {q.indexed}"
        inner = (
            f"SELECT {select_list('c', include_embedding)},"
            f" c.embedding {m.operator} {q.vector} AS distance"
            f" FROM (SELECT {select_list('d', True)} FROM documents d"
            f" WHERE d.embedding IS NOT NULL AND {where}"
            f" ORDER BY {ann_order} LIMIT ${len(params)}) c"
            " ORDER BY distance, c.id LIMIT $2"
        )
    if max_distance is None:
        return q.prefix + inner, params
    params.append(float(max_distance))
    return (
        f"{q.prefix}SELECT * FROM ({inner}) hits WHERE hits.distance <= ${len(params)}"
        " ORDER BY hits.distance, hits.id"
    ), params


# -- sizing a filter (docstore.search.filter_size) ---------------------------------------------


def filter_count_sql(filter: Mapping[str, Any] | None, bound: int) -> tuple[str, list[Any]]:
    """How many rows with an embedding ``filter`` matches, counted up to ``bound`` (``$1``):
    through the filter's own index, at most ``bound`` entries and heap rows read. Its
    ``EXPLAIN`` tells whether an index serves the filter at all."""
    where, params = build_filter(filter, first_param=2)
    return (
        "SELECT count(*) AS rows FROM (SELECT 1 FROM documents d"
        f" WHERE d.embedding IS NOT NULL AND {where} LIMIT $1) s"
    ), [int(bound), *params]


def filter_sample_sql(filter: Mapping[str, Any] | None, percent: float) -> tuple[str, list[Any]]:
    """The rows ``filter`` matches (``hits``) among those ``seen`` on ``percent`` % of the
    table's pages (``TABLESAMPLE SYSTEM``, ``$1``; the same pages every time): its share,
    for a filter no index serves."""
    where, params = build_filter(filter, first_param=2)
    return (
        f"SELECT count(*) FILTER (WHERE d.embedding IS NOT NULL AND {where}) AS hits,"
        " count(*) AS seen FROM documents d TABLESAMPLE SYSTEM ($1::float8) REPEATABLE (7)"
    ), [min(max(float(percent), 0.0), 100.0), *params]


MIN_RERANK = 20
"""ANN candidates re-ranked on full-precision vectors, at least (``2 × limit`` above)."""


def ann_search_sql(
    query: Any,
    *,
    dim: int,
    metric_name: str = "cosine",
    limit: int = 10,
    filter: Mapping[str, Any] | None = None,
    candidates: int,
    ef_search: int,
    max_distance: float | None = None,
    include_embedding: bool = False,
    distributed: bool = False,
) -> tuple[str, list[Any]]:
    """One statement for an ANN search: ``hnsw.ef_search`` (and ``hnsw.iterative_scan``, so
    filtered searches still fill ``candidates``) set for this statement only, ``candidates``
    rows from the HNSW index ordered by exactly the indexed expression, ranked on the
    in-row ``embedding_half`` (no TOAST read), the best ``max(2 × limit, 20)`` of them
    re-ranked on the full-precision vectors; the best ``limit`` returned with ``distance``,
    ``spread`` and ``found`` (how many candidates the index scan produced: fewer than asked
    means the filtered rows ran out, or a filtered scan stopped at ``hnsw.max_scan_tuples``
    before it filled the list — on one node the rows also carry :data:`SCAN_LIMITS`, to tell
    which; :class:`docstore.search.vector.VectorSearch` ranks the filtered rows directly when
    it may have been the latter).

    The settings are ``set_config(..., true)`` in a one-row sub-select the index scan depends
    on (a LATERAL join), so they are in place before the scan reads its first tuple and end
    with the statement's own transaction: one round trip instead of BEGIN, SET LOCAL, the
    query and COMMIT. ``spread`` (the same on every row) is the half-precision distance of the
    :data:`~docstore.search.tuning.SPREAD_RANK`-th candidate minus the best one's: small
    when the candidates are a flat set of equally mediocre documents — the sign of a graph
    search that may have missed the query's neighbourhood (:mod:`docstore.search.tuning`).
    Reading a 12 KB vector from TOAST is most of a re-rank's cost; the half-precision rank
    (error ~1e-4 in distance) keeps the exact top ``limit`` among the re-ranked rows.

    ``distributed`` (Citus): no settings sub-select (Citus cannot push it down; ``$4`` is only
    bound), so run it under :func:`ann_settings_sql` ``(distributed=True)``; each shard returns
    its ``candidates`` best with both distances (no vectors), the coordinator ranks them; the
    query vector reaches the shards once, not printed into their SQL (:class:`VectorRefs`).
    """
    m = metric(metric_name)
    limit = check_limit(limit)
    candidates = check_limit(max(candidates, limit), "candidates")
    ef_search = bounded_int(ef_search, "ef_search", MAX_EF_SEARCH)
    rerank = min(candidates, max(2 * limit, MIN_RERANK))
    where, filter_params = build_filter(filter, first_param=6)
    params: list[Any] = [query, limit, candidates, ef_search, rerank, *filter_params]
    q = vector_refs(dim, distributed=distributed)
    ann_order = f"{index_expression(dim, 'd.embedding')} {m.operator} {q.indexed}"
    bound = ""
    if max_distance is not None:
        params.append(float(max_distance))
        bound = f" WHERE w.distance <= ${len(params)}"
    window = (
        f"coalesce(nth_value(c.half, {SPREAD_RANK}) OVER o,"
        " last_value(c.half) OVER o) - first_value(c.half) OVER o AS spread,"
        " count(*) OVER o AS found"
    )
    window_def = (
        " WINDOW o AS (ORDER BY c.half, c.id"
        " ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
        " ORDER BY c.half, c.id LIMIT $5"
    )
    if distributed:
        sql = (
            f"{q.prefix}SELECT {select_list('w', include_embedding)}, w.distance, w.spread,"
            " w.found"
            f" FROM (SELECT c.*, {window} FROM (SELECT {select_list('d', include_embedding)},"
            f" d.{HALF_COLUMN} {m.operator} {q.half} AS half,"
            f" d.embedding {m.operator} {q.vector} AS distance"
            f" FROM documents d WHERE d.embedding IS NOT NULL AND {where}"
            f" AND $4::int IS NOT NULL ORDER BY {ann_order} LIMIT $3) c{window_def}) w"
            f"{bound} ORDER BY w.distance, w.id LIMIT $2"
        )
        return sql, params
    sql = (
        f"SELECT {select_list('w', include_embedding)}, w.distance, w.spread, w.found,"
        f" {SCAN_LIMITS} FROM ("
        f"SELECT {select_list('h', include_embedding)}, h.spread, h.found,"
        f" h.embedding {m.operator} {q.vector} AS distance FROM ("
        f"SELECT c.*, {window}"
        f" FROM (SELECT {select_list('d', True)},"
        f" d.{HALF_COLUMN} {m.operator} {q.half} AS half"
        " FROM (SELECT set_config('hnsw.ef_search', $4::int::text, true) AS ef,"
        " set_config('hnsw.iterative_scan', 'relaxed_order', true) AS scan) cfg"
        f" CROSS JOIN LATERAL (SELECT {select_list('d', True)}, d.{HALF_COLUMN}"
        f" FROM documents d WHERE d.embedding IS NOT NULL AND {where}"
        f" ORDER BY {ann_order}"
        " LIMIT CASE WHEN cfg.ef IS NULL OR cfg.scan IS NULL THEN 0 ELSE $3 END) d)"
        f" c{window_def}) h) w"
        f"{bound} ORDER BY w.distance, w.id LIMIT $2"
    )
    return sql, params


# What decides whether an index scan that produced fewer candidates than asked for may have
# been cut short (vector.VectorSearch): the table's size from the planner's statistics and the
# scan's cap (pgvector's hnsw.max_scan_tuples; NULL before the library defined it: 20,000).
SCAN_LIMITS = (
    "(SELECT reltuples FROM pg_class WHERE oid = 'documents'::regclass) AS table_rows,"
    " current_setting('hnsw.max_scan_tuples', true) AS scan_cap"
)


def ann_settings_sql(ef_search: int, *, force_index: bool = True, distributed: bool = False) -> str:
    """The ``SET LOCAL`` statements a filtered ANN query runs under, in its own transaction.

    ``hnsw.ef_search`` sizes the candidate list, ``hnsw.iterative_scan`` keeps scanning when
    a filter rejects candidates (pgvector ≥ 0.8), ``enable_seqscan = off`` stops the planner
    preferring a full scan (it underestimates a 3,072-dimension distance). ``force_index``
    also sets ``enable_sort = off`` against a B-tree on the filter plus a sort that reads
    every vector from TOAST: right for a large scope (``bench/scale.py``: 46 ms vs 9 ms via
    the index for 4,000 rows), wrong for a filter matching a few dozen rows
    (``bench/scope.py``: 103 ms for 50 rows), so arbitrary filters leave it to the planner.

    ``jit = off``: on PostgreSQL 15–17 a disabled node adds ``disable_cost`` (10^10) to the
    plan, past ``jit_above_cost``, so with JIT built in (Debian's) each search first compiled
    its expressions: 0.84 s for a 2 ms ANN search over 200 rows (PostgreSQL 18 doesn't).
    ``plan_cache_mode = force_custom_plan``: the same statement also runs alone, and a cached
    generic plan (a scan and sort, made without these settings) is not replanned for them.

    ``distributed`` (Citus): ``citus.propagate_set_commands = 'local'`` first (the shards get
    them too), never ``enable_sort = off`` (coordinator planning: ~10 ms → 400-600 ms).
    """
    ef_search = bounded_int(ef_search, "ef_search", MAX_EF_SEARCH)
    return (
        ("SET LOCAL citus.propagate_set_commands = 'local'; " if distributed else "")
        + f"SET LOCAL jit = off; SET LOCAL hnsw.ef_search = {ef_search};"
        " SET LOCAL plan_cache_mode = force_custom_plan;"
        " SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL enable_seqscan = off"
        + ("; SET LOCAL enable_sort = off" if force_index and not distributed else "")
    )


# -- HNSW index DDL --------------------------------------------------------------------------


def vector_index_name(metric_name: str) -> str:
    return f"documents_embedding_hnsw_{metric(metric_name).name}"


HNSW_M = (2, 100)
HNSW_EF_CONSTRUCTION = (4, 1000)
"""pgvector's ranges for the HNSW build parameters (``ef_construction`` is also ≥ 2 × m)."""


def _build_int(value: Any, field: str, bounds: tuple[int, int]) -> int:
    """An index build parameter: an integer (numpy's too, not a bool or a float) in
    ``bounds``, else :class:`ValidationError` naming ``field``."""
    number = as_int(value)
    if number is None or not bounds[0] <= number <= bounds[1]:
        got = type(value).__name__ if number is None else str(number)
        raise ValidationError(
            f"{field} must be an integer from {bounds[0]} to {bounds[1]} (pgvector's range),"
            f" got {got}",
            field=field,
        )
    return number


def create_vector_index_sql(
    *, dim: int, metric_name: str, m: int, ef_construction: int, concurrently: bool
) -> str:
    """``CREATE INDEX`` for HNSW on ``embedding`` (≤ 2,000 dims) or its halfvec cast.
    :class:`ValidationError` for parameters pgvector would refuse or of the wrong type (a
    float, a bool, a string; ``concurrently`` must be True or False)."""
    mt = metric(metric_name)
    m = _build_int(m, "m", HNSW_M)
    ef_construction = _build_int(ef_construction, "ef_construction", HNSW_EF_CONSTRUCTION)
    if ef_construction < 2 * m:
        raise ValidationError(
            f"ef_construction must be at least 2 × m ({2 * m}), got {ef_construction}",
            field="ef_construction",
        )
    flag(concurrently, "concurrently")
    if dim > MAX_HALFVEC_INDEX_DIM:
        raise ValidationError(
            f"pgvector cannot index {dim} dimensions (halfvec HNSW stops at"
            f" {MAX_HALFVEC_INDEX_DIM}); search stays exact",
            field="embedding_dim",
        )
    ops = mt.vector_ops if dim <= MAX_VECTOR_INDEX_DIM else mt.halfvec_ops
    return (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}{vector_index_name(mt.name)}"
        f" ON documents USING hnsw ({index_expression(dim)} {ops})"
        f" WITH (m = {m}, ef_construction = {ef_construction})"
    )


# opclass name -> metric, for recognising indexes whoever built them
OPCLASS_METRIC: dict[str, str] = {
    ops: mt.name for mt in METRICS.values() for ops in (mt.vector_ops, mt.halfvec_ops)
}

# Valid HNSW indexes on documents: the opclass, the indexed expression, validity, size.
LIST_VECTOR_INDEXES = """
SELECT c.relname AS name, oc.opcname AS opclass, i.indisvalid AS valid,
       pg_get_indexdef(i.indexrelid) AS definition,
       pg_relation_size(i.indexrelid) AS size_bytes,
       i.indexprs IS NOT NULL AS on_expression
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_am am ON am.oid = c.relam
  JOIN pg_opclass oc ON oc.oid = i.indclass[0]
 WHERE i.indrelid = 'documents'::regclass AND am.amname = 'hnsw'
 ORDER BY c.relname
"""
