"""``search_similar_docs()`` in SQL through the vector index, against the legacy function on
the same rows (a legacy-SQL exploration, 2026-12-07): a crate's documents without an
embedding, and a query vector of another dimension."""

from __future__ import annotations

import asyncio

import asyncpg
import numpy as np
import pytest

from docstore.compat import LegacyDatabase
from docstore.errors import QueryError
from tests.conftest import unit_vector
from tests.test_compat_legacy_parity import both  # noqa: F401  (the fixture)

SEARCH = "SELECT doc_path, similarity FROM search_similar_docs($1::vector, $2, $3)"


async def _same_rows(
    legacy: asyncpg.Connection, compat: LegacyDatabase, embedded: int, bare: int
) -> None:
    docs = [(f"e{i:02}", f"c{i}", unit_vector(i), 1) for i in range(embedded)]
    docs += [(f"n{i:02}", f"n{i}", None, 1) for i in range(bare)]
    await compat.insert_embeddings_batch(None, "tokio", docs)
    crate = await legacy.fetchval("INSERT INTO crates (name) VALUES ('tokio') RETURNING id")
    await legacy.execute("INSERT INTO crates (name) VALUES ('empty')")
    await compat.upsert_crate("empty", None)
    await legacy.executemany(
        "INSERT INTO doc_embeddings (crate_id, crate_name, doc_path, content, embedding,"
        " token_count) VALUES ($1, 'tokio', $2, $3, $4, $5)",
        [(crate, *d) for d in docs],
    )
    await compat.store.create_vector_index()
    await compat.install_views()


@pytest.mark.parametrize("limit", [5, 30, 31, 33, 40, 1000])
async def test_documents_without_an_embedding_come_last_as_in_the_legacy_function(
    both: tuple[asyncpg.Connection, LegacyDatabase],  # noqa: F811
    limit: int,
) -> None:
    """Was: through the index, the crate's documents without an embedding were left out (30
    rows where the legacy function gave 33, 3 of them with a NULL similarity), but returned
    above 1,000 results or without an index: the count depended on the limit and the index."""
    legacy, compat = both
    await _same_rows(legacy, compat, embedded=30, bare=3)
    query = unit_vector(77)
    old = await legacy.fetch(SEARCH, query, "tokio", limit)
    new = await compat.store.fetch(SEARCH, query, "tokio", limit)
    assert len(new) == len(old) == min(limit, 33)
    ranked = [(r["doc_path"], round(r["similarity"], 5)) for r in old if r[1] is not None]
    assert [(r["doc_path"], round(r["similarity"], 5)) for r in new[: len(ranked)]] == ranked
    assert all(r["similarity"] is None for r in new[len(ranked) :])
    assert {r["doc_path"] for r in new} == {r["doc_path"] for r in old}


async def test_a_query_of_another_dimension_answers_as_the_legacy_function(
    both: tuple[asyncpg.Connection, LegacyDatabase],  # noqa: F811
) -> None:
    """Was: through the index, "expected 3072 dimensions, not 1536" also for an empty crate,
    where the legacy function returns no row."""
    legacy, compat = both
    await _same_rows(legacy, compat, embedded=5, bare=1)
    short = np.ones(1536, dtype=np.float32)
    for conn in (legacy, compat.store):
        assert await conn.fetch(SEARCH, short, "empty", 5) == []
        with pytest.raises((asyncpg.PostgresError, QueryError)) as failed:
            await conn.fetch(SEARCH, short, "tokio", 5)
        assert "different vector dimensions 3072 and 1536" in str(failed.value)


async def test_a_writer_beside_the_search_never_doubles_or_drops_a_row(
    both: tuple[asyncpg.Connection, LegacyDatabase],  # noqa: F811
    database_url: str,
) -> None:
    """Review 107: the documents without an embedding were added by a second statement of
    the (VOLATILE) function, with a snapshot of its own: beside a writer setting and clearing
    one document's embedding, 3-5 % of the calls returned that document twice (ranked, then
    with a NULL similarity) or not at all. One statement now: every call sees the crate once."""
    await _same_rows(*both, embedded=8, bare=3)
    writer = await asyncpg.connect(database_url)
    reader = await asyncpg.connect(database_url)
    stop = asyncio.Event()

    async def flip() -> None:
        vector = f"[{','.join(['0.5'] * 3072)}]"
        while not stop.is_set():
            for value in (None, vector):
                await writer.execute(
                    "UPDATE documents SET embedding = $1::text::vector"
                    " WHERE source_name = 'tokio' AND doc_path = 'e00'",
                    value,
                )

    flipping = asyncio.create_task(flip())
    try:
        query = f"[{','.join(str(x) for x in unit_vector(5))}]"
        for _ in range(300):
            rows = await reader.fetch(
                "SELECT doc_path FROM search_similar_docs($1::text::vector, 'tokio', 20)", query
            )
            paths = [r[0] for r in rows]
            assert sorted(paths) == sorted(set(paths)) and len(paths) == 11, paths
    finally:
        stop.set()
        await flipping
        await writer.close()
        await reader.close()
