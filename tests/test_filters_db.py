"""Filters executed on a real database: same rows as hand-written SQL, nothing escapes."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import docstore
from docstore import Document
from docstore.errors import FilterError
from docstore.search.filters import build_filter
from tests.fuzzing import examples

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


# -- hypothesis: arbitrary keys and values against the real database --------------------------

METADATA = [
    {"n": tokens, "nested": {"level": i}, **({"crate_version": v} if v is not None else {})}
    for i, (_, _, v, tokens, _) in enumerate(ROWS)
]


def _lookup(metadata: dict[str, Any], path: list[str]) -> Any:
    value: Any = metadata
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def _expected(key: str, op: str, value: Any) -> set[int]:
    """Which corpus rows (positions) a one-condition filter should match, in Python."""
    path = key.removeprefix("metadata.").split(".")
    found = [_lookup(m, path) for m in METADATA]
    if op == "$exists":
        return {i for i, f in enumerate(found) if (f is not _MISSING) == value}
    if op == "$eq":
        return {i for i, f in enumerate(found) if f is not _MISSING and f == value}
    if op == "$ne":
        return {i for i, f in enumerate(found) if f is _MISSING or f != value}
    if op == "$in":
        return {i for i, f in enumerate(found) if f is not _MISSING and f in value}
    if op == "$nin":
        return {i for i, f in enumerate(found) if f is _MISSING or f not in value}
    raise AssertionError(op)


@pytest.fixture(scope="module")
def filter_db(pg: Any) -> Any:
    """One corpus database and a connected store on a private loop, shared by all examples."""
    import asyncio

    name = pg.create_database(template=pg.template, prefix="hyp")
    runner = asyncio.Runner()

    async def open_store() -> docstore.Store:
        return await docstore.connect(pg.url(name))

    store = runner.run(open_store())
    docs = [
        Document(
            doc_type=doc_type,
            source_name=source,
            doc_path=f"{source}/p{i}",
            content=f"doc {i}",
            metadata=METADATA[i],
            embedding=np.full(3072, 0.1 * (i + 1), dtype=np.float32),
        )
        for i, (doc_type, source, *_rest) in enumerate(ROWS)
    ]
    runner.run(store.documents.upsert_many(docs))
    rows = runner.run(store.fetch("select id, doc_path from documents"))
    position = {r["id"]: int(r["doc_path"].rsplit("/p", 1)[1]) for r in rows}
    yield runner, store, position
    runner.run(store.close())
    runner.close()
    pg.drop_database(name)


_keys = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["crate_version", "n", "nested.level", "nested", "x'); drop table documents; --"]
    ),
)
_scalars = st.one_of(
    st.text(max_size=20), st.integers(-5, 70), st.sampled_from(["1.0", "2.0", "0.1"])
)


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    key=_keys,
    op=st.sampled_from(["$eq", "$ne", "$in", "$nin", "$exists"]),
    scalar=_scalars,
    many=st.lists(_scalars, max_size=4),
    flag=st.booleans(),
)
def test_arbitrary_keys_and_values_match_python_semantics_or_raise_filter_error(
    filter_db: Any, key: str, op: str, scalar: Any, many: list[Any], flag: bool
) -> None:
    """Through store.search(): the only error is FilterError, and never an extra row."""
    runner, store, position = filter_db
    value = {"$in": many, "$nin": many, "$exists": flag}.get(op, scalar)
    flt = {f"metadata.{key}": {op: value}}
    try:
        hits = runner.run(store.search(np.full(3072, 0.1), filter=flt, exact=True, limit=100))
    except FilterError:
        return
    got = {position[h.id] for h in hits}
    assert got == _expected(key, op, value), flt
    assert runner.run(store.documents.count()) == len(ROWS)


async def test_decimal_comparisons_and_list_equality_mean_what_they_say(
    store: docstore.Store,
) -> None:
    """A float operand is compared as the number JSON stores (0.1, not its binary expansion
    0.1000000000000000055…); a list or object operand of $eq is equality, not containment;
    a path can index into an array."""
    rows = {"p1": (0.1, ["a", "b"]), "p2": (0.3, ["a"]), "p3": (0.25, [])}
    await store.documents.upsert_many(
        [
            Document(source_name="s", doc_path=k, content=k, metadata={"score": v, "tags": t})
            for k, (v, t) in rows.items()
        ]
    )

    async def paths(flt: Any) -> list[str]:
        sql, params = build_filter(flt)
        found = await store.fetch(f"select doc_path from documents d where {sql}", *params)
        return sorted(r["doc_path"] for r in found)

    assert await paths({"metadata.score": {"$gte": 0.1}}) == ["p1", "p2", "p3"]
    assert await paths({"metadata.score": {"$lt": 0.1}}) == []
    assert await paths({"metadata.score": {"$lte": 0.3, "$gt": 0.1}}) == ["p2", "p3"]
    assert await paths({"metadata.score": {"$between": [0.1, 0.3]}}) == ["p1", "p2", "p3"]
    assert await paths({"metadata.score": 0.1}) == ["p1"]
    assert await paths({"metadata.tags": ["a"]}) == ["p2"]
    assert await paths({"metadata.tags": {"$in": [["a"]]}}) == ["p2"]
    assert await paths({"metadata.tags": {"$ne": ["a"]}}) == ["p1", "p3"]
    assert await paths({"metadata.tags": []}) == ["p3"]
    assert await paths({"metadata.tags.0": "a"}) == ["p1", "p2"]
    assert await paths({"metadata.tags.1": {"$ne": "b"}}) == ["p2", "p3"]
    assert await paths({"metadata.tags": {"$contains": "a"}}) == ["p1", "p2"]


async def test_tuple_operands_mean_list_equality_and_array_subscripts_agree(
    store: docstore.Store,
) -> None:
    """A tuple is the JSON list it serializes to: $eq/$ne compare it for equality, never
    containment (("a",) is not ["a", "b"]). A path segment PostgreSQL reads as an array
    subscript ("-1": the last element, "+1", " 1") means the same to $eq as to $in."""
    tags = {"p1": ["a", "b"], "p2": ["a"], "p3": [], "p4": {"-1": "b", "+1": "b", " 1": "b"}}
    await store.documents.upsert_many(
        [
            Document(source_name="s", doc_path=k, content=k, metadata={"tags": t})
            for k, t in tags.items()
        ]
    )

    async def paths(flt: Any) -> list[str]:
        sql, params = build_filter(flt)
        found = await store.fetch(f"select doc_path from documents d where {sql}", *params)
        return sorted(r["doc_path"] for r in found)

    assert await paths({"metadata.tags": ("a",)}) == ["p2"]
    assert await paths({"metadata.tags": {"$eq": ("a",)}}) == ["p2"]
    assert await paths({"metadata.tags": {"$ne": ("a",)}}) == ["p1", "p3", "p4"]
    assert await paths({"metadata.tags": ("a", "b")}) == ["p1"]
    assert await paths({"metadata.tags": ()}) == ["p3"]
    for segment in ("-1", "+1", " 1"):
        key = f"metadata.tags.{segment}"
        expected = await paths({key: {"$in": ["b"]}})
        assert expected == ["p1", "p4"], segment
        assert await paths({key: "b"}) == expected, segment
        assert await paths({key: {"$ne": "b"}}) == ["p2", "p3"], segment
    assert await paths({"metadata.tags.-1": "a"}) == ["p2"]


async def test_a_plain_datetime_filters_a_timestamp_column(store: docstore.Store) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5)
    await store.documents.upsert_many(
        [
            Document(source_name="s", doc_path="then", content="x", created_at=when),
            Document(source_name="s", doc_path="now", content="x"),
        ]
    )

    async def paths(flt: Any) -> list[str]:
        sql, params = build_filter(flt)
        found = await store.fetch(f"select doc_path from documents d where {sql}", *params)
        return sorted(r["doc_path"] for r in found)

    assert await paths({"created_at": when}) == ["then"]
    aware = datetime(2026, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    assert await paths({"created_at": aware}) == ["then"]
    assert await paths({"created_at": {"$ne": when}}) == ["now"]
    assert await paths({"created_at": {"$lt": date(2026, 1, 3)}}) == ["then"]
