"""docstore.sync: the blocking facade, in a plain script and under a running event loop."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import docstore
import docstore.sync
from docstore import Document, ValidationError


def docs(n: int) -> list[Document]:
    rng = np.random.default_rng(0)
    return [
        Document(
            source_name="s",
            doc_path=f"p{i}",
            content=f"async runtime {i}",
            embedding=rng.normal(size=3072),
        )
        for i in range(n)
    ]


def test_sync_store_without_await(database_url: str) -> None:
    with docstore.sync.connect(database_url) as store:
        written = docs(30)
        result = store.documents.upsert_many(written)
        assert result.inserted == 30
        assert store.documents.count() == 30
        by_id = [r["doc_path"] for r in store.fetch("select doc_path from documents order by id")]
        assert [d.doc_path for d in store.documents.iter(batch_size=7)] == by_id
        hits = store.search(written[3].embedding, limit=3)
        assert isinstance(hits, docstore.SearchResults) and hits[0].doc_path == "p3"
        assert store.search_text("runtime", limit=5).mode == "text"
        assert store.hybrid_search("runtime 3", written[3].embedding, limit=2)[0].doc_path == "p3"
        assert store.create_vector_index().usable
        assert store.evaluate_recall(sample=5, limit=3).recall == pytest.approx(1.0)
        assert store.fetchval("select count(*) from documents") == 30
        assert store.health().ok
        with pytest.raises(ValidationError, match="1536 dimensions"):
            store.search(np.ones(1536))
        assert repr(store).startswith("<SyncStore <Store url=")
    assert not any(t.name == "docstore-sync" and t.is_alive() for t in threading.enumerate())


async def test_sync_store_works_inside_a_running_loop_like_jupyter(database_url: str) -> None:
    store = docstore.sync.connect(database_url)
    try:
        store.documents.upsert_many(docs(3))
        assert store.documents.count() == 3
    finally:
        store.close()
    store.close()  # idempotent


def test_connection_errors_surface_and_leave_no_thread(empty_database_url: str) -> None:
    before = threading.active_count()
    with pytest.raises(docstore.DatabaseUnavailableError):
        docstore.sync.connect(empty_database_url + "_missing", retry_attempts=1)
    assert threading.active_count() == before
