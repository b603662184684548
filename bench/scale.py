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
(d) a streaming replica (``EmbeddedServer.start_replica``): replay lag in bytes and time,
    and how long a row written by ``upsert_many`` takes to be visible on the replica, while
    batches are written; then searches/s with reads on the primary, on the replica
    (``DATABASE_READ_URL``) and split between them. Both servers share this machine's cores,
    so that shows the routing, not a scale-out.

Compared variants are interleaved (round-robin, ``--rounds`` times); latencies are medians
and percentiles over all samples; the load average is printed before and after, since other
processes share the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import psutil  # type: ignore[import-untyped]
from common import DIM, WORDS, clock, load_line, machine_line
from common import percentile as p

import docstore
from docstore import Document
from docstore.embedded import EmbeddedReplica, EmbeddedServer, ensure_database
from docstore.search import planner, queries
from docstore.search.planner import HALFVEC_SCOPE_ROWS

SCOPED_LIMIT = 5  # the Doc Server's per-crate query (legacy search_similar_docs default)
LIMIT = 10  # unscoped and doc_type-scoped searches
PART_DB = "docstore_part"
GiB = 2**30
MiB = 2**20


# -- corpus ---------------------------------------------------------------------------------


@dataclass
class Corpus:
    """Generated documents: vectors, their doc_type and source, and the scopes to query."""

    vectors: np.ndarray
    doc_types: list[str]
    sources: list[str]
    shares: dict[str, float]
    rows_by_type: dict[str, list[int]] = field(default_factory=dict)
    rows_by_source: dict[str, list[int]] = field(default_factory=dict)
    big_sources: list[str] = field(default_factory=list)
    small_sources: list[str] = field(default_factory=list)


def make_corpus(args: argparse.Namespace) -> Corpus:
    rng = np.random.default_rng(args.seed)
    shares = dict(args.shares)
    total = sum(shares.values())
    names = list(shares)
    counts = [round(args.rows * shares[n] / total) for n in names]
    counts[-1] = args.rows - sum(counts[:-1])
    doc_types: list[str] = []
    sources: list[str] = []
    corpus = Corpus(np.empty(0), doc_types, sources, {n: shares[n] / total for n in names})
    for name, count in zip(names, counts, strict=True):
        big = (count // 2) // args.big_source
        sizes = [args.big_source] * big
        rest = count - big * args.big_source
        sizes += [args.small_source] * (rest // args.small_source)
        if rest % args.small_source:
            sizes.append(rest % args.small_source)
        for k, size in enumerate(sizes):
            kind = "big" if k < big else "crate"
            source = f"{name}-{kind}-{k}"
            (corpus.big_sources if kind == "big" else corpus.small_sources).append(source)
            doc_types += [name] * size
            sources += [source] * size
    # topic clusters, independent of doc_type unless --affinity
    centres = rng.normal(size=(args.clusters, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, args.clusters, size=args.rows)
    if args.affinity > 0:
        own = rng.random(args.rows) < args.affinity
        type_index = {n: i for i, n in enumerate(names)}
        per_type = max(args.clusters // len(names), 1)
        for row in np.flatnonzero(own):
            base = type_index[doc_types[row]] * per_type
            which[row] = (base + rng.integers(0, per_type)) % args.clusters
    noise = rng.normal(scale=args.spread / np.sqrt(DIM), size=(args.rows, DIM)).astype(np.float32)
    points = centres[which] + noise
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    corpus.vectors = points
    for i, (t, s) in enumerate(zip(doc_types, sources, strict=True)):
        corpus.rows_by_type.setdefault(t, []).append(i)
        corpus.rows_by_source.setdefault(s, []).append(i)
    return corpus


def content(i: int, chars: int) -> str:
    words: list[str] = []
    n = 0
    k = i
    while n < chars:
        word = WORDS[(k * 7919 + n) % len(WORDS)]
        words.append(word)
        n += len(word) + 1
        k += 1
    return " ".join(words)[:chars]


def documents(corpus: Corpus, chars: int) -> Iterator[Document]:
    for i in range(len(corpus.vectors)):
        yield Document(
            doc_type=corpus.doc_types[i],
            source_name=corpus.sources[i],
            doc_path=f"{corpus.sources[i]}/doc{i}.html",
            content=content(i, chars),
            metadata={"crate_version": f"{i % 3}.0"},
            embedding=corpus.vectors[i],
            token_count=chars // 4,
        )


def near(corpus: Corpus, rows: Sequence[int], n: int, jitter: float, seed: int) -> np.ndarray:
    """``n`` queries, each a stored vector of ``rows`` plus noise (normalised)."""
    rng = np.random.default_rng(seed)
    picked = corpus.vectors[rng.choice(np.asarray(rows), size=n)]
    q = picked + rng.normal(scale=jitter / np.sqrt(DIM), size=picked.shape).astype(np.float32)
    result: np.ndarray = q / np.linalg.norm(q, axis=1, keepdims=True)
    return result


# -- measuring --------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds (user + system) used by a PostgreSQL server's processes, read from /proc:
    unaffected by other load on the machine, unlike throughput."""

    def __init__(self, postmaster_pid: int) -> None:
        self.pid = postmaster_pid

    def seconds(self) -> dict[int, float]:
        procs = [psutil.Process(self.pid)]
        with contextlib.suppress(psutil.Error):
            procs += psutil.Process(self.pid).children(recursive=True)
        out: dict[int, float] = {}
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
        return out

    @staticmethod
    def used(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(v - before.get(pid, 0.0) for pid, v in after.items())


@dataclass
class Cell:
    """One closed-loop measurement: ``count`` searches in ``wall`` seconds."""

    count: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: dict[str, float] = field(default_factory=dict)
    client_cpu: float = 0.0
    rates: list[float] = field(default_factory=list)  # searches/s of each round

    def add(self, other: Cell) -> None:
        self.count += other.count
        self.wall += other.wall
        self.latencies += other.latencies
        for k, v in other.server_cpu.items():
            self.server_cpu[k] = self.server_cpu.get(k, 0.0) + v
        self.client_cpu += other.client_cpu
        self.rates.append(other.count / other.wall)

    @property
    def rate(self) -> float:
        return self.count / self.wall if self.wall else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else 0.0

    def server_ms(self, role: str | None = None) -> float:
        cpu = sum(self.server_cpu.values()) if role is None else self.server_cpu.get(role, 0.0)
        return cpu / self.count * 1000 if self.count else 0.0

    def client_ms(self) -> float:
        return self.client_cpu / self.count * 1000 if self.count else 0.0


Call = Callable[[int], Awaitable[object]]


async def closed_loop(
    calls: Sequence[tuple[Call, int]], duration: float, meters: dict[str, CpuMeter]
) -> Cell:
    """Run ``concurrency`` workers of each ``(call, concurrency)`` back to back for
    ``duration`` seconds; every worker waits for its search before starting the next."""
    counter = itertools.count()
    cell = Cell()
    deadline = time.perf_counter() + duration

    async def worker(call: Call) -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            t = time.perf_counter()
            await call(i)
            cell.latencies.append(time.perf_counter() - t)

    before = {k: m.seconds() for k, m in meters.items()}
    proc0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(call) for call, n in calls for _ in range(n)))
    cell.wall = time.perf_counter() - wall0
    cell.client_cpu = time.process_time() - proc0
    cell.server_cpu = {k: CpuMeter.used(before[k], m.seconds()) for k, m in meters.items()}
    cell.count = len(cell.latencies)
    return cell


def recall(truth: Sequence[int], got: Sequence[int]) -> float:
    return len(set(truth) & set(got)) / len(truth) if truth else 1.0


def lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


# -- (a) storage ------------------------------------------------------------------------------

STORAGE = """
SELECT pg_relation_size(c.oid) AS heap,
       pg_table_size(c.oid) AS table_size,
       coalesce(pg_relation_size(c.reltoastrelid), 0) AS toast,
       coalesce(pg_indexes_size(c.reltoastrelid), 0) AS toast_index,
       (SELECT count(*) FROM documents) AS rows,
       (SELECT avg(octet_length(content)) FROM documents) AS content_bytes
  FROM pg_class c WHERE c.oid = 'documents'::regclass
"""
INDEXES = """
SELECT c.relname AS name, am.amname AS am, pg_relation_size(c.oid) AS bytes
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
 WHERE i.indrelid = 'documents'::regclass ORDER BY bytes DESC
"""
PART_STORAGE = """
SELECT sum(pg_table_size(relid)) AS table_size, sum(pg_indexes_size(relid)) AS indexes
  FROM pg_partition_tree('documents') WHERE isleaf
"""


def human(n: float) -> str:
    return f"{n / GiB:,.1f} GiB" if n >= GiB else f"{n / MiB:,.0f} MiB"


async def storage(store: docstore.Store, part: docstore.Store | None, ram: int) -> None:
    row = await store.fetchrow(STORAGE)
    idx = await store.fetch(INDEXES)
    n = row["rows"]
    shared = await store.fetchval("SELECT pg_size_bytes(current_setting('shared_buffers'))")
    print(
        f"\n(a) STORAGE of documents: {n:,} rows x {DIM} dims, content ~{row['content_bytes']:.0f}"
    )
    print("    bytes a row (pg_relation_size / pg_table_size / pg_relation_size of each index)\n")
    parts: list[tuple[str, int]] = [
        ("heap (row incl. in-row embedding_half)", row["heap"]),
        ("TOAST (the 12 KB vector) + its index", row["toast"] + row["toast_index"]),
        ("fsm + vm", row["table_size"] - row["heap"] - row["toast"] - row["toast_index"]),
    ]
    parts += [(f"index {r['name']} ({r['am']})", r["bytes"]) for r in idx]
    total = sum(b for _, b in parts)
    hnsw = sum(r["bytes"] for r in idx if r["am"] == "hnsw")
    print(f"    {'relation':58} {'total':>10} {'per doc':>9} {'1M docs':>10} {'10M docs':>10}")
    for name, b in [*parts, ("TOTAL", total)]:
        print(
            f"    {name[:58]:58} {human(b):>10} {b / n:>9,.0f} {human(b / n * 1e6):>10}"
            f" {human(b / n * 1e7):>10}"
        )
    pages = row["heap"] / 8192
    print(f"\n    heap: {n / pages:.2f} rows per 8 KB page ({row['heap'] / n:,.0f} B a row)")
    print(
        f"    extrapolated linearly (HNSW grows ~linearly in rows at fixed m=16): the HNSW"
        f" index is {human(hnsw / n * 1e6)} at 1M and {human(hnsw / n * 1e7)} at 10M; the"
        f" heap (what halfvec scans read) {human(row['heap'] / n * 1e6)} /"
        f" {human(row['heap'] / n * 1e7)}"
    )
    print(
        f"    this machine: RAM {human(ram)}, shared_buffers {human(shared)}; 1M docs total"
        f" {human(total / n * 1e6)}, 10M docs {human(total / n * 1e7)}"
    )
    if part is not None:
        prow = await part.fetchrow(PART_STORAGE)
        print(
            f"    partitioned copy (LIST by doc_type): tables {human(prow['table_size'])}, indexes"
            f" {human(prow['indexes'])} vs flat {human(row['table_size'])} /"
            f" {human(total - row['table_size'])}"
        )


# -- (b) throughput ---------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    expect: str
    make: Callable[[docstore.Store], Call]
    custom: bool = False  # run on the store whose connections use force_custom_plan


def workloads(corpus: Corpus, args: argparse.Namespace) -> list[Workload]:
    def per_source(sources: list[str], exact: bool | None, seed: int) -> Callable[..., Call]:
        qs = [
            (s, near(corpus, corpus.rows_by_source[s], 1, args.jitter, seed + k)[0])
            for k, s in enumerate(sources)
        ]

        def make(store: docstore.Store) -> Call:
            async def call(i: int) -> object:
                source, q = qs[i % len(qs)]
                return await store.search(
                    q,
                    doc_type=source.split("-")[0],
                    source_name=source,
                    limit=SCOPED_LIMIT,
                    exact=exact,
                )

            return call

        return make

    unscoped = near(corpus, range(len(corpus.vectors)), 200, args.jitter, args.seed + 99)

    def ann(store: docstore.Store) -> Call:
        async def call(i: int) -> object:
            return await store.search(unscoped[i % len(unscoped)], limit=LIMIT)

        return call

    first = next(iter(corpus.shares))
    small = [s for s in corpus.small_sources if s.startswith(f"{first}-")]
    big = [s for s in corpus.big_sources if s.startswith(f"{first}-")]
    small_n = len(corpus.rows_by_source[small[0]])
    big_n = len(corpus.rows_by_source[big[0]]) if big else 0
    out = [Workload(f"halfvec, 1 source of {small_n}", "halfvec", per_source(small, None, 1000))]
    if big:
        out += [
            Workload(f"halfvec, 1 source of {big_n}", "halfvec", per_source(big, None, 2000)),
            Workload(f"exact, 1 source of {big_n}", "exact", per_source(big, True, 2000)),
        ]
    out.append(Workload(f"ann, unscoped ({len(corpus.vectors):,})", "ann", ann))
    return out


async def throughput(
    store: docstore.Store,
    custom: docstore.Store,
    corpus: Corpus,
    args: argparse.Namespace,
    meters: dict[str, CpuMeter],
) -> None:
    loads: list[Workload] = []
    for w in workloads(corpus, args):
        loads.append(w)
        if w.expect == "halfvec":
            loads.append(Workload(f"{w.name} [custom plans]", w.expect, w.make, custom=True))
    print(
        f"\n(b) ONE PRIMARY: closed loop, pool of {args.pool_size}, {args.duration:g} s a cell,"
        f" {args.rounds} interleaved rounds (limit {SCOPED_LIMIT} per source, {LIMIT} unscoped);"
        " the client runs on the same 2 cores. [custom plans]: the same searches on a store whose"
        " URL adds plan_cache_mode=force_custom_plan"
    )
    calls = {w.name: w.make(custom if w.custom else store) for w in loads}
    for w in loads:  # warm-up, and check docstore picks the expected mode
        for i in range(20):
            result: Any = await calls[w.name](i)
        if result.mode != w.expect:
            print(f"    WARNING: {w.name}: docstore chose mode {result.mode!r}, not {w.expect!r}")
    cells: dict[tuple[str, int], Cell] = {}
    print(f"    {load_line()} before")
    for _ in range(args.rounds):
        for w in loads:
            for c in args.concurrency:
                cell = await closed_loop([(calls[w.name], c)], args.duration, meters)
                cells.setdefault((w.name, c), Cell()).add(cell)
    print(f"    {load_line()} after\n")
    print(
        f"    {'workload':45} {'conc':>4} {'searches/s':>10} {'(rounds)':>15} {'p50 ms':>8}"
        f" {'p99 ms':>8} {'server CPU':>10} {'client CPU':>10}"
    )
    for w in loads:
        for c in args.concurrency:
            cell = cells[(w.name, c)]
            rounds = "/".join(f"{r:.0f}" for r in cell.rates)
            print(
                f"    {w.name:45} {c:>4} {cell.rate:>10.1f} {rounds:>15} {cell.pct(50):>8.2f}"
                f" {cell.pct(99):>8.2f} {cell.server_ms():>7.2f} ms {cell.client_ms():>7.2f} ms"
            )
        top = max(args.concurrency)
        cell = cells[(w.name, top)]
        print(
            f"    {'':45} -> {cell.rate / 2:.0f} searches per core-second at concurrency {top}"
            f" (2 cores, client included); {1000 / cell.server_ms():.0f} per server"
            f" core-second from the server's CPU time alone\n"
        )


async def generic_plan_check(
    store: docstore.Store, corpus: Corpus, args: argparse.Namespace
) -> None:
    """Why [custom plans] differ: EXPLAIN ANALYZE of docstore's halfvec SQL for one source under
    a custom and a generic plan (asyncpg prepares every statement; after five runs PostgreSQL
    may keep a generic plan for it)."""
    first = next(iter(corpus.shares))
    source = next(s for s in corpus.big_sources + corpus.small_sources if s.startswith(first))
    q = near(corpus, corpus.rows_by_source[source], 1, args.jitter, 5)[0]
    sql, params = queries.vector_search_sql(
        q,
        dim=DIM,
        limit=SCOPED_LIMIT,
        filter={"doc_type": first, "source_name": source},
        candidates=max(SCOPED_LIMIT * store.settings.search_oversample, 10),
        candidate_source="halfvec",
    )
    literal = "'[" + ",".join(f"{x:.7g}" for x in q) + "]'"
    print(f"\n    docstore's halfvec SQL for {source} ({len(corpus.rows_by_source[source])} rows),")
    print("    EXPLAIN ANALYZE of a prepared statement (median of 5 runs):")
    async with store.acquire() as conn:
        await conn.execute(f"PREPARE halfvec_check(vector, int, text, text, int) AS {sql}")
        try:
            for mode in ("force_custom_plan", "force_generic_plan"):
                await conn.execute(f"SET plan_cache_mode = {mode}")
                times, keys = [], []
                for _ in range(5):
                    rows = await conn.fetch(
                        "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) EXECUTE halfvec_check("
                        f"{literal}, {params[1]}, '{first}', '{source}', {params[4]})"
                    )
                    plan = [r[0] for r in rows]
                    times.append(float(next(x for x in plan if "Execution Time" in x).split()[-2]))
                    keys = [
                        x.strip()[:90]
                        for x in plan
                        if "Sort Key" in x and "embedding_half" in x and "'[" not in x
                    ]
                print(
                    f"      {mode:18} {statistics.median(times):6.2f} ms; sort key:"
                    f" {keys[0] if keys else '(the query vector, cast once when planning)'}"
                )
        finally:
            await conn.execute("RESET plan_cache_mode")
            await conn.execute("DEALLOCATE halfvec_check")


# -- (c) filtered-index cliff vs partitions ---------------------------------------------------

# documents as a LIST-partitioned table. The primary key must contain the partition key, so it
# is (id, doc_type); the natural key keeps its three columns, in an order that does not lead with
# doc_type: inside a partition doc_type is one value, and a B-tree leading with it lets the
# planner answer "ORDER BY distance" with an index scan of the whole partition plus a sort
# (detoasting every 12 KB vector) instead of the partition's HNSW index. ON CONFLICT
# (doc_type, source_name, doc_path) infers it all the same (a unique index on the same columns).
PARTITION_DDL = """
ALTER TABLE documents RENAME TO documents_flat;
ALTER SEQUENCE documents_id_seq OWNED BY NONE;
CREATE TABLE documents (
    LIKE documents_flat INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING STORAGE,
    PRIMARY KEY (id, doc_type),
    UNIQUE (source_name, doc_path, doc_type)
) PARTITION BY LIST (doc_type);
"""
PARTITION_FINISH = """
INSERT INTO documents (id, doc_type, source_name, doc_path, content, metadata, embedding,
                       token_count, created_at, updated_at)
SELECT id, doc_type, source_name, doc_path, content, metadata, embedding,
       token_count, created_at, updated_at FROM documents_flat;
DROP TABLE documents_flat;
ALTER SEQUENCE documents_id_seq OWNED BY documents.id;
CREATE INDEX idx_documents_metadata ON documents USING gin (metadata);
CREATE INDEX idx_documents_legacy_id ON documents ((metadata->>'legacy_id'))
    WHERE metadata ? 'legacy_id';
CREATE TRIGGER update_documents_updated_at BEFORE UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
"""


def partition_name(doc_type: str) -> str:
    return "documents_" + "".join(ch if ch.isalnum() else "_" for ch in doc_type.lower())


async def make_partitioned(
    admin_url: str, part_url: str, doc_types: list[str]
) -> tuple[float, float]:
    """Copy the (still unindexed) docstore database and turn its ``documents`` into a LIST
    partitioned table with an HNSW index per partition; returns the seconds the conversion
    (DDL, copying the rows, B-tree/GIN indexes, VACUUM ANALYZE) and the HNSW builds took."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {PART_DB}")
        await admin.execute(f"CREATE DATABASE {PART_DB} TEMPLATE docstore STRATEGY FILE_COPY")
    finally:
        await admin.close()
    conn = await asyncpg.connect(part_url)
    try:
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.execute(PARTITION_DDL)
            for t in doc_types:
                await conn.execute(
                    f"CREATE TABLE {partition_name(t)} PARTITION OF documents FOR VALUES IN"
                    f" ('{t}') WITH (toast_tuple_target = 8160)"
                )
            await conn.execute(
                "CREATE TABLE documents_default PARTITION OF documents DEFAULT"
                " WITH (toast_tuple_target = 8160)"
            )
            await conn.execute(PARTITION_FINISH)
        await conn.execute("VACUUM ANALYZE documents")
        converted = time.perf_counter() - t0
        await conn.execute("SET maintenance_work_mem = '512MB'")
        t0 = time.perf_counter()
        # on the parent: PostgreSQL builds one HNSW index per partition (and attaches each)
        await conn.execute(
            queries.create_vector_index_sql(
                dim=DIM, metric_name="cosine", m=16, ef_construction=64, concurrently=False
            )
        )
        return converted, time.perf_counter() - t0
    finally:
        await conn.close()


def ann_sql(q: np.ndarray, doc_type: str) -> tuple[str, list[Any]]:
    """docstore's ANN SQL (as ``search(exact=False)`` builds it) for a doc_type scope."""
    candidates = planner.ann_candidates(LIMIT, 4)
    return queries.vector_search_sql(
        q, dim=DIM, limit=LIMIT, filter={"doc_type": doc_type}, candidates=candidates
    )


# With enable_sort off as well, the only plan without a disabled Sort below the re-rank is
# the HNSW index scan: this is how the benchmark makes PostgreSQL take the index.
EF_SEARCH = 200  # the ANN default when these runs were made (before calibration, issue 14)
FORCE_HNSW = "SET LOCAL enable_sort = off"


async def run_ann(
    store: docstore.Store, sql: str, params: list[Any], *, force_hnsw: bool = False
) -> list[Any]:
    """Run ANN SQL as docstore does (SET LOCAL ef_search, iterative scan, no seq scan)."""
    ef = max(store.settings.hnsw_ef_search or EF_SEARCH, planner.ann_candidates(LIMIT, 4))
    async with store.transaction() as conn:
        await conn.execute(queries.ann_settings_sql(ef))
        if force_hnsw:
            await conn.execute(FORCE_HNSW)
        return list(await conn.fetch(sql, *params))


async def plan_of(
    store: docstore.Store, sql: str, params: list[Any], *, ann: bool, force_hnsw: bool = False
) -> list[str]:
    """EXPLAIN ANALYZE lines (vectors cut out) of ``sql`` as docstore runs it."""
    async with store.transaction() as conn:
        if ann:
            ef = max(store.settings.hnsw_ef_search or EF_SEARCH, planner.ann_candidates(LIMIT, 4))
            await conn.execute(queries.ann_settings_sql(ef))
        if force_hnsw:
            await conn.execute(FORCE_HNSW)
        return await explain(conn, sql, params)


async def explain(conn: Any, sql: str, params: list[Any]) -> list[str]:
    rows = await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sql, *params)
    return [r[0] for r in rows if "::halfvec" not in r[0] and "::vector" not in r[0]]


def scan_of(plan: list[str]) -> str:
    """The scan that feeds the candidate ordering, in a few words."""
    for line in plan:
        text = line.strip().removeprefix("->  ")
        if "never executed" in text:
            continue
        if text.startswith(("Index Scan", "Seq Scan", "Bitmap Heap Scan", "Index Only Scan")):
            words = text.split(" (")[0].split()
            index = words[words.index("using") + 1] if "using" in words else ""
            table = words[words.index("on") + 1] if "on" in words else ""
            if "hnsw" in index or index.endswith("embedding_idx"):
                return f"HNSW on {table}"
            if text.startswith("Seq Scan"):
                return f"seq scan of {table} + sort"
            if text.startswith("Bitmap"):
                return f"bitmap scan of {table} + sort"
            return f"B-tree {index} + sort"
    scans = [line.strip().removeprefix("->  ").split(" (")[0] for line in plan if "Scan" in line]
    return " / ".join(scans) or "?"


async def explain_pruning(part: docstore.Store, q: np.ndarray, doc_type: str) -> list[str]:
    """Which partitions docstore's filtered ANN SQL reads on the partitioned copy, run as a
    prepared statement with doc_type a parameter: under a custom plan (pruned when planning)
    and a generic one (what a prepared statement may keep after five runs: pruned when the
    executor starts)."""
    sql, params = ann_sql(q, doc_type)
    literal = "'[" + ",".join(f"{x:.7g}" for x in q) + "]'"
    out = []
    async with part.acquire() as conn:
        for n, (force, mode) in enumerate(
            itertools.product((False, True), ("force_custom_plan", "force_generic_plan"))
        ):
            name = f"part_check_{n}"  # one statement each: a cached plan ignores later SETs
            await conn.execute(f"PREPARE {name}(vector, int, text, int) AS {sql}")
            try:
                async with conn.transaction():
                    await conn.execute(queries.ann_settings_sql(200))
                    if force:
                        await conn.execute(FORCE_HNSW)
                    await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
                    rows = await conn.fetch(
                        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE"
                        f" {name}({literal}, {params[1]}, '{doc_type}', {params[3]})"
                    )
            finally:
                await conn.execute(f"DEALLOCATE {name}")
            plan = [r[0] for r in rows if "'[" not in r[0]]
            scanned = sorted(
                {
                    line.split(" on ", 1)[1].split()[0]
                    for line in plan
                    if "never executed" not in line and " on documents" in line
                }
            )
            removed = [line.strip() for line in plan if "Subplans Removed" in line]
            out.append(
                f"{'part-hnsw' if force else 'partition':9} {mode:18}: reads"
                f" {', '.join(scanned) or '?'} via {scan_of(plan)}"
                f" ({'; '.join(removed) or 'the others pruned when planning'})"
            )
    return out


async def cliff(
    flat: docstore.Store,
    custom: docstore.Store,
    part: docstore.Store | None,
    corpus: Corpus,
    args: argparse.Namespace,
) -> None:
    types = [t for t in corpus.shares if t != args.filler]
    max_scan = await flat.fetchval("SELECT current_setting('hnsw.max_scan_tuples', true)")
    print(
        f"\n(c) FILTERED-INDEX CLIFF: a doc_type-scoped search (limit {LIMIT}) as the doc_type's"
        f" share shrinks; {args.cliff_queries} queries near its documents, {args.rounds}"
        f" interleaved rounds; HALFVEC_SCOPE_ROWS = {HALFVEC_SCOPE_ROWS},"
        f" ef_search {flat.settings.hnsw_ef_search or EF_SEARCH}, hnsw.max_scan_tuples {max_scan}\n"
        "    exact        store.search(q, doc_type=T, exact=True): the truth for recall (first)\n"
        "    ann          store.search(q, doc_type=T, exact=False) on the flat table: docstore's\n"
        "                 ANN SQL, whatever plan PostgreSQL picks for it\n"
        "    hnsw         the same SQL with enable_sort off too: the filtered HNSW scan\n"
        "    halfvec      docstore's halfvec SQL (its choice for scopes <= HALFVEC_SCOPE_ROWS)\n"
        "    halfvec-cp   the same on connections with plan_cache_mode=force_custom_plan\n"
        "    partition    store.search(q, doc_type=T, exact=False) on the LIST-partitioned copy\n"
        "    part-hnsw    the same with enable_sort off: the pruned partition's own HNSW index"
    )
    results: list[str] = []
    plans: list[str] = []
    print(f"    {load_line()} before")
    for t in types:
        rows = corpus.rows_by_type[t]
        qs = near(corpus, rows, args.cliff_queries, args.jitter, args.seed + 500 + len(rows))
        truth: list[list[int]] = []
        exact_ms: list[float] = []
        for q in qs:
            t0 = time.perf_counter()
            r = await flat.search(q, doc_type=t, limit=LIMIT, exact=True)
            exact_ms.append((time.perf_counter() - t0) * 1000)
            truth.append(r.ids)
        picked = (await flat.search(qs[0], doc_type=t, limit=LIMIT)).mode
        picked_part = (await part.search(qs[0], doc_type=t, limit=LIMIT)).mode if part else "-"
        half_candidates = max(LIMIT * flat.settings.search_oversample, 10)

        def half_sql(q: np.ndarray, t: str = t, n: int = half_candidates) -> tuple[str, list[Any]]:
            return queries.vector_search_sql(
                q,
                dim=DIM,
                limit=LIMIT,
                filter={"doc_type": t},
                candidates=n,
                candidate_source="halfvec",
            )

        async def ann(q: np.ndarray, t: str = t) -> list[int]:
            return (await flat.search(q, doc_type=t, limit=LIMIT, exact=False)).ids

        async def hnsw(q: np.ndarray, t: str = t) -> list[int]:
            sql, params = ann_sql(q, t)
            return [r["id"] for r in await run_ann(flat, sql, params, force_hnsw=True)]

        async def halfvec(q: np.ndarray) -> list[int]:
            sql, params = half_sql(q)
            return [r["id"] for r in await flat.fetch(sql, *params)]

        async def halfvec_custom(q: np.ndarray) -> list[int]:
            sql, params = half_sql(q)
            return [r["id"] for r in await custom.fetch(sql, *params)]

        async def partition(q: np.ndarray, t: str = t) -> list[int]:
            assert part is not None
            return (await part.search(q, doc_type=t, limit=LIMIT, exact=False)).ids

        async def part_hnsw(q: np.ndarray, t: str = t) -> list[int]:
            assert part is not None
            sql, params = ann_sql(q, t)
            return [r["id"] for r in await run_ann(part, sql, params, force_hnsw=True)]

        variants: list[tuple[str, Callable[[np.ndarray], Awaitable[list[int]]]]] = [
            ("ann", ann),
            ("hnsw", hnsw),
            ("halfvec", halfvec),
            ("halfvec-cp", halfvec_custom),
        ]
        if part is not None:
            variants += [("partition", partition), ("part-hnsw", part_hnsw)]
        # the plan each variant runs, from EXPLAIN ANALYZE of its SQL
        how = {
            "exact": "exact scan",
            "ann": scan_of(await plan_of(flat, *ann_sql(qs[0], t), ann=True)),
            "hnsw": scan_of(await plan_of(flat, *ann_sql(qs[0], t), ann=True, force_hnsw=True)),
            "halfvec": scan_of(await plan_of(flat, *half_sql(qs[0]), ann=False)),
            "halfvec-cp": "as halfvec, custom plans",
        }
        if part is not None:
            how["partition"] = scan_of(await plan_of(part, *ann_sql(qs[0], t), ann=True))
            how["part-hnsw"] = scan_of(
                await plan_of(part, *ann_sql(qs[0], t), ann=True, force_hnsw=True)
            )
        for _, fn in variants:  # warm-up
            for q in qs[:5]:
                await fn(q)
        ms: dict[str, list[float]] = {name: [] for name, _ in variants}
        rec: dict[str, list[float]] = {name: [] for name, _ in variants}
        per_query: dict[str, list[list[float]]] = {name: [[] for _ in qs] for name, _ in variants}
        for rnd in range(args.rounds):
            for i, q in enumerate(qs):
                shift = (i + rnd) % len(variants)
                for name, fn in variants[shift:] + variants[:shift]:
                    t0 = time.perf_counter()
                    ids = await fn(q)
                    elapsed = (time.perf_counter() - t0) * 1000
                    ms[name].append(elapsed)
                    per_query[name][i].append(elapsed)
                    if rnd == 0:
                        rec[name].append(recall(truth[i], ids))

        def ratio(a: str, b: str, per_query: dict[str, list[list[float]]] = per_query) -> float:
            """Median over queries of the ratio of their median latencies."""
            return statistics.median(
                statistics.median(x) / statistics.median(y)
                for x, y in zip(per_query[a], per_query[b], strict=True)
            )

        share = corpus.shares[t] * 100
        results.append(
            f"    {t} ({share:.0f}%, {len(rows):,} rows): docstore's default mode"
            f" {picked} (flat) / {picked_part} (partitioned)"
        )
        results.append(
            f"      {'exact':12} {p(exact_ms, 50):>7.2f} {p(exact_ms, 95):>7.2f} {1.0:>7.3f}"
            f"  {how['exact']}"
        )
        for name, _ in variants:
            extra = ""
            if name in ("hnsw", "ann", "halfvec", "halfvec-cp") and part is not None:
                extra = f"  ({ratio(name, 'part-hnsw'):.2f}x part-hnsw)"
            results.append(
                f"      {name:12} {p(ms[name], 50):>7.2f} {p(ms[name], 95):>7.2f}"
                f" {statistics.mean(rec[name]):>7.3f}  {how[name]}{extra}"
            )
        if part is not None and t == types[-1]:
            plans = await explain_pruning(part, qs[0], t)
    print(f"    {load_line()} after\n")
    print(f"      {'variant':12} {'p50 ms':>7} {'p95 ms':>7} {'recall':>7}  plan (EXPLAIN ANALYZE)")
    for line in results:
        print(line)
    if part is not None:
        print(f"\n    EXPLAIN ANALYZE on the partitioned copy, doc_type {types[-1]!r} a parameter:")
        for line in plans:
            print(f"      {line}")


# -- (d) replica --------------------------------------------------------------------------------


async def replica_lag(
    store: docstore.Store,
    primary: EmbeddedServer,
    replica: EmbeddedReplica,
    corpus: Corpus,
    args: argparse.Namespace,
) -> None:
    print(
        f"\n(d) STREAMING REPLICA: {args.replica_batches} x upsert_many({args.replica_batch_size}"
        " new documents) on the primary (HNSW index present), lag sampled every 20 ms"
    )
    pconn = await asyncpg.connect(primary.url("postgres"))
    wconn = await asyncpg.connect(primary.url("postgres"))
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
            rows = rng.integers(0, len(corpus.vectors), size=n)
            vecs = corpus.vectors[rows] + rng.normal(scale=0.3 / np.sqrt(DIM), size=(n, DIM))
            vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
            source = f"replica-load-{b}"
            docs = [
                Document(
                    doc_type="rust",
                    source_name=source,
                    doc_path=f"{source}/doc{k}.html",
                    content=content(k, args.content_chars),
                    embedding=vecs[k],
                    token_count=args.content_chars // 4,
                )
                for k in range(n)
            ]
            wal0 = lsn(await wconn.fetchval("SELECT pg_current_wal_lsn()::text"))
            t0 = time.perf_counter()
            await store.documents.upsert_many(docs)
            committed = time.perf_counter()
            wal1 = lsn(await wconn.fetchval("SELECT pg_current_wal_lsn()::text"))
            batches.append((committed - t0, wal1 - wal0))
            # the last row of the batch (its last transaction) on the replica
            visibility.append(await visible("rust", source, docs[-1].doc_path, committed))
    finally:
        stop.set()
        await watcher
    wall = sum(s for s, _ in batches)
    wal = sum(w for _, w in batches)
    print(f"    {load_line()}")
    print(
        f"    writes: {n * len(batches):,} documents in {wall:.1f} s ({n * len(batches) / wall:.0f}"
        f" docs/s), WAL {wal / MiB:.0f} MiB ({wal / (n * len(batches)) / 1024:.1f} KiB a document,"
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
    for c in (pconn, wconn, rconn, probe):
        await c.close()


async def replica_split(
    primary_url: str,
    replica_url: str,
    corpus: Corpus,
    args: argparse.Namespace,
    meters: dict[str, CpuMeter],
) -> None:
    c = args.split_concurrency
    size = max(c, 2)
    opts: dict[str, Any] = {"pool_min_size": size, "pool_max_size": size, "migrate": False}
    only = await docstore.connect(primary_url, **opts)
    routed = await docstore.connect(primary_url, database_read_url=replica_url, **opts)
    try:
        loads = [w for w in workloads(corpus, args) if w.expect != "exact"]
        loads = [loads[0], loads[-1]]  # one source of ~100 (halfvec), unscoped ann
        configs: list[tuple[str, Callable[[Workload], list[tuple[Call, int]]]]] = [
            ("primary only", lambda w: [(w.make(only), c)]),
            ("replica (DATABASE_READ_URL)", lambda w: [(w.make(routed), c)]),
            ("split 1/2 + 1/2", lambda w: [(w.make(only), c // 2), (w.make(routed), c - c // 2)]),
        ]
        for w in loads:  # warm-up both servers
            for store in (only, routed):
                call = w.make(store)
                for i in range(30):
                    await call(i)
        cells: dict[tuple[str, str], Cell] = {}
        print(
            f"\n    reads on primary / replica / split, concurrency {c} in total,"
            f" {args.duration:g} s a cell, {args.rounds} interleaved rounds; {load_line()} before"
        )
        for _ in range(args.rounds):
            for w in loads:
                for name, plan in configs:
                    cell = await closed_loop(plan(w), args.duration, meters)
                    cells.setdefault((w.name, name), Cell()).add(cell)
        print(f"    {load_line()} after\n")
        print(
            f"    {'workload':30} {'reads on':28} {'searches/s':>10} {'p50 ms':>7} {'p99 ms':>7}"
            f"  server CPU a search: primary / replica"
        )
        for w in loads:
            base = cells[(w.name, "primary only")].rate
            for name, _ in configs:
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


# -- main ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, directory: Path) -> None:
    started = time.perf_counter()
    ram = psutil.virtual_memory().total
    print(machine_line("bench/scale.py"))
    corpus = make_corpus(args)
    server = await asyncio.to_thread(EmbeddedServer(directory / "primary", cleanup="delete").start)
    try:
        await ensure_database(server.url("postgres"), "docstore")
        url = server.url("docstore")
        part_url = server.url(PART_DB)
        meters = {"primary": CpuMeter(server.server.get_postmaster_info().pid)}
        opts: dict[str, Any] = {"pool_min_size": 4, "pool_max_size": args.pool_size}
        async with docstore.connect(url, **opts) as store:
            version = await store.fetchval("SELECT version()")
            pgvector = await store.fetchval(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            )
            shared = await store.fetchval("SHOW shared_buffers")
            print(f"{version.split(' on ')[0]}, pgvector {pgvector}, shared_buffers {shared}")
            mix = ", ".join(
                f"{t} {s * 100:.0f}% ({len(corpus.rows_by_type[t])})"
                for t, s in corpus.shares.items()
            )
            print(
                f"corpus: {args.rows:,} x {DIM} in {args.clusters} clusters (affinity to doc_type"
                f" {args.affinity}), content {args.content_chars} chars; doc_types: {mix};"
                f" {len(corpus.big_sources)} sources of {args.big_source},"
                f" {len(corpus.small_sources)} of ~{args.small_source}"
            )
            t0 = time.perf_counter()
            await store.documents.upsert_many(documents(corpus, args.content_chars))
            await store.execute("VACUUM ANALYZE documents")
            loaded = time.perf_counter() - t0
        part_built = None
        if not args.skip_partition:
            part_built = await make_partitioned(
                server.url("postgres"), part_url, [t for t in corpus.shares if t != args.filler]
            )
        opts["pool_min_size"] = args.pool_size  # every connection open before measuring
        async with docstore.connect(url, **opts) as store:
            index, built = await clock(store.create_vector_index())
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
                part = await docstore.connect(part_url, pool_min_size=1, pool_max_size=4)
            try:
                await storage(store, part, ram)
                if not args.skip_throughput:
                    await throughput(store, custom, corpus, args, meters)
                    await generic_plan_check(store, corpus, args)
                await cliff(store, custom, part, corpus, args)
                if part is not None:
                    await part_writes(part)
            finally:
                await custom.close()
                if part is not None:
                    await part.close()
        if not args.skip_replica:
            await replica_stage(server, directory, corpus, args, meters)
    finally:
        await asyncio.to_thread(server.close)
    print(f"\ndone in {time.perf_counter() - started:.0f} s, {load_line()}")


async def replica_stage(
    server: EmbeddedServer,
    directory: Path,
    corpus: Corpus,
    args: argparse.Namespace,
    meters: dict[str, CpuMeter],
) -> None:
    url = server.url("docstore")
    admin = await asyncpg.connect(server.url("postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {PART_DB}")
        await admin.execute("CHECKPOINT")
    finally:
        await admin.close()
    t0 = time.perf_counter()
    replica = await asyncio.to_thread(server.start_replica, directory / "replica")
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


async def part_writes(part: docstore.Store) -> None:
    """docstore's own writes and reads, unchanged, against the partitioned table, and what
    does not carry over."""
    docs = [
        Document(
            doc_type=t,
            source_name="partition-check",
            doc_path=f"p{i}",
            content=f"partition check {i}",
            embedding=np.full(DIM, 1.0 / np.sqrt(DIM), dtype=np.float32),
        )
        for i, t in enumerate(["rust", "rust", "a-new-doc-type"])
    ]
    first = await part.documents.upsert_many(docs)
    again = await part.documents.upsert_many(
        [docs[0].model_copy(update={"content": "changed"}), docs[1], docs[2]]
    )
    got = await part.documents.get_by_key("a-new-doc-type", "partition-check", "p2")
    where = await part.fetchval(
        "SELECT tableoid::regclass::text FROM documents WHERE doc_type = 'a-new-doc-type'"
    )
    deleted = await part.documents.delete_source("rust", "partition-check")
    print(
        f"\n    docstore unchanged on the partitioned copy: upsert_many {first}; again {again};"
        f" get_by_key found={got is not None} (in {where}); delete_source removed {deleted}"
    )
    usage = await part.disk_usage()
    indexes = await part.vector_indexes()
    try:
        await part.execute("CREATE INDEX CONCURRENTLY scale_check ON documents (token_count)")
        concurrently = "accepted"
    except docstore.DocstoreError as exc:
        concurrently = f"refused ({str(exc).splitlines()[0][:130]})"
    print(
        f"    but: disk_usage().documents_table_bytes = {usage.documents_table_bytes:,} (the"
        f" parent has no storage); vector_indexes() sees"
        f" {[(i.name, i.usable, i.size_bytes) for i in indexes]}; CREATE INDEX CONCURRENTLY on"
        f" the partitioned table (create_vector_index's default): {concurrently}"
    )


def shares(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if not name or not value:
        raise argparse.ArgumentTypeError("use doc_type=percent, e.g. rust=50")
    return name, float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument(
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
    parser.add_argument("--filler", default="misc", help="doc_type left out of the cliff")
    parser.add_argument("--big-source", type=int, default=1000)
    parser.add_argument("--small-source", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--jitter", type=float, default=0.3)
    parser.add_argument(
        "--affinity",
        type=float,
        default=0.0,
        help="share of a doc_type's documents drawn from its own topics",
    )
    parser.add_argument("--content-chars", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--pool-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--duration", type=float, default=1.5, help="seconds a cell")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cliff-queries", type=int, default=40)
    parser.add_argument("--replica-batches", type=int, default=6)
    parser.add_argument("--replica-batch-size", type=int, default=500)
    parser.add_argument("--split-concurrency", type=int, default=16)
    parser.add_argument("--skip-throughput", action="store_true", help="skip (b)")
    parser.add_argument("--skip-partition", action="store_true", help="no partitioned copy in (c)")
    parser.add_argument("--skip-replica", action="store_true", help="skip (d)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="docstore-scale-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
