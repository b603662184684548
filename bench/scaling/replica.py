"""(d) A streaming replica (``docstore.testing.start_replica``): replay lag in bytes and time,
and how long a row written by ``upsert_many`` takes to be visible on the replica, while
batches are written; then searches/s with reads on the primary, on the replica
(``DATABASE_READ_URL``) and split between them. Both servers share this machine's cores, so
that shows the routing, not a scale-out."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from common import DIM, BenchServer, Call, CpuMeter, load_line
from common import percentile as p

import docstore
from docstore import Document
from docstore.testing import EmbeddedReplica, start_replica

from .corpus import Corpus, content, in_rounds, workloads
from .partition import PART_DB

MiB = 2**20


def lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


async def replica_stage(
    server: BenchServer, corpus: Corpus, args: argparse.Namespace, meters: dict[str, CpuMeter]
) -> None:
    """Start a replica of ``server`` (without the partitioned copy), then measure."""
    primary = server.embedded
    assert primary is not None, "(d) needs the embedded server"
    await server.drop_database(PART_DB)
    admin = await asyncpg.connect(server.admin_url)
    try:
        await admin.execute("CHECKPOINT")
    finally:
        await admin.close()
    url = server.url("docstore")
    with tempfile.TemporaryDirectory(prefix="docstore-scale-replica-") as tmp:
        t0 = time.perf_counter()
        replica = await asyncio.to_thread(start_replica, primary, Path(tmp) / "replica")
        try:
            await replica.wait_for_replay()
            print(f"\nreplica started (pg_basebackup + start) in {time.perf_counter() - t0:.1f} s")
            meters["replica"] = CpuMeter(replica.pid or 0)
            async with docstore.connect(url, pool_min_size=2, pool_max_size=4) as store:
                await replica_lag(store, server, replica, corpus, args)
            await replica.wait_for_replay()
            await replica_split(url, replica.url("docstore"), corpus, args, meters)
        finally:
            await asyncio.to_thread(replica.close)


async def replica_lag(
    store: docstore.Store,
    primary: BenchServer,
    replica: EmbeddedReplica,
    corpus: Corpus,
    args: argparse.Namespace,
) -> None:
    print(
        f"\n(d) STREAMING REPLICA: {args.replica_batches} x upsert_many({args.replica_batch_size}"
        " new documents) on the primary (HNSW index present), lag sampled every 20 ms"
    )
    pconn = await asyncpg.connect(primary.admin_url)
    wconn = await asyncpg.connect(primary.admin_url)
    rconn = await asyncpg.connect(replica.url("docstore"))
    probe = await asyncpg.connect(replica.url("docstore"))
    samples: list[int] = []
    replay_lag: list[float] = []
    stop = asyncio.Event()

    async def monitor() -> None:
        while not stop.is_set():
            wal = await pconn.fetchval("SELECT pg_current_wal_lsn()::text")
            row = await pconn.fetchrow(
                "SELECT extract(epoch FROM replay_lag)::float8 AS lag FROM pg_stat_replication"
                " WHERE application_name = $1",
                replica.name,
            )
            replayed = await rconn.fetchval("SELECT pg_last_wal_replay_lsn()::text")
            samples.append(max(lsn(wal) - lsn(replayed), 0))
            if row is not None and row["lag"] is not None:
                replay_lag.append(row["lag"])
            await asyncio.sleep(0.02)

    async def visible(doc_type: str, source: str, path: str, committed: float) -> float:
        while True:
            if await probe.fetchval(
                "SELECT 1 FROM documents WHERE doc_type = $1 AND source_name = $2"
                " AND doc_path = $3",
                doc_type,
                source,
                path,
            ):
                return (time.perf_counter() - committed) * 1000
            await asyncio.sleep(0.001)

    rng = np.random.default_rng(args.seed + 7)
    watcher = asyncio.create_task(monitor())
    visibility: list[float] = []
    batches: list[tuple[float, int]] = []
    n = args.replica_batch_size
    try:
        for b in range(args.replica_batches):
            docs = new_batch(corpus, rng, n, f"replica-load-{b}", args.content_chars)
            wal0 = lsn(await wconn.fetchval("SELECT pg_current_wal_lsn()::text"))
            t0 = time.perf_counter()
            await store.documents.upsert_many(docs)
            committed = time.perf_counter()
            wal1 = lsn(await wconn.fetchval("SELECT pg_current_wal_lsn()::text"))
            batches.append((committed - t0, wal1 - wal0))
            # the last row of the batch (its last transaction) on the replica
            last = docs[-1]
            visibility.append(await visible("rust", last.source_name, last.doc_path, committed))
    finally:
        stop.set()
        await watcher
    for c in (pconn, wconn, rconn, probe):
        await c.close()
    report_lag(batches, n, samples, replay_lag, visibility)


def new_batch(
    corpus: Corpus, rng: np.random.Generator, n: int, source: str, chars: int
) -> list[Document]:
    """``n`` new documents of doc_type rust near stored ones, in a source of their own."""
    rows = rng.integers(0, len(corpus.vectors), size=n)
    vecs = corpus.vectors[rows] + rng.normal(scale=0.3 / np.sqrt(DIM), size=(n, DIM))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    return [
        Document(
            doc_type="rust",
            source_name=source,
            doc_path=f"{source}/doc{k}.html",
            content=content(k, chars),
            embedding=vecs[k],
            token_count=chars // 4,
        )
        for k in range(n)
    ]


def report_lag(
    batches: Sequence[tuple[float, int]],
    n: int,
    samples: Sequence[int],
    replay_lag: Sequence[float],
    visibility: Sequence[float],
) -> None:
    wall = sum(s for s, _ in batches)
    wal = sum(w for _, w in batches)
    docs = n * len(batches)
    print(f"    {load_line()}")
    print(
        f"    writes: {docs:,} documents in {wall:.1f} s ({docs / wall:.0f} docs/s), WAL"
        f" {wal / MiB:.0f} MiB ({wal / docs / 1024:.1f} KiB a document,"
        f" {wal / wall / MiB:.1f} MiB/s)"
    )
    print(
        f"    replay lag while writing ({len(samples)} samples): bytes p50"
        f" {p(samples, 50) / 1024:,.0f} KiB, p99 {p(samples, 99) / 1024:,.0f} KiB,"
        f" max {max(samples) / 1024:,.0f} KiB;"
        f" pg_stat_replication.replay_lag p50 {p(replay_lag, 50) * 1000:.1f} ms,"
        f" max {max(replay_lag, default=0) * 1000:.1f} ms"
    )
    print(
        f"    a batch's last row visible on the replica after its commit returned: p50"
        f" {p(visibility, 50):.1f} ms, max {max(visibility):.1f} ms"
        f" ({', '.join(f'{v:.1f}' for v in visibility)})"
    )


async def replica_split(
    primary_url: str,
    replica_url: str,
    corpus: Corpus,
    args: argparse.Namespace,
    meters: dict[str, CpuMeter],
) -> None:
    """Reads on the primary only, on the replica (``database_read_url``), and split."""
    c = args.split_concurrency
    size = max(c, 2)
    opts: dict[str, Any] = {"pool_min_size": size, "pool_max_size": size, "migrate": False}
    only = await docstore.connect(primary_url, **opts)
    routed = await docstore.connect(primary_url, database_read_url=replica_url, **opts)
    try:
        loads = [w for w in workloads(corpus, args.seed) if w.expect != "exact"]
        loads = [loads[0], loads[-1]]  # one source of ~100 (halfvec), unscoped ann
        configs: dict[str, list[tuple[docstore.Store, int]]] = {
            "primary only": [(only, c)],
            "replica (DATABASE_READ_URL)": [(routed, c)],
            "split 1/2 + 1/2": [(only, c // 2), (routed, c - c // 2)],
        }
        for w in loads:  # warm-up both servers
            for store in (only, routed):
                call = w.make(store)
                for i in range(30):
                    await call(i)
        print(
            f"\n    reads on primary / replica / split, concurrency {c} in total,"
            f" {args.duration:g} s a cell, {args.rounds} interleaved rounds; {load_line()} before"
        )
        plans: dict[tuple[str, str], list[tuple[Call, int]]] = {
            (w.name, name): [(w.make(store), k) for store, k in config]
            for w in loads
            for name, config in configs.items()
        }
        cells = await in_rounds(plans, args, meters)
        print(
            f"    {'workload':30} {'reads on':28} {'searches/s':>10} {'p50 ms':>7} {'p99 ms':>7}"
            f"  server CPU a search: primary / replica"
        )
        for w in loads:
            base = cells[(w.name, "primary only")].rate
            for name in configs:
                cell = cells[(w.name, name)]
                print(
                    f"    {w.name:30} {name:28} {cell.rate:>10.1f} {cell.pct(50):>7.2f}"
                    f" {cell.pct(99):>7.2f}  {cell.server_ms('primary'):.2f} /"
                    f" {cell.server_ms('replica'):.2f} ms   ({cell.rate / base:.2f}x)"
                )
        m = routed.pool_stats()
        print(f"\n    routed store's pools: {', '.join(f'{s.role} size {s.size}' for s in m)}")
    finally:
        await only.close()
        await routed.close()
