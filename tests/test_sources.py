"""SourceRepository against a real database."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

import docstore
from docstore import Document, Source
from docstore.errors import ValidationError


async def test_upsert_get_list_and_unchanged_upsert(store: docstore.Store) -> None:
    tokio = await store.sources.upsert(Source(source_name="tokio", config={"version": "1.0"}))
    assert tokio.id is not None and tokio.config == {"version": "1.0"}
    again = await store.sources.upsert(Source(source_name="tokio", config={"version": "1.0"}))
    assert again.updated_at == tokio.updated_at and again.id == tokio.id
    await store.sources.upsert({"doc_type": "solana", "source_name": "web3", "enabled": False})
    assert [s.source_name for s in await store.sources.list()] == ["tokio", "web3"]
    assert [s.source_name for s in await store.sources.list(doc_type="rust")] == ["tokio"]
    assert [s.source_name for s in await store.sources.list(enabled=False)] == ["web3"]


async def test_marks_and_needing_update(store: docstore.Store) -> None:
    for name in ("a", "b", "c"):
        await store.sources.upsert(Source(source_name=name))
    assert await store.sources.mark_checked("rust", "a")
    assert await store.sources.set_enabled("rust", "c", False)
    assert not await store.sources.mark_checked("rust", "missing")
    due = await store.sources.needing_update(timedelta(hours=1))
    assert [s.source_name for s in due] == ["b"]
    assert await store.sources.mark_populated("rust", "b")
    b = await store.sources.get("rust", "b")
    assert b is not None and b.last_populated is not None


async def test_delete_with_documents_is_refused_unless_asked(store: docstore.Store) -> None:
    await store.sources.upsert(Source(source_name="tokio"))
    await store.documents.upsert(
        Document(source_name="tokio", doc_path="p", content="c", embedding=np.ones(3072))
    )
    with pytest.raises(ValidationError, match="with_documents=True"):
        await store.sources.delete("rust", "tokio")
    assert await store.documents.count() == 1
    assert await store.sources.delete("rust", "tokio", with_documents=True)
    assert await store.documents.count() == 0
    assert await store.sources.get("rust", "tokio") is None


async def test_delete_removes_the_sources_population_jobs(store: docstore.Store) -> None:
    for name in ("tokio", "serde"):
        await store.sources.upsert(Source(source_name=name))
        await store.execute(
            "INSERT INTO source_population_jobs (source_id, doc_type, source_name)"
            " SELECT id, doc_type, source_name FROM document_sources WHERE source_name = $1",
            name,
        )
    assert await store.sources.delete("rust", "tokio")
    assert not await store.sources.delete("rust", "tokio")
    jobs = await store.fetch("SELECT source_name FROM source_population_jobs")
    assert [r["source_name"] for r in jobs] == ["serde"]


async def test_refresh_stats_writes_totals_into_config(store: docstore.Store) -> None:
    await store.sources.upsert(Source(source_name="serde", config={"version": "1.0.200"}))
    await store.documents.upsert_many(
        [
            Document(source_name="serde", doc_path=f"p{i}", content="c", token_count=10)
            for i in range(3)
        ]
    )
    src = await store.sources.refresh_stats("rust", "serde")
    assert src is not None
    assert src.config == {"version": "1.0.200", "total_docs": 3, "total_tokens": 30}
    assert await store.sources.refresh_stats("rust", "nope") is None


async def test_an_unchanged_upsert_racing_a_delete_returns_the_source(
    store: docstore.Store,
) -> None:
    """An upsert that finds the source unchanged reads it back in the same transaction; a
    delete landing in between makes it insert the source again — never a bare
    AssertionError (or None under ``python -O``)."""
    import asyncio

    source = Source(doc_type="t", source_name="r", config={"a": 1})
    await store.sources.upsert(source)
    stop = False
    returned: list[Source] = []

    async def upserter() -> None:
        while not stop:
            returned.append(await store.sources.upsert(source))

    async def churn() -> None:
        for _ in range(300):
            await store.sources.delete("t", "r")
            await store.sources.upsert(source)

    tasks = [asyncio.create_task(upserter()) for _ in range(3)]
    try:
        await churn()
    finally:
        stop = True
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [r for r in results if r is not None] == []  # no upserter raised
    assert returned and all(r.source_name == "r" and r.config == {"a": 1} for r in returned)


async def test_mark_times_naive_as_utc_and_arguments_are_type_checked(
    store: docstore.Store,
) -> None:
    """``mark_checked/mark_populated(at=naive)`` read it as UTC, as :class:`Source` does
    (asyncpg alone takes the process's local zone); wrong argument types are
    ValidationErrors, never stored (``enabled=None``) or sent to the server."""
    import os
    import time
    from datetime import UTC, datetime

    await store.sources.upsert(Source(doc_type="t", source_name="tz"))
    naive = datetime(2024, 1, 1, 12, 0)
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        assert await store.sources.mark_checked("t", "tz", at=naive)
        assert await store.sources.mark_populated("t", "tz", at=naive)
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()
    got = await store.sources.get("t", "tz")
    assert got is not None
    assert got.last_checked == got.last_populated == naive.replace(tzinfo=UTC)
    bad_calls = [
        (store.sources.set_enabled("t", "tz", None), "enabled"),  # type: ignore[arg-type]
        (store.sources.set_enabled("t", "tz", 1), "enabled"),  # type: ignore[arg-type]
        (store.sources.mark_checked("t", "tz", at="yesterday"), "at"),  # type: ignore[arg-type]
        (store.sources.mark_populated("t", "tz", at=1.5), "at"),  # type: ignore[arg-type]
        (store.sources.needing_update(3600), "older_than"),  # type: ignore[arg-type]
        (store.sources.list(None, "yes"), "enabled"),  # type: ignore[arg-type]
    ]
    for call, field in bad_calls:
        with pytest.raises(ValidationError) as info:
            await call
        assert info.value.field == field
    got = await store.sources.get("t", "tz")
    assert got is not None and got.enabled is True


async def test_deleting_a_missing_source_deletes_nothing(store: docstore.Store) -> None:
    """``delete(with_documents=True)`` of a source that has no row returns False and leaves
    the documents of that name alone (``documents.delete_source`` deletes those)."""
    await store.documents.upsert_many(
        [
            Document(doc_type="t", source_name="orphan", doc_path=f"p{i}", content="c")
            for i in range(3)
        ]
    )
    assert await store.sources.delete("t", "orphan", with_documents=True) is False
    assert await store.documents.count("t", "orphan") == 3
