"""Vector, full-text and hybrid search against a real PostgreSQL + pgvector.

One corpus (1,500 clustered 3,072-dim documents, a few without an embedding, and an HNSW
index on the halfvec cast) is built once per module; tests only read it. Tests that write
use the function-scoped ``store``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np
import pytest

import docstore
from docstore import Document, ReadOnlyError, SchemaError, ValidationError
from docstore.models import MAX_KEY_BYTES
from docstore.search import filter_size, growth, planner, queries, table_size, text_sql, tuning
from docstore.search.calibration import Calibrator
from tests.conftest import PgCluster

DIM = 3072
ROWS = 1500
NO_EMBEDDING = 12
CLUSTERS = 30
TOPICS = ["runtime", "serialize", "channel", "macro", "borrow", "socket"]


def clustered(rows: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, CLUSTERS, size=rows)]
    points = points + rng.normal(scale=1 / np.sqrt(DIM), size=points.shape).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


POINTS = clustered(ROWS)


def corpus_documents() -> Iterator[Document]:
    for i in range(ROWS + NO_EMBEDDING):
        source = f"crate{i % 40}"
        yield Document(
            doc_type="rust" if i % 10 else "solana",
            source_name=source,
            doc_path=f"{source}/item{i}",
            content=f"{source} item {i}: how to {TOPICS[i % len(TOPICS)]} with async code",
            metadata={"crate_version": f"{i % 4}.0", "n": i},
            embedding=POINTS[i] if i < ROWS else None,
            token_count=i,
        )


@pytest.fixture(scope="module")
def corpus_url(pg: PgCluster) -> Iterator[str]:
    name = pg.create_database(template=pg.template, prefix="search")
    url = pg.url(name)

    async def build() -> None:
        async with docstore.connect(url) as store:
            await store.documents.upsert_many(corpus_documents())
            await store.execute("ANALYZE documents")
            await store.create_vector_index()
            await store.create_text_index()

    asyncio.run(build())
    yield url
    pg.drop_database(name)


@pytest.fixture
async def corpus(corpus_url: str) -> AsyncIterator[docstore.Store]:
    async with docstore.connect(corpus_url) as store:
        yield store


def query(i: int, jitter: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    q = POINTS[(i * 37) % ROWS] + rng.normal(scale=jitter / np.sqrt(DIM), size=DIM)
    return (q / np.linalg.norm(q)).astype(np.float32)


async def hand_written(
    store: docstore.Store, q: np.ndarray, op: str, limit: int = 10, where: str = "true"
) -> list[tuple[int, float]]:
    rows = await store.fetch(
        f"select id, embedding {op} $1::vector as d from documents"
        f" where embedding is not null and {where} order by d, id limit {limit}",
        q,
    )
    return [(r["id"], r["d"]) for r in rows]


# -- exact search ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "op", "similarity"),
    [
        ("cosine", "<=>", lambda d: 1 - d),
        ("l2", "<->", lambda d: 1 / (1 + d)),
        ("inner_product", "<#>", lambda d: -d),
    ],
)
async def test_exact_search_matches_hand_written_sql(
    corpus: docstore.Store, metric: str, op: str, similarity: Any
) -> None:
    q = query(1)
    results = await corpus.search(q, metric=metric, exact=True, limit=7)
    expected = await hand_written(corpus, q, op, limit=7)
    assert results.mode == "exact" and results.ids == [i for i, _ in expected]
    for hit, (_, d) in zip(results, expected, strict=True):
        assert hit.distance == pytest.approx(d)
        assert hit.similarity == pytest.approx(similarity(d))
    assert [h.similarity for h in results] == sorted((h.similarity for h in results), reverse=True)


async def test_cosine_similarity_is_one_minus_distance_as_in_the_legacy_server(
    corpus: docstore.Store,
) -> None:
    hit = (await corpus.search(POINTS[5], exact=True, limit=1))[0]
    legacy = await corpus.fetchval(
        "select 1 - (embedding <=> $1::vector) from documents where id = $2", POINTS[5], hit.id
    )
    assert hit.similarity == pytest.approx(legacy) and hit.similarity == pytest.approx(1.0)
    assert hit.doc_path == "crate5/item5" and hit.embedding is None


async def test_documents_without_embedding_never_appear_but_are_counted(
    corpus: docstore.Store,
) -> None:
    results = await corpus.search(query(2), exact=True, limit=1000)
    assert len(results) == 1000
    everything = await corpus.search(
        query(2), exact=True, limit=1000, filter={"token_count": {"$gte": ROWS - 5}}
    )
    assert {h.token_count for h in everything} == set(range(ROWS - 5, ROWS))
    stats = await corpus.documents.stats()
    assert sum(s.without_embedding for s in stats) == NO_EMBEDDING


async def test_filters_and_shortcuts_restrict_results_like_sql(corpus: docstore.Store) -> None:
    q = query(3)
    results = await corpus.search(
        q,
        doc_type="rust",
        filter={"metadata.crate_version": {"$in": ["1.0", "2.0"]}},
        exact=True,
        limit=15,
    )
    expected = await hand_written(
        corpus,
        q,
        "<=>",
        limit=15,
        where="doc_type = 'rust' and metadata->>'crate_version' in ('1.0', '2.0')",
    )
    assert results.ids == [i for i, _ in expected]


async def test_min_similarity_drops_weaker_hits(corpus: docstore.Store) -> None:
    q = query(4)
    everything = await corpus.search(q, exact=True, limit=50)
    threshold = everything[20].similarity
    assert threshold is not None
    kept = await corpus.search(q, exact=True, limit=50, min_similarity=threshold)
    assert kept.ids == [h.id for h in everything if h.similarity >= threshold]  # type: ignore[operator]
    assert 20 <= len(kept) < 50


async def test_include_embedding_returns_the_stored_vector(corpus: docstore.Store) -> None:
    hit = (await corpus.search(POINTS[9], limit=1, include_embedding=True))[0]
    assert hit.embedding is not None and hit.embedding.dtype == np.float32
    assert np.array_equal(hit.embedding, POINTS[9])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.ones(1536, dtype=np.float32), "1536 dimensions, expected 3072"),
        (np.full(DIM, np.nan, dtype=np.float32), "NaN or inf at position 0"),
        (np.full(DIM, np.inf), "NaN or inf"),
        ("0.1, 0.2", "list or numpy array"),
        (None, "required"),
    ],
)
async def test_query_vectors_are_validated_like_stored_ones(
    corpus: docstore.Store, bad: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        await corpus.search(bad)
    assert info.value.field == "embedding"
    assert "0.1" not in str(info.value) or bad == "0.1, 0.2"  # no vector in the message


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"metric": "dot"}, "metric"),
        ({"min_similarity": float("nan")}, "min_similarity"),
        ({"min_similarity": "high"}, "min_similarity"),
        # beyond the metric's similarities: nothing could match (it returned [] silently)
        ({"min_similarity": 1.01}, "min_similarity"),
        ({"min_similarity": -1.5}, "min_similarity"),
        ({"metric": "l2", "min_similarity": 2}, "min_similarity"),
        ({"ef_search": 0}, "ef_search"),
        ({"oversample": 1000}, "oversample"),
    ],
)
async def test_bad_options_are_validation_errors(
    corpus: docstore.Store, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        await corpus.search(query(0), **kwargs)
    assert info.value.field == field


async def test_min_similarity_at_the_ends_of_the_metrics_range_is_accepted(
    corpus: docstore.Store,
) -> None:
    q = query(0)
    assert len(await corpus.search(q, exact=True, min_similarity=-1.0)) == 10
    assert len(await corpus.search(q, exact=True, metric="l2", min_similarity=0)) == 10
    await corpus.search(q, exact=True, min_similarity=1.0)  # only exact duplicates
    await corpus.search(q, exact=True, metric="inner_product", min_similarity=1e6)  # unbounded


# -- ANN --------------------------------------------------------------------------------------


async def test_default_search_uses_the_index_and_matches_exact_top_10(
    corpus: docstore.Store,
) -> None:
    """Acceptance 1: default settings return the exact top-10 for >= 98% of positions."""
    found = total = 0
    for i in range(60):
        q = query(i)
        ann = await corpus.search(q)
        exact = await corpus.search(q, exact=True)
        assert ann.mode == "ann" and ann.index_name == "documents_embedding_hnsw_cosine"
        found += len(set(ann.ids) & set(exact.ids))
        total += len(exact.ids)
    assert found / total >= 0.98, found / total


async def test_evaluate_recall_reports_recall_and_latency_of_both_paths(
    corpus: docstore.Store,
) -> None:
    report = await corpus.evaluate_recall(sample=30, limit=10)
    assert report.sample == 30 and report.index == "documents_embedding_hnsw_cosine"
    assert report.recall >= 0.98 and 0 <= report.min_recall <= report.recall <= 1
    calibration = await corpus.tuner.calibration()
    assert calibration is not None  # create_vector_index() calibrated the settings
    assert report.ef_search == calibration.ef_search and report.candidates == 40
    assert report.ann.p50 > 0 and report.exact.p50 > 0 and report.ann.p50 <= report.ann.p99
    # per-call settings are what gets measured (and reported)
    custom = await corpus.evaluate_recall(sample=10, limit=10, ef_search=300, oversample=10)
    assert (custom.ef_search, custom.candidates) == (300, 100)
    # a tiny limit still gets the 40-candidate floor, and ef_search follows the candidates
    small = await corpus.evaluate_recall(sample=5, limit=1, ef_search=10, oversample=1)
    assert (small.ef_search, small.candidates) == (40, 40)


async def test_an_oversample_given_per_call_is_honoured_under_the_calibration(
    corpus: docstore.Store,
) -> None:
    """``search(q, oversample=20)`` re-ranked the calibration's ``ef_search`` candidates
    (64 here), not the 200 asked for; and the second pass ignored the call's oversample."""
    calibration = await corpus.tuner.calibration()
    assert calibration is not None
    ef = max(calibration.ef_search, 200)  # the calibration's own, chosen on this host's timings
    report = await corpus.evaluate_recall(sample=5, limit=10, oversample=20)
    assert (report.candidates, report.ef_search) == (200, ef)
    assert report.recall >= 0.98
    results = await corpus.search(query(3), oversample=20)
    assert results.mode == "ann" and results.ef_search == ef and len(results) == 10
    default = await corpus.search(query(3))
    assert default.ef_search == calibration.ef_search
    # nor do such searches count in the window that sends calibrated ones to the second pass
    window = corpus.tuner._escalations
    before = len(window)
    for i in range(5):
        await corpus.search(query(i), oversample=20)
    assert len(window) == before
    await corpus.search(query(6))
    assert len(window) == before + (calibration.escalate_below is not None)


async def test_explain_shows_the_hnsw_index_on_the_halfvec_cast(corpus: docstore.Store) -> None:
    sql, params = queries.vector_search_sql(query(5), dim=DIM, limit=10, candidates=100)
    async with corpus.transaction() as conn:
        await conn.execute(queries.ann_settings_sql(400))
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN (COSTS OFF) " + sql, *params))
    assert "Index Scan using documents_embedding_hnsw_cosine on documents" in plan
    assert "Order By: ((embedding)::halfvec(3072) <=>" in plan
    exact_sql, exact_params = queries.vector_search_sql(query(5), dim=DIM, limit=10)
    exact_plan = "\n".join(
        r[0] for r in await corpus.fetch("EXPLAIN (COSTS OFF) " + exact_sql, *exact_params)
    )
    assert "hnsw" not in exact_plan


async def test_search_itself_scans_the_index(corpus: docstore.Store) -> None:
    """Not only the builder's SQL: the index's scan counter moves when search() runs."""

    async def scans() -> int:
        return int(
            await corpus.fetchval(
                "select idx_scan from pg_stat_user_indexes"
                " where indexrelname = 'documents_embedding_hnsw_cosine'"
            )
        )

    before = await scans()
    await corpus.search(query(6))
    await corpus.search(query(7))
    deadline = time.monotonic() + 10
    while await scans() < before + 2:  # statistics are flushed asynchronously
        assert time.monotonic() < deadline, "idx_scan never moved"
        await asyncio.sleep(0.2)


async def test_filtered_ann_still_fills_the_limit(corpus: docstore.Store) -> None:
    """A filter matching ~2.5% of rows: iterative scan keeps going until `limit` are found.
    (By default its 38 rows are ranked exactly: the filter rule; exact=False insists.)"""
    q = query(8)
    crate7 = {"source_name": "crate7"}  # as a filter: the small-scope shortcut doesn't apply
    ann = await corpus.search(q, filter=crate7, limit=10, exact=False)
    exact = await corpus.search(q, filter=crate7, limit=10, exact=True)
    assert (await corpus.search(q, filter=crate7, limit=10)).ids == exact.ids
    assert ann.mode == "ann" and len(ann) == 10
    assert {h.source_name for h in ann} == {"crate7"}
    assert len(set(ann.ids) & set(exact.ids)) >= 9


async def test_a_selective_filter_past_the_index_scans_limit_still_finds_the_nearest(
    corpus_url: str,
) -> None:
    """pgvector's iterative scan stops after ``hnsw.max_scan_tuples`` index tuples (20,000 by
    default): a filter matching few rows of a larger table came back short, or without the
    nearest rows. Lowered to 100 here so the 1,500-row corpus shows it: the search sees that
    the scan produced fewer candidates than it asked for and ranks the filtered rows directly;
    a filter the scan fills its candidates from still takes the index."""
    url = corpus_url + ("&" if "?" in corpus_url else "?") + "hnsw.max_scan_tuples=100"
    picked = [3, 5, 17, 90, 250, 333, 700, 808, 1111, 1234, 1400, 1499]
    selective = {"metadata.n": {"$in": picked}}
    async with docstore.connect(url) as store:
        for i in range(5):
            got = await store.search(query(i), filter=selective, limit=10)
            exact = await store.search(query(i), filter=selective, limit=10, exact=True)
            assert got.mode == "halfvec" and got.ids == exact.ids and len(got) == 10
            bounded = await store.search(
                query(i), filter=selective, limit=10, min_similarity=got[4].similarity
            )
            assert bounded.ids == got.ids[:5]  # min_similarity cuts the same ranking
        wide = await store.search(query(1), filter={"metadata.n": {"$gte": 0}}, limit=10)
        assert wide.mode == "ann" and len(wide) == 10


# -- filtered searches: sized on the data (planner.filter_mode, search/filter_size.py) -------


async def test_index_served_filters_are_ranked_on_embedding_half_or_exactly_and_match_exact(
    corpus: docstore.Store,
) -> None:
    """A filter its B-tree or GIN index serves is counted there: 38 rows (one crate) are
    ranked exactly, 150 (a doc_type) and 375 (a metadata value, GIN) on embedding_half and
    re-ranked — never the HNSW index plus a sort of every matching vector, nor a second pass;
    the hits are the exact top 10."""
    for flt, mode in (
        ({"source_name": "crate7"}, "exact"),
        ({"doc_type": "solana"}, "halfvec"),
        ({"metadata.crate_version": "1.0"}, "halfvec"),
        ({"source_name": {"$in": ["crate1", "crate2", "crate3"]}}, "halfvec"),
    ):
        for i in range(4):
            got = await corpus.search(query(i), filter=flt, limit=10)
            exact = await corpus.search(query(i), filter=flt, limit=10, exact=True)
            assert (got.mode, got.escalated, got.index_name) == (mode, False, None), flt
            assert got.ids == exact.ids and len(got) == 10, flt
            assert [h.similarity for h in got] == [h.similarity for h in exact]


async def test_filters_no_index_serves_are_sized_by_a_sample(corpus: docstore.Store) -> None:
    """``metadata.n`` comparisons have no index: a sample of the table's pages sizes them. A
    rare one (~2 %) is ranked on embedding_half — the HNSW scan's recall drops with the share
    it keeps — and matches exact; a common one (~93 %) takes the HNSW index."""
    rare = {"metadata.n": {"$lt": 30}}
    common = {"metadata.n": {"$gt": 100}}
    sizes = corpus._vector.filter_sizes
    for i in range(3):
        got = await corpus.search(query(i), filter=rare, limit=10)
        exact = await corpus.search(query(i), filter=rare, limit=10, exact=True)
        assert got.mode == "halfvec" and got.ids == exact.ids
        wide = await corpus.search(query(i), filter=common, limit=10)
        truth = await corpus.search(query(i), filter=common, limit=10, exact=True)
        assert wide.mode == "ann" and len(wide) == 10
        assert len(set(wide.ids) & set(truth.ids)) >= 9
    size = await sizes.size(common)
    assert size is not None and not size.indexed
    assert 0.8 < size.share <= 1.0, size


async def test_filtered_searches_escalate_but_leave_the_tuners_escalation_window_alone(
    corpus: docstore.Store,
) -> None:
    """A calibration whose spread threshold calls every list flat: unfiltered searches run
    the second pass (and count in the tuner's window); a filtered ANN search runs it too (the
    same spread rule) but leaves the window alone: it is the query stream's, calibrated on
    unfiltered searches; a halfvec-ranked filter has no second pass at all."""
    flat = tuning.Calibration(
        metric="cosine",
        target_recall=0.98,
        ef_search=64,
        escalation_ef_search=400,
        escalate_below=10.0,  # every spread is under it
        expected_recall=0.99,
        lowest_recall=0.9,
        escalation_rate=1.0,
        expected_ms=1.0,
        met_target=True,
        queries=100,
        query_source="probes",
        table_rows=ROWS,
        calibrated_at=datetime.now(UTC),
    )
    corpus.tuner._remember(flat)
    window = corpus.tuner._escalations
    unfiltered = await corpus.search(query(1), limit=10)
    assert unfiltered.mode == "ann" and unfiltered.escalated and list(window) == [True]
    window.clear()
    common = {"metadata.n": {"$gt": 100}}
    for i in range(6):
        got = await corpus.search(query(i), filter=common, limit=10)
        assert (got.mode, got.escalated) == ("ann", True)
        assert 64 < got.ef_search < 80  # widened by 1 / the filter's share (~0.9)
        small = await corpus.search(query(i), filter={"doc_type": "solana"}, limit=10)
        assert small.mode == "halfvec" and not small.escalated
    assert not window and not corpus.tuner.mostly_escalating()
    # a search scoped by keyword arguments alone is the query stream the window is about
    scoped = await corpus.search(query(1), doc_type="rust", limit=10, exact=False)
    assert scoped.mode == "ann" and scoped.escalated and list(window) == [True]


async def test_a_partitioned_table_is_sized_by_its_partitions_pages(database_url: str) -> None:
    """What a ``TABLESAMPLE``'s share is taken of: the filter sizer read the parent relation's
    pages, which a partitioned table's are not (0: its rows are in its partitions), so its
    sample read every page of the table. It shares the growth check's pages now, which sum
    the partitions' (one query, ``table_size.PAGES``)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """
            CREATE SCHEMA parted;
            CREATE TABLE parted.documents (id int, embedding vector(3), content text)
                PARTITION BY RANGE (id);
            ALTER TABLE parted.documents ALTER COLUMN content SET STORAGE PLAIN;
            CREATE TABLE parted.low PARTITION OF parted.documents FOR VALUES FROM (0) TO (5000);
            CREATE TABLE parted.high PARTITION OF parted.documents
                FOR VALUES FROM (5000) TO (15000);
            INSERT INTO parted.documents
            SELECT g, CASE WHEN g % 4 > 0 THEN '[1,2,3]'::vector END, repeat('x', 1500)
              FROM generate_series(0, 14999) g;
            SET search_path = parted, public;
            """
        )
        partitions = await conn.fetchval(
            "SELECT (pg_relation_size('parted.low') + pg_relation_size('parted.high'))"
            " / current_setting('block_size')::int"
        )
        size = await conn.fetchrow(table_size.TABLE_SIZE)
        assert size["pages"] == partitions > 2 * filter_size.SAMPLE_PAGES  # 5 rows a page
        assert filter_size.sample_percent(size["pages"]) < 50  # a sample, not every page
        rows = await growth.estimate(conn)
        assert 12000 < rows.rows < 18000 and 9000 < rows.embedded < 13500
    finally:
        await conn.close()


async def test_a_filters_size_is_measured_once_while_the_cache_holds_it(
    corpus: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One sizing per filter (its SQL and values, shortcuts included) per
    INDEX_CACHE_SECONDS; explicit exact/ef_search and scope-only searches size nothing."""
    sizes = corpus._vector.filter_sizes
    gin = {"metadata.crate_version": "2.0"}
    before = sizes.measured
    for i in range(5):
        assert (await corpus.search(query(i), filter=gin)).mode == "halfvec"
    assert sizes.measured == before + 1
    await corpus.search(query(1), filter=gin, doc_type="solana")  # another filter
    await corpus.search(query(1), filter={"metadata.crate_version": "3.0"})  # other values
    assert sizes.measured == before + 3
    await corpus.search(query(1), filter={"metadata.n": {"$lt": 7}}, exact=True)
    await corpus.search(query(1), filter={"metadata.n": {"$lt": 7}}, exact=False)
    await corpus.search(query(1), filter={"metadata.n": {"$lt": 7}}, ef_search=50)
    await corpus.search(query(1), source_name="crate4")
    assert sizes.measured == before + 3
    monkeypatch.setattr(sizes._cache, "_seconds", 0.0)  # expired at once
    await corpus.search(query(2), filter=gin)
    assert sizes.measured == before + 4


async def test_hybrid_search_takes_every_limit_search_takes(corpus: docstore.Store) -> None:
    """The default candidate pool (5 × limit) is capped at 1,000, not refused above 200."""
    for limit in (201, 1000):
        results = await corpus.hybrid_search("async code", query(3), limit=limit)
        assert 0 < len(results) <= limit


async def test_ann_only_arguments_are_checked_whatever_plan_runs(corpus: docstore.Store) -> None:
    """``ef_search``/``oversample`` used to be checked only when the plan was ANN: a bad value
    passed on a small source or with exact=True, then failed once the source grew."""
    for kwargs in (
        {"ef_search": 0},
        {"ef_search": 10**6},
        {"ef_search": "x"},
        {"oversample": 0},
        {"oversample": 1.5},
    ):
        for scope in ({"exact": True}, {"source_name": "crate1"}, {}):
            with pytest.raises(ValidationError) as info:
                await corpus.search(query(1), **scope, **kwargs)  # type: ignore[arg-type]
            assert info.value.field in ("ef_search", "oversample")


async def test_a_one_source_search_ranks_the_in_row_halfvec_copy_and_matches_exact(
    corpus: docstore.Store,
) -> None:
    """With an index, a crate (~38 documents here) is ranked on embedding_half and the best
    are re-ranked exactly: the same hits and similarities as the exact scan."""
    found = total = 0
    for i in range(40):
        crate = f"crate{i}"
        half = await corpus.search(query(i), source_name=crate, limit=5)
        exact = await corpus.search(query(i), source_name=crate, limit=5, exact=True)
        assert half.mode == "halfvec" and half.index_name is None
        assert {h.source_name for h in half} == {crate}
        found += sum(a == b for a, b in zip(half.ids, exact.ids, strict=True))
        total += len(exact.ids)
        for h, e in zip(half, exact, strict=True):
            if h.id == e.id:
                assert h.similarity == e.similarity  # exact distances, not half precision
    assert found / total >= 0.98, found / total


async def test_a_scope_above_the_halfvec_threshold_uses_the_index(
    corpus: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "rust" holds 1,350 of 1,500: above HALFVEC_ALWAYS_ROWS and most of the table
    assert (await corpus.search(query(8), doc_type="rust", limit=5)).mode == "ann"
    monkeypatch.setattr(planner, "HALFVEC_ALWAYS_ROWS", 100)  # "solana" holds 150
    monkeypatch.setattr(planner, "HALFVEC_SCOPE_ROWS", 100)
    ann = await corpus.search(query(8), doc_type="solana", limit=5)
    assert ann.mode == "ann" and ann.index_name == "documents_embedding_hnsw_cosine"
    assert {h.doc_type for h in ann} == {"solana"}


async def test_exact_false_and_filters_keep_the_index_path_for_one_source(
    corpus: docstore.Store,
) -> None:
    assert (await corpus.search(query(3), source_name="crate3", exact=False)).mode == "ann"
    # as a filter it is sized instead: 38 rows on the B-tree, no more than the halfvec shape
    # re-ranks, so exact (the filter rule, planner.filter_mode)
    assert (await corpus.search(query(3), filter={"source_name": "crate3"})).mode == "exact"
    assert (await corpus.search(query(3), source_name="crate3", exact=True)).mode == "exact"


async def test_without_an_index_a_one_source_search_stays_exact(store: docstore.Store) -> None:
    await store.documents.upsert_many(list(corpus_documents())[:200])
    assert (await store.search(query(1), source_name="crate1")).mode == "exact"


async def test_ann_for_other_metrics_falls_back_to_exact_without_their_index(
    corpus: docstore.Store,
) -> None:
    results = await corpus.search(query(9), metric="l2")
    assert results.mode == "exact" and results.index_name is None
    with pytest.raises(SchemaError, match="create_vector_index\\('l2'\\)"):
        await corpus.search(query(9), metric="l2", exact=False)


async def test_vector_indexes_report_what_exists(corpus: docstore.Store) -> None:
    [index] = await corpus.vector_indexes()
    assert index.metric == "cosine" and index.opclass == "halfvec_cosine_ops"
    assert index.valid and index.usable and index.size_bytes > 0
    assert "halfvec(3072)" in index.definition


async def test_create_index_is_idempotent_and_drop_goes_back_to_exact(
    store: docstore.Store,
) -> None:
    await store.documents.upsert_many(list(corpus_documents())[:200])
    first = await store.create_vector_index("inner_product", m=8, ef_construction=32)
    assert first.usable and first.opclass == "halfvec_ip_ops"
    again = await store.create_vector_index("inner_product")
    assert again == first
    assert (await store.search(query(1), metric="inner_product")).mode == "ann"
    assert await store.drop_vector_index("inner_product") is True
    assert (await store.search(query(1), metric="inner_product")).mode == "exact"
    assert await store.drop_vector_index("inner_product") is False


async def test_invalid_index_left_by_a_failed_build_is_ignored_and_rebuilt(
    store: docstore.Store,
) -> None:
    await store.documents.upsert_many(list(corpus_documents())[:100])
    await store.create_vector_index(concurrently=False)
    await store.execute(
        "update pg_index set indisvalid = false"
        " where indexrelid = 'documents_embedding_hnsw_cosine'::regclass"
    )
    [broken] = await store.vector_indexes()
    assert not broken.valid and not broken.usable
    health = await store.health()
    assert health.vector_indexes == {"documents_embedding_hnsw_cosine": False}
    assert health.text_index_valid is None and health.replica_lag_seconds is None
    assert (await store.search(query(1))).mode == "exact"
    rebuilt = await store.create_vector_index()
    assert rebuilt.valid and rebuilt.usable
    await store.create_text_index()
    health = await store.health()
    assert health.vector_indexes == {"documents_embedding_hnsw_cosine": True}
    assert health.text_index_valid is True
    assert (await store.search(query(1))).mode == "ann"


async def test_at_or_below_2000_dimensions_the_column_itself_is_indexed(
    empty_database_url: str,
) -> None:
    async with docstore.connect(empty_database_url, embedding_dim=1536) as store:
        rng = np.random.default_rng(0)
        await store.documents.upsert_many(
            Document(
                source_name="s", doc_path=f"p{i}", content="c", embedding=rng.normal(size=1536)
            )
            for i in range(50)
        )
        index = await store.create_vector_index("l2")
        assert index.opclass == "vector_l2_ops" and "halfvec" not in index.definition
        q = rng.normal(size=1536)
        results = await store.search(q, metric="l2", limit=5)
        exact = await store.search(q, metric="l2", limit=5, exact=True)
        assert results.mode == "ann" and exact.mode == "exact" and results.ids == exact.ids


async def test_exact_stays_a_full_scan_where_the_column_itself_is_indexed(
    empty_database_url: str,
) -> None:
    """At or below 2,000 dimensions the HNSW index is on ``embedding`` itself: an exact
    search must not be answered from it (at most ``ef_search`` = 40 approximate rows)."""
    dim = 768
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(3000, dim)).astype(np.float32)
    async with docstore.connect(empty_database_url, embedding_dim=dim) as store:
        await store.documents.upsert_many(
            Document(source_name="s", doc_path=f"p{i}", content="c", embedding=v)
            for i, v in enumerate(vectors)
        )
        await store.create_vector_index()
        rows = await store.fetch("SELECT id, doc_path FROM documents")
        paths = {r["id"]: r["doc_path"] for r in rows}
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        for _ in range(3):
            q = rng.normal(size=dim).astype(np.float32)
            truth = [f"p{i}" for i in np.argsort(-(unit @ (q / np.linalg.norm(q))))[:100]]
            exact = await store.search(q, limit=100, exact=True)
            assert exact.mode == "exact" and len(exact) == 100
            # float32 sums in another order: a near-tie at the 100th place may swap
            assert len({paths[h.id] for h in exact} & set(truth)) >= 98
            sql, _ = queries.vector_search_sql(q, dim=dim, limit=100)
            plan = "\n".join(
                r[0] for r in await store.fetch("EXPLAIN " + sql.replace("$2", "100"), q)
            )
            assert "hnsw" not in plan and "Seq Scan" in plan


async def test_half_precision_ranking_is_a_scan_even_over_an_index_on_embedding_half(
    empty_database_url: str,
) -> None:
    """A half-precision HNSW index on ``embedding_half`` (a common pgvector recipe) must not
    serve the halfvec shape or the calibration's exact answers (review 116: 40 of 100)."""
    dim = 16
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((1500, dim)).astype(np.float32)
    async with docstore.connect(empty_database_url, embedding_dim=dim) as store:
        await store.documents.upsert_many(
            Document(source_name=f"s{i % 3}", doc_path=f"p{i}", content="x", embedding=v)
            for i, v in enumerate(vectors)
        )
        await store.create_vector_index()
        await store.execute(
            "CREATE INDEX user_half ON documents USING hnsw (embedding_half halfvec_cosine_ops)"
        )
        await store.execute("ANALYZE documents")
        q = rng.standard_normal(dim).astype(np.float32)
        exact = await store.search(q, limit=100, source_name="s1", exact=True)
        scoped = await store.search(q, limit=100, source_name="s1")
        assert scoped.mode == "halfvec" and len(scoped) == 100
        assert len(set(scoped.ids) & set(exact.ids)) >= 98
        whole = await store.search(q, limit=100, exact=True)
        truth = await Calibrator(store).truth(q, "cosine", 100)
        assert len({i for i, _ in truth} & set(whole.ids)) >= 98
        sql, _ = queries.vector_search_sql(
            q, dim=dim, limit=100, candidates=400, candidate_source="halfvec"
        )
        sql = sql.replace("$2", "100").replace("$3", "400")
        async with store.transaction() as conn:
            await conn.execute("SET LOCAL enable_seqscan = off")  # the index if it can serve
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, q))
        assert "user_half" not in plan


async def test_read_only_store_searches_but_cannot_build_indexes(corpus_url: str) -> None:
    async with docstore.connect(corpus_url, read_only=True) as store:
        assert (await store.search(query(1))).mode == "ann"
        with pytest.raises(ReadOnlyError):
            await store.create_vector_index("l2")


# -- full text and hybrid ---------------------------------------------------------------------


async def test_search_text_finds_ranked_matches_with_websearch_syntax(
    corpus: docstore.Store,
) -> None:
    results = await corpus.search_text("serialize", limit=500)
    assert results.mode == "text" and len(results) == 252  # every 6th document
    assert all("serialize" in h.content for h in results)
    assert [h.text_rank for h in results] == sorted((h.text_rank for h in results), reverse=True)
    assert all(h.similarity is None for h in results)
    # stemming, OR and negation
    assert len(await corpus.search_text("serializing", limit=500)) == 252
    either = await corpus.search_text("serialize or socket", limit=1000)
    assert len(either) == 504
    none = await corpus.search_text("serialize -async", limit=10)
    assert len(none) == 0
    phrase = await corpus.search_text('"crate7 item 7"', limit=10)
    assert phrase.ids and phrase[0].doc_path == "crate7/item7"


async def test_search_text_is_filtered_and_uses_the_gin_index(corpus: docstore.Store) -> None:
    results = await corpus.search_text("runtime", source_name="crate0", limit=50)
    assert results.ids and {h.source_name for h in results} == {"crate0"}
    sql, params = text_sql.text_search_sql("runtime", limit=5)
    async with corpus.transaction() as conn:
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN (COSTS OFF) " + sql, *params))
    assert "idx_documents_content_fts" in plan


async def test_text_index_is_opt_in_and_search_text_works_without_it(
    store: docstore.Store,
) -> None:
    await store.documents.upsert_many(list(corpus_documents())[:60])
    assert await store.text_index() is None
    slow = await store.search_text("serialize", limit=100)
    await store.create_text_index()
    await store.create_text_index()  # idempotent
    assert await store.text_index() is True
    assert (
        (await store.search_text("serialize", limit=100)).ids
        == slow.ids
        == [h.id for h in slow if "serialize" in h.content]
    )
    assert await store.drop_text_index() is True and await store.text_index() is None
    assert await store.drop_text_index() is False


async def test_empty_or_stop_word_text_matches_nothing(corpus: docstore.Store) -> None:
    assert len(await corpus.search_text("")) == 0
    assert len(await corpus.search_text("the and of")) == 0


async def test_huge_documents_are_indexed_without_hitting_the_tsvector_limit(
    store: docstore.Store,
) -> None:
    await store.create_text_index()  # index maintenance must cope with the largest document
    rng = np.random.default_rng(1)
    # ~1.9 million distinct words: a tsvector of all of them would exceed 1 MB.
    words = " ".join(f"w{n:x}" for n in rng.permutation(1_900_000))[:9_990_000] + " needle"
    await store.documents.upsert(
        Document(source_name="big", doc_path="all", content="needle " + words)
    )
    assert (await store.search_text("needle"))[0].doc_path == "all"


async def test_hybrid_search_fuses_both_rankings_with_rrf(corpus: docstore.Store) -> None:
    q = POINTS[42]  # crate2/item42, topic "runtime" (42 % 6 == 0)
    vector = (await corpus.search(q, limit=50)).ids
    text = (await corpus.search_text("runtime", limit=50)).ids
    for k in (60, 1):
        hybrid = await corpus.hybrid_search("runtime", q, limit=5, k=k)
        assert hybrid.mode == "hybrid" and len(hybrid) == 5
        expected: dict[int, float] = {}
        for ranking in (vector, text):
            for rank, id_ in enumerate(ranking, start=1):
                expected[id_] = expected.get(id_, 0.0) + 1 / (k + rank)
        best = sorted(expected, key=lambda i: (-expected[i], i))[:5]
        assert hybrid.ids == best
        assert [h.score for h in hybrid] == pytest.approx([expected[i] for i in best])
    mine = next(h for h in hybrid if h.doc_path == "crate2/item42")
    assert mine.ranks is not None and mine.ranks["vector"] == 1
    assert ("text" in mine.ranks) == (mine.id in text) == (mine.text_rank is not None)
    assert mine.similarity == pytest.approx(1.0)
    # each ranking contributes its top `candidates`, also below the limit (helper 110)
    few = await corpus.hybrid_search("runtime", q, limit=10, candidates=1)
    assert 1 <= len(few) <= 2 and all(r == 1 for h in few for r in (h.ranks or {}).values())


# -- results ergonomics ---------------------------------------------------------------------


async def test_results_render_as_html_rich_and_pandas(corpus: docstore.Store) -> None:
    results = await corpus.search(query(1), limit=3)
    assert repr(results) == "<SearchResults 3 hits, ann via documents_embedding_hnsw_cosine>"
    html = results._repr_html_()
    assert html.count("<tr>") == 4 and "similarity" in html
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(results)
    text = console.export_text()
    assert "3 hits · ann · cosine" in text and results[0].doc_path in text
    frame = results.to_pandas()
    assert list(frame["id"]) == results.ids and "similarity" in frame.columns
    assert "embedding" not in frame.columns
    assert "<" not in repr(results[0].content)


async def test_html_and_rich_show_content_as_text(store: docstore.Store) -> None:
    content = "<script>alert(1)</script> Vec<[u8]> see [/docs] and [dependencies]"
    await store.documents.upsert(
        Document(source_name="s", doc_path="x", content=content, embedding=POINTS[0])
    )
    results = await store.search(POINTS[0])
    html = results._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
    from rich.console import Console

    console = Console(record=True, width=300)
    console.print(results)  # rich markup in content must neither vanish nor raise
    text = console.export_text()
    assert "Vec<[u8]>" in text and "[/docs]" in text and "[dependencies]" in text


async def test_hit_repr_hides_the_vector(corpus: docstore.Store) -> None:
    hit = (await corpus.search(query(1), limit=1, include_embedding=True))[0]
    assert "<3072 dims>" in repr(hit) and len(repr(hit)) < 1000


async def test_search_leaves_no_session_state_and_other_work_is_still_reset(
    corpus_url: str,
) -> None:
    """Searches skip asyncpg's reset round trip on release; everything else keeps it."""
    async with docstore.connect(corpus_url, pool_min_size=1, pool_max_size=1) as store:
        await store.execute("SET work_mem = '7MB'")  # session state from arbitrary SQL ...
        assert await store.fetchval("show work_mem") != "7MB"  # ... is reset on release
        assert (await store.search(query(1))).mode == "ann"
        settings = await store.fetchrow(
            "select current_setting('enable_seqscan') as seqscan,"
            " current_setting('hnsw.ef_search') as ef"
        )
        assert settings["seqscan"] == "on" and settings["ef"] == "40"  # SET LOCAL only
        assert await store.fetchval("select current_setting('enable_sort')") == "on"
        async with store.transaction() as conn:
            assert await conn.fetchval("select pg_backend_pid()") > 0


def test_hits_are_built_like_model_construct_builds_them() -> None:
    """search() builds Hits from trusted rows (Hit.from_row): what model_construct builds."""
    from docstore.search.api import _HIT_DEFAULTS, _hit
    from docstore.search.results import Hit

    record = {
        "id": 7,
        "doc_type": "rust",
        "source_name": "tokio",
        "doc_path": "tokio/a",
        "content": "text",
        "metadata": {"k": [1, 2]},  # jsonb arrives decoded (the pool's codec)
        "token_count": 3,
        "created_at": None,
        "updated_at": None,
        "distance": 0.25,
    }
    fast = _hit(record, similarity=0.75)
    slow = Hit.model_construct(
        None, **{**_HIT_DEFAULTS, **record, "metadata": {"k": [1, 2]}, "similarity": 0.75}
    )
    assert fast == slow and repr(fast) == repr(slow) and fast.model_dump() == slow.model_dump()
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_copy(update={"score": 1.0}).score == 1.0 and fast.score is None


async def test_a_filters_count_that_runs_long_gives_way_to_the_sample(
    store: docstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index that serves only part of a filter leaves the rest to be checked row by row
    (LIMIT bounds the rows counted, not the rows read): a count past COUNT_MS is cancelled
    inside a savepoint, the connection stays usable, and the filter is sized by the sample."""
    monkeypatch.setattr(filter_size, "COUNT_MS", 50)
    slow = "SELECT count(*) FROM (SELECT pg_sleep(0.5)) s WHERE $1::int > 0"
    fast = "SELECT count(*) FROM (SELECT 1) s WHERE $1::int > 0"

    async def counts(conn: asyncpg.Connection) -> tuple[float | None, float | None, int]:
        async with conn.transaction():  # as inside a read-only store's transaction
            late = await filter_size._bounded_count(conn, slow, [1])
            quick = await filter_size._bounded_count(conn, fast, [1])
            return late, quick, await conn.fetchval("SELECT 7")

    assert await store.run(counts) == (None, 1.0, 7)


async def test_a_stored_key_over_the_write_limit_is_still_read_back_by_every_search(
    store: docstore.Store,
) -> None:
    """A row written around validation (a migration's SQL copy) whose key takes more than
    MAX_KEY_BYTES but fits PostgreSQL's index: searches return it, hybrid included —
    reading back never re-checks stored data against the write-time limits."""
    source, path = "€" * 200, "p" * 2048  # 4 + 600 + 2,048 = 2,652 bytes with "rust"
    assert MAX_KEY_BYTES < sum(len(s.encode()) for s in ("rust", source, path)) < 2704
    vector = np.zeros(DIM, dtype=np.float32)
    vector[0] = 1
    await store.execute(
        "INSERT INTO documents (doc_type, source_name, doc_path, content, embedding)"
        " VALUES ('rust', $1, $2, 'a needle in the haystack', $3)",
        source,
        path,
        vector,
    )
    for results in (
        await store.search(vector, limit=5),
        await store.search_text("needle", limit=5),
        await store.hybrid_search("needle", vector, limit=5),
    ):
        assert [(h.source_name, h.doc_path) for h in results] == [(source, path)]
    hit = (await store.hybrid_search("needle", vector, limit=5))[0]
    assert hit.ranks == {"vector": 1, "text": 1} and hit.text_rank and hit.score
    assert hit.similarity == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"concurrently": "no"}, "concurrently"),
        ({"m": "16"}, "m"),
        ({"m": 16.0}, "m"),
        ({"ef_construction": True}, "ef_construction"),
        ({"m": 64}, "ef_construction"),  # the default 64 < 2 × m
    ],
)
async def test_create_vector_index_refuses_bad_options_before_building(
    store: docstore.Store, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        await store.create_vector_index(calibrate=False, **options)
    assert info.value.field == field
    assert await store.vector_indexes() == []
