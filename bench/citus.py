"""Benchmark: docstore on a Citus cluster against a single node (issue 16).

    python bench/citus.py                       # cluster made by scripts/citus-cluster, 10,000 docs
    python bench/citus.py --citus-url URL       # an existing coordinator (its database is emptied)
    python bench/citus.py --rows 20000 --sources 200 --queries 100
    python bench/citus.py --shards 16 --json out.json   # 16 shards; every figure as JSON

Both sides get the same clustered corpus (``--clusters`` random unit centres, noise of norm
1.0, normalised; ``--sources`` sources of equal size), loaded by ``upsert_many`` (rows/s),
then ``create_vector_index(calibrate=False)`` and ``ANALYZE``. Then, interleaved query by
query (so the machine's drift hits both alike):

* one-source search (default ``search(q, source_name=...)``): p50 on each side and the
  median per-query ratio cluster / single node (goal: ≤ 1.5×);
* unscoped ANN search (default ``search(q)``): p50 and recall@10 against numpy's exact top 10
  on each side (recall parity: the cluster at most 0.02 below the single node);
* unscoped exact search: p50, and whether the top 10 are identical on both sides;
* the same one-source search sent straight to the worker that holds the source's shard
  (Citus 13 syncs its metadata to the workers, so a worker plans a query on ``documents``
  itself and runs its local shard with the query vector as a real bound parameter, where the
  coordinator prints the parameters into the SQL it sends): p50 and median ratio to the
  single node.

**Model parameters** (``docs/scaling.md``'s N-worker model): the CPU seconds each server
used per call, read from ``/proc`` for each PostgreSQL server's postmaster and its backends,
exited ones included (the postmaster's reaped-children times), minus each server's idle rate
measured beforehand; CPU time is what other jobs on this shared machine disturb least. Each
shape runs ``--rounds`` times, back to back, one call at a time; the median round is printed.
Per one-source search: the coordinator's CPU and the workers'; the coordinator's share split
by two trivial routed statements (the same routing without, then with, the 3,072-float vector
as a parameter). Per fanned-out ANN search: the coordinator's CPU (planning, dispatch, merge)
and the workers' divided by the shard count (one shard task), and the new connections Citus
opened on the workers (``pg_stat_database.sessions``; none means each worker ran its shards one
after another on its cached connection); then the same fan-out again with
``citus.max_cached_conns_per_worker`` raised to the shards a worker holds (set on the
database for that phase, reset after), which keeps those connections and their TLS
handshakes out of every search. Per bulk-loaded row: the coordinator's, each worker's, the
single node's and this client's CPU. ``--shards N`` creates the distributed tables with N
shards (``citus.shard_count``; the cluster's default otherwise), to see what the shard count
costs. ``--json PATH`` writes every figure.

**The query vector sent once** (``queries.VectorRefs``): the same fanned-out ANN statement
(ef_search 40, 40 candidates a shard) in the form that printed the 3,072-float vector into
every shard's SQL (:func:`docstore.testing.printed_vector`) and as docstore sends it, rounds
interleaved; CPU per search on each server, and whether both return the same rows.

The single node is a plain database (no Citus in it) on the coordinator's server, so both
sides run the same PostgreSQL build and settings (``--single-url`` for another server; its
database ``citus_bench_single`` is replaced). The cluster is a coordinator and two workers on
this machine: its figures include three PostgreSQL servers sharing the same cores. The
single node's CPU is the coordinator's server's in the single-node phases (its ``coordinator``
column), so it means nothing with ``--single-url``.

This script sets up and sequences; the measurements are the modules of ``bench/clustering/``
(``setup``: the cluster, the single node and what every phase reads; ``cpu``: the CPU meters;
``phases``: one function a measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

import common
from clustering import phases
from clustering.setup import open_bench, open_routes
from common import Goal


async def main(args: argparse.Namespace) -> None:
    print(common.machine_line("bench/citus.py"))
    async with open_bench(args) as bench, contextlib.AsyncExitStack() as stack:
        await phases.bulk_load(bench)
        await open_routes(bench, stack)
        ratio = await phases.one_source(bench)
        recall = await phases.unscoped_ann(bench)
        await phases.cached_connections(bench)
        await phases.vector_forms(bench)
        same = await phases.exact(bench)
        print(common.load_line())
        bench.figures["load_after"] = os.getloadavg()
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
    if args.json:
        bench.figures["goals"] = common.goals_json(goals)
        common.write_json(args.json, bench.figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--citus-url")
    parser.add_argument("--single-url")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="CPU measurement rounds")
    parser.add_argument(
        "--shards",
        type=int,
        help="citus.shard_count for the distributed tables (default: the cluster's)",
    )
    parser.add_argument("--json", help="write every figure to this file")
    asyncio.run(main(parser.parse_args()))
