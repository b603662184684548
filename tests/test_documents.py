"""DocumentRepository against a real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import numpy as np
import pytest

import docstore
from docstore import Document
from docstore.errors import ReadOnlyError, ValidationError

DIM = 3072
rng = np.random.default_rng(7)


def make_docs(
    n: int, *, source: str = "tokio", doc_type: str = "rust", seed: int = 0
) -> list[Document]:
    gen = np.random.default_rng(seed)
    return [
        Document(
            doc_type=doc_type,
            source_name=source,
            doc_path=f"{source}/doc{i}.html",
            content=f"content {i} of {source}: 'quotes', tabs\t, newlines\n, unicode ✓",
            metadata={"crate_version": "1.0", "i": i},
            embedding=gen.standard_normal(DIM).astype(np.float32),
            token_count=i,
        )
        for i in range(n)
    ]


async def snapshot(store: docstore.Store) -> list[tuple[object, ...]]:
    rows = await store.fetch(
        "select id, doc_type, source_name, doc_path, md5(content) c, metadata::text m,"
        " md5(vector_send(embedding)) e, token_count, updated_at, xmin::text x"
        " from documents order by id"
    )
    return [tuple(r) for r in rows]


async def test_reupsert_with_ten_changed_reports_exact_counts(store: docstore.Store) -> None:
    docs = make_docs(1000)
    first = await store.documents.upsert_many(docs)
    assert (first.inserted, first.updated, first.unchanged) == (1000, 0, 0)
    changed = list(docs)
    for i in range(0, 1000, 100):
        changed[i] = changed[i].model_copy(update={"content": changed[i].content + " (edited)"})
    second = await store.documents.upsert_many(changed)
    assert (second.inserted, second.updated, second.unchanged) == (0, 10, 990)
    assert await store.documents.count() == 1000
    got = await store.documents.get_by_key("rust", "tokio", "tokio/doc100.html")
    assert got is not None and got.content.endswith("(edited)")


async def test_unchanged_rows_are_not_rewritten(store: docstore.Store) -> None:
    docs = make_docs(50)
    await store.documents.upsert_many(docs)
    before = await snapshot(store)
    result = await store.documents.upsert_many(docs)
    assert result.unchanged == 50 and result.written == 0
    assert await snapshot(store) == before  # same xmin: no new tuple; updated_at unchanged


async def test_metadata_key_order_does_not_count_as_a_change(store: docstore.Store) -> None:
    d = make_docs(1)[0].model_copy(update={"metadata": {"a": 1, "b": 2}})
    await store.documents.upsert_many([d])
    same = d.model_copy(update={"metadata": {"b": 2, "a": 1}})
    assert (await store.documents.upsert_many([same])).unchanged == 1


async def test_embedding_change_of_one_float_is_an_update(store: docstore.Store) -> None:
    d = make_docs(1)[0]
    await store.documents.upsert_many([d])
    assert d.embedding is not None
    emb = d.embedding.copy()
    emb[1234] += 0.001
    result = await store.documents.upsert_many([d.model_copy(update={"embedding": emb})])
    assert result.updated == 1
    stored = await store.documents.get_by_key(*d.key)
    assert stored is not None and stored.embedding is not None
    np.testing.assert_array_equal(stored.embedding, emb)


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"embedding": np.ones(1536, dtype=np.float32)}, "1536 dimensions"),
        ({"embedding": np.r_[np.ones(3071), np.nan]}, "finite"),
        ({"content": "nul \x00 byte"}, "NUL"),
        ({"doc_type": "x" * 51}, "doc_type"),
    ],
)
async def test_one_bad_row_rejects_the_batch_and_names_it(
    store: docstore.Store, bad: dict[str, object], needle: str
) -> None:
    await store.documents.upsert_many(make_docs(5, source="before"))
    before = await snapshot(store)
    rows: list[object] = [d.model_dump() for d in make_docs(20)]
    rows[13] = {**rows[13], **bad}  # type: ignore[dict-item]
    with pytest.raises(ValidationError) as info:
        await store.documents.upsert_many(rows)  # type: ignore[arg-type]
    message = str(info.value)
    assert "row 13" in message and needle in message
    assert info.value.index == 13
    assert "1.0" not in message.replace('1.0"', "")  # no vector values
    assert await snapshot(store) == before


async def test_same_key_twice_last_one_wins(store: docstore.Store) -> None:
    a, b = make_docs(2)
    twin = a.model_copy(update={"content": "second version"})
    result = await store.documents.upsert_many([a, b, twin])
    assert (result.inserted, result.duplicates) == (2, 1)
    got = await store.documents.get_by_key(*a.key)
    assert got is not None and got.content == "second version"


async def test_async_generator_is_streamed_in_batches(store: docstore.Store) -> None:
    async def gen() -> AsyncIterator[Document]:
        for d in make_docs(250):
            yield d

    result = await store.documents.upsert_many(gen(), batch_size=64)
    assert result.inserted == 250
    assert await store.documents.count(source_name="tokio") == 250


async def test_stream_with_bad_row_keeps_earlier_batches_unless_atomic(
    store: docstore.Store,
) -> None:
    def rows(n_good: int) -> list[object]:
        docs: list[object] = list(make_docs(n_good))
        docs.append({"source_name": "tokio", "doc_path": "bad", "content": "\x00"})
        return docs

    with pytest.raises(ValidationError):
        await store.documents.upsert_many(iter(rows(30)), batch_size=10, atomic=True)  # type: ignore[arg-type]
    assert await store.documents.count() == 0
    with pytest.raises(ValidationError):
        await store.documents.upsert_many(iter(rows(30)), batch_size=10)  # type: ignore[arg-type]
    assert await store.documents.count() == 30  # the three full batches before the bad one


async def test_created_at_is_kept_for_new_rows(store: docstore.Store) -> None:
    when = datetime(2024, 5, 1, 8, 30)
    d = make_docs(1)[0].model_copy(update={"created_at": when})
    plain = make_docs(2, source="other")[1]
    await store.documents.upsert_many([d, plain])
    got = await store.documents.get_by_key(*d.key)
    assert got is not None and got.created_at == when
    other = await store.documents.get_by_key(*plain.key)
    assert other is not None and other.created_at is not None and other.created_at > when


async def test_concurrent_overlapping_upserts_never_fail(database_url: str) -> None:
    docs = make_docs(300)
    async with docstore.connect(database_url, pool_max_size=8) as store:
        results = await asyncio.gather(
            *(
                store.documents.upsert_many(docs[i * 50 : i * 50 + 200], batch_size=40)
                for i in range(6)
            )
        )
        assert await store.documents.count() == 300
        assert sum(r.inserted for r in results) == 300


async def test_delete_source_is_scoped_by_doc_type(store: docstore.Store) -> None:
    await store.documents.upsert_many(make_docs(5, doc_type="rust", source="tokio"))
    await store.documents.upsert_many(make_docs(3, doc_type="solana", source="tokio"))
    await store.sources.upsert({"doc_type": "solana", "source_name": "tokio"})
    assert await store.documents.delete_source("rust", "tokio") == 5
    assert await store.documents.count("solana", "tokio") == 3
    assert await store.documents.count("rust", "tokio") == 0
    assert await store.sources.get("solana", "tokio") is not None


async def test_get_delete_and_iter(store: docstore.Store) -> None:
    await store.documents.upsert_many(make_docs(25))
    await store.documents.upsert_many(make_docs(7, doc_type="birdeye", source="api"))
    seen = [d async for d in store.documents.iter(doc_type="rust", batch_size=4)]
    assert len(seen) == 25 and [d.id for d in seen] == sorted(d.id for d in seen)
    assert all(d.embedding is not None and d.embedding.shape == (DIM,) for d in seen)
    first = seen[0]
    assert first.id is not None
    assert await store.documents.get(first.id) == first
    assert await store.documents.delete(first.id) is True
    assert await store.documents.delete(first.id) is False
    assert await store.documents.get(first.id) is None
    assert await store.documents.count() == 31


async def test_stats_count_documents_without_embeddings(store: docstore.Store) -> None:
    docs = make_docs(4)
    docs[0] = docs[0].model_copy(update={"embedding": None})
    await store.documents.upsert_many(docs)
    (stats,) = await store.documents.stats()
    assert (stats.documents, stats.with_embedding, stats.without_embedding) == (4, 3, 1)
    assert stats.tokens == 0 + 1 + 2 + 3
    assert stats.content_bytes > 0 and stats.stored_bytes > stats.content_bytes


async def test_upsert_single_returns_stored_document(store: docstore.Store) -> None:
    stored = await store.documents.upsert(make_docs(1)[0])
    assert stored.id is not None and stored.created_at is not None


async def test_writes_refused_in_read_only_mode(database_url: str) -> None:
    async with docstore.connect(database_url, read_only=True) as store:
        with pytest.raises(ReadOnlyError):
            await store.documents.upsert_many(make_docs(1))
        with pytest.raises(ReadOnlyError):
            await store.documents.delete_source("rust", "tokio")
        with pytest.raises(ReadOnlyError):
            await store.sources.upsert({"source_name": "tokio"})
        with pytest.raises(ReadOnlyError):
            await store.sources.mark_checked("rust", "tokio")


async def test_model_copy_with_unvalidated_embedding_is_still_checked(
    store: docstore.Store,
) -> None:
    d = make_docs(1)[0].model_copy(update={"embedding": [0.5] * 100})
    with pytest.raises(ValidationError, match="100 dimensions"):
        await store.documents.upsert_many([d])
    assert await store.documents.count() == 0


async def test_documents_changed_after_construction_are_checked_before_anything_is_written(
    store: docstore.Store,
) -> None:
    """A list is validated whole before its first batch is written, whatever was changed on
    its documents after they were made: assignments, model_copy(update=...) and metadata
    dicts edited in place."""
    docs = make_docs(4)
    with pytest.raises(ValidationError, match="content"):
        docs[2].content = "bad\x00"
    with pytest.raises(ValidationError, match="token_count"):
        docs[2].token_count = -7
    with pytest.raises(ValidationError, match="doc_path"):
        docs[2].model_copy(update={"doc_path": ""})
    docs[3].metadata["score"] = float("nan")  # in place: no assignment to see it
    with pytest.raises(ValidationError, match=r"row 3: .*metadata") as info:
        await store.documents.upsert_many(docs, batch_size=1)
    assert info.value.index == 3 and info.value.field == "metadata"
    assert await store.documents.count() == 0
    source = docstore.Source(source_name="tokio")
    source.config["nested"] = {"bad\x00key": 1}
    with pytest.raises(ValidationError, match="config"):
        await store.sources.upsert(source)
    assert await store.sources.list() == []


async def test_same_key_in_two_batches_of_one_atomic_stream_counts_exactly(
    store: docstore.Store,
) -> None:
    a, b = make_docs(2)
    await store.documents.upsert_many([a])
    edited = a.model_copy(update={"content": "edited"})
    # batch 1 updates a; batch 2 repeats the edit (unchanged) and inserts b
    result = await store.documents.upsert_many(iter([edited, edited, b]), batch_size=1, atomic=True)
    assert (result.inserted, result.updated, result.unchanged) == (1, 1, 1)


async def test_race_fallback_statement_upserts_with_exact_flags(store: docstore.Store) -> None:
    """The INSERT ... ON CONFLICT used when a concurrent caller inserted a 'new' key first."""
    from docstore.repositories.documents import _GUARDED_UPSERT, _columns

    docs = make_docs(4)
    await store.documents.upsert_many(docs[:2])
    edited = docs[1].model_copy(update={"content": "changed"})
    async with store.transaction() as conn:
        flags = await conn.fetch(_GUARDED_UPSERT, *_columns([docs[0], edited, docs[2], docs[3]]))
    # docs[0] unchanged (no row), edited updated (False), two inserts (True)
    assert sorted(f["inserted"] for f in flags) == [False, True, True]
    got = await store.documents.get_by_key(*edited.key)
    assert got is not None and got.content == "changed"
    stored = await store.documents.get_by_key(*docs[3].key)
    assert stored is not None and docs[3].embedding is not None and stored.embedding is not None
    np.testing.assert_array_equal(stored.embedding, docs[3].embedding)
    assert await store.documents.count() == 4


async def test_race_fallback_keeps_the_given_timestamps_of_new_rows(
    store: docstore.Store,
) -> None:
    """A batch whose COPY meets a key another writer inserted first falls back to
    INSERT ... ON CONFLICT: its new rows keep the created_at/updated_at the caller gave (as
    the COPY would have), the raced row is updated and keeps its own created_at."""
    from docstore.repositories.documents import _insert_new

    docs = make_docs(3)
    raced = docs[0]
    await store.documents.upsert_many([raced])  # "the other writer"
    before = await store.documents.get_by_key(*raced.key)
    assert before is not None
    when = datetime(2020, 5, 17, 8, 30, 15, 123456)
    later = datetime(2021, 1, 2, 3, 4, 5)
    batch = [
        raced.model_copy(update={"content": "racing edit", "created_at": when}),
        docs[1].model_copy(update={"created_at": when, "updated_at": later}),
        docs[2],
    ]
    async with store.transaction() as conn:
        result = await _insert_new(conn, batch)
    assert (result.inserted, result.updated, result.unchanged) == (2, 1, 0)
    kept = await store.documents.get_by_key(*docs[1].key)
    assert kept is not None and (kept.created_at, kept.updated_at) == (when, later)
    plain = await store.documents.get_by_key(*docs[2].key)
    assert plain is not None and plain.created_at is not None and plain.created_at > when
    updated = await store.documents.get_by_key(*raced.key)
    assert updated is not None and updated.content == "racing edit"
    assert updated.created_at == before.created_at


async def test_negative_zero_is_stored_as_zero_so_reupserts_compare_exactly(
    store: docstore.Store,
) -> None:
    """-0.0 and 0.0 are equal to PostgreSQL's vector comparison: docstore stores one form, so
    "unchanged" always means the stored bytes are what was asked for (issue 13.7)."""
    doc = make_docs(1)[0]
    negative = doc.embedding.copy()
    negative[:100] = -0.0
    positive = negative.copy()
    positive[:100] = 0.0
    await store.documents.upsert_many([doc.model_copy(update={"embedding": negative})])
    stored = await store.documents.get_by_key(*doc.key)
    assert stored is not None and not np.signbit(stored.embedding[:100]).any()
    assert stored.embedding.tobytes() == positive.tobytes()
    again = await store.documents.upsert_many([doc.model_copy(update={"embedding": positive})])
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 1)


async def test_a_constructed_document_with_an_unsearchable_vector_is_refused(
    store: docstore.Store,
) -> None:
    """Documents read back are built without validation (model_construct); one holding a
    vector stored before the embedding rule (a migrated zero vector) is refused, not
    written back."""
    doc = make_docs(1)[0]
    raw = Document.model_construct(
        **{**doc.model_dump(), "embedding": np.zeros(DIM, dtype=np.float32)}
    )
    with pytest.raises(ValidationError, match="embedding") as info:
        await store.documents.upsert_many([raw])
    assert info.value.field == "embedding" and info.value.index == 0
    assert await store.documents.count() == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("token_count", -5), ("doc_path", ""), ("content", "nul\x00"), ("doc_type", "x" * 60)],
)
async def test_a_constructed_document_is_validated_whole(
    store: docstore.Store, field: str, value: object
) -> None:
    """Ground-rules audit (2026-12-07): a ``model_construct`` Document skipped every rule but
    the embedding's and metadata's: a negative token_count and an empty doc_path were
    written, a NUL byte or an oversize doc type failed in the server without the row's index."""
    good, other = make_docs(2)
    raw = Document.model_construct(**{**other.model_dump(), field: value})
    with pytest.raises(ValidationError, match=field) as info:
        await store.documents.upsert_many([good, raw])
    assert info.value.field == field and info.value.index == 1
    assert await store.documents.count() == 0
    read_back = await store.documents.upsert(good)  # rows read back are constructed: they pass
    assert (await store.documents.upsert_many([read_back])).unchanged == 1


async def test_iter_checks_its_batch_size_and_yields_every_row(store: docstore.Store) -> None:
    """A float batch size used to return one page and stop (1 of 10 documents); any id, also
    one a caller's SQL set to 0 or below, is a document iter() yields."""
    await store.documents.upsert_many(make_docs(10))
    for bad in (1.5, "3", None, 0, True, 2**63):
        with pytest.raises(ValidationError) as info:
            [d async for d in store.documents.iter(batch_size=bad)]  # type: ignore[arg-type]
        assert info.value.field == "batch_size"
        with pytest.raises(ValidationError):
            await store.documents.upsert_many(make_docs(1), batch_size=bad)  # type: ignore[arg-type]
    await store.execute("UPDATE documents SET id = -id WHERE id IN (SELECT min(id) FROM documents)")
    await store.execute("UPDATE documents SET id = 0 WHERE id IN (SELECT max(id) FROM documents)")
    assert await store.documents.count() == 10
    for size in (1, 3, 10, 1000):
        ids = [d.id async for d in store.documents.iter(batch_size=size)]
        assert len(ids) == 10 and ids == sorted(ids) and ids[0] is not None and ids[0] < 0


async def test_a_single_upsert_racing_deletes_always_returns_the_stored_row(
    store: docstore.Store,
) -> None:
    """``documents.upsert`` writes and reads back in one transaction; a delete by id (which
    takes no source lock) landing in between makes it write the row again."""
    doc = make_docs(1)[0]
    await store.documents.upsert(doc)
    stop = False

    async def deleter() -> None:
        while not stop:
            await store.execute(
                "DELETE FROM documents WHERE source_name = $1 AND doc_path = $2",
                doc.source_name,
                doc.doc_path,
            )
            await asyncio.sleep(0)

    task = asyncio.create_task(deleter())
    try:
        for _ in range(200):
            stored = await store.documents.upsert(doc)
            assert stored.key == doc.key and stored.id is not None
    finally:
        stop = True
        await task


async def test_a_legacy_id_the_index_cannot_hold_writes_nothing_of_the_list(
    store: docstore.Store,
) -> None:
    good = Document(source_name="s", doc_path="a", content="c", metadata={"legacy_id": "1"})
    bad = Document(source_name="s", doc_path="b", content="c", metadata={"legacy_id": "1"})
    bad.metadata["legacy_id"] = "".join(chr(0x4E00 + i % 2000) for i in range(1000))
    with pytest.raises(ValidationError, match=r"row 1: .*legacy_id takes"):
        await store.documents.upsert_many([good, bad], batch_size=1)
    assert await store.documents.count() == 0
    # the longest that fits is stored and found through the index
    fits = Document(source_name="s", doc_path="c", content="c", metadata={"legacy_id": "x" * 2596})
    assert (await store.documents.upsert_many([fits])).inserted == 1
    assert (
        await store.fetchval(
            "SELECT count(*) FROM documents"
            " WHERE doc_type = 'rust' AND metadata->>'legacy_id' = $1",
            "x" * 2596,
        )
        == 1
    )


async def test_writes_and_reads_make_asyncpg_introspect_no_type(
    database_url: str, introspections: list[list[int]]
) -> None:
    """Writes and reads on a new store's connections make asyncpg look up no type in the
    catalog (a query of 5-10 ms here on each new connection): the source locks' buckets go as
    text[]."""
    async with docstore.connect(database_url) as store:
        docs = make_docs(5, source="nointro")
        assert (await store.documents.upsert_many(docs)).inserted == 5
        assert (await store.documents.upsert_many(docs)).unchanged == 5
        changed = [docs[0].model_copy(update={"content": "new"}), *docs[1:]]
        assert (await store.documents.upsert_many(changed)).updated == 1
        assert (await store.documents.upsert(docs[0])).content == docs[0].content
        assert await store.documents.get_by_key(*docs[1].key) is not None
        assert len([d async for d in store.documents.iter(source_name="nointro")]) == 5
        assert await store.documents.stats()
        hits = await store.search(docs[2].embedding, filter={"source_name": {"$in": ["nointro"]}})
        assert hits[0].doc_path == docs[2].doc_path
        assert await store.documents.delete_source("rust", "nointro") == 5
    assert introspections == []
