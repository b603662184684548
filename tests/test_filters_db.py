"""Filters executed on a real database: same rows as hand-written SQL, nothing escapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import docstore
from docstore import Document
from docstore.errors import FilterError
from docstore.search.filters import build_filter

ROWS = [
    ("rust", "tokio", "1.0", 10, ["rt", "net"]),
    ("rust", "tokio", "2.0", 20, ["rt"]),
    ("rust", "serde", "1.0", 30, []),
    ("rust", "serde", "3.0", 40, ["derive"]),
    ("solana", "tokio", "0.1", 50, None),
    ("rust", "axum", None, 60, ["http"]),
]


@pytest.fixture
async def corpus(store: docstore.Store) -> docstore.Store:
    docs = []
    for i, (doc_type, source, version, tokens, features) in enumerate(ROWS):
        metadata: dict[str, Any] = {"n": tokens, "nested": {"level": i}}
        if version is not None:
            metadata["crate_version"] = version
        if features is not None:
            metadata["features"] = features
        docs.append(
            Document(
                doc_type=doc_type,
                source_name=source,
                doc_path=f"{source}/p{i}",
                content=f"doc {i}",
                metadata=metadata,
                embedding=np.full(3072, 0.1 * (i + 1), dtype=np.float32),
                token_count=tokens,
            )
        )
    await store.documents.upsert_many(docs)
    return store


async def ids(store: docstore.Store, flt: Any) -> list[int]:
    sql, params = build_filter(flt)
    return [
        r["id"]
        for r in await store.fetch(f"select id from documents d where {sql} order by id", *params)
    ]


async def sql_ids(store: docstore.Store, where: str) -> list[int]:
    return [
        r["id"] for r in await store.fetch(f"select id from documents where {where} order by id")
    ]


async def test_or_filter_matches_hand_written_sql(corpus: docstore.Store) -> None:
    flt = {"$or": [{"metadata.crate_version": {"$in": ["1.0", "2.0"]}}, {"source_name": "tokio"}]}
    expected = await sql_ids(
        corpus, "metadata->>'crate_version' in ('1.0', '2.0') or source_name = 'tokio'"
    )
    assert await ids(corpus, flt) == expected and len(expected) == 4


async def test_injection_in_a_metadata_key_matches_nothing_and_drops_nothing(
    corpus: docstore.Store,
) -> None:
    assert await ids(corpus, {"metadata.x'); drop table documents; --": {"$eq": 1}}) == []
    assert await corpus.documents.count() == len(ROWS)


@pytest.mark.parametrize(
    ("flt", "where"),
    [
        ({"token_count": {"$gte": 20, "$lt": 50}}, "token_count >= 20 and token_count < 50"),
        ({"metadata.n": {"$gt": 35}}, "(metadata->>'n')::int > 35"),
        ({"metadata.crate_version": {"$lt": "2"}}, "metadata->>'crate_version' < '2'"),
        ({"metadata.crate_version": {"$exists": False}}, "not metadata ? 'crate_version'"),
        (
            {"metadata.crate_version": {"$ne": "1.0"}},
            "metadata->>'crate_version' is distinct from '1.0'",
        ),
        (
            {"metadata.crate_version": {"$nin": ["1.0"]}},
            "metadata->>'crate_version' is distinct from '1.0'",
        ),
        ({"metadata.features": {"$contains": "rt"}}, "metadata->'features' ? 'rt'"),
        ({"metadata.nested.level": 2}, "(metadata #>> '{nested,level}')::int = 2"),
        ({"doc_path": {"$like": "serde/%"}}, "doc_path like 'serde/%'"),
        ({"source_name": {"$ilike": "TOK%"}}, "source_name ilike 'tok%'"),
        ({"source_name": {"$contains": "er"}}, "source_name like '%er%'"),
        ({"$not": {"doc_type": "rust"}}, "doc_type <> 'rust'"),
        (
            {"$and": [{"doc_type": "rust"}, {"source_name": {"$ne": "serde"}}]},
            "doc_type = 'rust' and source_name <> 'serde'",
        ),
        ({"token_count": {"$between": [20, 40]}}, "token_count between 20 and 40"),
        ({"metadata.n": {"$between": [15, 45]}}, "(metadata->>'n')::int between 15 and 45"),
    ],
)
async def test_operators_match_hand_written_sql(
    corpus: docstore.Store, flt: dict[str, Any], where: str
) -> None:
    assert await ids(corpus, flt) == await sql_ids(corpus, where)


async def test_bad_filter_never_reaches_the_database(corpus: docstore.Store) -> None:
    with pytest.raises(FilterError):
        await ids(corpus, {"content": {"$eq": "doc 1"}})
