"""Benchmark: docstore on a Citus cluster against a single node (issue 16).

    python bench/citus.py                       # cluster made by scripts/citus-cluster, 10,000 docs
    python bench/citus.py --citus-url URL       # an existing coordinator (its database is emptied)
    python bench/citus.py --rows 20000 --sources 200 --queries 100
    python bench/citus.py --shards 16 --json out.json   # 16 shards; every figure as JSON

Both sides get the same clustered corpus (``--clusters`` random unit centres, noise of norm
1.0, normalised; ``--sources`` sources of equal size), loaded by ``upsert_many`` (rows/s),
then ``create_vector_index(calibrate=False)`` and ``ANALYZE``. Then, interleaved query by
query (so the machine's drift hits both alike):

* one-source search (default ``search(q, source_name=...)``): p50 on each side and the
  median per-query ratio cluster / single node (goal: ≤ 1.5×);
* unscoped ANN search (default ``search(q)``): p50 and recall@10 against numpy's exact top 10
  on each side (recall parity: the cluster at most 0.02 below the single node);
* unscoped exact search: p50, and whether the top 10 are identical on both sides;
* the same one-source search sent straight to the worker that holds the source's shard
  (Citus 13 syncs its metadata to the workers, so a worker plans a query on ``documents``
  itself and runs its local shard with the query vector as a real bound parameter, where the
  coordinator prints the parameters into the SQL it sends): p50 and median ratio to the
  single node.

**Model parameters** (``docs/scaling.md``'s N-worker model): the CPU seconds each server
used per call, read from ``/proc`` for each PostgreSQL server's postmaster and its backends,
exited ones included (the postmaster's reaped-children times), minus each server's idle rate
measured beforehand; CPU time is what other jobs on this shared machine disturb least. Each
shape runs ``--rounds`` times, back to back, one call at a time; the median round is printed.
Per one-source search: the coordinator's CPU and the workers'; the coordinator's share split
by two trivial routed statements (the same routing without, then with, the 3,072-float vector
as a parameter). Per fanned-out ANN search: the coordinator's CPU (planning, dispatch, merge)
and the workers' divided by the shard count (one shard task), and the new connections Citus
opened on the workers (``pg_stat_database.sessions``; none means each worker ran its shards one
after another on its cached connection); then the same fan-out again with
``citus.max_cached_conns_per_worker`` raised to the shards a worker holds (set on the
database for that phase, reset after), which keeps those connections and their TLS
handshakes out of every search. Per bulk-loaded row: the coordinator's, each worker's, the
single node's and this client's CPU. ``--shards N`` creates the distributed tables with N
shards (``citus.shard_count``; the cluster's default otherwise), to see what the shard count
costs. ``--json PATH`` writes every figure.

**The query vector sent once** (``queries.VectorRefs``): the same fanned-out ANN statement
(ef_search 40, 40 candidates a shard) in the form that printed the 3,072-float vector into
every shard's SQL (:func:`docstore.testing.printed_vector`) and as docstore sends it, rounds
interleaved; CPU per search on each server, and whether both return the same rows.

The single node is a plain database (no Citus in it) on the coordinator's server, so both
sides run the same PostgreSQL build and settings (``--single-url`` for another server; its
database ``citus_bench_single`` is replaced). The cluster is a coordinator and two workers on
this machine: its figures include three PostgreSQL servers sharing the same cores. The
single node's CPU is the coordinator's server's in the single-node phases (its ``coordinator``
column), so it means nothing with ``--single-url``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import common
import numpy as np
from common import DIM, Goal

import docstore
from docstore.search import queries as search_sql
from docstore.testing import printed_vector

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "citus-cluster"
RESET_SQL = """
DROP TABLE IF EXISTS documents, document_sources, source_population_jobs,
    docstore_migration_checkpoints, docstore_search_calibration, docstore_search_queries,
    docstore_schema_version CASCADE;
DROP FUNCTION IF EXISTS update_updated_at_column() CASCADE;
"""
# Routed statements that do (almost) nothing on the shard: Citus's own cost of a one-source
# statement, without and with the query vector as a parameter (Citus prints it into the SQL).
ROUTED = "SELECT count(*) FROM documents WHERE source_name = $1 AND id = 0"
ROUTED_VECTOR = ROUTED + " AND $2::vector IS NOT NULL"


@asynccontextmanager
async def citus_cluster(url: str | None) -> AsyncIterator[str]:
    """``url``, or a cluster ``scripts/citus-cluster`` makes in a temporary directory."""
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="docstore-citus-bench-") as tmp:
        os.chmod(tmp, 0o755)  # the postgres OS user runs the nodes
        env = {**os.environ, "CITUS_BASE_PORT": os.environ.get("CITUS_BASE_PORT", "57830")}
        up = await asyncio.to_thread(
            subprocess.run, [str(SCRIPT), "up", tmp], capture_output=True, text=True, env=env
        )
        if up.returncode != 0:
            sys.exit(f"scripts/citus-cluster up failed:\n{up.stderr[-4000:]}")
        try:
            yield up.stdout.strip().splitlines()[-1]
        finally:
            await asyncio.to_thread(
                subprocess.run, [str(SCRIPT), "down", tmp], capture_output=True, env=env
            )


def documents(points: np.ndarray, sources: int) -> list[docstore.Document]:
    per = len(points) // sources
    return [
        docstore.Document(
            source_name=f"crate{i // per}",
            doc_path=f"crate{i // per}/{i}.html",
            content=common.filler_text(i),
            embedding=points[i],
            token_count=i % 500,
        )
        for i in range(len(points))
    ]


def exact_top(points: np.ndarray, q: np.ndarray, rows: np.ndarray | None = None) -> list[int]:
    """Row numbers of the exact cosine top 10 (``points`` are unit vectors)."""
    pool = points if rows is None else points[rows]
    order = np.argsort(-(pool @ q), kind="stable")[:10]
    return [int(i) if rows is None else int(rows[i]) for i in order]


def row_of(path: str) -> int:
    return int(path.rsplit("/", 1)[1].split(".")[0])


class ServerCpu:
    """CPU seconds a PostgreSQL server has used: its postmaster's and live processes' run
    time in nanoseconds (``/proc/PID/schedstat``; ``/proc/PID/stat`` counts in 10 ms ticks,
    too coarse for 1 ms searches), plus its exited backends' (the postmaster's reaped-children
    times, in ticks), so that connections Citus opens and closes within a measurement count."""

    TICK = 1 / os.sysconf("SC_CLK_TCK")

    def __init__(self, postmaster_pid: int) -> None:
        self.pid = postmaster_pid
        self.idle = 0.0
        """CPU seconds a wall second the server uses with nothing to do (subtracted)."""

    def seconds(self) -> float:
        import psutil  # type: ignore[import-untyped]  # (docstore[test]) only where measured

        stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(stat[14]) + int(stat[15])) * self.TICK  # cutime + cstime
        for pid in [self.pid, *(c.pid for c in psutil.Process(self.pid).children())]:
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
        return total


async def server_cpu(url: str) -> ServerCpu:
    """The :class:`ServerCpu` of ``url``'s server (the postmaster of a backend of it)."""
    import psutil

    conn = await asyncpg.connect(url)
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        return ServerCpu(psutil.Process(backend).ppid())
    finally:
        await conn.close()


async def sessions(url: str) -> int:
    """Connections ever made to ``url``'s database (``pg_stat_database.sessions``)."""
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            )
        )
    finally:
        await conn.close()


async def calibrate_idle(meters: Mapping[str, ServerCpu], seconds: float = 3.0) -> None:
    before = {k: m.seconds() for k, m in meters.items()}
    await asyncio.sleep(seconds)
    for k, m in meters.items():
        m.idle = max(0.0, (m.seconds() - before[k]) / seconds)


async def cpu_per_call(
    call: Callable[[int], Awaitable[object]], n: int, meters: Mapping[str, ServerCpu]
) -> dict[str, float]:
    """Seconds a call, one call at a time: each server's CPU (idle rate subtracted),
    ``client`` (this process's CPU) and ``wall``."""
    before = {k: m.seconds() for k, m in meters.items()}
    proc0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        await call(i)
    wall = time.perf_counter() - wall0
    out = {k: (m.seconds() - before[k] - m.idle * wall) / n for k, m in meters.items()}
    out["client"] = (time.process_time() - proc0) / n
    out["wall"] = wall / n
    return out


async def cpu_rounds(
    shapes: Mapping[str, Callable[[int], Awaitable[object]]],
    n: int,
    rounds: int,
    meters: Mapping[str, ServerCpu],
) -> dict[str, dict[str, float]]:
    """:func:`cpu_per_call` of every shape in turn, ``rounds`` times over; per shape, the
    round with the median total server CPU."""
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in shapes}
    for _ in range(rounds):
        for name, call in shapes.items():
            runs[name].append(await cpu_per_call(call, n, meters))
    return {
        name: sorted(rs, key=lambda r: sum(r[k] for k in meters))[len(rs) // 2]
        for name, rs in runs.items()
    }


def with_port(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{user}{host}:{port}", parts.path, parts.query, ""))


async def load(store: docstore.Store, docs: Sequence[docstore.Document]) -> float:
    """Rows per second of ``upsert_many`` into an empty table."""
    started = time.perf_counter()
    result = await store.documents.upsert_many(docs)
    assert result.inserted == len(docs), result
    return len(docs) / (time.perf_counter() - started)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def cpu_line(name: str, cpu: Mapping[str, float], nodes: Sequence[str]) -> str:
    parts = ", ".join(f"{node} {cpu[node] * 1000:.3f}" for node in nodes)
    return (
        f"  {name}: CPU ms a call: {parts}, client {cpu['client'] * 1000:.3f};"
        f" wall {cpu['wall'] * 1000:.2f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--citus-url")
    parser.add_argument("--single-url")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="CPU measurement rounds")
    parser.add_argument(
        "--shards",
        type=int,
        help="citus.shard_count for the distributed tables (default: the cluster's)",
    )
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()

    print(common.machine_line("bench/citus.py"))
    points = common.clustered(args.rows, args.clusters, 1 / np.sqrt(DIM), seed=16)
    docs = documents(points, args.sources)
    per = args.rows // args.sources
    queries = common.near(points, args.queries, 0.3 / np.sqrt(DIM), seed=61)
    figures: dict[str, Any] = {"rows": args.rows, "sources": args.sources, "queries": args.queries}
    async with (
        citus_cluster(args.citus_url) as citus_url,
        common.bench_server(args.single_url or citus_url) as server,
    ):
        single_url = await server.create_database("citus_bench_single")
        database = urlsplit(citus_url).path.lstrip("/") or "postgres"
        conn = await asyncpg.connect(citus_url)
        try:
            await conn.execute(RESET_SQL)
            if args.shards:  # the store's new connections create this many shards
                await conn.execute(
                    f'ALTER DATABASE "{database}" SET citus.shard_count = {args.shards}'
                )
            nodes = await conn.fetch(
                "SELECT nodename, nodeport FROM pg_dist_node"
                " WHERE noderole = 'primary' AND groupid <> 0 ORDER BY nodeport"
            )
        finally:
            await conn.close()
        worker_urls = {
            f"worker{i + 1}": with_port(citus_url, n["nodename"], n["nodeport"])
            for i, n in enumerate(nodes)
        }
        meters = {"coordinator": await server_cpu(citus_url)}
        for name, url in worker_urls.items():
            meters[name] = await server_cpu(url)
        workers = list(worker_urls)
        nodes_all = ["coordinator", *workers]
        await calibrate_idle(meters)
        figures["idle_cpu_per_s"] = {k: m.idle for k, m in meters.items()}
        print(
            "idle CPU (subtracted): "
            + ", ".join(f"{k} {m.idle * 1000:.1f} ms/s" for k, m in meters.items())
        )
        async with (
            docstore.connect(single_url) as single,
            docstore.connect(citus_url) as cluster,
            contextlib.AsyncExitStack() as stack,
        ):
            try:
                await cluster.migrate(distributed=True)
            finally:
                if args.shards:
                    await cluster.execute(f'ALTER DATABASE "{database}" RESET citus.shard_count')
            print(f"single node: {await common.server_line(single)}")
            print(f"cluster:     {await common.server_line(cluster)}, {len(workers)} workers")
            shards = int(
                await cluster.fetchval(
                    "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'documents'::regclass"
                )
            )
            figures["shards"] = shards
            rates: dict[str, float] = {}
            load_cpu: dict[str, dict[str, float]] = {}
            for name, store in (("single", single), ("cluster", cluster)):
                before = {k: m.seconds() for k, m in meters.items()}
                proc0, wall0 = time.process_time(), time.perf_counter()
                rates[name] = await load(store, docs)
                wall = time.perf_counter() - wall0
                load_cpu[name] = {
                    k: (m.seconds() - before[k] - m.idle * wall) / args.rows
                    for k, m in meters.items()
                }
                load_cpu[name]["client"] = (time.process_time() - proc0) / args.rows
                await store.create_vector_index(calibrate=False)
                await store.execute("ANALYZE documents")
            figures["bulk_rows_per_s"] = rates
            figures["bulk_cpu_per_row_s"] = load_cpu
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
                + ", ".join(f"{k} {load_cpu['cluster'][k] * 1e6:.0f}" for k in nodes_all)
                + f", client {load_cpu['cluster']['client'] * 1e6:.0f}"
            )

            # The worker holding each source's shard, and a store on every worker.
            placement = await cluster.fetch(
                "SELECT s, n.nodeport AS port FROM unnest($1::text[]) s,"
                " LATERAL (SELECT get_shard_id_for_distribution_column('documents', s) id) sh"
                " JOIN pg_dist_placement p ON p.shardid = sh.id"
                " JOIN pg_dist_node n ON n.groupid = p.groupid",
                [f"crate{i}" for i in range(args.sources)],
            )
            port_worker = {n["nodeport"]: f"worker{i + 1}" for i, n in enumerate(nodes)}
            holders = {r["s"]: port_worker[r["port"]] for r in placement}
            on_worker = {
                name: await stack.enter_async_context(docstore.connect(url))
                for name, url in worker_urls.items()
            }
            # docstore's default sends a one-source search to the shard's worker itself
            # (DOCSTORE_CITUS_ROUTE_SEARCHES); this store sends it through the coordinator
            via_coordinator = await stack.enter_async_context(
                docstore.connect(citus_url, citus_route_searches=False)
            )
            for store in (single, cluster, via_coordinator):  # warm pools, caches and plans
                for q in queries[:5]:
                    await store.search(q, source_name="crate1")
                    await store.search(q)
            for name, store in on_worker.items():
                held = next(s for s, w in holders.items() if w == name)
                for q in queries[:5]:
                    await store.search(q, source_name=held)

            def source(i: int) -> str:
                return f"crate{i % args.sources}"

            def scoped(store: docstore.Store) -> common.Call:
                return lambda i: store.search(queries[i], source_name=source(i))

            def direct(i: int) -> Awaitable[object]:
                return on_worker[holders[source(i)]].search(queries[i], source_name=source(i))

            one_calls: dict[str, common.Call] = {
                "single": scoped(single),
                "cluster": scoped(cluster),
                "coordinator": scoped(via_coordinator),
                "worker": direct,
            }
            seconds, _ = await common.interleave(one_calls, args.queries)
            ratio = common.median_ratio(seconds["cluster"], seconds["single"])
            direct_ratio = common.median_ratio(seconds["worker"], seconds["single"])
            via_ratio = common.median_ratio(seconds["coordinator"], seconds["single"])
            p50_one = {k: statistics.median(v) for k, v in seconds.items()}
            figures["one_source_p50_s"] = p50_one
            figures["one_source_ratio"] = {
                "cluster": ratio,
                "coordinator": via_ratio,
                "worker": direct_ratio,
            }
            print(
                f"one-source search ({per} docs a source): p50 single {ms(p50_one['single'])},"
                f" cluster (routed to the shard's worker, the default) {ms(p50_one['cluster'])}"
                f" (median ratio {ratio:.2f}x), routing off (through the coordinator)"
                f" {ms(p50_one['coordinator'])} ({via_ratio:.2f}x), a store opened on the"
                f" shard's worker {ms(p50_one['worker'])} ({direct_ratio:.2f}x)"
            )

            def routed(sql: str, vector: bool) -> common.Call:
                def call(i: int) -> Awaitable[object]:
                    extra = (queries[i],) if vector else ()
                    return via_coordinator.fetchval(sql, source(i), *extra)

                return call

            one_cpu = await cpu_rounds(
                {
                    **one_calls,
                    "routed, no vector": routed(ROUTED, False),
                    "routed + vector": routed(ROUTED_VECTOR, True),
                },
                args.queries,
                args.rounds,
                meters,
            )
            figures["one_source_cpu_s"] = one_cpu
            print(f"one-source search, CPU ({args.rounds} rounds of {args.queries}, median):")
            for name, cpu in one_cpu.items():
                print(cpu_line(name, cpu, nodes_all))

            ann_s, ann_r = await common.interleave(
                {
                    "single": lambda i: single.search(queries[i]),
                    "cluster": lambda i: cluster.search(queries[i]),
                },
                args.queries,
            )
            truths = [exact_top(points, q) for q in queries]
            recall = {
                name: statistics.mean(
                    len({row_of(h.doc_path) for h in r} & set(t)) / 10
                    for r, t in zip(ann_r[name], truths, strict=True)
                )
                for name in ("single", "cluster")
            }
            modes = {name: sorted({r.mode for r in ann_r[name]}) for name in ann_r}
            p50 = {name: statistics.median(ann_s[name]) for name in ann_s}
            figures["ann_p50_s"] = p50
            figures["ann_recall"] = recall
            print(
                f"unscoped search {modes}: p50 single {ms(p50['single'])},"
                f" cluster {ms(p50['cluster'])}"
                f" ({common.median_ratio(ann_s['cluster'], ann_s['single']):.2f}x);"
                f" recall@10 single {recall['single']:.3f}, cluster {recall['cluster']:.3f}"
            )
            opened = {k: await sessions(u) for k, u in worker_urls.items()}
            ann_cpu = await cpu_rounds(
                {
                    "single": lambda i: single.search(queries[i]),
                    "cluster": lambda i: cluster.search(queries[i]),
                },
                args.queries,
                args.rounds,
                meters,
            )
            calls = args.queries * args.rounds
            new_conns = {
                k: ((await sessions(u)) - opened[k] - 1) / calls for k, u in worker_urls.items()
            }
            shard_task = sum(ann_cpu["cluster"][w] for w in workers) / shards
            figures["ann_cpu_s"] = ann_cpu
            figures["ann_shard_task_cpu_s"] = shard_task
            figures["ann_new_connections_per_search"] = new_conns
            print(f"unscoped ANN search, CPU ({args.rounds} rounds of {args.queries}, median):")
            for name, cpu in ann_cpu.items():
                print(cpu_line(name, cpu, nodes_all))
            print(
                f"  per shard task ({shards} shards): {shard_task * 1000:.3f} CPU ms;"
                " new worker connections a search: "
                + ", ".join(f"{k} {v:.2f}" for k, v in new_conns.items())
            )

            # The same fan-out when each coordinator backend keeps a connection per shard of a
            # worker (Citus keeps 1 and opens the rest per search, TLS handshake included).
            keep = -(-shards // len(workers))
            guc = f'ALTER DATABASE "{database}" {{}} citus.max_cached_conns_per_worker'
            await cluster.execute(guc.format("SET") + f" = {keep}")
            try:
                async with docstore.connect(citus_url) as cached:
                    for q in queries[:10]:
                        await cached.search(q)
                    opened = {k: await sessions(u) for k, u in worker_urls.items()}
                    kept = await cpu_rounds(
                        {"cluster": lambda i: cached.search(queries[i])},
                        args.queries,
                        args.rounds,
                        meters,
                    )
                    kept_conns = {
                        k: ((await sessions(u)) - opened[k] - 1) / calls
                        for k, u in worker_urls.items()
                    }
            finally:
                await cluster.execute(guc.format("RESET"))
            kept_task = sum(kept["cluster"][w] for w in workers) / shards
            figures["ann_cached_connections"] = {
                "max_cached_conns_per_worker": keep,
                "cpu_s": kept["cluster"],
                "shard_task_cpu_s": kept_task,
                "new_connections_per_search": kept_conns,
            }
            label = f"cluster, {keep} cached connections a worker"
            print(cpu_line(label, kept["cluster"], nodes_all))
            print(
                f"  per shard task: {kept_task * 1000:.3f} CPU ms; new worker connections a"
                " search: " + ", ".join(f"{k} {v:.2f}" for k, v in kept_conns.items())
            )

            # The query vector printed into every shard's SQL against sent once.
            def fan_out(form: str) -> Callable[[int], Awaitable[object]]:
                def call(i: int) -> Awaitable[object]:
                    sql, params = search_sql.ann_search_sql(
                        queries[i],
                        dim=DIM,
                        limit=10,
                        candidates=40,
                        ef_search=40,
                        distributed=True,
                    )
                    sql = printed_vector(sql, DIM) if form == "printed" else sql
                    return cluster._ann_records(sql, params, 40)

                return call

            forms = await cpu_rounds(
                {f: fan_out(f) for f in ("printed", "sent once")}, args.queries, args.rounds, meters
            )
            rows = {f: [await fan_out(f)(i) for i in range(10)] for f in ("printed", "sent once")}
            same_rows = all(
                [r["id"] for r in a] == [r["id"] for r in b]
                for a, b in zip(rows["printed"], rows["sent once"], strict=True)
            )
            totals = {f: sum(c[k] for k in meters) for f, c in forms.items()}
            figures["vector_sent_once"] = {"cpu_s": forms, "same_rows": same_rows}
            print(
                "fanned-out ANN statement, query vector printed into each shard's SQL vs sent once:"
            )
            for name, cpu in forms.items():
                print(cpu_line(name, cpu, nodes_all))
            print(
                f"  server CPU a search: {totals['sent once'] / totals['printed']:.2f}x;"
                f" same rows on 10 queries: {same_rows}"
            )

            n_exact = min(args.queries, 10)
            ex_s, ex_r = await common.interleave(
                {
                    "single": lambda i: single.search(queries[i], exact=True),
                    "cluster": lambda i: cluster.search(queries[i], exact=True),
                },
                n_exact,
            )
            same = all(
                [h.doc_path for h in a] == [h.doc_path for h in b]
                for a, b in zip(ex_r["single"], ex_r["cluster"], strict=True)
            )
            figures["exact_p50_s"] = {k: statistics.median(v) for k, v in ex_s.items()}
            print(
                f"unscoped exact search: p50 single {ms(statistics.median(ex_s['single']))},"
                f" cluster {ms(statistics.median(ex_s['cluster']))};"
                f" identical top 10 on {n_exact} queries: {same}"
            )
            print(common.load_line())
            figures["load_after"] = os.getloadavg()
    goals: list[Goal] = [
        ("one-source search on the cluster ≤ 1.5x the single node", ratio <= 1.5, f"{ratio:.2f}x"),
        (
            "unscoped ANN recall@10 parity (cluster ≥ single - 0.02)",
            recall["cluster"] >= recall["single"] - 0.02,
            f"{recall['cluster']:.3f} vs {recall['single']:.3f}",
        ),
        ("unscoped exact top 10 identical", same, str(same)),
    ]
    common.print_goals(goals)
    if args.json:
        figures["goals"] = common.goals_json(goals)
        common.write_json(args.json, figures)


if __name__ == "__main__":
    asyncio.run(main())
