"""docstore's doc_type-scoped search SQL run and EXPLAINed as docstore runs it, optionally
forced onto the HNSW index, and the plans read back in a few words (:func:`scan_of`)."""

from __future__ import annotations

import itertools
from typing import Any

import common
import numpy as np
from common import DIM

import docstore
from docstore.search import planner, queries

from .corpus import LIMIT

# With enable_sort off as well, the only plan without a disabled Sort below the re-rank is
# the HNSW index scan: this is how the benchmark makes PostgreSQL take the index.
EF_SEARCH = 200  # the ANN default when these runs were made (before calibration, issue 14)
FORCE_HNSW = "SET LOCAL enable_sort = off"


def ann_sql(q: np.ndarray, doc_type: str) -> tuple[str, list[Any]]:
    """docstore's ANN SQL (as ``search(exact=False)`` builds it) for a doc_type scope."""
    candidates = planner.ann_candidates(LIMIT, 4)
    return queries.vector_search_sql(
        q, dim=DIM, limit=LIMIT, filter={"doc_type": doc_type}, candidates=candidates
    )


def halfvec_sql(q: np.ndarray, doc_type: str, candidates: int) -> tuple[str, list[Any]]:
    """docstore's halfvec SQL (its choice for scopes <= HALFVEC_SCOPE_ROWS) for a doc_type."""
    return queries.vector_search_sql(
        q,
        dim=DIM,
        limit=LIMIT,
        filter={"doc_type": doc_type},
        candidates=candidates,
        candidate_source="halfvec",
    )


def ef_search(store: docstore.Store) -> int:
    return max(store.settings.hnsw_ef_search or EF_SEARCH, planner.ann_candidates(LIMIT, 4))


async def run_ann(
    store: docstore.Store, sql: str, params: list[Any], *, force_hnsw: bool = False
) -> list[Any]:
    """Run ANN SQL as docstore does (SET LOCAL ef_search, iterative scan, no seq scan)."""
    async with store.transaction() as conn:
        await conn.execute(queries.ann_settings_sql(ef_search(store)))
        if force_hnsw:
            await conn.execute(FORCE_HNSW)
        return list(await conn.fetch(sql, *params))


async def plan_of(
    store: docstore.Store, sql: str, params: list[Any], *, ann: bool, force_hnsw: bool = False
) -> list[str]:
    """EXPLAIN ANALYZE lines (vectors cut out) of ``sql`` as docstore runs it."""
    async with store.transaction() as conn:
        if ann:
            await conn.execute(queries.ann_settings_sql(ef_search(store)))
        if force_hnsw:
            await conn.execute(FORCE_HNSW)
        rows = await conn.fetch(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sql, *params
        )
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
                        f" {name}({common.vector_literal(q)}, {params[1]}, '{doc_type}',"
                        f" {params[3]})"
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
