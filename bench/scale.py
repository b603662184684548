"""Benchmark: how far one PostgreSQL primary carries the Doc Server, and what scaling buys.

    python bench/scale.py                          # 20,000 docs x 3072, a few minutes
    python bench/scale.py --rows 5000 --duration 1 --skip-replica   # a quick look
    python bench/scale.py --shares rust=50 python=25 jupyter=10 birdeye=5 misc=10

Everything runs on a throwaway embedded PostgreSQL (+ pgvector) in a temporary directory,
with docstore's own settings (``shared_buffers`` = 1/8 of RAM, at most 1 GB). The corpus is
clustered like real embeddings (``--clusters`` topic centres, as in ``bench/search.py``),
spread over doc_types by ``--shares`` (percent of the rows); each doc_type holds sources of
``--big-source`` documents (half of its rows) and ``--small-source`` documents (the rest).
Topics are independent of doc_type unless ``--affinity`` says otherwise (the worst case for a
filtered index: a doc_type's documents are spread over the whole graph). Measured:

(a) storage: heap, TOAST and each index of ``documents``, bytes per document, extrapolated
    linearly to 1M / 10M documents against this machine's RAM and ``shared_buffers``;
(b) one primary: searches/s, p50/p99 and CPU per search at several concurrencies for the
    Doc Server's searches — one source of ~100 / ~1,000 documents (``halfvec`` mode), the
    same 1,000-document source scanned exactly (``exact``), unscoped ``ann`` — closed loop,
    a pool of ``--pool-size`` connections, client and server on the same cores; the halfvec
    searches again on connections with ``plan_cache_mode=force_custom_plan`` ("[custom
    plans]"), and EXPLAIN ANALYZE of the halfvec SQL under a custom and a generic plan;
(c) the filtered-index cliff: a doc_type-scoped search through the HNSW index with a filter
    as the doc_type's share shrinks, against the same search on a copy of the database where
    ``documents`` is ``PARTITION BY LIST (doc_type)`` with an HNSW index per partition
    (EXPLAIN shows the pruning), against docstore's own choice of plan (``exact=False``) and
    against the halfvec scan docstore uses for small scopes; recall against the exact scan.
    ``enable_sort = off`` (besides docstore's own settings) is how the benchmark makes
    PostgreSQL take an HNSW index it would otherwise pass over; docstore's writes are checked
    on the partitioned copy too;
(d) a streaming replica (``docstore.testing.start_replica``): replay lag in bytes and time,
    and how long a row written by ``upsert_many`` takes to be visible on the replica, while
    batches are written; then searches/s with reads on the primary, on the replica
    (``DATABASE_READ_URL``) and split between them. Both servers share this machine's cores,
    so that shows the routing, not a scale-out.

Compared variants are interleaved (round-robin, ``--rounds`` times); latencies are medians
and percentiles over all samples; the load average is printed before and after, since other
processes share the machine.

This script sets up and sequences; each measurement is a module of ``bench/scaling/`` —
``storage`` (a), ``throughput`` (b), ``partition`` + ``plans`` + ``cliff`` (c), ``replica``
(d), over the corpus of ``corpus`` — and what other scripts share too (servers, closed-loop
load, CPU meters, reports) is in ``bench/common.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import common
from common import DIM, CpuMeter, load_line
from common import human_bytes as human
from scaling.cliff import cliff
from scaling.corpus import Corpus, documents, make_corpus
from scaling.partition import PART_DB, make_partitioned, part_writes
from scaling.replica import replica_stage
from scaling.storage import storage
from scaling.throughput import generic_plan_check, throughput

import docstore


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    print(common.machine_line("bench/scale.py"))
    corpus = make_corpus(args)
    async with common.bench_server(prefix="docstore-scale-") as server:
        assert server.embedded is not None
        url = await server.database("docstore")
        meters = {"primary": CpuMeter(server.embedded.server.get_postmaster_info().pid)}
        opts: dict[str, Any] = {"pool_min_size": 4, "pool_max_size": args.pool_size}
        async with docstore.connect(url, **opts) as store:
            print(await common.server_line(store))
            print(corpus_line(corpus, args))
            t0 = time.perf_counter()
            await store.documents.upsert_many(documents(corpus, args.content_chars))
            await store.execute("VACUUM ANALYZE documents")
            loaded = time.perf_counter() - t0
        part_built = None
        if not args.skip_partition:
            doc_types = [t for t in corpus.shares if t != args.filler]
            part_built = await make_partitioned(server, doc_types)
        opts["pool_min_size"] = args.pool_size  # every connection open before measuring
        async with docstore.connect(url, **opts) as store:
            index, built = await common.clock(store.create_vector_index())
            print(
                f"loaded in {loaded:.1f} s; HNSW (m=16, ef_construction=64) on the flat table"
                f" built in {built:.1f} s ({human(index.size_bytes)})"
                + (
                    f"; partitioned copy: rows copied into LIST partitions (+ B-tree/GIN indexes,"
                    f" VACUUM ANALYZE) in {part_built[0]:.1f} s, per-partition HNSW indexes built"
                    f" in {part_built[1]:.1f} s"
                    if part_built is not None
                    else ""
                )
            )
            custom = await docstore.connect(f"{url}&plan_cache_mode=force_custom_plan", **opts)
            part = None
            if not args.skip_partition:
                part = await docstore.connect(server.url(PART_DB), pool_min_size=1, pool_max_size=4)
            try:
                await storage(store, part)
                if not args.skip_throughput:
                    await throughput(store, custom, corpus, args, meters)
                    await generic_plan_check(store, corpus)
                await cliff(store, custom, part, corpus, args)
                if part is not None:
                    await part_writes(part)
            finally:
                await custom.close()
                if part is not None:
                    await part.close()
        if not args.skip_replica:
            await replica_stage(server, corpus, args, meters)
    print(f"\ndone in {time.perf_counter() - started:.0f} s, {load_line()}")


def corpus_line(corpus: Corpus, args: argparse.Namespace) -> str:
    mix = ", ".join(
        f"{t} {s * 100:.0f}% ({len(corpus.rows_by_type[t])})" for t, s in corpus.shares.items()
    )
    return (
        f"corpus: {args.rows:,} x {DIM} in {args.clusters} clusters (affinity to doc_type"
        f" {args.affinity}), content {args.content_chars} chars; doc_types: {mix};"
        f" {len(corpus.big_sources)} sources of {args.big_source},"
        f" {len(corpus.small_sources)} of ~{args.small_source}"
    )


def shares(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if not name or not value:
        raise argparse.ArgumentTypeError("use doc_type=percent, e.g. rust=50")
    return name, float(value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=20_000, help="documents in all")
    p.add_argument(
        "--shares",
        type=shares,
        nargs="+",
        default=[
            ("rust", 50.0),
            ("python", 25.0),
            ("jupyter", 10.0),
            ("birdeye", 5.0),
            ("misc", 10.0),
        ],
        help="doc_type=percent of the rows (the cliff is measured for each but --filler)",
    )
    p.add_argument("--filler", default="misc", help="doc_type left out of the cliff")
    p.add_argument(
        "--big-source", type=int, default=1000, help="documents a big source (half of a doc_type)"
    )
    p.add_argument("--small-source", type=int, default=100, help="documents a small source")
    p.add_argument("--clusters", type=int, default=100, help="topic centres")
    p.add_argument("--spread", type=float, default=1.0, help="noise norm around a centre")
    p.add_argument("--jitter", type=float, default=0.3, help="query noise norm")
    p.add_argument(
        "--affinity",
        type=float,
        default=0.0,
        help="share of a doc_type's documents drawn from its own topics",
    )
    p.add_argument("--content-chars", type=int, default=1000, help="characters of text a document")
    p.add_argument("--seed", type=int, default=11, help="of the corpus and the queries")
    p.add_argument("--pool-size", type=int, default=32, help="(b): the store's connections")
    p.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 4, 16, 32], help="(b): workers a cell"
    )
    p.add_argument("--duration", type=float, default=1.5, help="seconds a cell")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds, (b) to (d)")
    p.add_argument("--cliff-queries", type=int, default=40, help="(c): queries a doc_type")
    p.add_argument("--replica-batches", type=int, default=6, help="(d): upsert_many calls")
    p.add_argument("--replica-batch-size", type=int, default=500, help="(d): documents a call")
    p.add_argument("--split-concurrency", type=int, default=16, help="(d): workers a cell, in all")
    p.add_argument("--skip-throughput", action="store_true", help="skip (b)")
    p.add_argument("--skip-partition", action="store_true", help="no partitioned copy in (c)")
    p.add_argument("--skip-replica", action="store_true", help="skip (d)")
    return p


if __name__ == "__main__":
    asyncio.run(run(parser().parse_args()))
