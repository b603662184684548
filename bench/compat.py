"""Benchmark: the legacy search_similar_docs() against docstore's compatibility paths.

    python bench/compat.py                  # 40 crates / 4,133 docs x 3072, 400 queries

A legacy database like the plan's is built on a throwaway embedded PostgreSQL and migrated
into docstore, whose compatibility views are installed. Each query (a stored embedding and
its crate, top 5) runs, interleaved, through:

  legacy    ``SELECT * FROM search_similar_docs($1, $2, 5)`` on the legacy database
  views     the same SQL on the migrated database (the compatibility function)
  facade    ``LegacyDatabase.search_similar_docs(crate, q, 5)``

first without a vector index (exact), then after ``create_vector_index()`` (ANN: for a crate of
at most ``HALFVEC_SCOPE_ROWS`` documents that is the in-row half-precision scan with an exact
re-rank, for larger ones the HNSW index). Goals (issue 7): exact compatibility paths <= 1.10x
legacy, ANN paths < 1.0x legacy (median of the per-query ratios; p50s are printed too).
Each query's hits are also compared with legacy's (recall of the top 5).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from typing import Any

import asyncpg
import common
import numpy as np

import docstore
from docstore.codecs import register_codecs
from docstore.compat import LegacyDatabase
from docstore.demo import build_sample_legacy
from docstore.migrate import Migrator
from docstore.search.planner import HALFVEC_SCOPE_ROWS

FUNCTION = "SELECT * FROM search_similar_docs($1, $2, 5)"


async def connect(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    await register_codecs(conn, "public")
    return conn


async def measure(
    legacy: asyncpg.Connection,
    target: asyncpg.Connection,
    compat: LegacyDatabase,
    queries: list[tuple[np.ndarray, str]],
) -> dict[str, float]:
    calls: dict[str, Any] = {
        "legacy": lambda q, c: legacy.fetch(FUNCTION, q, c),
        "views": lambda q, c: target.fetch(FUNCTION, q, c),
        "facade": lambda q, c: compat.search_similar_docs(c, q, 5),
    }
    for q, c in queries[:20]:  # warm-up
        for call in calls.values():
            await call(q, c)

    def path(name: str) -> Any:
        return lambda i: calls[name](*queries[i])

    seconds, results = await common.interleave({name: path(name) for name in calls}, len(queries))
    times = {name: [s * 1000 for s in values] for name, values in seconds.items()}
    found: dict[str, int] = dict.fromkeys(calls, 0)
    for i in range(len(queries)):
        paths = {
            name: {r[0] if isinstance(r, tuple) else r["doc_path"] for r in rows[i]}
            for name, rows in results.items()
        }
        for name in calls:
            found[name] += len(paths[name] & paths["legacy"])
    expected = found["legacy"]
    medians = {name: statistics.median(v) for name, v in times.items()}
    for name in ("views", "facade"):
        medians[f"{name} recall"] = found[name] / expected if expected else 1.0
    # per-query ratios against legacy cancel this machine's slow drifts
    for name in ("views", "facade"):
        medians[f"{name}/legacy"] = common.median_ratio(times[name], times["legacy"])
    return medians


async def run(args: argparse.Namespace) -> bool:
    print(common.machine_line("bench/compat.py"))
    async with common.bench_server(prefix="docstore-bench-compat-") as server:
        legacy_url = await server.create_database("legacy")
        target_url = await server.create_database("target")
        await build_sample_legacy(legacy_url, crates=args.crates, docs=args.rows)
        async with docstore.connect(target_url) as store:
            async with Migrator(legacy_url, store) as m:
                assert (await m.run()).ok
            compat = LegacyDatabase(store)
            await compat.install_views()
            legacy = await connect(legacy_url)
            target = await connect(target_url)
            rows = await legacy.fetch(
                "SELECT embedding, crate_name FROM doc_embeddings"
                " WHERE embedding IS NOT NULL ORDER BY random() LIMIT $1",
                args.queries,
            )
            queries = [(r["embedding"], r["crate_name"]) for r in rows]
            exact = await measure(legacy, target, compat, queries)
            await store.create_vector_index()
            ann = await measure(legacy, target, compat, queries)
            await legacy.close()
            await target.close()
    print(f"{args.rows} documents x 3072 in {args.crates} crates, {args.queries} queries, p50 ms")
    print(
        f"  (with an index, a crate of <= {HALFVEC_SCOPE_ROWS} documents is ranked by"
        " embedding_half, re-ranked exactly)"
    )
    print(
        f"  legacy search_similar_docs   exact {exact['legacy']:.2f}   (again {ann['legacy']:.2f})"
    )
    for name in ("views", "facade"):
        print(
            f"  {name:<27}  exact {exact[name]:.2f}   ann {ann[name]:.2f}"
            f"   (recall@5 vs legacy: exact {exact[f'{name} recall']:.4f},"
            f" ann {ann[f'{name} recall']:.4f})"
        )
    goals = []
    for name in ("views", "facade"):
        r_exact = exact[f"{name}/legacy"]
        r_ann = ann[f"{name}/legacy"]
        goals.append((f"{name}: exact <= 1.10x legacy", r_exact <= 1.10, f"{r_exact:.2f}x"))
        goals.append((f"{name}: ANN < 1.0x legacy", r_ann < 1.0, f"{r_ann:.2f}x"))
    return common.print_goals(goals)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4133)
    parser.add_argument("--crates", type=int, default=40)
    parser.add_argument("--queries", type=int, default=400)
    sys.exit(0 if asyncio.run(run(parser.parse_args())) else 1)
