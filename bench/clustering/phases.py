"""The measurements of ``bench/citus.py``, in the order it runs them; each prints its lines
and adds its figures to ``bench.figures``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable

import common
from common import DIM

import docstore
from docstore.search import queries as search_sql
from docstore.testing import printed_vector

from .cpu import cpu_line, cpu_rounds, sessions
from .setup import Bench, documents, exact_top, row_of

# Routed statements that do (almost) nothing on the shard: Citus's own cost of a one-source
# statement, without and with the query vector as a parameter (Citus prints it into the SQL).
ROUTED = "SELECT count(*) FROM documents WHERE source_name = $1 AND id = 0"
ROUTED_VECTOR = ROUTED + " AND $2::vector IS NOT NULL"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def bulk_load(bench: Bench) -> None:
    """``upsert_many`` of the corpus into each side's empty table (rows/s, CPU a row), then
    ``create_vector_index(calibrate=False)`` and ``ANALYZE``."""
    args, meters = bench.args, bench.meters
    docs = documents(bench.points, args.sources)
    rates: dict[str, float] = {}
    load_cpu: dict[str, dict[str, float]] = {}
    for name, store in (("single", bench.single), ("cluster", bench.cluster)):
        before = {k: m.seconds() for k, m in meters.items()}
        proc0, wall0 = time.process_time(), time.perf_counter()
        result = await store.documents.upsert_many(docs)
        wall = time.perf_counter() - wall0
        assert result.inserted == len(docs), result
        rates[name] = len(docs) / wall
        load_cpu[name] = {
            k: (m.seconds() - before[k] - m.idle * wall) / args.rows for k, m in meters.items()
        }
        load_cpu[name]["client"] = (time.process_time() - proc0) / args.rows
        await store.create_vector_index(calibrate=False)
        await store.execute("ANALYZE documents")
    bench.figures["bulk_rows_per_s"] = rates
    bench.figures["bulk_cpu_per_row_s"] = load_cpu
    print(
        f"bulk load (upsert_many, {args.rows:,} rows of 3072 dims): single"
        f" {rates['single']:,.0f} rows/s, cluster {rates['cluster']:,.0f} rows/s"
        f" ({rates['cluster'] / rates['single']:.2f}x); CPU µs a row:"
    )
    print(
        f"  single: server {load_cpu['single']['coordinator'] * 1e6:.0f},"
        f" client {load_cpu['single']['client'] * 1e6:.0f}"
    )
    print(
        "  cluster: "
        + ", ".join(f"{k} {load_cpu['cluster'][k] * 1e6:.0f}" for k in bench.nodes)
        + f", client {load_cpu['cluster']['client'] * 1e6:.0f}"
    )


async def one_source(bench: Bench) -> float:
    """One-source searches interleaved on the single node, the cluster (routed to the shard's
    worker), through the coordinator and on a store opened on the worker; then the CPU of
    each and of two trivial routed statements. Returns the median ratio cluster / single."""
    args, queries = bench.args, bench.queries
    via = bench.via_coordinator
    assert via is not None, "open_routes() first"

    def scoped(store: docstore.Store) -> common.Call:
        return lambda i: store.search(queries[i], source_name=bench.source(i))

    def direct(i: int) -> Awaitable[object]:
        worker = bench.on_worker[bench.holders[bench.source(i)]]
        return worker.search(queries[i], source_name=bench.source(i))

    calls: dict[str, common.Call] = {
        "single": scoped(bench.single),
        "cluster": scoped(bench.cluster),
        "coordinator": scoped(via),
        "worker": direct,
    }
    seconds, _ = await common.interleave(calls, args.queries)
    ratios = {k: common.median_ratio(seconds[k], seconds["single"]) for k in calls}
    p50 = {k: statistics.median(v) for k, v in seconds.items()}
    bench.figures["one_source_p50_s"] = p50
    bench.figures["one_source_ratio"] = {k: ratios[k] for k in ("cluster", "coordinator", "worker")}
    per = args.rows // args.sources
    print(
        f"one-source search ({per} docs a source): p50 single {ms(p50['single'])},"
        f" cluster (routed to the shard's worker, the default) {ms(p50['cluster'])}"
        f" (median ratio {ratios['cluster']:.2f}x), routing off (through the coordinator)"
        f" {ms(p50['coordinator'])} ({ratios['coordinator']:.2f}x), a store opened on the"
        f" shard's worker {ms(p50['worker'])} ({ratios['worker']:.2f}x)"
    )

    def routed(sql: str, vector: bool) -> common.Call:
        def call(i: int) -> Awaitable[object]:
            extra = (queries[i],) if vector else ()
            return via.fetchval(sql, bench.source(i), *extra)

        return call

    cpu = await cpu_rounds(
        {
            **calls,
            "routed, no vector": routed(ROUTED, False),
            "routed + vector": routed(ROUTED_VECTOR, True),
        },
        args.queries,
        args.rounds,
        bench.meters,
    )
    bench.figures["one_source_cpu_s"] = cpu
    print(f"one-source search, CPU ({args.rounds} rounds of {args.queries}, median):")
    for name, c in cpu.items():
        print(cpu_line(name, c, bench.nodes))
    return ratios["cluster"]


async def unscoped_ann(bench: Bench) -> dict[str, float]:
    """Default unscoped searches on both sides: p50 and recall@10 against numpy's exact top
    10, then CPU a search, per shard task, and the worker connections a search opens.
    Returns recall@10 by side."""
    args, queries = bench.args, bench.queries
    calls: dict[str, common.Call] = {
        "single": lambda i: bench.single.search(queries[i]),
        "cluster": lambda i: bench.cluster.search(queries[i]),
    }
    ann_s, ann_r = await common.interleave(calls, args.queries)
    truths = [exact_top(bench.points, q) for q in queries]
    recall = {
        name: statistics.mean(
            len({row_of(h.doc_path) for h in r} & set(t)) / 10
            for r, t in zip(ann_r[name], truths, strict=True)
        )
        for name in calls
    }
    modes = {name: sorted({r.mode for r in ann_r[name]}) for name in ann_r}
    p50 = {name: statistics.median(ann_s[name]) for name in ann_s}
    bench.figures["ann_p50_s"] = p50
    bench.figures["ann_recall"] = recall
    print(
        f"unscoped search {modes}: p50 single {ms(p50['single'])},"
        f" cluster {ms(p50['cluster'])}"
        f" ({common.median_ratio(ann_s['cluster'], ann_s['single']):.2f}x);"
        f" recall@10 single {recall['single']:.3f}, cluster {recall['cluster']:.3f}"
    )
    cpu, task, conns = await _fan_out_cpu(bench, calls)
    bench.figures["ann_cpu_s"] = cpu
    bench.figures["ann_shard_task_cpu_s"] = task
    bench.figures["ann_new_connections_per_search"] = conns
    print(f"unscoped ANN search, CPU ({args.rounds} rounds of {args.queries}, median):")
    for name, c in cpu.items():
        print(cpu_line(name, c, bench.nodes))
    print(
        f"  per shard task ({bench.shards} shards): {task * 1000:.3f} CPU ms;"
        " new worker connections a search: " + ", ".join(f"{k} {v:.2f}" for k, v in conns.items())
    )
    return recall


async def _fan_out_cpu(
    bench: Bench, calls: dict[str, common.Call]
) -> tuple[dict[str, dict[str, float]], float, dict[str, float]]:
    """CPU a call of each of ``calls`` (:func:`cpu_rounds`), the workers' CPU of the
    ``cluster`` call per shard, and the worker connections each search opened."""
    args = bench.args
    opened = {k: await sessions(u) for k, u in bench.worker_urls.items()}
    cpu = await cpu_rounds(calls, args.queries, args.rounds, bench.meters)
    searches = args.queries * args.rounds
    conns = {
        k: ((await sessions(u)) - opened[k] - 1) / searches for k, u in bench.worker_urls.items()
    }
    task = sum(cpu["cluster"][w] for w in bench.workers) / bench.shards
    return cpu, task, conns


async def cached_connections(bench: Bench) -> None:
    """The fan-out again when each coordinator backend keeps a connection per shard of a
    worker (Citus keeps 1 and opens the rest per search, TLS handshake included)."""
    keep = -(-bench.shards // len(bench.workers))
    guc = f'ALTER DATABASE "{bench.database}" {{}} citus.max_cached_conns_per_worker'
    await bench.cluster.execute(guc.format("SET") + f" = {keep}")
    try:
        async with docstore.connect(bench.citus_url) as cached:
            for q in bench.queries[:10]:
                await cached.search(q)
            cpu, task, conns = await _fan_out_cpu(
                bench, {"cluster": lambda i: cached.search(bench.queries[i])}
            )
    finally:
        await bench.cluster.execute(guc.format("RESET"))
    bench.figures["ann_cached_connections"] = {
        "max_cached_conns_per_worker": keep,
        "cpu_s": cpu["cluster"],
        "shard_task_cpu_s": task,
        "new_connections_per_search": conns,
    }
    print(cpu_line(f"cluster, {keep} cached connections a worker", cpu["cluster"], bench.nodes))
    print(
        f"  per shard task: {task * 1000:.3f} CPU ms; new worker connections a"
        " search: " + ", ".join(f"{k} {v:.2f}" for k, v in conns.items())
    )


async def vector_forms(bench: Bench) -> None:
    """The same fanned-out ANN statement with the query vector printed into every shard's SQL
    (the form before ``queries.VectorRefs``) and as docstore sends it: CPU and same rows."""

    def fan_out(form: str) -> Callable[[int], Awaitable[object]]:
        def call(i: int) -> Awaitable[object]:
            sql, params = search_sql.ann_search_sql(
                bench.queries[i], dim=DIM, limit=10, candidates=40, ef_search=40, distributed=True
            )
            sql = printed_vector(sql, DIM) if form == "printed" else sql
            return bench.cluster._ann_records(sql, params, 40)

        return call

    forms = ("printed", "sent once")
    cpu = await cpu_rounds(
        {f: fan_out(f) for f in forms}, bench.args.queries, bench.args.rounds, bench.meters
    )
    rows = {f: [await fan_out(f)(i) for i in range(10)] for f in forms}
    same_rows = all(
        [r["id"] for r in a] == [r["id"] for r in b]
        for a, b in zip(rows["printed"], rows["sent once"], strict=True)
    )
    totals = {f: sum(c[k] for k in bench.meters) for f, c in cpu.items()}
    bench.figures["vector_sent_once"] = {"cpu_s": cpu, "same_rows": same_rows}
    print("fanned-out ANN statement, query vector printed into each shard's SQL vs sent once:")
    for name, c in cpu.items():
        print(cpu_line(name, c, bench.nodes))
    print(
        f"  server CPU a search: {totals['sent once'] / totals['printed']:.2f}x;"
        f" same rows on 10 queries: {same_rows}"
    )


async def exact(bench: Bench) -> bool:
    """Unscoped exact searches on both sides: p50, and whether the top 10 are identical."""
    n = min(bench.args.queries, 10)
    ex_s, ex_r = await common.interleave(
        {
            "single": lambda i: bench.single.search(bench.queries[i], exact=True),
            "cluster": lambda i: bench.cluster.search(bench.queries[i], exact=True),
        },
        n,
    )
    same = all(
        [h.doc_path for h in a] == [h.doc_path for h in b]
        for a, b in zip(ex_r["single"], ex_r["cluster"], strict=True)
    )
    bench.figures["exact_p50_s"] = {k: statistics.median(v) for k, v in ex_s.items()}
    print(
        f"unscoped exact search: p50 single {ms(statistics.median(ex_s['single']))},"
        f" cluster {ms(statistics.median(ex_s['cluster']))};"
        f" identical top 10 on {n} queries: {same}"
    )
    return same
