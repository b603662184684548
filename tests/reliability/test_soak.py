"""Soak: mixed traffic at concurrency 32 against the embedded server, zero errors, stable RSS.

``DOCSTORE_SOAK_SECONDS`` (default 120, what CI runs) sets the duration; shorten it locally.

The database holds 3,400 documents (seeded random 3,072-dim float32 vectors, 31 sources) with
the HNSW index (``store.create_vector_index()``) and the full-text index. 32 tasks share one
store with the default pool of 5 and run, by weight:

    ANN search 30 (a third of them filtered on metadata), exact search 10, get_by_key 20,
    search_text 15, upsert_many of 5 documents 15, count 10.

The upserts rewrite 5 of 400 "churn" keys with new content and vectors (updates, so the table
keeps its size while the HNSW and GIN indexes take every write). Latencies include the wait
for a pooled connection, as a caller sees them.

**RSS stable** means: the process's resident set is sampled twice a second; the first 25% of
the run is warm-up (caches, statement caches, allocator arenas fill); of the samples after
it, the median of the first 20% and the median of the last 20% differ by at most 10%.
Medians, not single samples, so one garbage-collection moment does not decide.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import gc
import os
import random
import statistics
import time

import numpy as np
import psutil
import pytest

import docstore
from tests.reliability.conftest import DIM, Figures, random_docs

SOAK_SECONDS = float(os.environ.get("DOCSTORE_SOAK_SECONDS", "120"))
CONCURRENCY = 32
SOURCES = 30
DOCS_PER_SOURCE = 100
CHURN_KEYS = 400
WARMUP_SHARE = 0.25
RSS_WINDOW_SHARE = 0.20
RSS_TOLERANCE = 0.10
OPERATIONS = {
    "search ann": 30,
    "search exact": 10,
    "get_by_key": 20,
    "search_text": 15,
    "upsert_many(5)": 15,
    "count": 10,
}
TEXT_QUERIES = ["spawn tasks", "async runtime", '"async runtime" -channel', "channel 3 or spawn"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SOAK_SECONDS + 300)]


class Traffic:
    """What the workers record: latencies (ms) per operation, errors, operation count."""

    def __init__(self) -> None:
        self.latencies: dict[str, array.array[float]] = {op: array.array("d") for op in OPERATIONS}
        self.errors: collections.Counter[str] = collections.Counter()
        self.first_errors: list[str] = []


async def _seed(store: docstore.Store) -> None:
    for s in range(SOURCES):
        docs = random_docs(DOCS_PER_SOURCE, source=f"crate{s}", seed=100 + s)
        await store.documents.upsert_many(docs)
    await store.documents.upsert_many(random_docs(CHURN_KEYS, source="churn", seed=99))
    await store.create_vector_index()
    await store.create_text_index()
    await store.execute("ANALYZE documents")


async def _worker(store: docstore.Store, n: int, deadline: float, traffic: Traffic) -> None:
    rnd = random.Random(n)
    gen = np.random.default_rng(n)
    ops, weights = list(OPERATIONS), list(OPERATIONS.values())
    while time.monotonic() < deadline:
        op = rnd.choices(ops, weights)[0]
        started = time.perf_counter()
        try:
            if op == "search ann":
                flt = {"metadata.i": {"$lt": 50}} if rnd.random() < 1 / 3 else None
                hits = await store.search(gen.standard_normal(DIM, dtype=np.float32), filter=flt)
                assert hits.mode == "ann" and len(hits) == 10
            elif op == "search exact":
                hits = await store.search(gen.standard_normal(DIM, dtype=np.float32), exact=True)
                assert len(hits) == 10
            elif op == "get_by_key":
                s, i = rnd.randrange(SOURCES), rnd.randrange(DOCS_PER_SOURCE)
                doc = await store.documents.get_by_key(
                    "rust", f"crate{s}", f"crate{s}/page{i}.html"
                )
                assert doc is not None
            elif op == "search_text":
                await store.search_text(rnd.choice(TEXT_QUERIES), limit=5)
            elif op == "upsert_many(5)":
                start = rnd.randrange(CHURN_KEYS - 5)
                docs = random_docs(5, source="churn", seed=rnd.randrange(2**32), start=start)
                result = await store.documents.upsert_many(docs)
                assert result.total == 5
            else:
                assert await store.documents.count() == SOURCES * DOCS_PER_SOURCE + CHURN_KEYS
        except Exception as exc:  # counted: the soak must see none
            traffic.errors[f"{op}: {type(exc).__name__}"] += 1
            if len(traffic.first_errors) < 5:
                traffic.first_errors.append(f"{op}: {type(exc).__name__}: {exc}")
            continue
        traffic.latencies[op].append((time.perf_counter() - started) * 1000)


async def _sample_rss(stop: asyncio.Event, samples: list[tuple[float, int]]) -> None:
    process = psutil.Process()
    while not stop.is_set():
        samples.append((time.monotonic(), process.memory_info().rss))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def test_soak_mixed_traffic_at_concurrency_32_has_no_errors_and_stable_rss(
    database_url: str, figures: Figures
) -> None:
    async with docstore.connect(database_url, application_name="soak") as store:
        seed_started = time.monotonic()
        await asyncio.wait_for(_seed(store), 240)
        seeded_in = time.monotonic() - seed_started
        gc.collect()

        traffic = Traffic()
        samples: list[tuple[float, int]] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_rss(stop, samples))
        started = time.monotonic()
        deadline = started + SOAK_SECONDS
        workers = [_worker(store, n, deadline, traffic) for n in range(CONCURRENCY)]
        await asyncio.wait_for(asyncio.gather(*workers), SOAK_SECONDS + 120)
        elapsed = time.monotonic() - started
        stop.set()
        await sampler
        # the tuner's own background work (a live-recall re-run, a recalibration on the soak's
        # queries) holds connections while it runs; what must be zero is what callers left
        await asyncio.wait_for(store.tuner.wait(), 120)
        pool = store.pool
        checked_out = pool.get_size() - pool.get_idle_size()

    total = sum(len(v) for v in traffic.latencies.values())
    figures.add(
        f"{elapsed:.0f} s at concurrency {CONCURRENCY}, pool 5, "
        f"{SOURCES * DOCS_PER_SOURCE + CHURN_KEYS} documents x {DIM} dims with HNSW + GIN "
        f"(seeded and indexed in {seeded_in:.1f} s): {total} operations, "
        f"{total / elapsed:.0f}/s, errors {sum(traffic.errors.values())}"
    )
    for op, values in traffic.latencies.items():
        if values:
            p50, p99 = np.percentile(np.frombuffer(values, dtype=np.float64), [50, 99])
            figures.add(f"  {op:<15} n={len(values):>6}  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")

    after_warmup = [rss for t, rss in samples if t >= started + WARMUP_SHARE * elapsed]
    window = max(1, int(len(after_warmup) * RSS_WINDOW_SHARE))
    first = statistics.median(after_warmup[:window])
    last = statistics.median(after_warmup[-window:])
    change = last / first - 1
    figures.add(
        f"  RSS after warm-up: median of first {window} samples {first / 2**20:.1f} MiB, "
        f"of last {window} {last / 2**20:.1f} MiB ({change:+.1%}; max "
        f"{max(after_warmup) / 2**20:.1f} MiB; {len(samples)} samples)"
    )

    assert not traffic.errors, f"errors: {dict(traffic.errors)}; first: {traffic.first_errors}"
    assert all(traffic.latencies.values()), "an operation never ran"
    assert checked_out == 0
    assert abs(change) <= RSS_TOLERANCE, f"RSS moved {change:+.1%} after warm-up"
