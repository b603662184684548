"""How large a ``doc_type``/``source_name`` scope is, for the scope rule of
:func:`docstore.search.planner.halfvec_scope` — and on which Citus worker a one-source
search runs (:func:`shard`).

A scope's embedded rows are counted up to ``HALFVEC_SCOPE_ROWS`` + 1 (rows with no embedding
never match, as in ``queries.filter_count_sql``); past that its size is the planner's estimate
(at least the count; ``math.inf`` on a Citus cluster, whose coordinator cannot estimate the
shards). A count capped higher made every scope of a large table look like a small share of
it (review 91: a whole-table scope of 420,000 rows taken for 5 %). The estimate of
``doc_type = $1 AND source_name = $2`` rests on the extended statistics of migration 9 (the
pairs' most common values and the dependency between the columns): taken as independent, a
crate that is a whole doc_type was shrunk by that doc_type's share (review 94); each
condition estimated alone, a source name several doc_types use counted all of their rows
(review 95). Migration 9 analyzes the two columns itself; while its statistics hold no data
(a store that does not migrate, on an older schema), each condition is estimated alone and
the smaller kept, which sizes a crate within one doc_type right (review 96).
"""

from __future__ import annotations

import math
from typing import Any, cast

import asyncpg

from docstore.core.surface import Queries
from docstore.search import planner, queries
from docstore.search.filter_size import CACHE_ENTRIES, planned_rows
from docstore.search.filters import build_filter
from docstore.search.kept import Kept
from docstore.search.planner import Scope

SCOPE_CACHE_ENTRIES = CACHE_ENTRIES
"""Scopes whose size is kept at once (the oldest go first)."""
_EMBEDDED = "SELECT 1 FROM documents d WHERE d.embedding IS NOT NULL"
_STATISTICS_READY = (
    "SELECT EXISTS (SELECT 1 FROM pg_stats_ext"
    " WHERE statistics_name = 'documents_scope_statistics' AND most_common_vals IS NOT NULL)"
)


async def cached_scope(
    db: Queries,
    cache: Kept[tuple[str | None, str | None], Scope],
    doc_type: str | None,
    source_name: str | None,
) -> Scope:
    """:func:`count_scope`, kept briefly in ``cache`` (at most :data:`SCOPE_CACHE_ENTRIES`
    scopes)."""
    key = (doc_type, source_name)
    cached = cache.get(key)
    if cached is not None:
        return cached
    return cache.put(key, await count_scope(db, doc_type, source_name))


async def count_scope(db: Queries, doc_type: str | None, source_name: str | None) -> Scope:
    """A scope's embedded rows (module docstring) and the table's ``reltuples``; on the
    source's Citus worker like the search itself (there ``documents`` is the shell: 0)."""
    where, params = build_filter(queries.scoped_filter(doc_type, source_name, None), first_param=2)
    scoped = f"{_EMBEDDED} AND {where} LIMIT $1"
    sql = (
        f"SELECT (SELECT count(*) FROM ({scoped}) s) AS rows,"
        " (SELECT reltuples FROM pg_class WHERE oid = 'documents'::regclass) AS total"
    )
    cap, estimate = planner.HALFVEC_SCOPE_ROWS + 1, not db.distributed
    singles = []
    for column, value in (("doc_type", doc_type), ("source_name", source_name)):
        if value is not None:
            one_where, one_params = build_filter({column: value}, first_param=2)
            singles.append((f"{_EMBEDDED} AND {one_where} LIMIT $1", [cap, *one_params]))

    async def work(conn: asyncpg.Connection) -> Scope:
        row = await conn.fetchrow(sql, cap, *params)
        assert row is not None
        rows: float = row["rows"]
        if rows >= cap:  # past the count: the share decides, so the planner's estimate
            if not estimate:
                return Scope(math.inf, row["total"])
            rows = max(rows, await _estimate(conn, scoped, [cap, *params], singles))
        return Scope(rows, row["total"])

    return cast(Scope, await db.run(work, stateless=True, read=True, shard=shard(db, source_name)))


async def _estimate(
    conn: asyncpg.Connection, sql: str, params: list[Any], singles: list[tuple[str, list[Any]]]
) -> float:
    """The planner's estimate of the rows of ``sql`` (the count's scan; the ``LIMIT`` above
    it does not lower the scan's estimate) — or, while migration 9's statistics hold no data
    (a store that does not migrate, on an older schema), the smaller of each condition's
    alone (``singles``), which sizes a crate within one doc_type right."""
    if len(singles) > 1 and not await conn.fetchval(_STATISTICS_READY):
        return min([await _planned(conn, one, one_params) for one, one_params in singles])
    return await _planned(conn, sql, params)


async def _planned(conn: asyncpg.Connection, sql: str, params: list[Any]) -> float:
    return planned_rows(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params))


def shard(db: Queries, source_name: str | None) -> str | None:
    """The source whose Citus worker runs a search scoped to ``source_name``
    (:mod:`docstore.core.shards`): None — through the coordinator, or a single node — unless
    the database is distributed and ``DOCSTORE_CITUS_ROUTE_SEARCHES`` is on."""
    if source_name is None or not db.distributed or not db.settings.citus_route_searches:
        return None
    return source_name
