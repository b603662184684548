"""(c) The filtered-index cliff: a doc_type-scoped search through the HNSW index with a filter
as the doc_type's share shrinks, against the same search on the partitioned copy
(:mod:`scaling.partition`), against docstore's own choice of plan and against the halfvec
scan docstore uses for small scopes; recall against the exact scan."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Awaitable, Callable

import common
import numpy as np
from common import load_line
from common import percentile as p

import docstore
from docstore.search.planner import HALFVEC_SCOPE_ROWS

from .corpus import LIMIT, Corpus
from .plans import (
    EF_SEARCH,
    ann_sql,
    explain_pruning,
    halfvec_sql,
    plan_of,
    run_ann,
    scan_of,
)

Search = Callable[[np.ndarray], Awaitable[list[int]]]
"""One variant: the ids a doc_type-scoped search for a query vector found."""

VARIANTS = """\
    exact        store.search(q, doc_type=T, exact=True): the truth for recall (first)
    ann          store.search(q, doc_type=T, exact=False) on the flat table: docstore's
                 ANN SQL, whatever plan PostgreSQL picks for it
    hnsw         the same SQL with enable_sort off too: the filtered HNSW scan
    halfvec      docstore's halfvec SQL (its choice for scopes <= HALFVEC_SCOPE_ROWS)
    halfvec-cp   the same on connections with plan_cache_mode=force_custom_plan
    partition    store.search(q, doc_type=T, exact=False) on the LIST-partitioned copy
    part-hnsw    the same with enable_sort off: the pruned partition's own HNSW index"""


def ann_variants(store: docstore.Store, doc_type: str) -> tuple[Search, Search]:
    """``store.search(exact=False)``, and its ANN SQL forced onto the HNSW index."""

    async def searched(q: np.ndarray) -> list[int]:
        return (await store.search(q, doc_type=doc_type, limit=LIMIT, exact=False)).ids

    async def forced(q: np.ndarray) -> list[int]:
        sql, params = ann_sql(q, doc_type)
        return [r["id"] for r in await run_ann(store, sql, params, force_hnsw=True)]

    return searched, forced


def halfvec_variant(store: docstore.Store, doc_type: str, candidates: int) -> Search:
    async def search(q: np.ndarray) -> list[int]:
        sql, params = halfvec_sql(q, doc_type, candidates)
        return [r["id"] for r in await store.fetch(sql, *params)]

    return search


async def cliff(
    flat: docstore.Store,
    custom: docstore.Store,
    part: docstore.Store | None,
    corpus: Corpus,
    args: argparse.Namespace,
) -> None:
    """Every doc_type but ``--filler``: its variants interleaved query by query, printed."""
    types = [t for t in corpus.shares if t != args.filler]
    max_scan = await flat.fetchval("SELECT current_setting('hnsw.max_scan_tuples', true)")
    print(
        f"\n(c) FILTERED-INDEX CLIFF: a doc_type-scoped search (limit {LIMIT}) as the doc_type's"
        f" share shrinks; {args.cliff_queries} queries near its documents, {args.rounds}"
        f" interleaved rounds; HALFVEC_SCOPE_ROWS = {HALFVEC_SCOPE_ROWS},"
        f" ef_search {flat.settings.hnsw_ef_search or EF_SEARCH}, hnsw.max_scan_tuples {max_scan}\n"
        + VARIANTS
    )
    results: list[str] = []
    print(f"    {load_line()} before")
    for t in types:
        rows = corpus.rows_by_type[t]
        qs = corpus.near(rows, args.cliff_queries, args.seed + 500 + len(rows))
        results += await one_type(flat, custom, part, corpus, t, qs, args.rounds)
    print(f"    {load_line()} after\n")
    print(f"      {'variant':12} {'p50 ms':>7} {'p95 ms':>7} {'recall':>7}  plan (EXPLAIN ANALYZE)")
    for line in results:
        print(line)
    if part is not None:
        print(f"\n    EXPLAIN ANALYZE on the partitioned copy, doc_type {types[-1]!r} a parameter:")
        for line in await explain_pruning(part, qs[0], types[-1]):
            print(f"      {line}")


async def one_type(
    flat: docstore.Store,
    custom: docstore.Store,
    part: docstore.Store | None,
    corpus: Corpus,
    t: str,
    qs: np.ndarray,
    rounds: int,
) -> list[str]:
    """The result lines of doc_type ``t``: the exact scan (the truth), then every variant."""
    truth: list[set[int]] = []
    exact_ms: list[float] = []
    for q in qs:
        r, took = await common.clock(flat.search(q, doc_type=t, limit=LIMIT, exact=True))
        exact_ms.append(took * 1000)
        truth.append(set(r.ids))
    picked = (await flat.search(qs[0], doc_type=t, limit=LIMIT)).mode
    picked_part = (await part.search(qs[0], doc_type=t, limit=LIMIT)).mode if part else "-"
    half_candidates = max(LIMIT * flat.settings.search_oversample, 10)
    variants: dict[str, Search] = dict(zip(("ann", "hnsw"), ann_variants(flat, t), strict=True))
    variants["halfvec"] = halfvec_variant(flat, t, half_candidates)
    variants["halfvec-cp"] = halfvec_variant(custom, t, half_candidates)
    # the plan each variant runs, from EXPLAIN ANALYZE of its SQL
    how = {
        "exact": "exact scan",
        "ann": scan_of(await plan_of(flat, *ann_sql(qs[0], t), ann=True)),
        "hnsw": scan_of(await plan_of(flat, *ann_sql(qs[0], t), ann=True, force_hnsw=True)),
        "halfvec": scan_of(await plan_of(flat, *halfvec_sql(qs[0], t, half_candidates), ann=False)),
        "halfvec-cp": "as halfvec, custom plans",
    }
    if part is not None:
        variants["partition"], variants["part-hnsw"] = ann_variants(part, t)
        how["partition"] = scan_of(await plan_of(part, *ann_sql(qs[0], t), ann=True))
        how["part-hnsw"] = scan_of(
            await plan_of(part, *ann_sql(qs[0], t), ann=True, force_hnsw=True)
        )
    for fn in variants.values():  # warm-up
        for q in qs[:5]:
            await fn(q)
    n = len(qs)
    calls = {name: (lambda i, fn=fn: fn(qs[i % n])) for name, fn in variants.items()}
    seconds, found = await common.interleave(calls, rounds * n)
    # per query, its latencies (ms) over the rounds
    per_query = {
        name: [[s * 1000 for s in values[i::n]] for i in range(n)]
        for name, values in seconds.items()
    }

    def ratio(a: str, b: str) -> float:
        """Median over queries of the ratio of their median latencies."""
        return statistics.median(
            statistics.median(x) / statistics.median(y)
            for x, y in zip(per_query[a], per_query[b], strict=True)
        )

    lines = [
        f"    {t} ({corpus.shares[t] * 100:.0f}%, {len(corpus.rows_by_type[t]):,} rows):"
        f" docstore's default mode {picked} (flat) / {picked_part} (partitioned)",
        f"      {'exact':12} {p(exact_ms, 50):>7.2f} {p(exact_ms, 95):>7.2f} {1.0:>7.3f}"
        f"  {how['exact']}",
    ]
    for name in variants:
        ms = [s * 1000 for s in seconds[name]]
        recall = statistics.mean(common.recalls(truth, found[name][:n], LIMIT))
        extra = ""
        if name in ("hnsw", "ann", "halfvec", "halfvec-cp") and part is not None:
            extra = f"  ({ratio(name, 'part-hnsw'):.2f}x part-hnsw)"
        lines.append(
            f"      {name:12} {p(ms, 50):>7.2f} {p(ms, 95):>7.2f} {recall:>7.3f}"
            f"  {how[name]}{extra}"
        )
    return lines
