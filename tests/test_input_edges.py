"""Input at the edges of what the models, repositories and filters accept: each case gets a
typed docstore error (:class:`ValidationError`, :class:`FilterError`) and writes nothing, or
is accepted as the number, mapping or text it stands for. Against a real database where a
write or a search is involved."""

from __future__ import annotations

import collections
import copy
import types
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

import docstore
from docstore import Document, Source
from docstore.errors import FilterError, ValidationError
from docstore.models import query_vector
from docstore.search.filters import build_filter
from tests.conftest import sample_documents, unit_vector

EAST = timezone(timedelta(hours=5))
WEST = timezone(timedelta(hours=-5))
FIRST_MOMENT_EAST = datetime(1, 1, 1, tzinfo=EAST)  # year 0 in UTC
LAST_HOUR_WEST = datetime(9999, 12, 31, 23, tzinfo=WEST)  # year 10000 in UTC


async def count(store: docstore.Store) -> int:
    return int(await store.fetchval("select count(*) from documents"))


# -- 1. a validated embedding cannot change afterwards -----------------------------------------


def test_a_documents_embedding_is_its_own_read_only_copy() -> None:
    mine = unit_vector(1)
    doc = Document(source_name="tokio", doc_path="p", content="c", embedding=mine)
    assert not np.shares_memory(doc.embedding, mine)
    mine[:] = 0.0  # the caller reuses its buffer
    assert np.array_equal(doc.embedding, unit_vector(1))
    with pytest.raises(ValueError, match="read-only"):
        doc.embedding[0] = np.nan  # type: ignore[index]
    query = unit_vector(2)
    checked = query_vector(query, 3072)
    assert not np.shares_memory(checked, query) and not checked.flags.writeable


async def test_arrays_edited_after_validation_never_reach_the_database(
    store: docstore.Store,
) -> None:
    vectors = [unit_vector(i) for i in range(1000)]
    docs = [
        Document(source_name="tokio", doc_path=f"p{i}", content="c", embedding=v)
        for i, v in enumerate(vectors)
    ]
    vectors[1][:] = 0.0  # zero norm
    vectors[2][0] = 1e6  # beyond half precision
    vectors[900][7] = np.nan  # in the second batch
    result = await store.documents.upsert_many(docs, batch_size=500)
    assert result.inserted == 1000
    for i in (1, 2, 900):
        stored = await store.fetchval(
            "select embedding from documents where doc_path = $1", f"p{i}"
        )
        assert np.array_equal(stored, unit_vector(i))


async def test_a_deep_copy_edited_in_place_is_checked_again(store: docstore.Store) -> None:
    docs = sample_documents(1000)
    docs[900] = docs[900].model_copy(deep=True)  # a deep copy's array is writable again
    assert docs[900].embedding is not None
    docs[900].embedding[7] = np.nan
    with pytest.raises(ValidationError) as info:
        await store.documents.upsert_many(docs, batch_size=500)
    assert info.value.index == 900 and info.value.field == "embedding"
    assert await count(store) == 0


# -- 2. text given as bytes is checked after it became a str -----------------------------------


@pytest.mark.parametrize(
    ("model", "fields", "field"),
    [
        (Document, {"doc_path": "p", "content": b"bad\x00content"}, "content"),
        (Document, {"doc_path": b"a\x00b", "content": "c"}, "doc_path"),
        (Document, {"doc_path": b"a" * 2500, "content": "c"}, "doc_path"),
        (Document, {"doc_path": "p", "content": "c", "doc_type": bytearray(b"r\x00")}, "doc_type"),
        (Source, {}, "source_name"),
    ],
)
def test_bytes_for_text_are_checked_like_text(
    model: type[Document | Source], fields: dict[str, Any], field: str
) -> None:
    data = {"source_name": b"x\x00y" if model is Source else "tokio", **fields}
    with pytest.raises(ValidationError) as info:
        model(**data)
    assert info.value.field == field


async def test_a_bad_bytes_row_late_in_a_list_writes_nothing(store: docstore.Store) -> None:
    docs: list[Any] = sample_documents(1000)
    docs[900] = {"source_name": "tokio", "doc_path": "tokio/bad", "content": b"bad\x00content"}
    with pytest.raises(ValidationError) as info:
        await store.documents.upsert_many(docs, batch_size=500)
    assert info.value.index == 900 and info.value.field == "content"
    assert await count(store) == 0
    with pytest.raises(ValidationError):
        await store.sources.upsert(Source(source_name=b"to\x00kio"))  # type: ignore[arg-type]
    ok = await store.documents.upsert(Document(source_name="tokio", doc_path=b"a", content=b"c"))  # type: ignore[arg-type]
    assert ok.doc_path == "a" and ok.content == "c"


# -- 3. flags are True or False ----------------------------------------------------------------


async def test_sources_delete_with_documents_false_as_a_string_deletes_nothing(
    store: docstore.Store,
) -> None:
    await store.sources.upsert(Source(source_name="tokio"))
    await store.documents.upsert_many(sample_documents(5))
    with pytest.raises(ValidationError) as info:
        await store.sources.delete("rust", "tokio", with_documents="false")  # type: ignore[arg-type]
    assert info.value.field == "with_documents"
    assert await count(store) == 5 and await store.sources.get("rust", "tokio") is not None


FLAG_CALLS = {
    "upsert_many atomic": lambda s: s.documents.upsert_many(sample_documents(2), atomic="no"),
    "search exact": lambda s: s.search(unit_vector(1), exact="no"),
    "search include_embedding": lambda s: s.search(unit_vector(1), include_embedding="no"),
    "search_text include_embedding": lambda s: s.search_text("spawn", include_embedding="no"),
    "hybrid exact": lambda s: s.hybrid_search("spawn", unit_vector(1), exact="no"),
    "hybrid include_embedding": lambda s: s.hybrid_search(
        "spawn", unit_vector(1), include_embedding=0
    ),
}


@pytest.mark.parametrize("name", list(FLAG_CALLS))
async def test_a_flag_that_is_not_a_bool_is_refused(store: docstore.Store, name: str) -> None:
    with pytest.raises(ValidationError) as info:
        await FLAG_CALLS[name](store)
    assert info.value.field == name.split()[-1]
    assert await count(store) == 0


# -- 4, 9. numpy numbers in filters ------------------------------------------------------------


def test_numpy_numbers_in_filters_are_bound_as_python_numbers() -> None:
    _, params = build_filter({"metadata.x": {"$gt": np.float64(0.1)}})
    assert params[-1] == Decimal("0.1")
    _, params = build_filter({"metadata.x": {"$lte": np.int64(3)}})
    assert params[-1] == 3 and type(params[-1]) is int
    _, params = build_filter({"token_count": np.int64(3), "metadata.n": np.int32(4)})
    assert params[0] == 3 and type(params[0]) is int and params[1] == '{"n": 4}'
    with pytest.raises(FilterError):
        build_filter({"token_count": np.bool_(True)})


@pytest.fixture
async def numbered(store: docstore.Store) -> docstore.Store:
    docs = sample_documents(10)
    for i, doc in enumerate(docs):
        doc.metadata = {"x": i / 10, "n": i}
    await store.documents.upsert_many(docs)
    return store


@pytest.mark.parametrize(
    ("numpy_filter", "python_filter"),
    [
        ({"metadata.x": {"$gt": np.float64(0.3)}}, {"metadata.x": {"$gt": 0.3}}),
        (
            {"metadata.x": {"$between": [np.float64(0.2), np.float64(0.5)]}},
            {"metadata.x": {"$between": [0.2, 0.5]}},
        ),
        ({"metadata.n": {"$lt": np.int64(4)}}, {"metadata.n": {"$lt": 4}}),
        ({"metadata.n": np.int64(4)}, {"metadata.n": 4}),
        ({"token_count": np.int64(3)}, {"token_count": 3}),
        ({"token_count": {"$in": [np.int16(3), np.uint8(5)]}}, {"token_count": {"$in": [3, 5]}}),
    ],
)
async def test_numpy_numbers_filter_like_python_numbers(
    numbered: docstore.Store, numpy_filter: dict[str, Any], python_filter: dict[str, Any]
) -> None:
    async def paths(flt: dict[str, Any]) -> list[str]:
        hits = await numbered.search(unit_vector(0), filter=flt, limit=10, exact=True)
        return sorted(h.doc_path for h in hits)

    expected = await paths(python_filter)
    assert expected and await paths(numpy_filter) == expected


# -- 5. datetimes that UTC moves out of range --------------------------------------------------


@pytest.mark.parametrize("value", [FIRST_MOMENT_EAST, LAST_HOUR_WEST])
def test_timestamps_out_of_range_in_utc_are_refused(value: datetime) -> None:
    with pytest.raises(ValidationError) as info:
        Document(source_name="tokio", doc_path="p", content="c", created_at=value)
    assert info.value.field == "created_at"
    with pytest.raises(ValidationError) as info:
        Source(source_name="tokio", last_checked=value)
    assert info.value.field == "last_checked"
    for field in ("created_at", "updated_at"):
        with pytest.raises(FilterError):
            build_filter({field: {"$gt": value}})


async def test_source_times_out_of_range_in_utc_are_refused(store: docstore.Store) -> None:
    await store.sources.upsert(Source(source_name="tokio"))
    with pytest.raises(ValidationError) as info:
        await store.sources.mark_checked("rust", "tokio", at=LAST_HOUR_WEST)
    assert info.value.field == "at"
    with pytest.raises(ValidationError) as info:
        await store.sources.mark_populated("rust", "tokio", at=FIRST_MOMENT_EAST)
    assert info.value.field == "at"
    with pytest.raises(ValidationError) as info:
        await store.sources.needing_update(timedelta.max)
    assert info.value.field == "older_than"
    assert [s.source_name for s in await store.sources.needing_update(timedelta(days=36500))] == [
        "tokio"
    ]


async def test_upsert_many_refuses_a_row_whose_created_at_leaves_the_range(
    store: docstore.Store,
) -> None:
    rows: list[Any] = [d.model_dump() for d in sample_documents(3)]
    rows[1]["created_at"] = FIRST_MOMENT_EAST
    with pytest.raises(ValidationError) as info:
        await store.documents.upsert_many(rows)
    assert info.value.index == 1 and info.value.field == "created_at"
    assert await count(store) == 0


# -- 6. mappings that are not dicts ------------------------------------------------------------


async def test_mappings_that_are_not_dicts_are_stored_as_objects(store: docstore.Store) -> None:
    nested = {"a": collections.UserDict(b=1), "l": [types.MappingProxyType({"c": 2})]}
    doc = await store.documents.upsert(
        {"source_name": "tokio", "doc_path": "p", "content": "c", "metadata": nested}
    )
    assert doc.metadata == {"a": {"b": 1}, "l": [{"c": 2}]}
    source = await store.sources.upsert({"source_name": "tokio", "config": copy.copy(nested)})
    assert source.config == {"a": {"b": 1}, "l": [{"c": 2}]}
    with pytest.raises(ValidationError) as info:
        Document(source_name="t", doc_path="p", content="c", metadata={"a": 10**5000})
    assert info.value.field == "metadata"


# -- 7, 8. what is not a row -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [5, None, "tokio", ["x"], {1: "x"}])
async def test_sources_upsert_of_something_else_is_a_validation_error(
    store: docstore.Store, bad: Any
) -> None:
    with pytest.raises(ValidationError, match="expected a Source or a dict, got"):
        await store.sources.upsert(bad)
    with pytest.raises(ValidationError, match="expected a Document or a dict, got"):
        Document.model_validate(bad)


@pytest.mark.parametrize(
    "bad", [5, None, 3.5, object(), "tokio", {"source_name": "tokio"}, sample_documents(1)[0]]
)
async def test_upsert_many_of_something_else_is_refused_up_front(
    store: docstore.Store, bad: Any
) -> None:
    with pytest.raises(ValidationError) as info:
        await store.documents.upsert_many(bad)
    assert info.value.field == "docs"
    assert await count(store) == 0


# -- 9. numpy integers as ids, sizes and counts; keys; large filters; k -------------------------


async def test_numpy_integers_are_accepted_where_integers_are(numbered: docstore.Store) -> None:
    store = numbered
    first = await store.fetchval("select min(id) from documents")
    doc = await store.documents.get(np.int64(first))
    assert doc is not None and doc.id == first
    ids = [d.id async for d in store.documents.iter(batch_size=np.int64(3))]
    assert len(ids) == 10 and ids[0] == first
    result = await store.documents.upsert_many(sample_documents(2, "serde"), batch_size=np.int32(1))
    assert result.inserted == 2
    assert len(await store.search(unit_vector(1), limit=np.int64(5))) == 5
    assert len(await store.search_text("spawn", limit=np.int16(4))) == 4
    hybrid = await store.hybrid_search(
        "spawn", unit_vector(1), limit=np.int64(3), k=np.int64(60), candidates=np.int64(10)
    )
    assert len(hybrid) == 3
    assert await store.documents.delete(np.int64(first))
    with pytest.raises(ValidationError):
        await store.documents.get(np.bool_(True))
    with pytest.raises(ValidationError):
        await store.documents.get(True)


async def test_get_by_key_without_a_doc_path_is_refused(store: docstore.Store) -> None:
    with pytest.raises(ValidationError) as info:
        await store.documents.get_by_key("rust", "tokio", None)  # type: ignore[arg-type]
    assert info.value.field == "doc_path"


def test_a_filter_past_postgresqls_bind_parameter_limit_is_a_filter_error() -> None:
    with pytest.raises(FilterError, match="too large"):
        build_filter({"$or": [{"doc_type": str(i)} for i in range(40_000)]})
    _, params = build_filter({"doc_type": {"$in": [str(i) for i in range(40_000)]}})
    assert len(params) == 1


async def test_hybrid_search_refuses_a_negative_k_before_searching(store: docstore.Store) -> None:
    await store.documents.upsert_many(sample_documents(3))
    await store.execute("ALTER TABLE documents RENAME TO documents_elsewhere")  # no search can run
    with pytest.raises(ValidationError) as info:
        await store.hybrid_search("spawn", unit_vector(1), k=-1)
    assert info.value.field == "k"


def test_model_validate_from_attributes_still_works_with_docstores_errors() -> None:
    """The review's tightening of model_validate refused pydantic's from_attributes=True, a
    documented pydantic feature: it works again, its failures are docstore ValidationErrors."""
    from types import SimpleNamespace

    fields = {"source_name": "tokio", "doc_path": "a.html", "content": "text"}
    doc = Document.model_validate(SimpleNamespace(**fields), from_attributes=True)
    assert (doc.source_name, doc.doc_path, doc.content) == ("tokio", "a.html", "text")
    with pytest.raises(ValidationError, match="doc_path"):
        Document.model_validate(SimpleNamespace(source_name="tokio"), from_attributes=True)
    with pytest.raises(ValidationError, match="expected a Document or a dict"):
        Document.model_validate(SimpleNamespace(**fields))


def test_the_metadata_size_limit_counts_utf8_bytes_not_escapes() -> None:
    """Review 68: ~998 KB of "é" was refused as over 1,000,000 bytes (json.dumps' default
    escapes made each character 6), a third of the limit for CJK text."""
    from docstore.storable import MAX_METADATA_BYTES

    fits = {"a": "é" * ((MAX_METADATA_BYTES - 20) // 2)}
    doc = docstore.Document(source_name="s", doc_path="p", content="c", metadata=fits)
    assert len(doc.metadata["a"]) == (MAX_METADATA_BYTES - 20) // 2
    with pytest.raises(docstore.ValidationError, match="more than 1000000 bytes"):
        docstore.Document(
            source_name="s", doc_path="p", content="c", metadata={"a": "漢" * 333_400}
        )


async def test_metadata_within_the_limit_in_utf8_bytes_is_written(store: docstore.Store) -> None:
    """Fresh-database exploration 2026-12-07: the constructor counted UTF-8 bytes, but the
    check at write time (``seal``) counted the escaped JSON sent, so 400 KB of emoji (an emoji
    is 12 characters escaped) or 900 KB of CJK text passed ``Document()`` and then failed the
    upsert with "serializes to more than 1000000 bytes"."""
    from docstore.storable import MAX_METADATA_BYTES

    metadata = [
        {"emoji": "\U0001f600" * 100_000},  # 400,000 bytes, 1,200,000 characters escaped
        {"cjk": "漢" * ((MAX_METADATA_BYTES - 20) // 3)},  # ~1 MB, 3x that escaped
    ]
    docs = [
        docstore.Document(source_name="s", doc_path=f"p{i}", content="c", metadata=m)
        for i, m in enumerate(metadata)
    ]
    assert (await store.documents.upsert_many(docs)).inserted == 2
    for i, m in enumerate(metadata):
        stored = await store.documents.get_by_key("rust", "s", f"p{i}")
        assert stored is not None and stored.metadata == m
