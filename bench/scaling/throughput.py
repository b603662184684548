"""(b) One primary: searches/s, p50/p99 and CPU a search at several concurrencies for the Doc
Server's searches, closed loop, on default and on custom plans; and EXPLAIN ANALYZE of the
halfvec SQL under a custom and a generic plan."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import common
from common import DIM, CpuMeter, load_line

import docstore
from docstore.search import queries

from .corpus import LIMIT, SCOPED_LIMIT, Corpus, Workload, in_rounds, workloads


async def throughput(
    store: docstore.Store,
    custom: docstore.Store,
    corpus: Corpus,
    args: argparse.Namespace,
    meters: dict[str, CpuMeter],
) -> None:
    """Every workload (the halfvec ones on ``custom`` too) at every ``--concurrency``."""
    loads: list[Workload] = []
    for w in workloads(corpus, args.seed):
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
    print(f"    {load_line()} before")
    plans = {(w.name, c): [(calls[w.name], c)] for w in loads for c in args.concurrency}
    cells = await in_rounds(plans, args, meters)
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


async def generic_plan_check(store: docstore.Store, corpus: Corpus) -> None:
    """Why [custom plans] differ: EXPLAIN ANALYZE of docstore's halfvec SQL for one source under
    a custom and a generic plan (asyncpg prepares every statement; after five runs PostgreSQL
    may keep a generic plan for it)."""
    first = next(iter(corpus.shares))
    source = corpus.of_first_type(corpus.big_sources + corpus.small_sources)[0]
    q = corpus.near(corpus.rows_by_source[source], 1, 5)[0]
    sql, params = queries.vector_search_sql(
        q,
        dim=DIM,
        limit=SCOPED_LIMIT,
        filter={"doc_type": first, "source_name": source},
        candidates=max(SCOPED_LIMIT * store.settings.search_oversample, 10),
        candidate_source="halfvec",
    )
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
                        f"{common.vector_literal(q)}, {params[1]}, '{first}', '{source}',"
                        f" {params[4]})"
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
