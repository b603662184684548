"""How many documents a search's filter matches, measured on the data — for the filter rule
of :func:`docstore.search.planner.filter_mode`.

One round trip on one connection (:meth:`FilterSizes.size`):

* ``EXPLAIN`` of the bounded count (:func:`~docstore.search.queries.filter_count_sql`): no
  ``Seq Scan`` in the plan means PostgreSQL reaches the filter's rows through an index (the
  B-trees on ``doc_type``/``source_name``, the GIN index on ``metadata`` for ``@>``);
* such a filter is counted on that index, at most
  :data:`~docstore.search.planner.HALFVEC_FILTER_ROWS` + 1 rows (past the bound only the
  planner's estimate matters: the rule is the share of the table then);
* any other filter's share of the table is estimated from a page sample
  (:func:`~docstore.search.queries.filter_sample_sql`, ~:data:`SAMPLE_PAGES` pages: with
  3,072 dimensions the in-row ``embedding_half`` fills most of a page, so ~1,000 rows — a
  share of 1 % within ±0.6 %, enough to tell 1 % from 5 %; smaller vectors put more rows in
  a page, so a finer estimate for the same reads).

Each filter's size is kept for :data:`~docstore.search.indexes.INDEX_CACHE_SECONDS`, like a
scope's (keyed by its SQL and values, so ``doc_type``/``source_name`` shortcuts count), at most
:data:`CACHE_ENTRIES` filters. On a Citus cluster the coordinator's ``documents`` is an empty
shell that neither counts nor samples the shards: filters stay unsized there (the planner's
previous behaviour: an ANN plan, the access path left to PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import asyncpg

from docstore.core.surface import Queries
from docstore.search import planner, queries, table_size
from docstore.search.indexes import INDEX_CACHE_SECONDS
from docstore.search.kept import Kept
from docstore.search.planner import FilterSize
from docstore.search.statements import planned_for

SAMPLE_PAGES = 1000
"""Heap pages a filter no index serves is sampled on (all of a smaller table)."""
COUNT_MS = 100
"""How long counting an index-served filter may take before the page sample sizes it
instead: a cap on what a sizing can add to one search in 30 s (bench/filtered.py's whole
halfvec search of a 5,000-row filter took 19.5 ms p50 at 50,000 documents, its count less)."""
CACHE_ENTRIES = 1000
"""Filters whose size is kept at once (the oldest go first)."""


class FilterSizes:
    """Sizes of the filters searches ran with, measured once per filter per
    :data:`INDEX_CACHE_SECONDS` (see the module docstring). ``measured`` counts the sizings
    run, for tests and for anyone asking how often the cache missed."""

    def __init__(self, db: Queries) -> None:
        self._db = db
        self._cache: Kept[bytes, FilterSize] = Kept(CACHE_ENTRIES, INDEX_CACHE_SECONDS)
        self.measured = 0

    async def size(self, flt: Mapping[str, Any]) -> FilterSize | None:
        """The size of ``flt`` (the whole filter, shortcuts folded in), or None on a Citus
        cluster (not measurable from the coordinator)."""
        if self._db.distributed:
            return None
        count = queries.filter_count_sql(flt, planner.HALFVEC_FILTER_ROWS + 1)
        key = hashlib.blake2b(repr(count).encode(), digest_size=16).digest()  # big $in lists
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        work = planned_for(*count, _measure(flt, *count))  # its sample binds the same lists
        size: FilterSize = await self._db.run(work, stateless=True, read=True)
        self.measured += 1
        return self._cache.put(key, size)

    def forget(self) -> None:
        """Drop every kept size (the next search with each filter measures it again)."""
        self._cache.clear()


def _measure(flt: Mapping[str, Any], sql: str, params: list[Any]) -> Any:
    async def work(conn: asyncpg.Connection) -> FilterSize:
        plan = _plan(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *params))
        table = await conn.fetchrow(table_size.TABLE_SIZE)
        table_rows = float(table["rows"]) if table is not None else -1.0
        counted = None if _seq_scan(plan) else await _bounded_count(conn, sql, params)
        if counted is not None:
            rows = counted
            if rows > planner.HALFVEC_FILTER_ROWS:
                rows = max(rows, _planned_rows(plan))
            return FilterSize(True, rows, table_rows)
        percent = sample_percent(table["pages"] if table is not None else 0)
        sample_sql, sample_params = queries.filter_sample_sql(flt, percent)
        sample = await conn.fetchrow(sample_sql, *sample_params)
        hits, seen = (sample["hits"], sample["seen"]) if sample is not None else (0, 0)
        if table_rows <= 0:  # never analyzed: the sample's rows scaled to the table
            table_rows = seen * 100.0 / percent
        return FilterSize(False, table_rows * hits / seen if seen else 0.0, table_rows)

    return work


async def _bounded_count(conn: asyncpg.Connection, sql: str, params: list[Any]) -> float | None:
    """The count, or None if it ran past :data:`COUNT_MS`: an index that serves only part of
    the filter (``doc_type`` plus a ``$like``) leaves the rest to be checked row by row, and
    ``LIMIT`` bounds the rows counted, not the rows read; the sample sizes such a filter."""
    try:
        async with conn.transaction():  # a savepoint inside a caller's transaction
            await conn.execute(f"SET LOCAL statement_timeout = {int(COUNT_MS)}")
            return float(await conn.fetchval(sql, *params))
    except asyncpg.QueryCanceledError:
        return None


def sample_percent(pages: float) -> float:
    """The ``TABLESAMPLE SYSTEM`` percentage reading about :data:`SAMPLE_PAGES` of the
    table's ``pages`` (100: all of them, for a small table)."""
    return min(100.0, 100.0 * SAMPLE_PAGES / max(float(pages), 1.0))


def _plan(explained: Any) -> dict[str, Any]:
    """The top plan node of an ``EXPLAIN (FORMAT JSON)`` answer (text, or decoded by a json
    codec)."""
    data = json.loads(explained) if isinstance(explained, str) else explained
    return dict(data[0]["Plan"])


def _nodes(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [node, *(n for child in node.get("Plans", ()) for n in _nodes(child))]


def _seq_scan(plan: Mapping[str, Any]) -> bool:
    """Whether the plan reads ``documents`` sequentially (no index serves the filter)."""
    return any(n.get("Node Type") == "Seq Scan" for n in _nodes(plan))


def planned_rows(explained: Any) -> float:
    """The planner's estimate of the rows of ``documents`` in an ``EXPLAIN (FORMAT JSON)``
    answer."""
    return _planned_rows(_plan(explained))


def _planned_rows(plan: Mapping[str, Any]) -> float:
    """The planner's estimate of the filter's rows: its scan of ``documents`` (the ``LIMIT``
    above it does not lower a child's estimate)."""
    scans = [n for n in _nodes(plan) if n.get("Relation Name") == "documents"]
    return max((float(n.get("Plan Rows", 0)) for n in scans), default=0.0)
