"""The filter builder: pure, no database."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docstore.errors import FilterError
from docstore.search.filters import OPERATORS, binds_a_long_list, build_filter
from tests.fuzzing import examples

MARK = "ZQXW"


def test_empty_filter_is_true() -> None:
    assert build_filter(None) == ("TRUE", [])
    assert build_filter({}) == ("TRUE", [])


def test_plain_values_and_several_keys_mean_and() -> None:
    sql, params = build_filter({"doc_type": "rust", "source_name": "tokio"})
    assert sql == "(d.doc_type = $1 AND d.source_name = $2)"
    assert params == ["rust", "tokio"]


def test_placeholders_start_where_asked() -> None:
    sql, params = build_filter({"token_count": {"$gt": 5}}, first_param=3, alias="x")
    assert sql == "x.token_count > $3" and params == [5]


def test_metadata_equality_uses_containment_with_the_key_as_data() -> None:
    sql, params = build_filter({"metadata.a.b": "v"})
    assert sql == "d.metadata @> $1::jsonb"
    assert params == ['{"a": {"b": "v"}}']


def test_or_of_in_and_eq() -> None:
    sql, params = build_filter(
        {"$or": [{"metadata.crate_version": {"$in": ["1.0", "2.0"]}}, {"source_name": "tokio"}]}
    )
    assert sql == "((d.metadata #> $1::text[]) = ANY($2::jsonb[]) OR d.source_name = $3)"
    assert params == [["crate_version"], ['"1.0"', '"2.0"'], "tokio"]


@pytest.mark.parametrize(
    "flt",
    [
        {"content": "x"},  # not a filterable column
        {"nope": 1},
        {"metadata.": 1},
        {"metadata.a..b": 1},
        {"source_name": {"$regex": "x"}},
        {"$xor": []},
        {"$and": []},
        {"$or": {"a": 1}},
        {"token_count": "many"},
        {"token_count": {"$gt": True}},
        {"created_at": {"$gt": "yesterday"}},
        {"source_name": {"$in": []}},
        {"source_name": {"$in": "tokio"}},
        {"source_name": {"$between": ["a"]}},
        {"source_name": {"$exists": "yes"}},
        {"token_count": {"$like": "1%"}},
        {"metadata.x": {"$gt": float("nan")}},
        {"metadata.x": {"$gt": [1]}},
        {"metadata.x": {"$eq": float("inf")}},
        {"source_name": "nul\x00"},
        {"source_name": ["a", "b"]},
        [],
        "source_name = 'x'",
        # ground-rules audit (2026-12-07): a number the driver sent as 0, keys json.dumps
        # made strings (an operator object taken for a value to equal)
        {"metadata.k": {"$gt": 10**1000}},
        {"metadata.k": {"$between": [0, -(10**140_000)]}},
        {"metadata.k": {"$gt": 5, 0: "stray"}},
        {"metadata.k": {"$in": [10], None: 1}},
        {"metadata.k": {1: "a", "1": "b"}},
        {"metadata.k": {"$eq": {"a": [{2: "x"}]}}},
        {"metadata.k": {"$in": [{"a": 1}, {(1, 2): 3}]}},
    ],
)
def test_malformed_filters_raise_filter_error(flt: Any) -> None:
    with pytest.raises(FilterError):
        build_filter(flt)


def test_a_cyclic_or_huge_value_is_refused_at_once() -> None:
    """Review 105: the key check walked a cyclic value (``d["a"] = [d] * 100``) for 15 s and
    434 MB, and gave up on a value of more than a million lists without looking at its keys."""
    cyclic: dict[str, Any] = {}
    cyclic["a"] = [cyclic] * 100
    with pytest.raises(FilterError, match="not JSON-serializable"):
        build_filter({"metadata.k": {"$eq": cyclic}})
    with pytest.raises(FilterError, match="more than 1,000,000 objects and lists"):
        build_filter({"metadata.k": {"$eq": [[] for _ in range(1_000_001)]}})


def test_a_number_of_a_thousand_digits_is_still_compared() -> None:
    sql, params = build_filter({"metadata.k": {"$lt": 10**999}})
    assert params[-1] == 10**999 and "::numeric" in sql


def test_every_operator_builds() -> None:
    samples = {
        "$eq": "a",
        "$ne": "a",
        "$lt": "m",
        "$lte": "m",
        "$gt": "m",
        "$gte": "m",
        "$in": ["a"],
        "$nin": ["a"],
        "$between": ["a", "z"],
        "$exists": True,
        "$like": "a%",
        "$ilike": "A%",
        "$contains": "a",
    }
    assert set(samples) == OPERATORS
    for op, value in samples.items():
        for field in ("source_name", "metadata.k"):
            sql, params = build_filter({field: {op: value}})
            assert sql and (params or op == "$exists")


def test_timestamps_compare_as_timestamps() -> None:
    when = datetime(2026, 1, 1)
    sql, params = build_filter({"created_at": {"$between": [when, when]}})
    assert sql == "(d.created_at >= $1 AND d.created_at <= $2)" and params == [when, when]


def test_too_deep_nesting_is_refused() -> None:
    flt: dict[str, Any] = {"source_name": "x"}
    for _ in range(40):
        flt = {"$not": flt}
    with pytest.raises(FilterError, match="deeper"):
        build_filter(flt)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)
marked_text = st.text().map(lambda s: s + MARK)


@settings(max_examples=examples(300), deadline=None)
@given(key=marked_text, value=json_values, op=st.sampled_from([*sorted(OPERATORS), "$bogus"]))
def test_no_key_or_value_ever_reaches_the_sql_text(key: str, value: Any, op: str) -> None:
    for field in (key, "metadata." + key, "source_name"):
        for flt in ({field: {op: value}}, {field: value}, {"$or": [{field: value}]}):
            try:
                sql, _params = build_filter(flt)
            except FilterError:
                continue
            assert MARK not in sql


@settings(max_examples=examples(200), deadline=None)
@given(value=marked_text, op=st.sampled_from(sorted(OPERATORS)))
def test_marked_string_values_never_reach_the_sql_text(value: str, op: str) -> None:
    for field in ("metadata.k", "doc_path"):
        for v in (value, [value], [value, value]):
            try:
                sql, _ = build_filter({field: {op: v}})
            except FilterError:
                continue
            assert MARK not in sql


def test_nul_byte_in_a_metadata_key_is_a_filter_error() -> None:
    with pytest.raises(FilterError, match="NUL"):
        build_filter({"metadata.a\x00b": {"$exists": True}})


@pytest.mark.parametrize("op", ["$eq", "$ne"])
def test_a_tuple_operand_is_a_list_compared_for_equality_not_containment(op: str) -> None:
    """(\"a\",) is the JSON list ["a"]: the GIN containment narrows, equality decides — a
    document tagged ["a", "b"] is not equal to it."""
    as_list = build_filter({"metadata.tags": {op: ["a"]}})
    assert build_filter({"metadata.tags": {op: ("a",)}}) == as_list
    sql, params = as_list
    assert "(d.metadata #> $2::text[]) = $3::jsonb" in sql
    assert params == ['{"tags": ["a"]}', ["tags"], '["a"]']


def test_a_plain_tuple_or_nested_tuple_value_means_equality_too() -> None:
    assert build_filter({"metadata.tags": ("a", "b")}) == build_filter(
        {"metadata.tags": ["a", "b"]}
    )
    assert build_filter({"metadata.a": {"b": ("x",)}}) == build_filter({"metadata.a": {"b": ["x"]}})


def test_a_plain_datetime_or_date_is_a_timestamp_value() -> None:
    when = datetime(2026, 1, 1, 12)
    assert build_filter({"created_at": when}) == ("d.created_at = $1", [when])
    aware = datetime(2026, 1, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    assert build_filter({"updated_at": aware}) == ("d.updated_at = $1", [when])
    day = date(2026, 1, 1)
    assert build_filter({"created_at": {"$ne": day}}) == (
        "d.created_at IS DISTINCT FROM $1",
        [day],
    )
    assert build_filter({"created_at": day}) == ("d.created_at = $1", [day])


@pytest.mark.parametrize(
    "flt",
    [
        {"token_count": datetime(2026, 1, 1)},
        {"source_name": date(2026, 1, 1)},
        {"metadata.when": datetime(2026, 1, 1)},  # metadata holds JSON: no datetimes
    ],
)
def test_a_datetime_for_a_field_that_holds_no_timestamps_is_refused(flt: Any) -> None:
    with pytest.raises(FilterError):
        build_filter(flt)


@pytest.mark.parametrize("segment", ["0", "12", "-1", "+1", " 1", "\t-2"])
def test_every_segment_postgresql_reads_as_an_array_index_uses_the_path_operator(
    segment: str,
) -> None:
    """Containment ({"tags": {"-1": v}}) only ever matches an object key, while #> reads
    "-1", "+1" and " 1" as array subscripts (as $in, $gt and $exists do): $eq must agree."""
    sql, params = build_filter({f"metadata.tags.{segment}": "b"})
    assert sql == "coalesce((d.metadata #> $1::text[]) = $2::jsonb, false)"
    assert params == [["tags", segment], '"b"']


@pytest.mark.parametrize("segment", ["1 ", "x1", "--1", "1e3", "+-1"])
def test_other_segments_are_object_keys_matched_by_containment(segment: str) -> None:
    sql, params = build_filter({f"metadata.tags.{segment}": "b"})
    assert sql == "d.metadata @> $1::jsonb"
    assert params == [json.dumps({"tags": {segment: "b"}})]


def test_an_in_list_past_its_limit_is_a_filter_error_before_any_value_is_checked() -> None:
    """Review 68: a million values took 2 s of the event loop to check, then 9 s to search."""
    from docstore.search.filters import MAX_LIST

    build_filter({"token_count": {"$in": list(range(MAX_LIST))}})
    for op in ("$in", "$nin"):
        with pytest.raises(FilterError, match=f"at most {MAX_LIST:,} values, not 1,000,000"):
            build_filter({"token_count": {op: list(range(1_000_000))}})


def test_a_statement_binding_a_list_postgresql_would_hash_is_told_apart() -> None:
    """PostgreSQL hashes an ``$in`` list of 9 values or more, and only in a plan made with
    them: such statements are planned with their values every time
    (``docstore/search/statements.py``); shorter lists and list-free filters are not."""
    for values, long in ((8, False), (9, True), (500, True)):
        for op in ("$in", "$nin"):
            for field_ in ("metadata.v", "token_count", "source_name"):
                items = [f"{i}" if field_ != "token_count" else i for i in range(values)]
                sql, params = build_filter({field_: {op: items}})
                assert binds_a_long_list(sql, params) is long, (values, op, field_)
    short_list_long_path = build_filter({"metadata.a.b.c.d.e.f.g.h.i": {"$in": ["x"]}})
    assert binds_a_long_list(*short_list_long_path)  # a path is a list too: only round trips
    assert not binds_a_long_list(*build_filter({"metadata.v": {"$eq": list(range(20))}}))
    assert not binds_a_long_list(*build_filter(None))
