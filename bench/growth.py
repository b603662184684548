"""Benchmark: what the search tuner's growth check costs, and how close its row count comes.

    python bench/growth.py                  # 30,000 documents x 3072 (one row per page)
    python bench/growth.py --rows 60000 --url postgresql://...

The tuner counts the table's live rows, and those with an embedding, in a sample of about
``growth.SAMPLE_PAGES`` pages (``docstore.search.growth.table_rows``) once per cache period per
metric, in the background. Against a baseline in the same process: a bare round trip
(``SELECT 1``) and the exact ``count(*), count(embedding)`` it replaces. Two table shapes:
every row with an embedding (one row per page at 3,072 dimensions), and the same plus as many
rows without one (many rows per page: the uneven pages where a fixed sample can stay off the
count). Timings are medians of
``--repeat`` runs with the table's pages in shared buffers (the warm case).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import common

import docstore
from docstore.core.surface import own_reads
from docstore.search import growth, table_size

_FILL = """
INSERT INTO documents (doc_type, source_name, doc_path, content, embedding)
SELECT 'rust', 's' || (g % 40), $1 || g, repeat('word ', 50),
       CASE WHEN $2 THEN (SELECT array_agg(random()::real - 0.5)
                            FROM generate_series(1, 3072) WHERE g > 0)::vector END
  FROM generate_series(1, $3::int) g
"""

_EXACT = "SELECT count(*) AS rows, count(embedding) AS embedded FROM documents"


async def _median_ms(work: Callable[[], Awaitable[Any]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _measure(store: docstore.Store, shape: str, repeat: int) -> None:
    await store.execute("ANALYZE documents")
    reads = own_reads(store)
    table = await store.fetchrow(f"SELECT {table_size.PAGES} AS pages")
    exact = await store.fetchrow(_EXACT)

    async def sampled() -> growth.Rows:
        return await growth.table_rows(reads, table["pages"])

    estimate = await sampled()
    trip = await _median_ms(lambda: store.fetchval("SELECT 1"), repeat)
    sample = await _median_ms(sampled, repeat)
    count = await _median_ms(lambda: store.fetchrow(_EXACT), repeat)
    print(
        f"{shape}: {exact['rows']:,} rows, {exact['embedded']:,} with an embedding,"
        f" {table['pages']:,} pages; sampled estimate {estimate.rows:,.0f}"
        f" ({(estimate.rows - exact['rows']) / exact['rows']:+.1%}),"
        f" {estimate.embedded:,.0f} with an embedding"
        f" ({(estimate.embedded - exact['embedded']) / exact['embedded']:+.1%});"
        f" sample {sample:.2f} ms = {sample / trip:.1f}x a round trip ({trip:.2f} ms),"
        f" {sample / count:.3f}x the exact counts ({count:.1f} ms)"
    )


async def main() -> None:
    parser = common.table_parser(__doc__, rows=30_000)
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    async with common.emptied_documents(args, "bench/growth.py", "growth") as (_, store):
        await store.execute(_FILL, "e", True, args.rows)
        await _measure(store, "embedded rows only", args.repeat)
        await store.execute(_FILL, "n", False, args.rows)
        await _measure(store, "plus as many rows without embedding", args.repeat)


if __name__ == "__main__":
    asyncio.run(main())
