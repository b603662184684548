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
