"""Search SQL builders: pure functions, tested without a database."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from docstore.errors import FilterError, ValidationError
from docstore.search import planner, queries, text_sql, tuning
from docstore.search.queries import create_vector_index_sql, scoped_filter, vector_search_sql
from docstore.search.text_sql import reciprocal_rank_fusion, text_search_sql
from docstore.testing import printed_vector

Q = object()  # the query vector is bound as given: any object stands in for it


def test_exact_search_orders_by_the_metric_operator_and_binds_everything() -> None:
    sql, params = vector_search_sql(
        Q, dim=3072, metric_name="l2", limit=7, filter={"source_name": "tokio"}
    )
    assert params == [Q, 7, "tokio"]
    # "+ 0": no index can serve the order (at <= 2,000 dims one is on the column itself)
    assert "(d.embedding <-> $1::vector) + 0 AS distance" in sql
    assert "ORDER BY distance, d.id LIMIT $2" in sql
    assert "d.embedding IS NOT NULL AND d.source_name = $3" in sql
    assert "halfvec" not in sql and "tokio" not in sql


def test_ann_search_orders_by_the_indexed_halfvec_expression_then_re_ranks() -> None:
    sql, params = vector_search_sql(Q, dim=3072, limit=10, candidates=100)
    assert params == [Q, 10, 100]
    assert "ORDER BY (d.embedding::halfvec(3072)) <=> $1::vector::halfvec(3072) LIMIT $3" in sql
    # the outer query re-ranks on the full-precision column
    assert "c.embedding <=> $1::vector AS distance" in sql
    assert sql.endswith("ORDER BY distance, c.id LIMIT $2")


def test_halfvec_shape_ranks_the_in_row_copy_then_re_ranks_exactly() -> None:
    sql, params = vector_search_sql(
        Q, dim=3072, limit=5, candidates=20, candidate_source="halfvec", metric_name="l2"
    )
    # the query cast once per execution (a sub-select), not once per row in a generic plan
    # "+ 0": a scan even where someone indexed embedding_half
    assert "ORDER BY (d.embedding_half <-> (SELECT $1::vector::halfvec(3072))) + 0 LIMIT $3" in sql
    assert "c.embedding <-> $1::vector AS distance" in sql and "ORDER BY distance, c.id" in sql
    assert "embedding::halfvec" not in sql  # not the HNSW index's expression
    assert params[1:] == [5, 20]


def test_ann_at_or_below_2000_dims_uses_the_column_itself() -> None:
    sql, _ = vector_search_sql(Q, dim=1536, limit=5, candidates=50, metric_name="inner_product")
    assert "ORDER BY d.embedding <#> $1::vector LIMIT $3" in sql
    assert "halfvec" not in sql


def test_candidates_never_fewer_than_limit() -> None:
    _, params = vector_search_sql(Q, dim=3072, limit=50, candidates=10)
    assert params[-1] == 50


def test_max_distance_filters_after_the_top_k_and_is_bound() -> None:
    sql, params = vector_search_sql(Q, dim=3072, limit=3, max_distance=0.25)
    assert params == [Q, 3, 0.25]
    assert sql.startswith("SELECT * FROM (")
    assert sql.endswith("WHERE hits.distance <= $3 ORDER BY hits.distance, hits.id")


def test_include_embedding_adds_the_column() -> None:
    without, _ = vector_search_sql(Q, dim=3072)
    with_, _ = vector_search_sql(Q, dim=3072, include_embedding=True)
    assert "d.embedding," not in without.split("FROM")[0]
    assert "d.embedding," in with_.split("FROM")[0]


@pytest.mark.parametrize("limit", [0, -1, 1001, 2.5, True, "10"])
def test_bad_limits_are_validation_errors(limit: object) -> None:
    with pytest.raises(ValidationError, match="limit"):
        vector_search_sql(Q, dim=3072, limit=limit)  # type: ignore[arg-type]


def test_unknown_metric_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="unknown metric 'hamming'"):
        vector_search_sql(Q, dim=3072, metric_name="hamming")


@pytest.mark.parametrize(
    ("name", "distance", "similarity"),
    [("cosine", 0.25, 0.75), ("l2", 1.0, 0.5), ("inner_product", -0.8, 0.8)],
)
def test_similarity_and_its_distance_bound_are_inverse(
    name: str, distance: float, similarity: float
) -> None:
    metric = queries.METRICS[name]
    assert metric.similarity(distance) == pytest.approx(similarity)
    assert metric.max_distance(similarity) == pytest.approx(distance)


def test_l2_similarity_bound_of_zero_or_less_is_no_bound() -> None:
    assert queries.METRICS["l2"].max_distance(0.0) is None


def test_scoped_filter_folds_shortcuts_into_one_filter() -> None:
    assert scoped_filter(None, None, None) is None
    assert scoped_filter("rust", None, None) == {"doc_type": "rust"}
    flt = scoped_filter("rust", "tokio", {"token_count": {"$gt": 3}})
    assert flt == {
        "$and": [{"doc_type": "rust"}, {"source_name": "tokio"}, {"token_count": {"$gt": 3}}]
    }
    with pytest.raises(FilterError, match="mapping"):
        scoped_filter(None, None, ["doc_type"])  # type: ignore[arg-type]


def test_filter_placeholders_follow_the_fixed_ones() -> None:
    sql, params = vector_search_sql(
        Q, dim=3072, candidates=40, filter={"metadata.crate_version": "1.0"}
    )
    assert params == [Q, 10, '{"crate_version": "1.0"}', 40]
    assert "d.metadata @> $3::jsonb" in sql and "LIMIT $4" in sql


def test_text_search_uses_the_index_expression_and_websearch_syntax() -> None:
    sql, params = text_search_sql("tokio -blocking", limit=5, filter={"doc_type": "rust"})
    expr = "to_tsvector('english'::regconfig, left(d.content, 100000))"
    assert f"WHERE {expr} @@ q AND d.doc_type = $3" in sql
    assert "websearch_to_tsquery('english'::regconfig, $1) q" in sql
    assert params == ["tokio -blocking", 5, "rust"]
    with pytest.raises(ValidationError, match="NUL"):
        text_search_sql("a\x00b")


def test_the_text_index_is_on_the_query_expression() -> None:
    assert text_sql.create_text_index_sql(concurrently=True) == (
        "CREATE INDEX CONCURRENTLY idx_documents_content_fts ON documents USING gin"
        " (to_tsvector('english'::regconfig, left(content, 100000)))"
    )


def test_index_ddl_for_3072_dims_is_on_the_halfvec_cast() -> None:
    sql = create_vector_index_sql(
        dim=3072, metric_name="cosine", m=16, ef_construction=64, concurrently=True
    )
    assert sql == (
        "CREATE INDEX CONCURRENTLY documents_embedding_hnsw_cosine ON documents USING hnsw"
        " ((embedding::halfvec(3072)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64)"
    )


def test_index_ddl_at_or_below_2000_dims_is_on_the_column() -> None:
    sql = create_vector_index_sql(
        dim=2000, metric_name="l2", m=8, ef_construction=32, concurrently=False
    )
    assert "USING hnsw (embedding vector_l2_ops) WITH (m = 8, ef_construction = 32)" in sql


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"m": 1}, "m"),
        ({"m": 101}, "m"),
        ({"ef_construction": 3}, "ef_construction"),
        ({"m": 40, "ef_construction": 64}, "ef_construction"),
        ({"dim": 4001}, "embedding_dim"),
    ],
)
def test_index_ddl_rejects_what_pgvector_would(kwargs: dict[str, int], field: str) -> None:
    args = {"dim": 3072, "m": 16, "ef_construction": 64, **kwargs}
    with pytest.raises(ValidationError) as info:
        create_vector_index_sql(metric_name="cosine", concurrently=True, **args)
    assert info.value.field == field


def test_halfvec_candidates_oversample_with_a_floor_and_a_cap() -> None:
    assert planner.halfvec_candidates(5, 4) == 20
    assert planner.halfvec_candidates(1, 1) == planner.MIN_HALFVEC_CANDIDATES
    assert planner.halfvec_candidates(1000, 4) == planner.MAX_LIMIT


def test_halfvec_scope_rule_counts_rows_and_their_share_of_the_table() -> None:
    def halfvec(rows: float, table_rows: float, ann_ok: bool = True) -> bool:
        return planner.halfvec_scope(planner.Scope(rows, table_rows), ann_ok)

    assert halfvec(1000, 1000)  # always, up to 1,000 rows
    assert halfvec(3000, 20_000) and not halfvec(3001, 50_000)
    assert not halfvec(2000, 5_000)  # 40 % of the table: the index does better
    assert halfvec(2000, -1)  # never analyzed: rows alone decide
    assert not halfvec(5000, -1) and halfvec(5000, -1, ann_ok=False)


def test_scope_rule_keeps_the_filter_rules_recall_conditions_up_to_the_filter_bound() -> None:
    """Past the speed rule a scope takes the HNSW index only while it keeps MIN_ANN_SHARE of
    the table and the calibration met its target (integrator review 2026-12-07: a 4,000-row
    crate of 36,000 lost a question entirely through the index) — but only up to
    HALFVEC_FILTER_ROWS: a larger scope takes the index whatever its share (review 91: a
    capped count sent a whole-table scope of 420,000 rows to a 104 ms scan)."""

    def halfvec(rows: float, table_rows: float, ann_ok: bool = True) -> bool:
        return planner.halfvec_scope(planner.Scope(rows, table_rows), ann_ok)

    bound = planner.HALFVEC_FILTER_ROWS
    assert halfvec(4000, 36_000, ann_ok=False) and not halfvec(4000, 36_000)
    assert halfvec(2500, 5_000, ann_ok=False)  # a large share, but the calibration missed
    assert halfvec(3001, 1_000_000) and halfvec(bound, 10**6)  # under 5 %
    assert not halfvec(bound + 1, 10**6) and not halfvec(bound + 1, 10**6, ann_ok=False)
    assert not halfvec(420_000, 420_000, ann_ok=False)  # the whole table: the index
    assert not halfvec(math.inf, 10**6, ann_ok=False)  # unknown past the count (Citus)
    assert planner.Scope(100, -1).share == 1.0 and planner.Scope(5, 10).share == 0.5


def test_ann_search_is_one_statement_with_its_settings_bound() -> None:
    sql, params = queries.ann_search_sql(
        [0.0] * 3, dim=3072, limit=10, candidates=40, ef_search=120, filter={"doc_type": "rust"}
    )
    # limit, candidates, ef_search, re-ranked rows: bound, never formatted
    assert params[1:5] == [10, 40, 120, 20]
    assert "set_config('hnsw.ef_search', $4::int::text, true)" in sql
    assert "set_config('hnsw.iterative_scan', 'relaxed_order', true)" in sql
    assert "CROSS JOIN LATERAL" in sql and ";" not in sql
    assert "embedding::halfvec(3072)) <=> $1::vector::halfvec(3072)" in sql
    assert f"nth_value(c.half, {tuning.SPREAD_RANK})" in sql  # spread: half precision, in-row
    assert "d.embedding_half <=> (SELECT $1::vector::halfvec(3072))" in sql
    assert "$6" in sql and params[5] == "rust"  # the filter's value, bound
    bounded, params = queries.ann_search_sql(
        [0.0] * 3, dim=3072, candidates=40, ef_search=40, max_distance=0.5
    )
    assert "w.distance <= $6" in bounded and params[5] == 0.5
    with pytest.raises(ValidationError):
        queries.ann_search_sql([0.0], dim=3, candidates=40, ef_search=1001)


@pytest.mark.parametrize(
    ("dim", "indexed"),
    [(3072, "(SELECT q.v::halfvec(3072) FROM q)"), (1536, "(SELECT q.v FROM q)")],
)
def test_distributed_statements_bind_the_query_vector_once(dim: int, indexed: str) -> None:
    """On Citus every reference to a constant is printed into each shard's SQL: the vector
    is a MATERIALIZED CTE (sent to each worker once), referred to by one-row sub-selects."""
    statements = [
        queries.ann_search_sql(
            [0.0] * 3, dim=dim, candidates=40, ef_search=64, distributed=True, max_distance=0.5
        )[0],
        queries.vector_search_sql([0.0] * 3, dim=dim, distributed=True)[0],
        queries.vector_search_sql([0.0] * 3, dim=dim, candidates=40, distributed=True)[0],
        queries.vector_search_sql(
            [0.0] * 3, dim=dim, candidates=40, candidate_source="halfvec", distributed=True
        )[0],
        queries.vector_search_sql([0.0] * 3, dim=dim, max_distance=0.5, distributed=True)[0],
    ]
    for sql in statements:
        assert sql.startswith("WITH q AS MATERIALIZED (SELECT $1::vector AS v) SELECT ")
        assert sql.count("$1") == 1, sql
    ann, exact, indexed_shape, half_shape, _ = statements
    assert f"<=> {indexed} LIMIT $3" in ann  # the HNSW order: an InitPlan, still indexable
    assert f"d.embedding_half <=> (SELECT q.v::halfvec({dim}) FROM q) AS half" in ann
    assert "d.embedding <=> (SELECT q.v FROM q) AS distance" in ann
    assert "ORDER BY distance, d.id" in exact
    assert f"<=> {indexed} LIMIT $3" in indexed_shape
    assert f"ORDER BY (d.embedding_half <=> (SELECT q.v::halfvec({dim}) FROM q)) + 0" in half_shape
    # one node: unchanged, no CTE
    single = queries.vector_search_sql([0.0] * 3, dim=dim, candidates=40)[0]
    assert single.startswith("SELECT ") and "q.v" not in single


@pytest.mark.parametrize("dim", [3072, 1536])
@pytest.mark.parametrize("metric_name", ["cosine", "l2", "inner_product"])
def test_printed_vector_rebuilds_the_single_node_form(dim: int, metric_name: str) -> None:
    """The benchmark's and tests' "before" form: every reference as on one node (which is
    what a distributed exact/halfvec statement was before the CTE)."""
    for extra in (
        {},
        {"candidates": 40},
        {"candidates": 40, "candidate_source": "halfvec"},
        {"max_distance": 0.5, "filter": {"source_name": "tokio"}, "include_embedding": True},
    ):
        kwargs: dict[str, Any] = {"dim": dim, "metric_name": metric_name, **extra}
        cte, _ = queries.vector_search_sql([0.0] * 3, distributed=True, **kwargs)
        assert printed_vector(cte, dim) == queries.vector_search_sql([0.0] * 3, **kwargs)[0]
    ann, _ = queries.ann_search_sql(
        [0.0] * 3, dim=dim, metric_name=metric_name, candidates=40, ef_search=40, distributed=True
    )
    old = printed_vector(ann, dim)
    half = f"(SELECT $1::vector::halfvec({dim}))"
    indexed = f"$1::vector::halfvec({dim})" if dim > 2000 else "$1::vector"
    assert "q.v" not in old and not old.startswith("WITH")
    assert " AS half," in old and half in old
    assert f" {indexed} LIMIT $3" in old


def test_ann_settings_are_integers_only() -> None:
    assert "hnsw.ef_search = 400;" in queries.ann_settings_sql(400)
    # disable_cost pushes every such plan past jit_above_cost on PostgreSQL <= 17
    assert "SET LOCAL jit = off;" in queries.ann_settings_sql(400, force_index=False)
    assert "enable_sort = off" in queries.ann_settings_sql(400)
    assert "enable_sort" not in queries.ann_settings_sql(400, force_index=False)
    with pytest.raises(ValidationError):
        queries.ann_settings_sql("400; drop table documents")  # type: ignore[arg-type]


def test_rrf_sums_reciprocal_ranks_and_breaks_ties_on_id() -> None:
    fused = reciprocal_rank_fusion({"vector": [1, 2, 3], "text": [3, 4]}, k=60)
    scores = {id_: score for id_, score, _ in fused}
    assert scores[3] == pytest.approx(1 / 63 + 1 / 61)
    assert scores[1] == pytest.approx(1 / 61)
    assert [id_ for id_, _, _ in fused] == [3, 1, 2, 4]  # 2 and 4 tie at 1/62: smaller id first
    assert dict((i, r) for i, _, r in fused)[3] == {"vector": 3, "text": 1}


def test_rrf_counts_an_id_once_per_ranking_and_k_changes_the_weighting() -> None:
    fused = reciprocal_rank_fusion({"a": [5, 5, 6]}, k=0)
    assert fused[0] == (5, 1.0, {"a": 1})
    with pytest.raises(ValidationError):
        reciprocal_rank_fusion({"a": [1]}, k=-1)


def test_ann_candidates_have_a_floor_and_a_cap() -> None:
    assert planner.ann_candidates(10, 4) == 40
    assert planner.ann_candidates(1, 1) == 40
    assert planner.ann_candidates(100, 4) == 400
    assert planner.ann_candidates(500, 10) == 1000


# -- text query limits (issue 13, part 7) ----------------------------------------------------


def test_a_text_query_of_up_to_256_words_and_4096_characters_is_accepted() -> None:
    longest = " ".join(["tokio"] * text_sql.MAX_TEXT_QUERY_WORDS)
    assert text_sql.check_text_query(longest) == longest
    assert text_sql.check_text_query("x" * text_sql.MAX_TEXT_QUERY_CHARS)
    assert text_sql.check_text_query("") == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (" ".join(["tokio"] * 257), "has 257 words; at most 256"),
        ("a_b " * 129, "has 258 words"),  # PostgreSQL's parser splits at "_" too
        ("-a " * 257, "has 257 words"),  # exclusions are words too
        ('"' + " ".join(["w"] * 300) + '"', "has 300 words"),  # so are a phrase's
        ("x" * 4097, "has 4,097 characters; at most 4,096"),
        ("word " * 50_000, "has 250,000 characters"),  # issue 13's 50,000 words
        (None, "must be a string"),
        (b"bytes", "must be a string"),
        ("a\x00b", "NUL bytes"),
    ],
)
def test_longer_or_unstorable_text_queries_are_refused_before_any_sql_is_built(
    text: object, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        text_search_sql(text, limit=5)  # type: ignore[arg-type]
    assert info.value.field == "text"


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"m": "16"}, "m", "m must be an integer from 2 to 100"),
        ({"m": 16.0}, "m", "m must be an integer"),
        ({"m": 16.5}, "m", "m must be an integer"),
        ({"m": True}, "m", "m must be an integer"),
        ({"m": None}, "m", "m must be an integer"),
        ({"ef_construction": "64"}, "ef_construction", "ef_construction must be an integer"),
        ({"ef_construction": 64.0}, "ef_construction", "ef_construction must be an integer"),
        ({"ef_construction": False}, "ef_construction", "ef_construction must be an integer"),
        ({"ef_construction": 1001}, "ef_construction", "from 4 to 1000"),
        ({"m": 16, "ef_construction": 31}, "ef_construction", r"at least 2 × m \(32\)"),
        ({"concurrently": "no"}, "concurrently", "concurrently must be True or False"),
        ({"concurrently": 0}, "concurrently", "concurrently must be True or False"),
        ({"concurrently": None}, "concurrently", "concurrently must be True or False"),
    ],
)
def test_index_ddl_refuses_parameters_of_the_wrong_type_with_a_validation_error(
    kwargs: dict[str, Any], field: str, message: str
) -> None:
    args = {"dim": 3072, "m": 16, "ef_construction": 64, "concurrently": True, **kwargs}
    with pytest.raises(ValidationError, match=message) as info:
        create_vector_index_sql(metric_name="cosine", **args)
    assert info.value.field == field


def test_index_ddl_takes_numpy_integers_and_the_range_ends() -> None:
    for m, ef in ((2, 4), (100, 1000), (np.int64(8), np.int32(16))):
        sql = create_vector_index_sql(
            dim=2000, metric_name="l2", m=m, ef_construction=ef, concurrently=False
        )
        assert sql.endswith(f"WITH (m = {int(m)}, ef_construction = {int(ef)})")
