"""Benchmark: DocumentRepository.upsert_many against the floors, in one process.

    python bench/upsert.py                 # 5,000 docs x 3072, 5 repetitions, + RSS check
    python bench/upsert.py --rows 2000 --repeat 3 --rss-rows 0
    python bench/upsert.py --fresh         # a new database and one store (issue 14, A)
    python bench/upsert.py --fresh --rows 1000 --repeat 3 --json upsert-fresh.json

Each method runs once untimed (warm-up); then each pass starts from the same state (table
truncated, and for passes 2 and 3 reloaded by COPY and vacuumed) and times one method.
Methods are interleaved and the median is reported, with ratios against floors measured in
the same run:

  pass 1  insert into an empty table  floor: copy_records_to_table straight into documents
  pass 2  re-upsert, all unchanged    floor: executemany INSERT ON CONFLICT ... WHERE DISTINCT
  pass 3  re-upsert, 10% changed      floor: the same guarded executemany

and against the unguarded executemany upsert (DO UPDATE without a WHERE) that the legacy
server and vector-store libraries use. upsert_many is given Document objects built before
timing (as the floors are given ready tuples); its time includes the dimension check and
encoding of every embedding.

The RSS check runs upsert_many over a generator of N documents in a fresh subprocess for two
sizes and prints peak RSS (ru_maxrss) of each: flat memory means the two are about equal.

``--fresh`` measures instead the first population of a new deployment: a brand-new database,
whose schema the first ``docstore.connect()`` creates (what ``docstore init`` does), and ONE
store for the whole run: ``upsert_many`` of N new documents (insert pass), then of the very
same N again on the same store (unchanged pass), then — for the record, no goal — once more
after an ``ANALYZE documents``. The floors are measured on another new database of the same
kind: ``copy_records_to_table`` of the same rows into its fresh docstore table (the insert
pass's floor), then an unguarded ``executemany`` INSERT ... ON CONFLICT DO UPDATE (no WHERE)
of the same rows (what the unchanged pass is compared with). Each repetition uses new
databases (dropped afterwards) and alternates which of the two goes first; reported are the
median and the range, and the median of the per-repetition ratios. Goals (issue 14,
acceptance 1): insert pass <= 1.3x copy_records_to_table, unchanged pass >= 3x faster than
the unguarded executemany.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import common
import numpy as np
from common import DIM, WORDS, Goal, clock, timed

import docstore
from docstore import Document

COLUMNS = ["doc_type", "source_name", "doc_path", "content", "metadata", "embedding", "token_count"]
_VALUES = "($1, $2, $3, $4, $5::jsonb, $6, $7)"
UNGUARDED = f"""INSERT INTO documents AS d ({", ".join(COLUMNS)}) VALUES {_VALUES}
ON CONFLICT (doc_type, source_name, doc_path) DO UPDATE SET content = excluded.content,
  metadata = excluded.metadata, embedding = excluded.embedding,
  token_count = excluded.token_count"""
GUARDED = (
    UNGUARDED
    + """ WHERE (d.content, d.metadata, d.embedding, d.token_count) IS DISTINCT FROM
  (excluded.content, excluded.metadata, excluded.embedding, excluded.token_count)"""
)


def make_docs(n: int, seed: int = 1, source: str = "bench") -> Iterator[Document]:
    rng = np.random.default_rng(seed)
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(80, 300)))
        yield Document(
            source_name=f"{source}{i % 40}",
            doc_path=f"{source}/module{i // 40}/item{i}.html",
            content=" ".join(words) + f"\n\t'quoted' \\ back ✓ {i}",
            metadata={"crate_version": f"1.{i % 7}", "legacy_id": i},
            embedding=rng.standard_normal(DIM).astype(np.float32),
            token_count=len(words),
        )


def as_tuple(d: Document) -> tuple[Any, ...]:
    return (
        d.doc_type,
        d.source_name,
        d.doc_path,
        d.content,
        json.dumps(d.metadata),
        d.embedding,
        d.token_count,
    )


def executemany(
    store: docstore.Store, sql: str, data: list[tuple[Any, ...]]
) -> Callable[[], Awaitable[None]]:
    """One ``executemany`` of ``sql`` over ``data``, in one transaction."""

    async def run() -> None:
        async with store.transaction() as conn:
            await conn.executemany(sql, data)

    return run


async def reset(store: docstore.Store, docs: list[Document] | None) -> None:
    await store.execute("TRUNCATE documents")
    if docs:
        async with store.acquire() as conn:
            await conn.copy_records_to_table(
                "documents", records=[as_tuple(d) for d in docs], columns=COLUMNS
            )
    await store.execute("VACUUM ANALYZE documents")
    await store.execute("CHECKPOINT")


async def run_passes(store: docstore.Store, rows: int, repeat: int) -> dict[str, dict[str, float]]:
    docs = list(make_docs(rows))
    changed = list(docs)
    for i in range(0, rows, 10):
        changed[i] = changed[i].model_copy(update={"content": changed[i].content + " v2"})
    tuples = [as_tuple(d) for d in docs]
    changed_tuples = [as_tuple(d) for d in changed]

    async def copy_floor() -> None:
        async with store.acquire() as conn:
            await conn.copy_records_to_table("documents", records=tuples, columns=COLUMNS)

    def upsert(data: list[Document], expect: tuple[int, int, int]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            result = await store.documents.upsert_many(data)
            got = (result.inserted, result.updated, result.unchanged)
            assert got == expect, f"upsert_many reported {got}, expected {expect}"

        return run

    plan: dict[str, tuple[list[Document] | None, dict[str, Callable[[], Awaitable[None]]]]] = {
        "1 insert into empty table": (
            None,
            {
                "floor": copy_floor,
                "unguarded": executemany(store, UNGUARDED, tuples),
                "upsert_many": upsert(docs, (rows, 0, 0)),
            },
        ),
        "2 re-upsert, unchanged": (
            docs,
            {
                "floor": executemany(store, GUARDED, tuples),
                "unguarded": executemany(store, UNGUARDED, tuples),
                "upsert_many": upsert(docs, (0, 0, rows)),
            },
        ),
        "3 re-upsert, 10% changed": (
            docs,
            {
                "floor": executemany(store, GUARDED, changed_tuples),
                "unguarded": executemany(store, UNGUARDED, changed_tuples),
                "upsert_many": upsert(changed, (0, rows // 10, rows - rows // 10)),
            },
        ),
    }
    results: dict[str, dict[str, float]] = {}
    for name, (start, methods) in plan.items():
        times: dict[str, list[float]] = {m: [] for m in methods}
        for work in methods.values():  # warm-up: caches, plans, WAL segments
            await reset(store, start)
            await work()
        for _ in range(repeat):
            for method, work in methods.items():
                await reset(store, start)
                times[method].append(await timed(work))
        results[name] = {m: statistics.median(t) for m, t in times.items()}
    return results


def rss_child(url: str, rows: int) -> None:
    """In a fresh process: upsert ``rows`` generated documents, print peak RSS in MB."""

    async def main() -> None:
        async with docstore.connect(url) as store:
            await store.execute("TRUNCATE documents")
            result = await store.documents.upsert_many(make_docs(rows, seed=3))
            assert result.inserted == rows

    asyncio.run(main())
    print(common.peak_rss_mb())


def rss_check(url: str, sizes: list[int]) -> dict[int, float]:
    """Peak RSS (MB) of upserting each of ``sizes`` generated documents, each in a fresh process."""
    return {
        n: common.child_peak_rss_mb(__file__, "--rss-child", str(n), "--url", url) for n in sizes
    }


def report(results: dict[str, dict[str, float]], rows: int, peaks: dict[int, float]) -> bool:
    ok = True
    print(f"\nupsert benchmark: {rows} documents x {DIM} dims (median seconds)\n")
    header = (
        f"{'pass':28} {'floor':>8} {'unguarded':>10} {'upsert_many':>12}"
        f" {'vs floor':>9} {'vs unguarded':>13}"
    )
    print(header)
    print("-" * len(header))
    for name, t in results.items():
        vs_floor = t["upsert_many"] / t["floor"]
        vs_unguarded = t["upsert_many"] / t["unguarded"]
        print(
            f"{name:28} {t['floor']:8.3f} {t['unguarded']:10.3f} {t['upsert_many']:12.3f}"
            f" {vs_floor:8.2f}x {vs_unguarded:12.2f}x"
        )
        ok &= vs_floor <= 1.3 and vs_unguarded <= 1.0
        if name.startswith("2"):
            speedup = t["unguarded"] / t["upsert_many"]
            print(
                f"{'':28} pass 2: upsert_many is {speedup:.1f}x faster than unguarded (goal >= 3x)"
            )
            ok &= speedup >= 3
    for n, mb in peaks.items():
        print(f"peak RSS upserting {n} generated documents: {mb:.0f} MB (goal < 250 MB)")
        ok &= mb < 250
    if len(peaks) >= 2:
        small, large = min(peaks), max(peaks)
        growth = peaks[large] / peaks[small]
        print(f"RSS growth {small} -> {large} rows: {growth:.2f}x (flat means ~1.0)")
        ok &= growth < 1.15
    print("\ngoals met" if ok else "\nGOALS MISSED")
    return ok


# -- --fresh: a new database, one store ---------------------------------------------------------


async def fresh_docstore(
    server: common.BenchServer, name: str, docs: list[Document]
) -> dict[str, float]:
    """A new database, ONE store: insert pass, unchanged pass, unchanged after ANALYZE."""
    url = await server.create_database(name)
    rows = len(docs)
    try:
        async with docstore.connect(url) as store:  # creates the schema, as `docstore init`
            first, insert = await clock(store.documents.upsert_many(docs))
            again, unchanged = await clock(store.documents.upsert_many(docs))
            await store.execute("ANALYZE documents")
            third, analyzed = await clock(store.documents.upsert_many(docs))
    finally:
        await server.drop_database(name)
    for result, expect in ((first, (rows, 0, 0)), (again, (0, 0, rows)), (third, (0, 0, rows))):
        got = (result.inserted, result.updated, result.unchanged)
        assert got == expect, f"upsert_many reported {got}, expected {expect}"
    return {"insert": insert, "unchanged": unchanged, "unchanged_analyzed": analyzed}


async def fresh_floors(
    server: common.BenchServer, name: str, tuples: list[tuple[Any, ...]]
) -> dict[str, float]:
    """A new database of the same kind: copy_records_to_table of the rows into its fresh
    docstore table, then the unguarded executemany of the same rows."""
    url = await server.create_database(name)
    try:
        async with docstore.connect(url) as store:
            async with store.acquire() as conn:
                _, copy = await clock(
                    conn.copy_records_to_table("documents", records=tuples, columns=COLUMNS)
                )
            unguarded = await timed(executemany(store, UNGUARDED, tuples))
    finally:
        await server.drop_database(name)
    return {"copy": copy, "unguarded": unguarded}


async def run_fresh(server: common.BenchServer, rows: int, repeat: int) -> dict[str, list[float]]:
    """``repeat`` repetitions (after one small untimed one: imports, codecs, the server's
    first databases), alternating which of docstore and the floors goes first."""
    docs = list(make_docs(rows))
    tuples = [as_tuple(d) for d in docs]
    await fresh_docstore(server, "bench_fresh_warmup", docs[:100])
    await fresh_floors(server, "bench_fresh_warmup", tuples[:100])
    times: dict[str, list[float]] = {}
    for rep in range(repeat):
        runs = [
            fresh_docstore(server, f"bench_fresh_docstore_{rep}", docs),
            fresh_floors(server, f"bench_fresh_floors_{rep}", tuples),
        ]
        if rep % 2:
            runs.reverse()
        for work in runs:
            for key, seconds in (await work).items():
                times.setdefault(key, []).append(seconds)
        print(
            f"  repetition {rep + 1}: "
            + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items())
            + f"; {common.load_line()}",
            flush=True,
        )
    return times


def report_fresh(times: dict[str, list[float]], rows: int) -> tuple[bool, list[Goal]]:
    def cell(key: str) -> str:
        return f"{common.spread(times[key])} s"

    print(
        f"\nfresh database, one store: {rows:,} documents x {DIM}, {len(times['insert'])}"
        " repetitions, each on new databases; median (min–max)\n"
    )
    print(f"  insert pass     upsert_many {cell('insert'):28} copy_records_to_table {cell('copy')}")
    print(
        f"  unchanged pass  upsert_many {cell('unchanged'):28} unguarded executemany"
        f" {cell('unguarded')}"
    )
    print(f"  (unchanged again after ANALYZE documents, same store: {cell('unchanged_analyzed')})")
    insert_ratios = [a / b for a, b in zip(times["insert"], times["copy"], strict=True)]
    speedups = [a / b for a, b in zip(times["unguarded"], times["unchanged"], strict=True)]
    print(
        f"  per repetition: insert / copy {common.spread(insert_ratios)},"
        f" unguarded / unchanged {common.spread(speedups)}\n"
    )
    goals: list[Goal] = [
        (
            "insert pass <= 1.3x copy_records_to_table",
            statistics.median(insert_ratios) <= 1.3,
            f"{statistics.median(insert_ratios):.2f}x",
        ),
        (
            "unchanged pass >= 3x faster than the unguarded executemany",
            statistics.median(speedups) >= 3,
            f"{statistics.median(speedups):.2f}x",
        ),
    ]
    return common.print_goals(goals), goals


async def main(args: argparse.Namespace) -> bool:
    print(common.machine_line("bench/upsert.py"))
    async with common.bench_server(args.url) as server:
        if args.fresh:
            times = await run_fresh(server, args.rows, args.repeat)
            ok, goals = report_fresh(times, args.rows)
            if args.json:
                figures = {"rows": args.rows, "seconds": times, "goals": common.goals_json(goals)}
                common.write_json(
                    args.json, {"machine": common.machine_line("bench/upsert.py")} | figures
                )
            return ok
        url = await server.database("docstore")
        async with docstore.connect(url) as store:
            print(await common.server_line(store))
            results = await run_passes(store, args.rows, args.repeat)
        sizes = [n for n in (args.rss_rows // 5, args.rss_rows) if n > 0]
        peaks = await asyncio.to_thread(rss_check, url, sizes) if sizes else {}
    return report(results, args.rows, peaks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--repeat", type=int, help="repetitions (default 5; --fresh: 3)")
    parser.add_argument("--rss-rows", type=int, default=50_000)
    parser.add_argument("--fresh", action="store_true", help="a new database, one store")
    parser.add_argument("--json", help="--fresh: write the figures to this file")
    parser.add_argument("--url", help="database to use (default: a throwaway embedded one)")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.repeat is None:
        ns.repeat = 3 if ns.fresh else 5
    if ns.rss_child is not None:
        rss_child(ns.url, ns.rss_child)
    else:
        sys.exit(0 if asyncio.run(main(ns)) else 1)
