"""Benchmark: one-scope searches by scope size — exact scan vs halfvec scan vs filtered HNSW.

    python bench/scope.py                   # sources of 50 .. 10,000 docs, 20,000 in all

Where ``HALFVEC_SCOPE_ROWS`` comes from. One table of 20,000 clustered 3,072-dim documents
holds sources of 50, 100, 300, 1,000, 3,000 and 10,000 documents (the rest in one more
source), with the HNSW index. For each source size, the same queries (stored vectors, top 5)
run interleaved through the three SQL shapes docstore can use for a one-source search:

  exact    every row of the source, distances on the full vectors (TOAST reads)
  halfvec  every row of the source ranked on embedding_half (in the row), best
           limit x 4 re-ranked exactly
  ann      the HNSW index with the source as a filter (iterative scan, forced onto the
           index as docstore does for large scopes), 40 candidates re-ranked exactly

It prints p50 ms per shape, each shape's median per-query ratio to exact, and recall@5
against exact.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import common
import numpy as np
from common import DIM

import docstore
from docstore import Document
from docstore.search import queries
from docstore.search.api import _ann_fetch, _fetch
from docstore.search.planner import HALFVEC_SCOPE_ROWS

SIZES = (50, 100, 300, 1000, 3000, 10000)


def work(shape: str, q: np.ndarray, source: str, limit: int) -> Any:
    flt = {"source_name": source}
    if shape == "exact":
        return _fetch(*queries.vector_search_sql(q, dim=DIM, limit=limit, filter=flt))
    if shape == "halfvec":
        return _fetch(
            *queries.vector_search_sql(
                q, dim=DIM, limit=limit, filter=flt, candidates=limit * 4,
                candidate_source="halfvec",
            )
        )  # fmt: skip
    sql, params = queries.vector_search_sql(q, dim=DIM, limit=limit, filter=flt, candidates=40)
    return _ann_fetch(sql, params, 200, force_index=True, alone=False)


async def run(args: argparse.Namespace) -> None:
    total = max(args.rows, sum(SIZES) + 1)
    print(common.machine_line("bench/scope.py"))
    async with common.bench_server(prefix="docstore-bench-scope-") as server:
        url = await server.create_database("bench")
        async with docstore.connect(url) as store:
            points = common.clustered(total, 100, 0.5, 1, unit_centres=False)
            names = [f"s{n}" for n in SIZES for _ in range(n)]
            names += ["rest"] * (total - len(names))
            order = np.random.default_rng(2).permutation(total)
            await store.documents.upsert_many(
                Document(
                    source_name=names[i],
                    doc_path=f"{names[i]}/{i}",
                    content=f"document {i}",
                    embedding=points[j],
                )
                for i, j in enumerate(order)
            )
            await store.execute("VACUUM ANALYZE documents")
            await store.create_vector_index()
            print(
                f"{total} documents x {DIM}, {args.queries} queries per source, top"
                f" {args.limit}; p50 ms (median per-query ratio to exact) recall@{args.limit}"
            )
            print(f"  (docstore uses halfvec for scopes <= {HALFVEC_SCOPE_ROWS} rows)")
            for size in SIZES:
                source = f"s{size}"
                vectors = await store.fetch(
                    "SELECT embedding FROM documents WHERE source_name = $1"
                    " ORDER BY random() LIMIT $2",
                    source,
                    args.queries,
                )
                times: dict[str, list[float]] = {s: [] for s in ("exact", "halfvec", "ann")}
                found = dict.fromkeys(times, 0)
                for rep in range(2):  # the first round warms caches and plans
                    for i, row in enumerate(vectors):
                        shapes = list(times)
                        ids = {}
                        for shape in shapes[i % 3 :] + shapes[: i % 3]:
                            job = work(shape, row["embedding"], source, args.limit)
                            started = time.perf_counter()
                            records = await store.run(job, stateless=True)
                            if rep:
                                times[shape].append((time.perf_counter() - started) * 1000)
                            ids[shape] = {r["id"] for r in records}
                        if rep:
                            for shape in times:
                                found[shape] += len(ids[shape] & ids["exact"])
                base = times["exact"]
                cells = []
                for shape, t in times.items():
                    ratio = common.median_ratio(t, base)
                    recall = found[shape] / found["exact"]
                    cells.append(
                        f"{shape} {statistics.median(t):6.2f} ({ratio:4.2f}x) {recall:.3f}"
                    )
                print(f"  {size:>6} docs   " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--limit", type=int, default=5)
    asyncio.run(run(parser.parse_args()))
    sys.exit(0)
