"""Review findings of 2026-12-05 on the document write and read paths, each a regression test:
lock buckets, iter()'s plans, stats() and TOAST, legacy_id sizing, metadata read back as NULL
or not an object, strict integers, and metadata numbers compared as stored."""

from __future__ import annotations

import json

import numpy as np
import pytest

import docstore
from docstore import Document
from docstore.errors import ValidationError
from docstore.repositories import documents as repo
from tests.conftest import unit_vector


def _doc(path: str, source: str = "s", **fields: object) -> Document:
    return Document(source_name=source, doc_path=path, content="c", **fields)  # type: ignore[arg-type]


async def test_a_transaction_writing_20000_sources_holds_at_most_256_locks(
    store: docstore.Store,
) -> None:
    """One advisory lock per source filled PostgreSQL's shared lock table (6,400 entries by
    default) at ~15,000 sources in one atomic call: "out of shared memory", for every session."""
    sources = [("rust", f"crate{i}") for i in range(20_000)]
    async with store.transaction() as conn:
        await repo.lock_sources(conn, sources)
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND pid = pg_backend_pid() AND classid = $1",
            repo.SOURCE_LOCK_SPACE,
        )
    assert 200 < held <= repo.SOURCE_LOCK_BUCKETS
    result = await store.documents.upsert_many(
        (_doc("p", source=name) for _, name in sources), atomic=True, batch_size=5_000
    )
    assert result.inserted == 20_000


def test_the_lock_bucket_of_a_source_is_stable() -> None:
    assert repo.source_lock_key("rust", "tokio") == repo.source_lock_key("rust", "tokio")
    assert all(0 <= repo.source_lock_key("rust", f"s{i}") < 256 for i in range(1000))


async def test_iter_of_a_source_never_runs_a_generic_plan(database_url: str) -> None:
    """After five runs on a pooled connection PostgreSQL may switch a prepared statement to a
    generic plan: iter() then walked the whole table in id order for every page of a small
    source (65 ms against 2.7 ms on 300,000 rows)."""
    async with docstore.connect(database_url, pool_min_size=1, pool_max_size=1) as store:
        await store.documents.upsert_many([_doc(f"p{i}", source="big") for i in range(50)])
        await store.documents.upsert_many([_doc(f"p{i}", source="tiny") for i in range(3)])
        for source in ["big", "tiny"] * 5:
            got = [d async for d in store.documents.iter("rust", source, batch_size=7)]
            assert len(got) == (50 if source == "big" else 3)
            assert [d.id for d in got] == sorted(d.id for d in got)  # id order, as before
        plans = await store.fetch(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE '%ORDER BY id LIMIT%' AND statement LIKE '%source_name = $3%'"
            " AND statement NOT LIKE '%pg_prepared_statements%'"
        )
    assert plans and all(p["generic_plans"] == 0 and p["custom_plans"] > 5 for p in plans), plans


async def test_stats_reads_no_embedding_from_toast(store: docstore.Store) -> None:
    await store.documents.upsert_many(
        [_doc(f"p{i}", embedding=unit_vector(i), metadata={"i": i}) for i in range(40)]
    )
    (stats,) = await store.documents.stats()
    heap, toast = await store.fetchrow(
        "SELECT c.relpages, t.relpages FROM pg_class c JOIN pg_class t"
        " ON t.oid = c.reltoastrelid WHERE c.relname = 'documents'"
    ) or (0, 0)
    plan = await store.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {repo.STATS}")
    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    buffers = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
    assert buffers <= 40 + 10, (buffers, heap, toast)  # one heap page a row: the rows only
    # as stored: each row's 12 KB embedding out of line and its 6 KB half in line
    assert 40 * 18_000 < stats.stored_bytes < 40 * 20_000, stats


async def test_a_float_nested_in_legacy_id_is_sized_as_jsonb_prints_it() -> None:
    """jsonb prints 1e300 in full (301 digits) inside a list too; it was sized as json.dumps
    writes it (6 bytes), passed validation and failed the write on the legacy_id index."""
    with pytest.raises(ValidationError, match="legacy_id takes"):
        _doc("p", metadata={"legacy_id": [1e300] * 9})
    _doc("p", metadata={"legacy_id": [1e300] * 8})  # 2,400 bytes fit


async def test_metadata_stored_as_null_reads_back_as_an_empty_object(store: docstore.Store) -> None:
    await store.execute(
        "INSERT INTO documents (source_name, doc_path, content, metadata)"
        " VALUES ('s', 'null', 'c', NULL), ('s', 'list', 'c', '[1, 2]')"
    )
    null = await store.documents.get_by_key("rust", "s", "null")
    assert null is not None and null.metadata == {}
    assert (await store.documents.upsert_many([null])).updated == 1  # NULL -> {}
    listed = await store.documents.get_by_key("rust", "s", "list")
    assert listed is not None
    copied = listed.model_copy(update={"content": "new"})  # was AttributeError
    for write in (store.documents.upsert(copied), store.documents.upsert_many([copied])):
        with pytest.raises(ValidationError, match="metadata: must be a JSON object"):
            await write
    assert await store.fetchval("SELECT content FROM documents WHERE doc_path = 'list'") == "c"


@pytest.mark.parametrize("value", [True, np.False_, "7", 3.0, " 7 "])
def test_token_count_and_id_take_integers_only(value: object) -> None:
    with pytest.raises(ValidationError, match="token_count: must be an integer"):
        _doc("p", token_count=value)
    with pytest.raises(ValidationError, match="id: must be an integer"):
        _doc("p", id=value)


def test_numpy_integers_are_integers() -> None:
    doc = _doc("p", token_count=np.int64(7), id=np.int32(3))
    assert (doc.token_count, doc.id) == (7, 3) and type(doc.token_count) is int


async def test_a_metadata_number_changed_from_int_to_float_is_written(
    store: docstore.Store,
) -> None:
    """jsonb equality takes 1 and 1.0 for one number: the change was counted unchanged and
    the stored value stayed 1."""
    await store.documents.upsert_many([_doc("p", metadata={"v": 1})])
    result = await store.documents.upsert_many([_doc("p", metadata={"v": 1.0})])
    assert result.updated == 1
    stored = await store.documents.get_by_key("rust", "s", "p")
    assert stored is not None and isinstance(stored.metadata["v"], float)
    again = await store.documents.upsert_many([_doc("p", metadata={"v": 1.0})])
    assert again.unchanged == 1
    single = await store.documents.upsert(_doc("p", metadata={"v": 1}))
    assert single.metadata == {"v": 1} and isinstance(single.metadata["v"], int)


async def test_a_source_config_number_changed_from_int_to_float_is_written(
    store: docstore.Store,
) -> None:
    first = await store.sources.upsert(docstore.Source(source_name="s", config={"v": 1}))
    second = await store.sources.upsert(docstore.Source(source_name="s", config={"v": 1.0}))
    assert isinstance(second.config["v"], float) and second.updated_at is not None
    assert first.updated_at is not None and second.updated_at > first.updated_at


async def test_the_store_redacts_its_url_once_not_on_every_call(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runner.run() names the redacted URL for every call's in-doubt policy; redacting it each
    time cost ~0.16 ms a call (0.2 ms on every facade search, bench/compat.py)."""
    from docstore.core import pools

    calls: list[str] = []
    real = pools.redact_url
    monkeypatch.setattr(pools, "redact_url", lambda url: calls.append(url) or real(url))
    async with docstore.connect(database_url) as store:
        for _ in range(20):
            await store.fetchval("SELECT 1")
            await store.documents.count()
        assert len(calls) <= 2  # the primary's, and at most a replica's
        moved = database_url + ("&" if "?" in database_url else "?") + "sslmode=disable"
        await store.reload(moved)
        await store.fetchval("SELECT 1")
        assert calls[-1] == moved  # a re-pointed pool is redacted anew
