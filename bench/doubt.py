"""Benchmark: what run_in_transaction's commit marker costs a one-row write.

    python bench/doubt.py                  # 400 writes a round, 7 rounds
    python bench/doubt.py --writes 1000 --rounds 9 --url postgresql://...

``run_in_transaction`` reads ``txid_current_if_assigned()`` just before ``COMMIT`` so that a
COMMIT whose reply is lost can be settled with the server (docstore.core.doubt): one more
round trip per transaction. The baseline is the same write in the same transaction without
it (``store.run`` with ``conn.transaction()``), interleaved round by round on one store; the
median of the per-round ratios is what a one-row write transaction pays (``delete_source``,
``sources.delete``). ``run_in_transaction(..., retry_in_doubt=True)`` (``documents.upsert``,
``sources.upsert``: redone as is) reads no marker and should pay nothing. No goal: the
figures are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Awaitable, Callable

import asyncpg
import common

import docstore

WRITE = (
    "INSERT INTO doubt_bench VALUES ($1, 'x') ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v || 'y'"
)


async def _write(conn: asyncpg.Connection, k: int) -> None:
    await conn.execute(WRITE, k)


async def _plain(conn: asyncpg.Connection, k: int) -> None:
    async with conn.transaction():
        await _write(conn, k)


async def run(args: argparse.Namespace) -> None:
    print(common.machine_line("bench/doubt.py"))
    async with (
        common.bench_server(args.url, prefix="docstore-bench-doubt-") as server,
        docstore.connect(await server.database("doubt")) as store,
    ):
        await store.execute("DROP TABLE IF EXISTS doubt_bench")
        await store.execute("CREATE TABLE doubt_bench (k int PRIMARY KEY, v text)")

        def rounds(one: Callable[[int], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
            async def go() -> None:
                for k in range(args.writes):
                    await one(k)

            return go

        methods = {
            "without marker": rounds(
                lambda k: store.run(lambda c: _plain(c, k), retry_in_doubt=True)
            ),
            "run_in_transaction": rounds(
                lambda k: store.run_in_transaction(lambda c: _write(c, k))
            ),
            "retry_in_doubt=True": rounds(
                lambda k: store.run_in_transaction(lambda c: _write(c, k), retry_in_doubt=True)
            ),
        }
        per_write: dict[str, list[float]] = {name: [] for name in methods}
        for go in methods.values():  # warm-up
            await go()
        for i in range(args.rounds):
            shift = i % len(methods)
            names = list(methods)[shift:] + list(methods)[:shift]
            for name in names:
                per_write[name].append(await common.timed(methods[name]) / args.writes * 1e6)
        for name, values in per_write.items():
            print(f"  {name:20s} {statistics.median(values):7.0f} us a write (median of rounds)")
        for name in ("run_in_transaction", "retry_in_doubt=True"):
            ratio = common.median_ratio(per_write[name], per_write["without marker"])
            print(f"  {name} / without marker: {ratio:.3f} (median of per-round ratios)")
        await store.execute("DROP TABLE doubt_bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=400, help="writes a round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--url", help="a database to run in (default: a throwaway embedded one)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
