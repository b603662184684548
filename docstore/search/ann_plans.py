"""Whether PostgreSQL plans an unfiltered ANN statement on the HNSW index by itself.

:class:`IndexPlans` asks with ``EXPLAIN`` (no execution) and keeps the answer for
:data:`~docstore.search.indexes.INDEX_CACHE_SECONDS` per statement shape; searches and
calibration trials (:meth:`docstore.search.vector.VectorSearch._ann_records`) then run the
statement alone, in one round trip, or under ``enable_seqscan = off``. Only a scan of
``documents`` on one of its HNSW indexes counts: an ANN statement has other index scans (the
``pg_class`` lookup of :data:`~docstore.search.queries.SCAN_LIMITS`) whatever it does with
``documents``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import asyncpg

from docstore.core.surface import Queries
from docstore.search.filter_size import _nodes, _plan
from docstore.search.indexes import INDEX_CACHE_SECONDS, SearchIndexes
from docstore.search.kept import Kept

HNSW_INDEX_PREFIX = "documents_embedding_hnsw_"
"""docstore's own HNSW indexes (:func:`docstore.search.queries.vector_index_name`)."""
CACHE_ENTRIES = 64
"""Statement shapes whose answer is kept (metric, columns, ``limit`` and candidates)."""
_INDEX_SCANS = {"Index Scan", "Index Only Scan"}


class IndexPlans:
    """The cached answers of one store (see the module docstring)."""

    def __init__(self, db: Queries, indexes: SearchIndexes) -> None:
        self._db = db
        self._indexes = indexes
        self._cache: Kept[tuple[Any, ...], bool] = Kept(CACHE_ENTRIES, INDEX_CACHE_SECONDS)

    async def takes_the_index(self, sql: str, params: list[Any]) -> bool:
        """Whether PostgreSQL plans this ANN statement (``queries.ann_search_sql``, unfiltered)
        on an HNSW index of ``documents`` by itself. It does on large tables; on small or
        not yet analyzed ones its cost model (which does not count reading 12 KB vectors from
        TOAST) prefers a scan and sort of every row, several times slower. Keyed by the
        statement's text, ``limit`` and candidates (``$2``, ``$3``): the answer differs
        between metrics and between a list of 20 and one of 1,000."""
        key = (sql, *params[1:3])
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        names = {i.name for i in await self._indexes.vector_indexes(refresh=False)}
        explained = await self._db.run(_explain(sql, params), read=True)
        return self._cache.put(key, uses_hnsw(explained, names))

    def forget(self) -> None:
        """Drop every kept answer (the next ANN search asks again)."""
        self._cache.clear()


def uses_hnsw(explained: Any, names: Collection[str]) -> bool:
    """Whether an ``EXPLAIN (FORMAT JSON)`` answer scans ``documents`` on an HNSW index: one
    named in ``names`` (the indexes ``vector_indexes()`` lists) or one of docstore's own."""
    return any(_on_hnsw(node, names) for node in _nodes(_plan(explained)))


def _on_hnsw(node: Mapping[str, Any], names: Collection[str]) -> bool:
    name = node.get("Index Name")
    return (
        node.get("Node Type") in _INDEX_SCANS
        and node.get("Relation Name") == "documents"
        and isinstance(name, str)
        and (name in names or name.startswith(HNSW_INDEX_PREFIX))
    )


def _explain(sql: str, params: list[Any]) -> Any:
    async def work(conn: asyncpg.Connection) -> Any:
        return await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *params)

    return work
