"""Filtered vector searches: the filter rule (planner.filter_mode), the plans it makes and the
SQL that sizes a filter — pure functions, no database (tests/test_search.py runs them)."""

from __future__ import annotations

import dataclasses

import pytest

from docstore.search import filter_size, planner, queries
from docstore.search.planner import FilterSize, filter_mode
from tests.test_tuning import calibration
from tests.test_tuning import plan as unfiltered_plan

ROWS = planner.HALFVEC_FILTER_ROWS


def plan(size: FilterSize | None, **options: object) -> planner.VectorPlan:
    """test_tuning's plan, of a filtered search sized ``size`` under a met calibration."""
    args: dict[str, object] = {"filtered": True, "calibration": calibration(), "filter_size": size}
    return unfiltered_plan(**(args | options))


# -- the rule ---------------------------------------------------------------------------------


def test_an_index_served_filter_is_exact_then_halfvec_up_to_the_bound() -> None:
    assert filter_mode(FilterSize(True, 40, 50_000), 40, True) == "exact"
    assert filter_mode(FilterSize(True, 41, 50_000), 40, True) == "halfvec"
    assert filter_mode(FilterSize(True, 5_000, 50_000), 40, True) == "halfvec"
    assert filter_mode(FilterSize(True, ROWS, 50_000), 40, True) == "halfvec"  # 40 % share


def test_past_the_bound_the_share_of_the_table_decides() -> None:
    assert filter_mode(FilterSize(True, ROWS + 1, 50_000), 40, True) == "ann"
    assert filter_mode(FilterSize(True, 40_000, 10**6), 40, True) == "halfvec"  # 4 %
    assert filter_mode(FilterSize(True, 50_000, 10**6), 40, True) == "ann"  # 5 %
    # the calibration could not meet its target: the index is not trusted with a filter
    assert filter_mode(FilterSize(True, ROWS + 1, 50_000), 40, False) == "halfvec"


def test_a_filter_no_index_serves_takes_hnsw_only_for_a_large_share() -> None:
    assert filter_mode(FilterSize(False, 5, 50_000), 40, True) == "halfvec"  # never exact
    assert filter_mode(FilterSize(False, 500, 50_000), 40, True) == "halfvec"  # 1 %
    assert filter_mode(FilterSize(False, 2_500, 50_000), 40, True) == "ann"  # 5 %
    assert filter_mode(FilterSize(False, 2_500, 50_000), 40, False) == "halfvec"
    # a table never analyzed (reltuples -1): the share is unknown, taken as the whole table
    assert FilterSize(False, 10, -1).share == 1.0
    assert filter_mode(FilterSize(False, 10, -1), 40, True) == "ann"


# -- the plans --------------------------------------------------------------------------------


def test_sized_filters_plan_exact_halfvec_or_a_forced_ann_search_with_its_second_pass() -> None:
    assert plan(FilterSize(True, 30, 50_000)).mode == "exact"
    half = plan(FilterSize(True, 5_000, 50_000))
    assert (half.mode, half.candidates) == ("halfvec", 40)
    ann = plan(FilterSize(False, 25_000, 50_000))
    # the calibration's 64 / 640, widened by 1 / the share (planner.restricted_ef_search)
    assert (ann.mode, ann.ef_search, ann.source) == ("ann", 128, "calibration")
    assert ann.force_index  # enable_sort off: never a filter index plus a sort of every vector
    # the calibration's second pass, as unfiltered (tests/test_search_review_1207.py)
    assert (ann.escalate_below, ann.escalation_ef_search) == (0.09, 1000)
    unmet = plan(FilterSize(False, 25_000, 50_000), calibration=calibration(met_target=False))
    assert unmet.mode == "halfvec"
    # uncalibrated (or another metric's calibration): the default ef_search, still forced
    default = plan(FilterSize(False, 25_000, 50_000), calibration=None)
    assert (default.mode, default.source, default.force_index) == ("ann", "default", True)
    other = plan(FilterSize(False, 25_000, 50_000), calibration=calibration(metric="l2"))
    assert (other.mode, other.source) == ("ann", "default")
    setting = plan(FilterSize(True, 5_000, 50_000), calibration=None, configured_ef_search=80)
    assert setting.mode == "halfvec"  # a configured ef_search only matters once it is ANN


def test_explicit_arguments_win_over_the_filters_size() -> None:
    small = FilterSize(True, 30, 50_000)
    assert plan(small, exact=True).mode == "exact"
    insist = plan(small, exact=False)
    assert insist.mode == "ann" and insist.force_index  # as before: the index, forced
    assert insist.escalate_below is not None
    given = plan(small, ef_search=200)
    assert (given.mode, given.ef_search, given.source) == ("ann", 200, "argument")
    assert not given.force_index  # as before: the access path left to PostgreSQL
    assert plan(small, has_index=False).mode == "exact"


def test_unsized_filters_plan_as_before() -> None:
    """No size (a Citus cluster: the coordinator cannot size a filter): an ANN plan with its
    second pass, the access path left to PostgreSQL — the previous behaviour."""
    p = plan(None)
    assert p.mode == "ann" and not p.force_index and p.escalate_below == 0.09
    scoped = plan(None, scoped_only=True, scope=planner.Scope(800, 50_000))
    assert scoped.mode == "halfvec"


def test_the_second_pass_reads_a_quarter_of_its_ef_search_within_bounds() -> None:
    p = plan(None)
    assert p.oversample == 4
    assert planner.escalation_candidates(p, 10) == 160  # 640 // 4
    assert planner.escalation_candidates(dataclasses.replace(p, oversample=100), 10) == (
        planner.MAX_LIMIT
    )
    low = plan(None, calibration=calibration(escalation_ef_search=80))
    assert planner.escalation_candidates(low, 10) == 40


# -- sizing SQL -------------------------------------------------------------------------------


def test_the_count_is_bounded_and_binds_every_value() -> None:
    evil = {"metadata.x'); DROP TABLE documents; --": "v'1"}
    sql, params = queries.filter_count_sql(evil, ROWS + 1)
    assert "LIMIT $1" in sql and "d.embedding IS NOT NULL" in sql and "$2" in sql
    assert "DROP" not in sql and "v'1" not in sql
    assert params[0] == ROWS + 1 and len(params) == 2
    sql, params = queries.filter_count_sql({"source_name": {"$in": ["a", "b"]}}, 11)
    assert sql == (
        "SELECT count(*) AS rows FROM (SELECT 1 FROM documents d"
        " WHERE d.embedding IS NOT NULL AND d.source_name = ANY($2::text[]) LIMIT $1) s"
    )
    assert params == [11, ["a", "b"]]


def test_the_sample_reads_a_fixed_share_of_pages() -> None:
    sql, params = queries.filter_sample_sql({"metadata.n": {"$gt": 5}}, 2.0)
    assert "TABLESAMPLE SYSTEM ($1::float8) REPEATABLE (7)" in sql
    assert "count(*) FILTER (WHERE d.embedding IS NOT NULL AND" in sql
    assert params[0] == 2.0 and 5 in params and "5" not in sql.split("FILTER", 1)[1]
    assert queries.filter_sample_sql({"doc_type": "x"}, 250.0)[1][0] == 100.0
    assert filter_size.sample_percent(50_000) == pytest.approx(2.0)
    assert filter_size.sample_percent(400) == 100.0
    assert filter_size.sample_percent(0) == 100.0


def test_the_plan_tells_an_index_served_filter_and_its_estimate() -> None:
    bitmap = [
        {
            "Plan": {
                "Node Type": "Aggregate",
                "Plans": [
                    {
                        "Node Type": "Limit",
                        "Plan Rows": 20001,
                        "Plans": [
                            {
                                "Node Type": "Bitmap Heap Scan",
                                "Relation Name": "documents",
                                "Plan Rows": 31000,
                                "Plans": [{"Node Type": "Bitmap Index Scan", "Plan Rows": 31000}],
                            }
                        ],
                    }
                ],
            }
        }
    ]
    top = filter_size._plan(bitmap)
    assert not filter_size._seq_scan(top) and filter_size._planned_rows(top) == 31000
    seq = '[{"Plan": {"Node Type": "Aggregate", "Plans": [{"Node Type": "Gather", "Plans":'
    seq += ' [{"Node Type": "Seq Scan", "Relation Name": "documents", "Plan Rows": 9}]}]}}]'
    assert filter_size._seq_scan(filter_size._plan(seq))
