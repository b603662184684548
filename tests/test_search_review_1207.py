"""Review of 2026-12-07: a filtered ANN search keeps the calibration's second pass, ``$contains``
on a string-valued metadata field, and what a calibration that missed its target says.

Pure planner / builder / message tests first, then the same behaviours on a real database.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np
import pytest

import docstore
from docstore import Document
from docstore.errors import FilterError
from docstore.search import planner, tuning
from docstore.search.filters import build_filter
from docstore.search.planner import FilterSize
from tests.test_calibration import clustered, noisy_queries
from tests.test_tuning import calibration
from tests.test_tuning import plan as unfiltered_plan

LARGE = FilterSize(False, 25_000, 50_000)  # no index serves it, half the table: ANN
QUERIES = 40
"""Enough that the first pass's losses do not hang on one random graph: at ``ef_search`` 10
a fifth to a third of these queries lost neighbours on each of six builds measured (on one CI
build, the former 12 queries at noise 0.05 lost almost none)."""
PASSES = ("mode", "candidates", "ef_search", "escalate_below", "escalation_ef_search", "source")


def passes(p: planner.VectorPlan) -> tuple[Any, ...]:
    return tuple(getattr(p, name) for name in PASSES)


# -- 1. a sized filter's ANN plan: the calibrated second pass ---------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"limit": 50},  # the scaled first pass; the second still wider
        {"oversample": 20, "oversample_given": True},  # the caller's oversample: kept
    ],
)
def test_a_sized_filters_ann_plan_carries_the_second_pass_like_the_unfiltered_plan(
    options: dict[str, Any],
) -> None:
    """A filter sized for ANN ran one pass at the first-pass ``ef_search``, while the
    calibration's recall target counts on the second for its flattest queries."""
    cal = calibration()
    alone = unfiltered_plan(calibration=cal, **options)
    filtered = unfiltered_plan(calibration=cal, filtered=True, filter_size=LARGE, **options)
    assert filtered.escalate_below == cal.escalate_below == alone.escalate_below
    same = ("mode", "candidates", "escalate_below", "source")
    assert [getattr(filtered, n) for n in same] == [getattr(alone, n) for n in same]
    assert filtered.force_index  # and still the HNSW index for sure
    # both passes widened by 1 / the filter's share (planner.restricted_ef_search)
    assert filtered.ef_search >= alone.ef_search
    assert filtered.escalation_ef_search >= alone.escalation_ef_search
    wide = planner.escalation_candidates(filtered, options.get("limit", 10))
    assert wide >= planner.escalation_candidates(alone, options.get("limit", 10))


def test_explicit_settings_still_run_one_pass_with_a_filter() -> None:
    """An explicit ``ef_search`` (argument or ``DOCSTORE_HNSW_EF_SEARCH``) is an override: no
    second pass, filtered or not; a first pass as wide as the second has none either."""
    cal = calibration()
    given = unfiltered_plan(calibration=cal, filtered=True, filter_size=None, ef_search=200)
    setting = unfiltered_plan(
        filtered=True, filter_size=LARGE, calibration=None, configured_ef_search=80
    )
    top = unfiltered_plan(calibration=calibration(ef_search=640), filtered=True, filter_size=LARGE)
    for p in (given, setting, top):
        assert p.mode == "ann" and (p.escalate_below, p.escalation_ef_search) == (None, 0)


async def test_a_filter_matching_every_row_finds_what_the_unfiltered_search_finds(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queries far from every document (cosine ~0.18 to the best), a first pass at
    ``ef_search`` 10 that misses some of their neighbours, a second at 400 that finds them:
    with a filter matching every row (no index serves it: sized by a page sample, ANN), the
    search runs the second pass and returns exactly the unfiltered search's hits. (The
    calibrations are set by hand; no live recall or recent queries may replace them.)"""
    monkeypatch.setenv("DOCSTORE_SEARCH_RECALL_SAMPLE", "0")
    monkeypatch.setenv("DOCSTORE_SEARCH_KEEP_QUERIES", "false")
    points = clustered(2000, seed=5)
    every_row = {"metadata.nope": {"$exists": False}}
    one_pass = _calibration(ef_search=10, escalation_ef_search=None, escalate_below=None)
    two_passes = _calibration(ef_search=10, escalation_ef_search=400, escalate_below=10.0)
    recall: dict[str, list[float]] = {"first pass": [], "filtered": []}
    async with docstore.connect(database_url) as store:
        await store.documents.upsert_many(
            Document(source_name=f"s{i % 10}", doc_path=f"d{i}", content=f"doc {i}", embedding=v)
            for i, v in enumerate(points)
        )
        await store.execute("ANALYZE documents")
        await store.create_vector_index(calibrate=False)
        for q in noisy_queries(points, QUERIES, noise=0.1, seed=11):
            exact = set((await store.search(q, limit=10, exact=True)).ids)
            store.tuner._remember(one_pass)  # the plan a sized filter had: its first pass only
            first = await store.search(q, limit=10, filter=every_row)
            assert (first.mode, first.escalated) == ("ann", False)
            store.tuner._remember(two_passes)
            unfiltered = await store.search(q, limit=10)
            filtered = await store.search(q, limit=10, filter=every_row)
            assert (filtered.mode, filtered.escalated, filtered.ef_search) == ("ann", True, 10)
            assert unfiltered.escalated and filtered.ids == unfiltered.ids
            assert [h.similarity for h in filtered] == [h.similarity for h in unfiltered]
            recall["first pass"].append(len(exact & set(first.ids)) / 10)
            recall["filtered"].append(len(exact & set(filtered.ids)) / 10)
        size = await store._vector.filter_sizes.size(every_row)
    assert size is not None and not size.indexed and size.share == 1.0
    first_pass, filtered_recall = (float(np.mean(r)) for r in recall.values())
    assert first_pass < 0.95, recall  # the case: the first pass alone loses neighbours
    assert filtered_recall >= 0.95 and filtered_recall > first_pass, recall


def _calibration(**changes: Any) -> tuning.Calibration:
    base: dict[str, Any] = {
        "metric": "cosine",
        "target_recall": 0.98,
        "ef_search": 40,
        "expected_recall": 0.99,
        "lowest_recall": 0.9,
        "escalation_rate": 0.2,
        "expected_ms": 1.0,
        "met_target": True,
        "queries": 100,
        "query_source": "given",
        "table_rows": 2000,
        "calibrated_at": datetime.now(UTC),
    }
    return tuning.Calibration.model_validate(base | changes)


# -- 2. $contains on a metadata field -----------------------------------------------------------


def test_contains_a_string_on_metadata_is_an_array_element_or_a_substring() -> None:
    """``["abc"]`` used to be the operand for every scalar: a jsonb string never contains an
    array, so a string-valued field matched nothing. The element test keeps the GIN-served
    containment of the whole document; the substring test reads only string values; every
    value and key is bound."""
    sql, params = build_filter({"metadata.title": {"$contains": "abc"}})
    assert sql == (
        "(d.metadata @> $1::jsonb OR coalesce(strpos(CASE WHEN"
        " jsonb_typeof((d.metadata #> $2::text[])) = 'string'"
        " THEN (d.metadata #>> $3::text[]) END, $4) > 0, false))"
    )
    assert params == ['{"title": ["abc"]}', ["title"], ["title"], "abc"]
    nested, params = build_filter({"metadata.a.b": {"$contains": "x'; --"}})
    assert "x'" not in nested and params[0] == '{"a": {"b": ["x\'; --"]}}'


@pytest.mark.parametrize(
    ("operand", "contained"),
    [
        (["a", "b"], ["a", "b"]),
        (("a",), ["a"]),  # a tuple is the list it serializes to, as for $eq
        ({"k": 1}, {"k": 1}),
        (5, [5]),
        (True, [True]),
        (None, [None]),
    ],
)
def test_contains_anything_else_on_metadata_is_indexed_json_containment(
    operand: Any, contained: Any
) -> None:
    """A list or an object: JSON containment; a number, boolean or null: an array element —
    as the document's ``@>`` (the GIN index on ``metadata``), not the path's."""
    sql, params = build_filter({"metadata.tags": {"$contains": operand}})
    assert (sql, params) == ("d.metadata @> $1::jsonb", [f'{{"tags": {_dumps(contained)}}}'])


def test_contains_through_an_array_subscript_follows_the_path() -> None:
    sql, params = build_filter({"metadata.tags.0": {"$contains": ["x"]}})
    assert sql == "coalesce((d.metadata #> $1::text[]) @> $2::jsonb, false)"
    assert params == [["tags", "0"], '["x"]']
    sql, _ = build_filter({"metadata.tags.-1": {"$contains": "x"}})
    assert sql.startswith("(coalesce((d.metadata #> $1::text[]) @> $2::jsonb, false) OR ")


def test_contains_refuses_what_cannot_be_sent() -> None:
    with pytest.raises(FilterError, match="NUL"):
        build_filter({"metadata.title": {"$contains": "a\x00b"}})
    with pytest.raises(FilterError, match="not JSON"):
        build_filter({"metadata.tags": {"$contains": [object()]}})
    with pytest.raises(FilterError, match="text or metadata"):
        build_filter({"token_count": {"$contains": "1"}})


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value)


CONTAINS_ROWS: dict[str, dict[str, Any]] = {
    "exact": {"title": "abc"},
    "longer": {"title": "xabcx"},
    "other": {"title": "xyz"},
    "element": {"tags": ["abc", "d"]},
    "longer-element": {"tags": ["abcd"]},
    "number": {"title": 5, "tags": [5, "5"]},
    "object": {"title": {"abc": 1}},
    "nested": {"a": {"b": "zabc"}, "tags": [["abc"]]},
    "null": {"title": None},
    "none": {},
}


async def _paths(store: docstore.Store, flt: Any) -> list[str]:
    """Through ``store.search`` (exact: every matching row) and through the plain filter."""
    hits = await store.search(np.ones(3072), filter=flt, exact=True, limit=100)
    sql, params = build_filter(flt)
    rows = await store.fetch(f"select doc_path from documents d where {sql}", *params)
    assert sorted(h.doc_path for h in hits) == sorted(r["doc_path"] for r in rows)
    return sorted(h.doc_path for h in hits)


async def test_contains_on_metadata_against_the_database(store: docstore.Store) -> None:
    await store.documents.upsert_many(
        Document(source_name="s", doc_path=k, content=k, metadata=m, embedding=np.ones(3072))
        for k, m in CONTAINS_ROWS.items()
    )

    async def paths(flt: Any) -> list[str]:
        return await _paths(store, flt)

    # a string: the identical string, a longer one, an array element (whole elements only)
    assert await paths({"metadata.title": {"$contains": "abc"}}) == ["exact", "longer"]
    assert await paths({"metadata.title": {"$contains": "b"}}) == ["exact", "longer"]
    assert await paths({"metadata.tags": {"$contains": "abc"}}) == ["element"]
    assert await paths({"metadata.a.b": {"$contains": "abc"}}) == ["nested"]
    assert await paths({"metadata.title": {"$contains": "5"}}) == []  # 5 is a number
    assert await paths({"metadata.tags": {"$contains": "5"}}) == ["number"]
    # anything else: containment (a number is not a substring of anything)
    assert await paths({"metadata.tags": {"$contains": 5}}) == ["number"]
    assert await paths({"metadata.tags": {"$contains": ["d", "abc"]}}) == ["element"]
    assert await paths({"metadata.tags": {"$contains": [["abc"]]}}) == ["nested"]
    assert await paths({"metadata.title": {"$contains": {"abc": 1}}}) == ["object"]
    assert await paths({"metadata.tags.0": {"$contains": "ab"}}) == ["element", "longer-element"]
    # $not: every document the condition does not match, documents without the key too
    assert await paths({"$not": {"metadata.title": {"$contains": "abc"}}}) == sorted(
        set(CONTAINS_ROWS) - {"exact", "longer"}
    )
    # the text columns: a substring, as before
    assert await paths({"doc_path": {"$contains": "element"}}) == ["element", "longer-element"]


async def test_contains_an_element_is_served_by_the_metadata_gin_index(
    store: docstore.Store, database_url: str
) -> None:
    """The list/number form (and the element half of the string form) is the document's
    containment, which ``idx_documents_metadata`` serves; the path's ``@>`` could not be."""
    await store.documents.upsert_many(
        Document(
            source_name="s",
            doc_path=f"p{i}",
            content="c",
            metadata={"tags": [f"t{i}", i]},
            embedding=np.ones(3072),
        )
        for i in range(300)
    )
    await store.execute("ANALYZE documents")
    conn = await asyncpg.connect(database_url)
    try:
        for flt in (
            {"metadata.tags": {"$contains": ["t7"]}},
            {"metadata.tags": {"$contains": 7}},
            {"metadata.tags": {"$in": [["t7", 7]]}},  # the control: no index serves it
        ):
            sql, params = build_filter(flt)
            async with conn.transaction():
                await conn.execute("SET LOCAL enable_seqscan = off")
                plan = await conn.fetch(f"EXPLAIN SELECT id FROM documents d WHERE {sql}", *params)
            text = "\n".join(r[0] for r in plan)
            assert ("idx_documents_metadata" in text) == ("$contains" in str(flt)), (flt, text)
    finally:
        await conn.close()
    assert await _paths(store, {"metadata.tags": {"$contains": "t7"}}) == ["p7"]
    assert await _paths(store, {"metadata.tags": {"$contains": 7}}) == ["p7"]


async def test_none_on_metadata_is_json_null_and_ne_keeps_documents_without_the_key(
    store: docstore.Store,
) -> None:
    """Documented, unchanged: on a metadata field None is JSON's null (not a missing key), and
    $ne/$nin match documents without the key; $exists tests presence. On a column None is
    SQL's NULL."""
    await store.documents.upsert_many(
        Document(source_name="s", doc_path=k, content=k, metadata=m, embedding=np.ones(3072))
        for k, m in {"null": {"x": None}, "one": {"x": 1}, "none": {}}.items()
    )

    async def paths(flt: Any) -> list[str]:
        return await _paths(store, flt)

    assert await paths({"metadata.x": None}) == ["null"]
    assert await paths({"metadata.x": {"$ne": None}}) == ["none", "one"]
    assert await paths({"metadata.x": {"$ne": 1}}) == ["none", "null"]
    assert await paths({"metadata.x": {"$nin": [1]}}) == ["none", "null"]
    assert await paths({"metadata.x": {"$exists": True}}) == ["null", "one"]
    assert await paths({"metadata.x": {"$exists": False}}) == ["none"]
    assert await paths({"doc_type": None}) == []  # the column: IS NULL
    assert await paths({"doc_type": {"$ne": None}}) == ["none", "null", "one"]


# -- 3. a calibration that did not meet its target says why -----------------------------------


def test_an_unmet_calibration_names_the_condition_it_missed_with_its_figures() -> None:
    """Mean 0.987 against 0.98 was logged as "the index cannot reach it": it missed the
    one-standard-error margin or the per-query floor (tuning._meets)."""
    margin = _calibration(
        ef_search=1000,
        expected_recall=0.987,
        recall_error=0.0091,
        lowest_recall=0.8,
        met_target=False,
    )
    assert tuning.summary(margin) == (
        "ef_search 1000, recall 0.987 (target 0.98) — target not met: mean recall 0.9870 less"
        " one standard error (0.0091 over 100 queries) is 0.9779, under 0.98"
    )
    floor = margin.model_copy(update={"recall_error": 0.002, "lowest_recall": 0.6})
    assert tuning.shortfall(floor) == "the worst query's recall 0.60 is under the floor 0.7"
    both = margin.model_copy(update={"expected_recall": 0.95, "lowest_recall": 0.5})
    assert tuning.shortfall(both) == (
        "mean recall 0.9500 is under 0.98; the worst query's recall 0.50 is under the floor 0.7"
    )
    old = margin.model_copy(update={"recall_error": None})  # stored without it
    assert tuning.shortfall(old) == "mean recall less one standard error is under 0.98"
    met = _calibration(escalation_ef_search=400, escalate_below=0.05, escalation_rate=0.12)
    assert tuning.shortfall(met) == ""
    assert (
        tuning.summary(met)
        == "ef_search 40, 400 below spread 0.05 (12%), recall 0.990 (target 0.98)"
    )


def test_choose_settings_reports_the_standard_error_it_judged_by() -> None:
    trials = {40: [tuning.Trial(r, 0.1) for r in (1.0, 1.0, 0.9, 1.0)]}
    choice = tuning.choose_settings(trials, {40: 1.0}, target=0.98)
    expected = float(np.std([1.0, 1.0, 0.9, 1.0], ddof=1) / 2)
    assert not choice.met_target and choice.recall_error == pytest.approx(expected)


async def test_a_calibration_log_line_says_what_was_not_met(
    store: docstore.Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A real calibration that cannot meet its target (a graph of degree 2 over unstructured
    vectors, a target of 0.999): the warning gives the figures of the condition it missed —
    never "the index cannot reach it", never a vector."""
    rng = np.random.default_rng(21)
    points = rng.standard_normal((4000, 3072)).astype(np.float32)
    await store.documents.upsert_many(
        Document(source_name="s", doc_path=f"d{i}", content="c", embedding=v)
        for i, v in enumerate(points)
    )
    await store.execute("ANALYZE documents")
    await store.create_vector_index(m=2, ef_construction=4, calibrate=False)
    with caplog.at_level(logging.INFO, logger="docstore"):
        c = await store.calibrate_search(query_vectors=list(points[:24] + 0.5), target=0.999)
    assert not c.met_target and c.recall_error is not None
    [record] = [r for r in caplog.records if r.getMessage().startswith("search calibrated")]
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert message == f"search calibrated (cosine, 24 given): {tuning.summary(c)}"
    assert "cannot reach" not in message and "[" not in message
    if c.expected_recall < 0.999:
        assert f"mean recall {c.expected_recall:.4f} is under 0.999" in message
    elif c.expected_recall - c.recall_error < 0.999:
        assert f"({c.recall_error:.4f} over 24 queries)" in message
    if c.lowest_recall < tuning.RECALL_FLOOR:
        assert f"recall {c.lowest_recall:.2f} is under the floor 0.7" in message


def test_docstore_index_calibrate_says_what_was_not_met(capsys: pytest.CaptureFixture[str]) -> None:
    """``docstore index calibrate`` printed "this index cannot reach it" for the same miss."""
    from docstore.cli.index import _print_calibration

    margin = _calibration(
        ef_search=1000, expected_recall=0.987, recall_error=0.0091, met_target=False
    )
    _print_calibration(margin)
    printed = " ".join(capsys.readouterr().out.split())
    assert "cannot reach" not in printed
    assert "the target is not met: mean recall 0.9870 less one standard error" in printed
    assert "is 0.9779, under 0.98 (a larger --m / --ef-construction may reach it)" in printed
