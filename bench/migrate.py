"""Benchmark: Migrator.run(), validation included, against the plan's scripts and a raw pipe.

    python bench/migrate.py                          # both corpora, 4,133 documents, 3 rounds
    python bench/migrate.py --corpus real --rows 7959 --rss-rows 0
    python bench/migrate.py --corpus generated --rows 50000 --rss-rows 0 --json out.json

Corpora (each its own legacy database, built from the deployed legacy schema):

* ``generated`` — ``docstore.demo.build_sample_legacy``: 40 crates, varied text with quotes,
  tabs, newlines, backslashes and unicode (60–400 words), every 9th document without an
  embedding, embeddings clustered by crate;
* ``real`` — ``../shared/corpora/rustdocs-dev.npz``: passages of the Rust standard library's
  API documentation (~480 characters each) with their real sentence embeddings lifted to
  3,072 dimensions (``corpus.load``); ``--rows`` of the 7,959 passages, evenly spaced; a
  passage's crate is its doc path's first two components (``std/collections/…`` →
  ``std::collections``, 60–86 crates).

On one throwaway embedded PostgreSQL, next to each legacy database: a docstore database and a
database with **the migration plan's own schema** (Phase 1.1 of
``../shared/seed/migration-plan.md``: its ``CREATE TABLE``s, indexes and triggers). Each round
times, on the same data, interleaved, every method starting from emptied tables:

  (a) the plan's scripts: ``psql \\COPY … TO 'x.csv' CSV HEADER`` for both tables, then its
      ``migration.sql`` (temporary tables, ``\\COPY … FROM`` the CSVs, ``INSERT … SELECT``)
      into the plan's schema. As written the plan creates its temporary tables ``AS SELECT *
      FROM crates`` on the target, which has no such table; here they are declared with the
      legacy columns;
  (b) the floor: ``psql -c "COPY (SELECT …shaped like documents…) TO STDOUT (FORMAT binary)"
      | psql -c "COPY documents (…) FROM STDIN (FORMAT binary)"`` into the plan's schema, plus
      the sources the same way;
  (c) ``Migrator(...).run()`` with its validation (the default: every row, source, job and
      search parity checked) into docstore's schema, twice: on the event loop ``docstore
      migrate`` runs on (uvloop where installed: ``docstore.cli.base.loop_factory``) and on
      asyncio's default loop (a program calling ``Migrator.run()`` without choosing one);
  (d) the floor of (c), not a goal: the least work any migrator into docstore's schema that
      proves what it stored must do — the rows piped in two streams, then every stored row
      read back (``verify.READ_BACK``'s columns; ``READ_BACK_FOLDED``'s, embeddings as their
      CRC-32C, where ``Migrator.run()`` reads back so) into /dev/null, nothing else. It shows how
      much of (c) / (b) is the schema's ``embedding_half`` and the read-back, which no
      implementation of the Migrator can remove, and how much is the Migrator's own checks.

Each run's CPU seconds are printed too (medians): the server's processes, backends that ended
during the run included (``common.CpuMeter``), and the client's (the psql processes, or the
Migrator's thread). Not a goal: they say where (c)'s time goes beyond (b)'s, and are not
stretched by other load on the machine the way the wall clock is.

Goals (issue 15, acceptance 2), on the medians of the rounds, for each loop: (c) ≥ 2.5×
faster than (a), (c) ≤ 1.4× (b). Every round's figures and the Migrator's stage timings are
printed. The RSS check runs ``Migrator.run()`` on two sizes of the generated corpus in fresh
subprocesses and prints each peak RSS (goal: flat, ≤ 1.2× from the smaller to the larger).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from common import Goal
from migrating.corpus import build_real_legacy
from migrating.methods import (
    binary_pipe,
    empty_docstore,
    empty_plan,
    execute,
    floor_of_migrator,
    plan_schema_sql,
    plan_scripts,
)

import docstore
from docstore.cli.base import loop_factory as cli_loop_factory
from docstore.demo import build_sample_legacy
from docstore.embedded import EmbeddedServer, ensure_database
from docstore.migrate import Migrator
from docstore.migrate.digest import target_folds

# (c) runs twice per round: on the event loop `docstore migrate` uses (uvloop where installed)
# and on asyncio's default loop (what a program calling Migrator.run() gets unless it chose one).
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {
    "cli": cli_loop_factory(),
    "asyncio": None,
}


def migrator_on(
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None, src: str, tgt: str
) -> dict[str, Any]:
    """``Migrator.run()`` on a new event loop of ``loop_factory`` (in a worker thread); with
    the CPU seconds the thread used (``client_cpu``)."""
    cpu = time.thread_time()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(migrator_run(src, tgt))
    return result | {"client_cpu": time.thread_time() - cpu}


async def migrator_run(src: str, tgt: str) -> dict[str, Any]:
    async with Migrator(src, tgt) as m:
        report = await m.run()
    assert report.ok, report.validation
    assert report.copied_documents > 0
    return {
        "timings": report.timings,
        "streamed_chunks": getattr(report.validation, "streamed_chunks", None),
    }


def rss_child(src: str, tgt: str) -> None:
    asyncio.run(migrator_run(src, tgt))
    print(common.peak_rss_mb())


# -- runs ---------------------------------------------------------------------------------


async def bench_corpus(
    args: argparse.Namespace, server: EmbeddedServer, tmp: Path, corpus: str
) -> dict[str, Any]:
    psql = shlex.quote(str(server.bin_path / "psql"))
    admin = server.url("postgres")
    names = {k: f"{k}_{corpus}" for k in ("legacy", "target", "plan")}
    for name in names.values():
        await ensure_database(admin, name)
    src, tgt, plan = (server.url(names[k]) for k in ("legacy", "target", "plan"))
    t0 = time.perf_counter()
    if corpus == "real":
        facts = await build_real_legacy(src, args.rows)
        shape = f"{facts['docs']} real documentation passages of {facts['crates']} crates"
    else:
        facts = await build_sample_legacy(src, crates=args.crates, docs=args.rows)
        shape = (
            f"{args.rows} generated documents of {args.crates} crates"
            f" ({facts['null_embeddings']} without embedding)"
        )
    async with docstore.connect(tgt) as store:  # creates docstore's schema
        folded = await target_folds(store)  # how Migrator.run() will read back (for (d))
    await execute(plan, plan_schema_sql())
    print(
        f"\n[{corpus}] legacy database: {shape} x 3072, built in {time.perf_counter() - t0:.1f} s"
    )
    times: dict[str, list[float]] = {k: [] for k in ("plan", "pipe", *LOOPS, "floor")}
    # (server CPU, client CPU) of each run: see the module docs
    meter = common.CpuMeter(server.server.get_postmaster_info().pid)
    cpu: dict[str, list[tuple[float, float]]] = {k: [] for k in times}
    stages: list[dict[str, float]] = []
    workdir = tmp / f"export-{corpus}"
    workdir.mkdir()
    for round_ in range(args.repeat + 1):  # round 0 is a warm-up
        for name in times:
            await (empty_plan(plan) if name in ("plan", "pipe") else empty_docstore(tgt))
            server_cpu, children = meter.seconds(), os.times()
            start = time.perf_counter()
            if name == "plan":
                plan_scripts(psql, src, plan, workdir)
            elif name == "pipe":
                binary_pipe(psql, src, plan, facts["max_id"])
            elif name == "floor":
                floor_of_migrator(psql, src, tgt, facts["max_id"], folded=folded)
            else:
                result = await asyncio.to_thread(migrator_on, LOOPS[name], src, tgt)
            elapsed = time.perf_counter() - start
            used = common.CpuMeter.used(server_cpu, meter.seconds())
            client = result["client_cpu"] if name in LOOPS else child_cpu(children)
            if round_:
                times[name].append(elapsed)
                cpu[name].append((used, client))
                if name == "cli":
                    stages.append(result["timings"])
        if round_:
            last = {k: v[-1] for k, v in times.items()}
            print(
                f"  round {round_}: (a) plan scripts {last['plan']:.3f} s,"
                f" (b) binary pipe {last['pipe']:.3f} s,"
                f" (c) Migrator.run() {last['cli']:.3f} s = {last['cli'] / last['pipe']:.2f}x (b),"
                f" on asyncio's loop {last['asyncio']:.3f} s"
                f" = {last['asyncio'] / last['pipe']:.2f}x (b);"
                f" (d) its floor {last['floor']:.3f} s = {last['floor'] / last['pipe']:.2f}x (b)"
            )
            print(
                "           run() stages: "
                + ", ".join(f"{k} {v:.3f}" for k, v in stages[-1].items() if k != "total")
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"  median of {args.repeat} rounds (after a warm-up round):")
    print(f"    (a) the plan's CSV scripts, plan's schema   {med['plan']:.3f} s")
    print(f"    (b) psql binary pipe, plan's schema         {med['pipe']:.3f} s")
    for name, label in (("cli", "the CLI's loop"), ("asyncio", "asyncio's loop")):
        print(
            f"    (c) Migrator.run() with validation, {label:15s} {med[name]:.3f} s"
            f" = {med['plan'] / med[name]:.2f}x faster than (a), {med[name] / med['pipe']:.2f}x (b)"
        )
    print(
        f"    (d) the floor of (c): pipe + read-back only  {med['floor']:.3f} s"
        f" = {med['floor'] / med['pipe']:.2f}x (b)"
    )
    print("  CPU seconds, medians (server's processes + client's: psql, the Migrator's thread):")
    for name, label in CPU_LABELS.items():
        server_s = statistics.median(u for u, _ in cpu[name])
        client_s = statistics.median(c for _, c in cpu[name])
        print(f"    {label:43s} {server_s:.3f} + {client_s:.3f} = {server_s + client_s:.3f} s")
    goals = []
    for name, label in (("cli", "as `docstore migrate` runs it"), ("asyncio", "asyncio's loop")):
        goals += [
            (
                f"[{corpus}] Migrator.run() with validation ({label})"
                " >= 2.5x faster than the plan's scripts",
                med["plan"] / med[name] >= 2.5,
                f"{med['plan'] / med[name]:.2f}x",
            ),
            (
                f"[{corpus}] Migrator.run() with validation ({label}) <= 1.4x the binary pipe",
                med[name] / med["pipe"] <= 1.4,
                f"{med[name] / med['pipe']:.2f}x",
            ),
        ]
    return {
        "corpus": corpus,
        "shape": shape,
        "times": times,
        "cpu": cpu,
        "stages": stages,
        "goals": goals,
    }


CPU_LABELS = {
    "plan": "(a) the plan's CSV scripts",
    "pipe": "(b) psql binary pipe",
    "cli": "(c) Migrator.run(), the CLI's loop",
    "asyncio": "(c) Migrator.run(), asyncio's loop",
    "floor": "(d) pipe + read-back only",
}


def child_cpu(before: os.times_result) -> float:
    """CPU seconds of the child processes (psql, and the shells around it) that ended since
    ``before``."""
    after = os.times()
    return (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )


async def rss_check(args: argparse.Namespace, server: EmbeddedServer) -> list[Goal]:
    admin = server.url("postgres")
    peaks = []
    for rows in (args.rss_rows // 5, args.rss_rows):
        await ensure_database(admin, f"legacy{rows}")
        await ensure_database(admin, f"target{rows}")
        await build_sample_legacy(server.url(f"legacy{rows}"), crates=args.crates, docs=rows)
        async with docstore.connect(server.url(f"target{rows}")):
            pass
        peak = common.child_peak_rss_mb(
            __file__, "--rss-child", server.url(f"legacy{rows}"), server.url(f"target{rows}")
        )
        peaks.append(peak)
        print(f"peak RSS of Migrator.run() (with validation), {rows} documents: {peak:.0f} MB")
    return [
        ("peak RSS under 250 MB", max(peaks) < 250, f"{max(peaks):.0f} MB"),
        (
            "RSS flat in the row count (<= 1.2x)",
            peaks[1] <= 1.2 * peaks[0],
            f"{peaks[0]:.0f} -> {peaks[1]:.0f} MB, {peaks[1] / peaks[0]:.2f}x",
        ),
    ]


async def main(args: argparse.Namespace) -> bool:
    machine = common.machine_line("bench/migrate.py")
    print(machine)
    with tempfile.TemporaryDirectory(prefix="docstore-bench-migrate-") as tmp:
        server = EmbeddedServer(Path(tmp), cleanup="delete").start()
        try:
            results = [
                await bench_corpus(args, server, Path(tmp), corpus)
                for corpus in (["generated", "real"] if args.corpus == "both" else [args.corpus])
            ]
            goals = [g for r in results for g in r["goals"]]
            if args.rss_rows:
                goals += await rss_check(args, server)
        finally:
            server.close()
    print()
    if args.json:
        corpora = [{k: v for k, v in r.items() if k != "goals"} for r in results]
        common.write_json(
            args.json, {"machine": machine, "corpora": corpora, "goals": common.goals_json(goals)}
        )
    return common.print_goals(goals)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss-child":
        rss_child(sys.argv[2], sys.argv[3])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--corpus", choices=["generated", "real", "both"], default="both")
    parser.add_argument("--rows", type=int, default=4133)
    parser.add_argument("--crates", type=int, default=40, help="crates of the generated corpus")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rss-rows", type=int, default=50_000)
    parser.add_argument("--json", help="also write the figures to this file")
    sys.exit(0 if asyncio.run(main(parser.parse_args())) else 1)
