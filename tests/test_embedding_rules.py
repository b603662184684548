"""Embeddings the half-precision search paths cannot represent, and oversized text queries
(issue 13, parts 5 and 7), against a real PostgreSQL + pgvector.

docstore's rule (:func:`docstore.models.half_precision_problem`): an embedding, stored or
query, must have a non-zero norm and a half-precision copy within 1 % of it. Here every
write path refuses the others with nothing written, every search path refuses them as
queries, a vector accepted near the bound is found by every search path, and a zero vector
that bypassed validation (written by SQL, as a migration does) never yields a NaN similarity.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

import docstore
from docstore import Document, ValidationError
from docstore.compat.legacy_api import LegacyDatabase
from docstore.models import MAX_HALF_PRECISION_ERROR, half_precision_problem
from docstore.search import text_sql
from tests.conftest import unit_vector

DIM = 3072
TARGET = unit_vector(4242)
UNSEARCHABLE = {
    "zero": np.zeros(DIM, dtype=np.float32),
    "underflows to zeros": TARGET * 1e-9,  # issue 13: ranked first by exact, else invisible
    "mostly underflows": TARGET * 3e-5,  # a 3 % error: refused
}


def half_error(v: np.ndarray) -> float:
    exact = v.astype(np.float64)
    half = v.astype(np.float16).astype(np.float64)
    return float(np.linalg.norm(half - exact) / np.linalg.norm(exact))


def documents(n: int, source: str) -> list[Document]:
    return [
        Document(
            source_name=source,
            doc_path=f"{source}/{i}",
            content=f"page {i} of {source}: spawn a task",
            embedding=unit_vector(10_000 + i + 1000 * len(source)),
        )
        for i in range(n)
    ]


@pytest.fixture
async def indexed(store: docstore.Store) -> AsyncIterator[docstore.Store]:
    """Three sources of 100 documents and the HNSW index: a one-source search takes the
    halfvec path, an unscoped one the ANN path."""
    for source in ("tokio", "serde", "axum"):
        await store.documents.upsert_many(documents(100, source))
    await store.execute("ANALYZE documents")
    await store.create_vector_index()
    yield store


async def snapshot(store: docstore.Store) -> tuple[Any, ...]:
    """Row count and newest row version: any write changes it."""
    return tuple(await store.fetchrow("SELECT count(*), max(xmin::text::bigint) FROM documents"))


# -- writes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(UNSEARCHABLE))
async def test_every_write_path_refuses_an_unsearchable_embedding_with_nothing_written(
    store: docstore.Store, name: str
) -> None:
    bad = UNSEARCHABLE[name]
    good = documents(3, "tokio")
    row = {"source_name": "tokio", "doc_path": "tokio/bad", "content": "x", "embedding": bad}
    await store.documents.upsert_many(good[:1])
    before = await snapshot(store)
    compat = LegacyDatabase(store)
    attempts = {
        "upsert_many(list)": lambda: store.documents.upsert_many([*good, row]),
        "upsert_many(atomic)": lambda: store.documents.upsert_many([*good, row], atomic=True),
        "upsert_many(stream)": lambda: store.documents.upsert_many(iter([*good, row])),
        "upsert": lambda: store.documents.upsert(row),
        "compat.insert_embedding": lambda: compat.insert_embedding(
            None, "tokio", "tokio/bad", "x", bad, 1
        ),
        "compat.insert_embeddings_batch": lambda: compat.insert_embeddings_batch(
            None, "tokio", [("tokio/ok", "y", unit_vector(1), 1), ("tokio/bad", "x", bad, 1)]
        ),
    }
    for entry, attempt in attempts.items():
        with pytest.raises(ValidationError) as info:
            await attempt()
        assert info.value.field == "embedding", entry
        assert "norm" in str(info.value) or "half precision" in str(info.value), entry
        assert await snapshot(store) == before, f"{entry} wrote something"
    with pytest.raises(ValidationError) as info:
        await store.documents.upsert_many([*good, row])
    assert info.value.index == 3 and info.value.key == ("rust", "tokio", "tokio/bad")
    assert "row 3" in str(info.value)


# -- queries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(UNSEARCHABLE))
async def test_every_search_path_refuses_an_unsearchable_query_vector(
    indexed: docstore.Store, name: str
) -> None:
    q = UNSEARCHABLE[name]
    compat = LegacyDatabase(indexed)
    searches = {
        "exact": lambda: indexed.search(q, exact=True),
        "scoped (halfvec)": lambda: indexed.search(q, source_name="tokio"),
        "unscoped (ann)": lambda: indexed.search(q),
        "exact=False": lambda: indexed.search(q, exact=False),
        "l2": lambda: indexed.search(q, metric="l2", exact=True),
        "hybrid": lambda: indexed.hybrid_search("spawn", q),
        "evaluate_recall": lambda: indexed.evaluate_recall(query_vectors=[q]),
        "compat": lambda: compat.search_similar_docs("tokio", q),
    }
    for path, search in searches.items():
        with pytest.raises(ValidationError) as info:
            await search()
        assert info.value.field == "embedding", path
        assert str(info.value).startswith("query embedding"), path


async def test_a_vector_accepted_near_the_bound_is_found_by_every_search_path(
    indexed: docstore.Store,
) -> None:
    """unit × 2e-4: a half copy 0.5 % off (25x a normal vector's), still accepted — and
    found first by exact, scoped halfvec, unscoped ANN and compat searches alike."""
    small = (TARGET * 2e-4).astype(np.float32)
    assert 0.002 < half_error(small) <= MAX_HALF_PRECISION_ERROR
    assert half_precision_problem(small) is None
    stored = await indexed.documents.upsert(
        Document(source_name="tokio", doc_path="tokio/small", content="small", embedding=small)
    )
    copy = await indexed.fetchval("SELECT embedding_half FROM documents WHERE id = $1", stored.id)
    np.testing.assert_array_equal(copy, small.astype(np.float16).astype(np.float32))
    compat = LegacyDatabase(indexed)
    for q in (small, TARGET):  # itself, and the same direction at unit length
        exact = await indexed.search(q, exact=True, limit=3)
        scoped = await indexed.search(q, source_name="tokio", limit=3)
        unscoped = await indexed.search(q, limit=3)
        assert (exact.mode, scoped.mode, unscoped.mode) == ("exact", "halfvec", "ann")
        for results in (exact, scoped, unscoped):
            assert results[0].id == stored.id
            assert results[0].similarity == pytest.approx(1.0, abs=1e-6)
        similar = await compat.search_similar_docs("tokio", q, limit=3)
        assert similar[0].doc_path == "tokio/small"
        assert similar[0].similarity == pytest.approx(1.0, abs=1e-6)


async def test_the_half_copy_docstore_measures_is_the_one_postgresql_stores(
    store: docstore.Store,
) -> None:
    """The rule rounds with numpy's float16 (to nearest, ties to even); pgvector's
    vector -> halfvec cast must round the same way, down to the subnormals and ties."""
    ties = np.array(
        [2.0**-25, 3 * 2.0**-25, 2.0**-14 - 2.0**-25, 1 + 2.0**-11, 1 + 3 * 2.0**-11],
        dtype=np.float32,
    )
    vectors = [np.resize(ties, DIM).astype(np.float32)]
    vectors += [(unit_vector(i) * s).astype(np.float32) for i, s in enumerate([1, 1e-3, 1e-6])]
    for v in vectors:
        half = await store.fetchval(f"SELECT $1::vector::halfvec({DIM})", v)
        np.testing.assert_array_equal(half, v.astype(np.float16).astype(np.float32))


async def test_a_zero_vector_written_around_validation_never_yields_a_nan_similarity(
    indexed: docstore.Store,
) -> None:
    """A migration copies vectors by SQL: a zero vector among them has a NaN cosine distance
    to everything. No search returns it with similarity NaN, and recall sampling skips it."""
    await indexed.execute(
        "INSERT INTO documents (doc_type, source_name, doc_path, content, embedding)"
        " VALUES ('rust', 'tokio', 'tokio/zero', 'zero', $1)",
        np.zeros(DIM, dtype=np.float32),
    )
    q = unit_vector(10_000 + 1000 * len("tokio"))  # tokio/0's own vector
    compat = LegacyDatabase(indexed)
    cosine = [
        await indexed.search(q, exact=True, limit=1000),
        await indexed.search(q, source_name="tokio", limit=200),
        await indexed.search(q, limit=1000),
        await indexed.hybrid_search("zero page", q, limit=200),  # found by text, not vector
    ]
    for hits in cosine:
        assert hits[0].doc_path == "tokio/0"
        assert all(h.similarity is None or not math.isnan(h.similarity) for h in hits)
        assert "tokio/zero" not in {h.doc_path for h in hits if h.similarity is not None}
    # inner product and l2 are defined for a zero vector: it is a hit like any other
    for metric, similarity in (("inner_product", 0.0), ("l2", 0.5)):
        hits = await indexed.search(q, metric=metric, exact=True, limit=1000)
        assert {h.doc_path: h.similarity for h in hits}["tokio/zero"] == pytest.approx(similarity)
    similar = await compat.search_similar_docs("tokio", q, limit=200)
    assert not any(math.isnan(s.similarity) for s in similar)
    report = await indexed.evaluate_recall(sample=400, limit=5, seed=0.1)
    assert report.sample == 300  # every stored vector but the zero one


# -- text queries -----------------------------------------------------------------------------


async def test_oversized_text_queries_are_refused_before_anything_is_sent(
    database_url: str,
) -> None:
    """Issue 13's 50,000-word query ran for seconds and failed with "stack depth limit
    exceeded"; now it is refused at once, even by a store that could not send it."""
    store = await docstore.connect(database_url)
    await store.close()
    fifty_thousand = " ".join(f"word{i}" for i in range(50_000))
    too_many_words = " ".join(["spawn"] * (text_sql.MAX_TEXT_QUERY_WORDS + 1))
    for text in (fifty_thousand, too_many_words):
        started = time.perf_counter()
        with pytest.raises(ValidationError) as info:
            await store.search_text(text)
        assert info.value.field == "text"
        with pytest.raises(ValidationError) as info:
            await store.hybrid_search(text, unit_vector(1))
        assert info.value.field == "text"
        assert time.perf_counter() - started < 0.5


async def test_the_longest_accepted_text_query_runs(indexed: docstore.Store) -> None:
    longest = " ".join(["spawn", "task", "page"] * 85 + ["tokio"])  # 256 words
    assert len(longest.split()) == text_sql.MAX_TEXT_QUERY_WORDS
    assert len(await indexed.search_text(longest, limit=5)) == 5
    hybrid = await indexed.hybrid_search(longest, unit_vector(1), limit=5)
    assert len(hybrid) == 5
