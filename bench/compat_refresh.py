"""Benchmark: what the legacy views' staleness check adds to ``LegacyDatabase.connect()``.

    python bench/compat_refresh.py                  # 0, 1 and 20 installs, 30 connects each
    python bench/compat_refresh.py --connects 60 --url postgresql://...

``LegacyDatabase.connect()`` opens a store like ``docstore.connect()`` and then reads this
store's installs of the legacy SQL (one catalog query) and compares each with what this
docstore would install (:mod:`docstore.compat.installs`); nothing is written when all are
current. Baseline: ``docstore.connect()`` of the same database, interleaved connect by
connect; the median of the per-connect ratios. Also: ``views_status()`` alone on an open
store, and one refresh of every install (what the first connect after an upgrade pays).
No goal: the figures are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import common

import docstore
from docstore.compat import LegacyDatabase, views


async def _open_close(url: str, legacy: bool) -> None:
    if legacy:
        db = await LegacyDatabase.connect(url)
        await db.close()
    else:
        store = await docstore.connect(url)
        await store.close()


async def run(args: argparse.Namespace) -> None:
    print(common.machine_line("bench/compat_refresh.py"))
    async with common.bench_server(args.url, prefix="docstore-bench-compat-refresh-") as server:
        url = await server.database("compat_refresh")
        async with docstore.connect(url) as store:
            legacy = LegacyDatabase(store)
            done = 0
            for installs in args.installs:
                for i in range(done, installs):
                    await legacy.install_views(f"compat_{i}")
                done = installs
                assert all(v.up_to_date for v in await legacy.views_status())
                seconds, _ = await common.interleave(
                    {
                        "docstore.connect": lambda _: _open_close(url, False),
                        "LegacyDatabase.connect": lambda _: _open_close(url, True),
                    },
                    args.connects,
                )
                status = [await common.timed(legacy.views_status) for _ in range(args.connects)]
                ratio = common.median_ratio(
                    seconds["LegacyDatabase.connect"], seconds["docstore.connect"]
                )
                print(
                    f"  {installs:3d} installs: LegacyDatabase.connect"
                    f" {statistics.median(seconds['LegacyDatabase.connect']) * 1e3:6.1f} ms,"
                    f" docstore.connect {statistics.median(seconds['docstore.connect']) * 1e3:6.1f}"
                    f" ms, ratio {ratio:.3f}; views_status() alone"
                    f" {statistics.median(status) * 1e3:.2f} ms"
                )
            for i in range(done):  # an upgrade: every install stale, one connect refreshes all
                await store.execute(
                    f"COMMENT ON FUNCTION {views.function_signature(f'compat_{i}', 3072)} IS NULL;"
                    f" COMMENT ON VIEW compat_{i}.crates IS NULL;"
                    f" COMMENT ON VIEW compat_{i}.doc_embeddings IS NULL"
                )
            took = await common.timed(lambda: _open_close(url, True))
            assert all(v.up_to_date for v in await legacy.views_status())
            print(f"  first connect after an upgrade, {done} stale installs: {took * 1e3:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--installs", type=int, nargs="+", default=[0, 1, 20])
    parser.add_argument("--connects", type=int, default=30, help="connects per install count")
    parser.add_argument("--url", help="a database to run in (default: a throwaway embedded one)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
