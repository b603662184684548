"""Benchmark: the scope rule past 3,000 rows — HNSW index or halfvec scan, by share and calibration.

    python bench/scope_rule.py            # tables of 20,000 / 36,000 / 100,000 / 170,000 rows
    python bench/scope_rule.py --quick    # 20,000 / 36,000 rows, 100 queries (~3 min)

What ``planner.halfvec_scope`` buys and costs for a large doc_type/source_name scope, on real
text with real questions. A scope past ``HALFVEC_SCOPE_ROWS`` (3,000) takes the HNSW index
("ann") only while it keeps ``MIN_ANN_SHARE`` (5 %) of the table and the stored calibration
met its recall target; otherwise it is ranked on ``embedding_half`` ("halfvec": every row of
the scope read, the best re-ranked exactly) up to ``HALFVEC_FILTER_ROWS`` (20,000) rows.

Data: the real-text corpus (``../shared/corpora``: 7,959 Rust API passages, all-MiniLM-L6-v2
lifted to 3,072 dimensions) and its 200 real questions (none is a stored document). Two scopes
of one table:

  std     source_name "std": the whole corpus, 7,959 documents
  sub4k   doc_type "sub4k": a random 4,000 of them (the rest have doc_type "rust"), the size
          of the integrator's crate (4,000 documents in a 36,000-row table)

The rest of the table is filler in 40 other sources, placed where the real documents are: each
a blend of a real document and one of its 20 nearest (weight 0-0.5), plus noise in the
corpus's 384-dimensional subspace (cosine ~0.95 to the blend) — other crates documenting the
same APIs, so a filtered graph walk must pass them. The table grows step by step (filler
appended, VACUUM ANALYZE, the HNSW index dropped and rebuilt with docstore's own calibration on
probes), so each step puts both scopes at a smaller share.

At each step, for each scope, the 200 questions (top 10) run interleaved query by query
(``common.interleave``) through five calls of ``store.search``:

  exact          exact=True: every row of the scope on the full vectors (the latency baseline)
  ann            exact=False: the HNSW index as docstore runs it (forced, calibrated
                 ef_search, second pass for flat candidate lists)
  halfvec        the halfvec shape (the planner's bound patched so the scope rule picks it)
  rule, met      the default plan under the step's calibration with met_target true
  rule, missed   the same calibration with met_target false

(the two calibrations are swapped in ``store.tuner``'s cache between calls; once per step the
same modes are checked through the stored row, ``docstore_search_calibration``). Recall@10 is
against numpy's exact top 10 of the scope (ties at the 10th similarity count either way).
Printed per step: the calibration, the planner's view of each scope (rows, share), and per call
the modes it ran, recall@10 mean / worst / questions under 0.7, p50 and p95 ms, and latency as
ratios to exact (median per-question ratio; p95 over p95) and to the forced index.

Goal (exit status 1 when missed): the rule's choice has recall@10 ≥ the forced index's at every
step, scope and calibration state.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import common
import numpy as np
from common import DIM

import docstore
from docstore import Document
from docstore.search import planner
from docstore.search.results import SearchResults
from docstore.search.tuning import Calibration
from docstore.search.vector import _count_scope

STEPS = (20_000, 36_000, 100_000, 170_000)
QUICK_STEPS = (20_000, 36_000)
SUB_ROWS = 4_000
SOURCES = 40
LIMIT = 10
FILLER_COS = 0.95  # filler's cosine to the blend it was made from
CALLS = ("exact", "ann", "halfvec", "rule, met", "rule, missed")
CHECK_SQL = (
    "UPDATE docstore_search_calibration SET calibration ="
    " jsonb_set(calibration, '{met_target}', to_jsonb($1::boolean)) WHERE metric = 'cosine'"
)


def load_corpus() -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(texts, paths, X 3072-d, Q 3072-d, R) of the real-text corpus; R its 3072 x 384 lift."""
    sys.path.insert(0, str(common.shared_dir() / "corpora"))
    from corpus import lift_matrix, load  # type: ignore[import-not-found]

    texts, paths, x, _, q = load()
    return texts, paths, x, q, lift_matrix().astype(np.float32)


def filler_384(x384: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` filler vectors in the corpus's 384-d space (module docstring)."""
    sims = x384 @ x384.T
    np.fill_diagonal(sims, -2)
    nearest = np.argpartition(-sims, 20, axis=1)[:, :20]
    rng = np.random.default_rng(seed)
    base = rng.integers(0, len(x384), n)
    other = nearest[base, rng.integers(0, 20, n)]
    w = rng.uniform(0, 0.5, n).astype(np.float32)[:, None]
    out = common.unit((1 - w) * x384[base] + w * x384[other])
    sigma = math.sqrt((1 / FILLER_COS**2 - 1) / x384.shape[1])
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(sigma)
    return common.unit(out).astype(np.float32)


def real_documents(
    texts: list[str], paths: list[str], x: np.ndarray, sub: set[int]
) -> Iterator[Document]:
    for i in np.random.default_rng(5).permutation(len(texts)):
        yield Document(
            doc_type="sub4k" if int(i) in sub else "rust",
            source_name="std",
            doc_path=paths[i],
            content=texts[i],
            embedding=x[i],
        )


def filler_documents(f384: np.ndarray, r: np.ndarray, start: int, stop: int) -> Iterator[Document]:
    for lo in range(start, stop, 4096):
        hi = min(lo + 4096, stop)
        block = common.unit(f384[lo:hi] @ r.T)
        for j, vector in zip(range(lo, hi), block, strict=True):
            yield Document(
                source_name=f"crate{j % SOURCES:02d}",
                doc_path=f"filler/{j}",
                content=common.filler_text(j, 20),
                embedding=vector,
            )


def describe(cal: Calibration) -> str:
    second = (
        f", second pass ef {cal.escalation_ef_search} below spread {cal.escalate_below:.4f}"
        f" ({cal.escalation_rate:.0%} of its queries)"
        if cal.escalate_below is not None
        else ", no second pass"
    )
    return (
        f"ef_search {cal.ef_search}{second}; expected recall {cal.expected_recall:.3f}"
        f" (lowest {cal.lowest_recall:.2f}) on {cal.queries} {cal.query_source}, target"
        f" {cal.target_recall}: met_target {cal.met_target}; {cal.seconds:.0f} s"
    )


class Scope:
    """One measured scope: its ``search`` keyword, rows (corpus indices) and ground truth."""

    def __init__(
        self, name: str, kw: dict[str, Any], rows: np.ndarray, q: np.ndarray, x: np.ndarray
    ):
        self.name, self.kw, self.rows = name, kw, rows
        ids, sims = common.exact_neighbours(q, [(0, x[rows])], LIMIT + 10)
        self.truth = common.truth_sets(rows[ids], sims, LIMIT)


async def measure(
    store: docstore.Store,
    scope: Scope,
    q: np.ndarray,
    cal: Calibration,
    index_of: dict[str, int],
    warmup: int,
) -> dict[str, dict[str, Any]]:
    met = cal.model_copy(update={"met_target": True})
    missed = cal.model_copy(update={"met_target": False})

    def use(c: Calibration) -> None:  # the calibration in force (untimed: before the clock)
        store.tuner._cache["cosine"] = (time.monotonic(), c)

    async def forced_halfvec(i: int) -> SearchResults:
        saved = planner.HALFVEC_ALWAYS_ROWS
        planner.HALFVEC_ALWAYS_ROWS = 10**9
        try:
            return await store.search(q[i], limit=LIMIT, **scope.kw)
        finally:
            planner.HALFVEC_ALWAYS_ROWS = saved

    def call(c: Calibration, run: Callable[[int], Awaitable[SearchResults]]) -> Any:
        def one(i: int) -> Awaitable[SearchResults]:
            use(c)
            return run(i)

        return one

    calls = {
        "exact": call(met, lambda i: store.search(q[i], limit=LIMIT, exact=True, **scope.kw)),
        "ann": call(met, lambda i: store.search(q[i], limit=LIMIT, exact=False, **scope.kw)),
        "halfvec": call(met, forced_halfvec),
        "rule, met": call(met, lambda i: store.search(q[i], limit=LIMIT, **scope.kw)),
        "rule, missed": call(missed, lambda i: store.search(q[i], limit=LIMIT, **scope.kw)),
    }
    await common.interleave(calls, warmup)  # caches and plans warmed, not counted
    seconds, results = await common.interleave(calls, len(q))
    out: dict[str, dict[str, Any]] = {}
    for name in CALLS:
        found = [[index_of[h.doc_path] for h in r] for r in results[name]]
        rec = common.recalls(scope.truth, found, LIMIT)
        modes = collections.Counter(r.mode for r in results[name])
        ms = [s * 1000 for s in seconds[name]]
        out[name] = {
            "modes": dict(modes),
            "escalated": sum(r.escalated for r in results[name]),
            "recall": statistics.fmean(rec),
            "worst": min(rec),
            "under_0.7": sum(v < 0.7 for v in rec),
            "p50_ms": statistics.median(ms),
            "p95_ms": common.percentile(ms, 95),
            "ratio_exact": common.median_ratio(seconds[name], seconds["exact"]),
            "p95_ratio_exact": common.percentile(ms, 95)
            / common.percentile([s * 1000 for s in seconds["exact"]], 95),
            "ratio_ann": common.median_ratio(seconds[name], seconds["ann"]),
        }
    use(cal)
    return out


async def stored_row_check(store: docstore.Store, scopes: list[Scope], q: np.ndarray) -> str:
    """The rule's mode for one question per scope with met_target written into the stored row
    (the tuner's cache cleared), as a search in another process would see it."""
    parts = []
    for flag in (True, False):
        await store.execute(CHECK_SQL, flag)
        store.tuner._cache.clear()
        for s in scopes:
            r = await store.search(q[0], limit=LIMIT, **s.kw)
            parts.append(f"{s.name} {'met' if flag else 'missed'} -> {r.mode}")
    return "; ".join(parts)


def row(name: str, f: dict[str, Any]) -> str:
    modes = ", ".join(f"{m} {c}" for m, c in sorted(f["modes"].items()))
    if f["escalated"]:
        modes += f" (2nd pass {f['escalated']})"
    return (
        f"    {name:13s} {modes:30s} {f['recall']:.4f}  {f['worst']:4.2f}  {f['under_0.7']:3d}"
        f"  {f['p50_ms']:7.1f} {f['p95_ms']:7.1f}   {f['ratio_exact']:5.2f}x"
        f"  {f['p95_ratio_exact']:5.2f}x   {f['ratio_ann']:5.2f}x"
    )


async def main(args: argparse.Namespace) -> bool:
    started = time.perf_counter()
    print(common.machine_line("bench/scope_rule.py"))
    texts, paths, x, q, r = load_corpus()
    q = q[: args.queries]
    steps = QUICK_STEPS if args.quick else STEPS
    index_of = {p: i for i, p in enumerate(paths)}
    assert len(index_of) == len(paths), "doc paths must be unique"
    sub = np.sort(np.random.default_rng(4).choice(len(x), SUB_ROWS, replace=False))
    scopes = [
        Scope("std", {"source_name": "std"}, np.arange(len(x)), q, x),
        Scope("sub4k", {"doc_type": "sub4k"}, sub, q, x),
    ]
    x384, q384 = x @ r, q @ r
    f384 = filler_384(x384, steps[-1] - len(x), seed=9)
    print(
        f"corpus: {len(x):,} real documents x {DIM}, {len(q)} real questions, top {LIMIT};"
        f" filler up to {len(f384):,} rows in {SOURCES} sources (cosine to the nearest real"
        f" document: median {np.median((f384[:2000] @ x384.T).max(1)):.3f})"
    )
    print(
        f"rule: halfvec up to {planner.HALFVEC_SCOPE_ROWS:,} rows under"
        f" {planner.HALFVEC_MAX_SHARE:.0%}; past that ann while share >="
        f" {planner.MIN_ANN_SHARE:.0%} and met_target, else halfvec up to"
        f" {planner.HALFVEC_FILTER_ROWS:,} rows"
    )
    figures: list[dict[str, Any]] = []
    async with common.bench_server(args.url, prefix="docstore-bench-scope-rule-") as server:
        url = await server.database("scope_rule")
        opts: dict[str, Any] = {"search_keep_queries": False, "search_recall_sample": 0.0}
        async with docstore.connect(url, **opts) as store:
            print(await common.server_line(store))
            await store.execute("TRUNCATE documents")
            await store.execute("DELETE FROM docstore_search_calibration")
            await store.documents.upsert_many(
                real_documents(texts, paths, x, {int(i) for i in sub})
            )
        loaded = 0
        for total in steps:
            async with docstore.connect(url, **opts) as store:
                await store.drop_vector_index(concurrently=False)
                filler = total - len(x)
                _, took = await common.clock(
                    store.documents.upsert_many(filler_documents(f384, r, loaded, filler))
                )
                loaded = filler
                await store.execute("VACUUM ANALYZE documents")
                index, built = await common.clock(
                    store.create_vector_index(concurrently=False, calibrate=False)
                )
                cal, calibrated = await common.clock(store.calibrate_search())
            async with docstore.connect(url, **opts) as store:  # fresh caches
                count = await store.fetchval("SELECT count(*) FROM documents")
                print(
                    f"\n== table {count:,} rows: filler loaded in {took:.1f} s; {index.name} built"
                    f" in {built:.1f} s ({common.human_bytes(index.size_bytes)}); calibrated"
                    f" in {calibrated:.1f} s"
                )
                print(f"   calibration: {describe(cal)}")
                sims_filler = q384 @ f384[:filler].T
                step: dict[str, Any] = {
                    "table_rows": count,
                    "calibration": cal.model_dump(mode="json"),
                    "scopes": {},
                }
                for s in scopes:
                    planned = await _count_scope(
                        store._db, s.kw.get("doc_type"), s.kw.get("source_name")
                    )
                    # how many of each question's unfiltered top 10 lie in the scope
                    inside = q384 @ x384[s.rows].T
                    both = np.concatenate(
                        [inside, sims_filler, q384 @ np.delete(x384, s.rows, axis=0).T], axis=1
                    )
                    top = np.argpartition(-both, LIMIT, axis=1)[:, :LIMIT]
                    in_scope = float((top < len(s.rows)).mean())
                    print(
                        f"   {s.name}: {len(s.rows):,} rows = {len(s.rows) / count:.1%} of the"
                        f" table; the planner sees {planned.rows:,.0f} of {planned.table_rows:,.0f}"
                        f" ({planned.share:.1%}); {in_scope:.0%} of the questions' unfiltered"
                        f" top {LIMIT} lie in it"
                    )
                    step["scopes"][s.name] = {
                        "rows": len(s.rows),
                        "planner_rows": planned.rows,
                        "planner_table_rows": planned.table_rows,
                        "unfiltered_top10_in_scope": in_scope,
                    }
                print(f"   stored-row check: {await stored_row_check(store, scopes, q)}")
                await store.execute(
                    "UPDATE docstore_search_calibration SET calibration = $1::jsonb"
                    " WHERE metric = 'cosine'",
                    cal.model_dump_json(),
                )
                store.tuner._cache.clear()
                print(
                    f"    {'call':13s} {'modes':30s} {'recall':6s}  worst <0.7   p50 ms  p95 ms"
                    "   p50/exact p95/exact  p50/ann"
                )
                for s in scopes:
                    print(f"  {s.name} ({s.kw})")
                    got = await measure(store, s, q, cal, index_of, args.warmup)
                    for name in CALLS:
                        print(row(name, got[name]), flush=True)
                    step["scopes"][s.name]["calls"] = got
                figures.append(step)
    print("\nsummary: the rule's choice against the forced index (same questions, interleaved)")
    print(
        "  table    scope  share   calibration  rule picks        recall rule / ann"
        "     worst rule / ann   p50 rule/ann"
    )
    goals: list[common.Goal] = []
    for step in figures:
        for name, s in step["scopes"].items():
            ann = s["calls"]["ann"]
            for state in ("met", "missed"):
                f = s["calls"][f"rule, {state}"]
                picks = ", ".join(f"{m} {c}" for m, c in sorted(f["modes"].items()))
                print(
                    f"  {step['table_rows']:7,} {name:6s} {s['rows'] / step['table_rows']:6.1%}"
                    f"   {state:11s}  {picks:16s}  {f['recall']:.4f} / {ann['recall']:.4f}"
                    f"     {f['worst']:.2f} / {ann['worst']:.2f}        {f['ratio_ann']:5.2f}x"
                )
                goals.append(
                    (
                        f"{step['table_rows']:,} rows, {name}, calibration {state}: rule recall@10"
                        " >= forced index",
                        f["recall"] >= ann["recall"],
                        f"{f['recall']:.4f} vs {ann['recall']:.4f}",
                    )
                )
    ok = common.print_goals(goals)
    print(f"done in {time.perf_counter() - started:.0f} s, {common.load_line()}")
    if args.json:
        common.write_json(args.json, {"steps": figures, "queries": len(q)})
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 / 36,000 rows, 100 questions")
    parser.add_argument("--queries", type=int, default=None, help="real questions (max 200)")
    parser.add_argument("--warmup", type=int, default=10, help="questions run first, not counted")
    parser.add_argument("--url", help="a PostgreSQL + pgvector database (emptied) instead")
    parser.add_argument("--json", help="write the figures to this file")
    arguments = parser.parse_args()
    if arguments.queries is None:
        arguments.queries = 100 if arguments.quick else 200
    sys.exit(0 if asyncio.run(main(arguments)) else 1)
