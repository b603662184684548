"""What ``bench/search.py`` measured on the clustered corpus before issue 14, and still does:
``store.evaluate_recall()`` with the defaults, ``search()`` against the same SQL on raw
asyncpg (:func:`overhead`), and ``--sweep``'s grid of settings."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import asyncpg
import common
import numpy as np
from common import DIM, Goal
from pgvector.asyncpg import register_vector

import docstore

from .corpora import LIMIT, Corpus
from .passes import TODAY


async def raw_ann(conn: Any, sql: str, params: list[Any], ef: int) -> None:
    """The statement docstore's unfiltered ANN search sends: one statement, its ``hnsw.*``
    settings inside it (``queries.ann_search_sql``)."""
    await conn.fetch(sql, *params)


async def overhead(
    store: docstore.Store, url: str, qs: np.ndarray, rounds: int = 3
) -> dict[str, tuple[float, float]] | None:
    """docstore's search() against the same SQL through raw asyncpg — a pool (how a service,
    the legacy Doc Server included, uses asyncpg) and one dedicated connection — query by
    query, rotating which goes first (all ANN: the same cache state), ``rounds`` times over
    the queries. Returns, per path, (p50 ms, median of per-query ratios docstore / path); the
    per-query ratio cancels the slow drifts of a noisy 2-core machine. Both sides use the
    same settings, passed to search() explicitly. None when docstore's internals that build
    the raw SQL (``docstore.search.queries``) are no longer what this expects."""
    try:
        from docstore.search import planner, queries

        ef = getattr(store.settings, "hnsw_ef_search", None) or TODAY["ef_search"]
        factor = getattr(store.settings, "search_oversample", None) or TODAY["oversample"]
        candidates = planner.ann_candidates(LIMIT, factor)
        ef = max(ef, candidates)
        plans = [
            queries.ann_search_sql(q, dim=DIM, limit=LIMIT, candidates=candidates, ef_search=ef)
            for q in qs
        ]
    except (ImportError, AttributeError, TypeError) as exc:
        print(f"  raw asyncpg comparison skipped: docstore's internals changed ({exc!r})")
        return None
    raw = await asyncpg.connect(url)
    await register_vector(raw)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=5, init=register_vector)
    try:

        async def via_docstore(i: int) -> None:
            await store.search(qs[i % len(qs)], limit=LIMIT, ef_search=ef, oversample=factor)

        async def via_pool(i: int) -> None:
            async with pool.acquire() as conn:
                await raw_ann(conn, *plans[i % len(qs)], ef)

        async def via_connection(i: int) -> None:
            await raw_ann(raw, *plans[i % len(qs)], ef)

        calls = {"docstore": via_docstore, "pool": via_pool, "connection": via_connection}
        times, _ = await common.interleave(calls, len(qs) * rounds)
    finally:
        await raw.close()
        await pool.close()
    ours = times["docstore"]
    return {
        name: (statistics.median(values) * 1000, common.median_ratio(ours, values))
        for name, values in times.items()
    }


async def sweep(store: docstore.Store, qs: np.ndarray, args: argparse.Namespace) -> list[Any]:
    print("\n  sweep:  ef_search  candidates  recall  worst  ANN p50  exact p50  speed-up")
    rows = []
    for ef in args.sweep_ef:
        for factor in args.sweep_oversample:
            s = await store.evaluate_recall(
                limit=LIMIT, query_vectors=list(qs), ef_search=ef, oversample=factor
            )
            rows.append(s.model_dump(mode="json"))
            print(
                f"  {'':8}{s.ef_search:>9}  {s.candidates:>10}  {s.recall:.3f}"
                f"  {s.min_recall:5.2f}  {s.ann.p50:7.2f}  {s.exact.p50:9.2f}  {s.speedup:7.1f}x"
            )
    return rows


async def clustered_extras(
    store: docstore.Store, url: str, corpus: Corpus, args: argparse.Namespace, fig: dict[str, Any]
) -> list[Goal]:
    """What this script measured before issue 14: evaluate_recall() with the defaults, and
    search() against the same SQL on raw asyncpg."""
    qs = corpus.queries
    if args.sweep:
        fig["sweep"] = await sweep(store, qs, args)
    r = await store.evaluate_recall(limit=LIMIT, query_vectors=list(qs))
    paths = await overhead(store, url, qs)
    fig["evaluate_recall"] = r.model_dump(mode="json")
    print(
        f"\n  store.evaluate_recall() with the defaults: ef_search {r.ef_search},"
        f" {r.candidates} candidates, {r.sample} queries: recall {r.recall:.3f} (worst"
        f" {r.min_recall:.2f}); exact p50 {r.exact.p50:.2f} ms p95 {r.exact.p95:.2f};"
        f" ANN p50 {r.ann.p50:.2f} ms p95 {r.ann.p95:.2f}"
    )
    goals: list[Goal] = [
        (
            f"recall@{LIMIT} >= 0.98 by default settings (evaluate_recall)",
            r.recall >= 0.98,
            f"{r.recall:.3f} (worst query {r.min_recall:.2f})",
        ),
        (
            "ANN >= 20x faster than exact (evaluate_recall p50)",
            r.speedup >= 20,
            f"{r.speedup:.1f}x",
        ),
    ]
    if paths is not None:
        fig["overhead"] = paths
        print(
            f"  overhead: docstore search() p50 {paths['docstore'][0]:.2f} ms; same SQL on a raw"
            f" asyncpg pool p50 {paths['pool'][0]:.2f} ms (docstore {paths['pool'][1]:.3f}x),"
            f" on one dedicated raw connection p50 {paths['connection'][0]:.2f} ms (docstore"
            f" {paths['connection'][1]:.3f}x)"
        )
        ratio = paths["pool"][1]
        goals.append(
            (
                "docstore search() <= 1.15x the same SQL on a raw asyncpg pool",
                ratio <= 1.15,
                f"{ratio:.3f}x",
            )
        )
    return goals
