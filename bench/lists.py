"""Benchmark: searches filtered by an ``$in`` list, run again and again on one connection.

    python bench/lists.py                   # 20,000 documents x 3072, lists of 30 and 300
    python bench/lists.py --rows 50000 --values 30 300 3000 --url postgresql://...

PostgreSQL hashes the list of ``x = ANY($n)`` only in a plan made with the list's values. A
prepared statement (asyncpg prepares and keeps every statement) is planned with its values
five times, then PostgreSQL may switch it to a generic plan, which compares every row with
every value in turn. docstore plans such statements with their values every time
(``docstore/search/statements.py``). For each list length, on a store with a one-connection
pool (so every run meets the same prepared statement): the exact search
``search(q, filter={"metadata.v": {"$in": values}}, exact=True)`` run ``--runs`` times, and as
a baseline in the same process the same SQL as a prepared statement on a bare asyncpg
connection (what any caller meets). Printed: the median of runs 1-5 and of runs 6 on, and
their ratio.

Goal (exit status 1 when missed): docstore's runs from the sixth on take at most 1.25x its
first five, for every list length.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import common
from common import DIM, Goal

import docstore
from docstore.codecs import register_codecs
from docstore.core.pools import VECTOR_SCHEMA
from docstore.search import queries

_FILL = """
INSERT INTO documents (doc_type, source_name, doc_path, content, metadata, embedding)
SELECT 'rust', 's' || (g % 40), 'p' || g, 'word', jsonb_build_object('v', (g % 1000)::text),
       (SELECT array_agg(random()::real - 0.5) FROM generate_series(1, $2) WHERE g > 0)::vector
  FROM generate_series(1, $1::int) g
"""


async def _runs(work: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, float]:
    """Median ms of runs 1-5 and of runs 6 on."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[:5]), statistics.median(times[5:])


async def _measure(url: str, values: int, runs: int) -> Goal:
    flt = {"metadata.v": {"$in": [str(i) for i in range(values)]}}
    async with docstore.connect(url, pool_min_size=1, pool_max_size=1) as store:
        query = (await store.fetchrow("SELECT embedding FROM documents LIMIT 1"))["embedding"]
        first, later = await _runs(lambda: store.search(query, filter=flt, exact=True), runs)
    sql, params = queries.vector_search_sql(query, dim=DIM, filter=flt)
    conn = await asyncpg.connect(url)
    try:
        await register_codecs(conn, await conn.fetchval(VECTOR_SCHEMA))  # pgvector's schema
        statement = await conn.prepare(sql)
        raw_first, raw_later = await _runs(lambda: statement.fetch(*params), runs)
    finally:
        await conn.close()
    print(
        f"$in of {values:>5} values: docstore {first:7.1f} ms runs 1-5, {later:7.1f} ms from"
        f" run 6 ({later / first:.2f}x);  bare prepared statement {raw_first:7.1f} ms,"
        f" {raw_later:7.1f} ms ({raw_later / raw_first:.2f}x)"
    )
    name = f"docstore, {values}-value $in: runs from the sixth <= 1.25x the first five"
    return (name, later / first <= 1.25, f"{later / first:.2f}x")


async def main() -> None:
    parser = common.table_parser(__doc__, rows=20_000)
    parser.add_argument("--values", type=int, nargs="+", default=[30, 300])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    async with common.emptied_documents(args, "bench/lists.py", "lists") as (url, store):
        await store.execute(_FILL, args.rows, DIM)
        await store.execute("VACUUM ANALYZE documents")
        goals = [await _measure(url, n, args.runs) for n in args.values]
    print()
    raise SystemExit(0 if common.print_goals(goals) else 1)


if __name__ == "__main__":
    asyncio.run(main())
