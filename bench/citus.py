"""Benchmark: docstore on a Citus cluster against a single node (issue 16).

    python bench/citus.py                       # cluster made by scripts/citus-cluster, 10,000 docs
    python bench/citus.py --citus-url URL       # an existing coordinator (its database is emptied)
    python bench/citus.py --rows 20000 --sources 200 --queries 100

Both sides get the same clustered corpus (``--clusters`` random unit centres, noise of norm
1.0, normalised; ``--sources`` sources of equal size), loaded by ``upsert_many`` (rows/s),
then ``create_vector_index(calibrate=False)`` and ``ANALYZE``. Then, interleaved query by
query (so the machine's drift hits both alike):

* one-source search (default ``search(q, source_name=...)``): p50 on each side and the
  median per-query ratio cluster / single node (goal: ≤ 1.5×);
* unscoped ANN search (default ``search(q)``): p50 and recall@10 against numpy's exact top 10
  on each side (recall parity: the cluster at most 0.02 below the single node);
* unscoped exact search: p50, and whether the top 10 are identical on both sides.

The single node is a plain database (no Citus in it) on the coordinator's server, so both
sides run the same PostgreSQL build and settings (``--single-url`` for another server; its
database ``citus_bench_single`` is replaced). The cluster is a coordinator and two workers on
this machine: its figures include three PostgreSQL servers sharing the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import common
import numpy as np
from common import DIM, Goal

import docstore

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "citus-cluster"
RESET_SQL = """
DROP TABLE IF EXISTS documents, document_sources, source_population_jobs,
    docstore_migration_checkpoints, docstore_search_calibration, docstore_search_queries,
    docstore_schema_version CASCADE;
DROP FUNCTION IF EXISTS update_updated_at_column() CASCADE;
"""


@asynccontextmanager
async def citus_cluster(url: str | None) -> AsyncIterator[str]:
    """``url``, or a cluster ``scripts/citus-cluster`` makes in a temporary directory."""
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="docstore-citus-bench-") as tmp:
        os.chmod(tmp, 0o755)  # the postgres OS user runs the nodes
        env = {**os.environ, "CITUS_BASE_PORT": os.environ.get("CITUS_BASE_PORT", "57830")}
        up = await asyncio.to_thread(
            subprocess.run, [str(SCRIPT), "up", tmp], capture_output=True, text=True, env=env
        )
        if up.returncode != 0:
            sys.exit(f"scripts/citus-cluster up failed:\n{up.stderr[-4000:]}")
        try:
            yield up.stdout.strip().splitlines()[-1]
        finally:
            await asyncio.to_thread(
                subprocess.run, [str(SCRIPT), "down", tmp], capture_output=True, env=env
            )


def documents(points: np.ndarray, sources: int) -> list[docstore.Document]:
    per = len(points) // sources
    return [
        docstore.Document(
            source_name=f"crate{i // per}",
            doc_path=f"crate{i // per}/{i}.html",
            content=common.filler_text(i),
            embedding=points[i],
            token_count=i % 500,
        )
        for i in range(len(points))
    ]


def exact_top(points: np.ndarray, q: np.ndarray, rows: np.ndarray | None = None) -> list[int]:
    """Row numbers of the exact cosine top 10 (``points`` are unit vectors)."""
    pool = points if rows is None else points[rows]
    order = np.argsort(-(pool @ q), kind="stable")[:10]
    return [int(i) if rows is None else int(rows[i]) for i in order]


def row_of(path: str) -> int:
    return int(path.rsplit("/", 1)[1].split(".")[0])


async def load(store: docstore.Store, docs: Sequence[docstore.Document]) -> float:
    """Rows per second of ``upsert_many`` into an empty table."""
    started = time.perf_counter()
    result = await store.documents.upsert_many(docs)
    assert result.inserted == len(docs), result
    return len(docs) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--citus-url")
    parser.add_argument("--single-url")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()

    print(common.machine_line("bench/citus.py"))
    points = common.clustered(args.rows, args.clusters, 1 / np.sqrt(DIM), seed=16)
    docs = documents(points, args.sources)
    per = args.rows // args.sources
    queries = common.near(points, args.queries, 0.3 / np.sqrt(DIM), seed=61)
    async with (
        citus_cluster(args.citus_url) as citus_url,
        common.bench_server(args.single_url or citus_url) as server,
    ):
        single_url = await server.create_database("citus_bench_single")
        conn = await asyncpg.connect(citus_url)
        try:
            await conn.execute(RESET_SQL)
        finally:
            await conn.close()
        async with docstore.connect(single_url) as single, docstore.connect(citus_url) as cluster:
            await cluster.migrate(distributed=True)
            print(f"single node: {await common.server_line(single)}")
            print(f"cluster:     {await common.server_line(cluster)}, 2 workers")
            rates = {}
            for name, store in (("single", single), ("cluster", cluster)):
                rates[name] = await load(store, docs)
                await store.create_vector_index(calibrate=False)
                await store.execute("ANALYZE documents")
            print(
                f"bulk load (upsert_many, {args.rows:,} rows of 3072 dims): single"
                f" {rates['single']:,.0f} rows/s, cluster {rates['cluster']:,.0f} rows/s"
                f" ({rates['cluster'] / rates['single']:.2f}x)"
            )
            for store in (single, cluster):  # warm pools, caches and plans
                for q in queries[:5]:
                    await store.search(q, source_name="crate1")
                    await store.search(q)

            def scoped(store: docstore.Store) -> common.Call:
                return lambda i: store.search(queries[i], source_name=f"crate{i % args.sources}")

            seconds, _ = await common.interleave(
                {"single": scoped(single), "cluster": scoped(cluster)}, args.queries
            )
            ratio = common.median_ratio(seconds["cluster"], seconds["single"])
            print(
                f"one-source search ({per} docs a source): p50 single"
                f" {statistics.median(seconds['single']) * 1000:.2f} ms, cluster"
                f" {statistics.median(seconds['cluster']) * 1000:.2f} ms, median ratio"
                f" {ratio:.2f}x"
            )
            ann_s, ann_r = await common.interleave(
                {
                    "single": lambda i: single.search(queries[i]),
                    "cluster": lambda i: cluster.search(queries[i]),
                },
                args.queries,
            )
            truths = [exact_top(points, q) for q in queries]
            recall = {
                name: statistics.mean(
                    len({row_of(h.doc_path) for h in r} & set(t)) / 10
                    for r, t in zip(ann_r[name], truths, strict=True)
                )
                for name in ("single", "cluster")
            }
            modes = {name: sorted({r.mode for r in ann_r[name]}) for name in ann_r}
            p50 = {name: statistics.median(ann_s[name]) * 1000 for name in ann_s}
            print(
                f"unscoped search {modes}: p50 single {p50['single']:.2f}"
                f" ms, cluster {p50['cluster']:.2f} ms"
                f" ({common.median_ratio(ann_s['cluster'], ann_s['single']):.2f}x);"
                f" recall@10 single {recall['single']:.3f}, cluster {recall['cluster']:.3f}"
            )
            n_exact = min(args.queries, 10)
            ex_s, ex_r = await common.interleave(
                {
                    "single": lambda i: single.search(queries[i], exact=True),
                    "cluster": lambda i: cluster.search(queries[i], exact=True),
                },
                n_exact,
            )
            same = all(
                [h.doc_path for h in a] == [h.doc_path for h in b]
                for a, b in zip(ex_r["single"], ex_r["cluster"], strict=True)
            )
            print(
                f"unscoped exact search: p50 single {statistics.median(ex_s['single']) * 1000:.1f}"
                f" ms, cluster {statistics.median(ex_s['cluster']) * 1000:.1f} ms;"
                f" identical top 10 on {n_exact} queries: {same}"
            )
            print(common.load_line())
    goals: list[Goal] = [
        ("one-source search on the cluster ≤ 1.5x the single node", ratio <= 1.5, f"{ratio:.2f}x"),
        (
            "unscoped ANN recall@10 parity (cluster ≥ single - 0.02)",
            recall["cluster"] >= recall["single"] - 0.02,
            f"{recall['cluster']:.3f} vs {recall['single']:.3f}",
        ),
        ("unscoped exact top 10 identical", same, str(same)),
    ]
    common.print_goals(goals)


if __name__ == "__main__":
    asyncio.run(main())
