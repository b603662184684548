"""Full-text and hybrid search: ``websearch_to_tsquery`` ranking, and Reciprocal Rank Fusion.

:class:`TextSearch` runs :meth:`~TextSearch.search_text` (the GIN index of
``create_text_index`` makes it fast) and :meth:`~TextSearch.hybrid_search`, which runs a
vector search (:class:`~docstore.search.vector.VectorSearch`) and a text search concurrently
and fuses their rankings. A part of :class:`docstore.Store`, which delegates both here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from docstore.core.surface import Queries
from docstore.core.together import together
from docstore.metrics import Metrics, timed
from docstore.models import flag, query_vector
from docstore.search import queries, text_sql
from docstore.search.filters import build_filter
from docstore.search.results import Hit, SearchResults
from docstore.search.scopes import shard
from docstore.search.statements import fetch
from docstore.search.vector import VectorSearch, _hit


class TextSearch:
    """``store.search_text`` and ``store.hybrid_search``."""

    def __init__(self, db: Queries, vector: VectorSearch) -> None:
        self._db = db
        self._vector = vector

    @property
    def _metrics(self) -> Metrics:
        return self._db._metrics

    @timed("search_text")
    async def search_text(
        self,
        text: str,
        *,
        doc_type: str | None = None,
        source_name: str | None = None,
        filter: Mapping[str, Any] | None = None,
        limit: int = 10,
        include_embedding: bool = False,
    ) -> SearchResults:
        """Full-text search over content, best ``ts_rank_cd`` first.

        ``text`` uses web-search syntax (``websearch_to_tsquery``, English stemming):
        ``async runtime``, ``"exact phrase"``, ``tokio or async-std``, ``spawn -blocking``.
        Fast with the GIN index of :meth:`create_text_index` (the first 100,000 characters
        of each document are indexed); without it PostgreSQL tokenizes every document for
        every query, which is only reasonable for small tables.

        ``text`` has at most 256 words and 4,096 characters
        (:func:`~docstore.search.text_sql.check_text_query`: ranking time grows with every
        word, and PostgreSQL's query parser fails at ~15,000); longer text is refused with
        :class:`ValidationError` before anything is sent.
        """
        started = time.perf_counter()
        flag(include_embedding, "include_embedding")
        sql, params = text_sql.text_search_sql(
            text,
            limit=limit,
            filter=queries.scoped_filter(doc_type, source_name, filter),
            include_embedding=include_embedding,
        )
        records = await self._db.run(
            fetch(sql, params), stateless=True, read=True, shard=shard(self._db, source_name)
        )
        hits = [_hit(r, text_rank=r["rank"]) for r in records]
        return SearchResults(hits, mode="text", elapsed_ms=(time.perf_counter() - started) * 1000)

    @timed("hybrid_search")
    async def hybrid_search(
        self,
        text: str,
        embedding: Any,
        *,
        doc_type: str | None = None,
        source_name: str | None = None,
        filter: Mapping[str, Any] | None = None,
        limit: int = 10,
        k: int = 60,
        candidates: int | None = None,
        metric: str = "cosine",
        exact: bool | None = None,
        include_embedding: bool = False,
    ) -> SearchResults:
        """Vector and full-text search fused by Reciprocal Rank Fusion.

        Each ranking contributes ``1 / (k + rank)`` for its top ``candidates`` (default
        ``max(5 × limit, 50)``, at most 1,000; fewer than ``limit`` give at most ``2 ×
        candidates`` hits); hits carry ``score``, ``ranks`` and, where
        found, their ``similarity`` and ``text_rank``. Both searches run concurrently, after
        both inputs were validated: ``text`` as in :meth:`search_text`, ``embedding`` as in
        :meth:`search` (:class:`ValidationError` before anything is sent).
        """
        started = time.perf_counter()
        text_sql.check_text_query(text)
        embedding = query_vector(embedding, self._db.embedding_dim)
        queries.metric(metric)
        build_filter(queries.scoped_filter(doc_type, source_name, filter))
        limit = queries.check_limit(limit)
        k = text_sql.check_k(k)
        flag(exact, "exact", optional=True)
        flag(include_embedding, "include_embedding")
        pool = queries.check_limit(
            min(max(5 * limit, 50), queries.MAX_LIMIT) if candidates is None else candidates,
            "candidates",
        )
        common: dict[str, Any] = {
            "doc_type": doc_type,
            "source_name": source_name,
            "filter": filter,
            "limit": pool,
            "include_embedding": include_embedding,
        }
        semantic, keyword = await together(  # one failing cancels the other
            self._vector.search(embedding, metric=metric, exact=exact, **common),
            self.search_text(text, **common),
        )
        found: dict[int, Hit] = {h.id: h for h in keyword if h.id is not None}
        found.update({h.id: h for h in semantic if h.id is not None})
        text_ranks = {h.id: h.text_rank for h in keyword}
        fused = text_sql.reciprocal_rank_fusion({"vector": semantic.ids, "text": keyword.ids}, k=k)
        # rows read back are built as every search builds them (_hit: never validated again;
        # model_copy(update=) would re-check a stored key against the write-time limits)
        hits = [
            _hit(dict(found[id_]), score=score, ranks=ranks, text_rank=text_ranks.get(id_))
            for id_, score, ranks in fused[:limit]
        ]
        return SearchResults(
            hits,
            mode="hybrid",
            metric=semantic.metric,
            index_name=semantic.index_name,
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )
