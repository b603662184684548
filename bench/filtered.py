"""Benchmark: filtered vector searches on a large table, by how selective the filter is.

    python bench/filtered.py                       # 50,000 docs x 3072, 30 queries a filter
    python bench/filtered.py --rows 20000 --queries 20

pgvector's iterative HNSW scan stops after ``hnsw.max_scan_tuples`` (20,000) index tuples, so
a filter that matches a small share of a large table can leave the index scan with fewer
candidates than asked for. docstore then ranks the filtered rows directly (mode ``halfvec``:
every matching row on ``embedding_half``, the best re-ranked exactly) instead of returning
too few hits. Before either, docstore sizes each filter on the data (``search/filter_size.py``:
counted on the filter's own index, or sampled) and ranks a selective filter's rows on
``embedding_half`` — or exactly, for a handful — without the HNSW index at all
(``planner.filter_mode``). This script shows what each filter costs and whether its hits are
right.

One table of ``--rows`` clustered documents (100 random unit centres, noise of norm 1.0)
carries ``metadata.tag``: ``t10`` on 10 % of the rows, ``t1`` on 1 %, ``t0.1`` on 0.1 %,
``t0.01`` on 0.01 %, independent of the clusters (``rest`` elsewhere). After
``create_vector_index()``, for each tag, ``--queries`` queries (stored vectors plus noise of
norm 0.3) run ``search(q, filter={"metadata.tag": tag})`` (the default plan), interleaved
with the same search with ``exact=True`` (every matching row on the full vectors: the
ground truth). Printed per filter: matching rows, the modes the default search used, p50 and
p95 latency of both, and recall@10 of the default against the exact search.

Goal (exit status 1 when missed): recall@10 ≥ 0.98 for every filter — a selective filter
must not return too few or wrong hits.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
from collections.abc import Iterator
from typing import Any

import common
import numpy as np

import docstore
from docstore import Document

TAGS = (("t10", 1000), ("t1", 100), ("t0.1", 10), ("t0.01", 1))  # rows per 10,000
LIMIT = 10


def tag_of(i: int) -> str:
    r, low = i % 10_000, 0
    for tag, per in reversed(TAGS):  # the rarest first: the shares do not overlap
        if low <= r < low + per:
            return tag
        low += per
    return "rest"


def documents(corpus: common.ClusteredStream) -> Iterator[Document]:
    for i, vector in enumerate(corpus.vectors()):
        yield Document(
            doc_type="bench",
            source_name=f"source{i % 50}",
            doc_path=f"doc/{i}",
            content=common.filler_text(i, 20),
            embedding=vector,
            metadata={"tag": tag_of(i)},
        )


async def one_filter(
    store: docstore.Store, corpus: common.ClusteredStream, tag: str, n: int
) -> dict[str, Any]:
    rows = [i for i in range(len(corpus)) if tag_of(i) == tag]
    rng = np.random.default_rng(len(tag))
    picked = rng.choice(len(corpus), size=n, replace=False)
    queries = common.perturbed(corpus.take(picked), 0.3 / np.sqrt(common.DIM), seed=7)
    where = {"metadata.tag": tag}
    modes: collections.Counter[str] = collections.Counter()
    default_ms: list[float] = []
    exact_ms: list[float] = []
    recall: list[float] = []
    for q in queries:
        found, took = await common.clock(store.search(q, filter=where, limit=LIMIT))
        truth, took_exact = await common.clock(
            store.search(q, filter=where, limit=LIMIT, exact=True)
        )
        modes[found.mode] += 1
        default_ms.append(took * 1000)
        exact_ms.append(took_exact * 1000)
        want = {h.id for h in truth}
        recall.append(len(want & {h.id for h in found}) / len(want) if want else 1.0)
    return {
        "tag": tag,
        "rows": len(rows),
        "modes": dict(modes),
        "default_p50_ms": statistics.median(default_ms),
        "default_p95_ms": common.percentile(default_ms, 95),
        "exact_p50_ms": statistics.median(exact_ms),
        "exact_p95_ms": common.percentile(exact_ms, 95),
        "recall": statistics.fmean(recall),
        "worst": min(recall),
    }


async def main(args: argparse.Namespace) -> bool:
    print(common.machine_line("bench/filtered.py"))
    corpus = common.ClusteredStream(
        args.rows, clusters=100, sigma=1.0 / np.sqrt(common.DIM), seed=3
    )
    async with common.bench_server(args.url) as server:
        url = await server.database("filtered")
        async with docstore.connect(url) as store:
            print(await common.server_line(store))
            result, loaded = await common.clock(store.documents.upsert_many(documents(corpus)))
            await store.execute("VACUUM ANALYZE documents")
            index, built = await common.clock(store.create_vector_index())
            print(
                f"{result.inserted:,} documents loaded in {loaded:.1f} s; {index.name} built in"
                f" {built:.1f} s\n"
            )
            print(
                "filter           rows  modes of search()        search() p50 / p95 ms"
                "   exact p50 / p95 ms   recall@10 (worst)"
            )
            figures = []
            for tag, _ in TAGS:
                f = await one_filter(store, corpus, tag, args.queries)
                figures.append(f)
                modes = ", ".join(f"{m} {c}" for m, c in sorted(f["modes"].items()))
                print(
                    f"tag = {tag:7s} {f['rows']:7,}  {modes:24s}"
                    f" {f['default_p50_ms']:8.1f} / {f['default_p95_ms']:7.1f}"
                    f"   {f['exact_p50_ms']:8.1f} / {f['exact_p95_ms']:7.1f}"
                    f"   {f['recall']:.3f} ({f['worst']:.2f})"
                )
    goals = [
        (
            f"filter tag = {f['tag']} ({f['rows']:,} rows): recall@10 >= 0.98",
            f["recall"] >= 0.98,
            f"{f['recall']:.3f}",
        )
        for f in figures
    ]
    ok = common.print_goals(goals)
    if args.json:
        common.write_json(args.json, {"rows": args.rows, "filters": figures})
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--url", help="a PostgreSQL + pgvector database (emptied) instead")
    parser.add_argument("--json", help="write the figures to this file")
    sys.exit(0 if asyncio.run(main(parser.parse_args())) else 1)
