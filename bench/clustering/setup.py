"""The cluster and the single node the phases compare, and what every phase reads.

:func:`open_bench` starts (or takes) a Citus cluster, makes the single-node database beside
it, resets the coordinator's database, measures each server's idle CPU and opens a store on
each side; :func:`open_routes` then finds the worker holding each source's shard and opens
the stores that search a worker directly or go through the coordinator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import common
import numpy as np
from common import DIM

import docstore

from .cpu import ServerCpu, calibrate_idle, server_cpu

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "citus-cluster"
RESET_SQL = """
DROP TABLE IF EXISTS documents, document_sources, source_population_jobs,
    docstore_migration_checkpoints, docstore_search_calibration, docstore_search_queries,
    docstore_schema_version CASCADE;
DROP FUNCTION IF EXISTS update_updated_at_column() CASCADE;
"""


@dataclass
class Bench:
    """The corpus, both sides' stores and meters, and the figures every phase adds to."""

    args: argparse.Namespace
    points: np.ndarray  # the stored unit vectors, row i is document i
    queries: np.ndarray
    citus_url: str
    database: str  # the coordinator's database
    worker_urls: dict[str, str]  # "worker1" → URL of the same database on that worker
    meters: dict[str, ServerCpu]  # "coordinator" and each worker
    single: docstore.Store
    cluster: docstore.Store
    shards: int = 0
    figures: dict[str, Any] = field(default_factory=dict)
    # set by open_routes():
    via_coordinator: docstore.Store | None = None  # routing off: every search via the coordinator
    on_worker: dict[str, docstore.Store] = field(default_factory=dict)
    holders: dict[str, str] = field(default_factory=dict)  # source → worker holding its shard

    @property
    def workers(self) -> list[str]:
        return list(self.worker_urls)

    @property
    def nodes(self) -> list[str]:
        return ["coordinator", *self.workers]

    def source(self, i: int) -> str:
        """The source the ``i``-th one-source search scopes to."""
        return f"crate{i % self.args.sources}"


@contextlib.asynccontextmanager
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


def with_port(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{user}{host}:{port}", parts.path, parts.query, ""))


def documents(points: np.ndarray, sources: int) -> list[docstore.Document]:
    """Document i of ``points``: source ``crate<i // per>``, path ``crate…/<i>.html``."""
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


def row_of(path: str) -> int:
    """The row of ``points`` a document's path names (:func:`documents`)."""
    return int(path.rsplit("/", 1)[1].split(".")[0])


def exact_top(points: np.ndarray, q: np.ndarray) -> list[int]:
    """Row numbers of the exact cosine top 10 (``points`` are unit vectors)."""
    return [int(i) for i in np.argsort(-(points @ q), kind="stable")[:10]]


@contextlib.asynccontextmanager
async def open_bench(args: argparse.Namespace) -> AsyncIterator[Bench]:
    """The cluster (its database reset, tables distributed with ``--shards``), the single
    node, each server's meter with its idle rate, and a store on each side."""
    points = common.clustered(args.rows, args.clusters, 1 / np.sqrt(DIM), seed=16)
    queries = common.near(points, args.queries, 0.3 / np.sqrt(DIM), seed=61)
    async with (
        citus_cluster(args.citus_url) as citus_url,
        common.bench_server(args.single_url or citus_url) as server,
    ):
        single_url = await server.create_database("citus_bench_single")
        database = urlsplit(citus_url).path.lstrip("/") or "postgres"
        conn = await asyncpg.connect(citus_url)
        try:
            await conn.execute(RESET_SQL)
            if args.shards:  # the store's new connections create this many shards
                await conn.execute(
                    f'ALTER DATABASE "{database}" SET citus.shard_count = {args.shards}'
                )
            nodes = await conn.fetch(
                "SELECT nodename, nodeport FROM pg_dist_node"
                " WHERE noderole = 'primary' AND groupid <> 0 ORDER BY nodeport"
            )
        finally:
            await conn.close()
        worker_urls = {
            f"worker{i + 1}": with_port(citus_url, n["nodename"], n["nodeport"])
            for i, n in enumerate(nodes)
        }
        meters = {"coordinator": await server_cpu(citus_url)}
        for name, url in worker_urls.items():
            meters[name] = await server_cpu(url)
        await calibrate_idle(meters)
        print(
            "idle CPU (subtracted): "
            + ", ".join(f"{k} {m.idle * 1000:.1f} ms/s" for k, m in meters.items())
        )
        async with (
            docstore.connect(single_url) as single,
            docstore.connect(citus_url) as cluster,
        ):
            try:
                await cluster.migrate(distributed=True)
            finally:
                if args.shards:
                    await cluster.execute(f'ALTER DATABASE "{database}" RESET citus.shard_count')
            print(f"single node: {await common.server_line(single)}")
            print(f"cluster:     {await common.server_line(cluster)}, {len(nodes)} workers")
            bench = Bench(
                args=args,
                points=points,
                queries=queries,
                citus_url=citus_url,
                database=database,
                worker_urls=worker_urls,
                meters=meters,
                single=single,
                cluster=cluster,
                figures={"rows": args.rows, "sources": args.sources, "queries": args.queries},
            )
            bench.figures["idle_cpu_per_s"] = {k: m.idle for k, m in meters.items()}
            bench.shards = int(
                await cluster.fetchval(
                    "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'documents'::regclass"
                )
            )
            bench.figures["shards"] = bench.shards
            yield bench


async def open_routes(bench: Bench, stack: contextlib.AsyncExitStack) -> None:
    """The worker holding each source's shard, a store on every worker, a store with routing
    off (``citus_route_searches=False``), and every store's pool, caches and plans warmed."""
    cluster, args, queries = bench.cluster, bench.args, bench.queries
    nodes = await cluster.fetch(
        "SELECT nodeport FROM pg_dist_node"
        " WHERE noderole = 'primary' AND groupid <> 0 ORDER BY nodeport"
    )
    port_worker = {n["nodeport"]: f"worker{i + 1}" for i, n in enumerate(nodes)}
    placement = await cluster.fetch(
        "SELECT s, n.nodeport AS port FROM unnest($1::text[]) s,"
        " LATERAL (SELECT get_shard_id_for_distribution_column('documents', s) id) sh"
        " JOIN pg_dist_placement p ON p.shardid = sh.id"
        " JOIN pg_dist_node n ON n.groupid = p.groupid",
        [f"crate{i}" for i in range(args.sources)],
    )
    bench.holders = {r["s"]: port_worker[r["port"]] for r in placement}
    bench.on_worker = {
        name: await stack.enter_async_context(docstore.connect(url))
        for name, url in bench.worker_urls.items()
    }
    # docstore's default sends a one-source search to the shard's worker itself
    # (DOCSTORE_CITUS_ROUTE_SEARCHES); this store sends it through the coordinator
    bench.via_coordinator = await stack.enter_async_context(
        docstore.connect(bench.citus_url, citus_route_searches=False)
    )
    for store in (bench.single, cluster, bench.via_coordinator):
        for q in queries[:5]:
            await store.search(q, source_name="crate1")
            await store.search(q)
    for name, store in bench.on_worker.items():
        held = next(s for s, w in bench.holders.items() if w == name)
        for q in queries[:5]:
            await store.search(q, source_name=held)
