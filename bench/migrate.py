"""Benchmark: Migrator.run() against the migration plan's own scripts and a raw binary pipe.

    python bench/migrate.py                      # 40 crates / 4,133 docs x 3072, 3 rounds
    python bench/migrate.py --rows 50000 --rss-rows 0

A legacy database is built from the deployed schema (varied text with quotes, tabs,
newlines, backslashes and unicode; every 9th document without an embedding) on a throwaway
embedded PostgreSQL, next to an empty docstore database. Each round times, on the same data,
interleaved, with the target emptied in between:

  (a) the plan's scripts: ``psql \\COPY … TO 'x.csv' CSV HEADER`` for both tables, then its
      ``migration.sql`` (temporary tables, ``\\COPY … FROM`` the CSVs, ``INSERT … SELECT``).
      As written, the plan creates its temporary tables ``AS SELECT * FROM crates`` on the
      target, which has no such table; here they are declared with the legacy columns;
  (b) the practical floor: ``psql -c "COPY (SELECT …shaped like documents…) TO STDOUT (FORMAT
      binary)" | psql -c "COPY documents (…) FROM STDIN (FORMAT binary)"`` plus the sources;
  (c) ``Migrator(...).run()`` without validation; and then ``Migrator.validate()`` alone.

All three write into the same ``documents`` table, so all pay for its full-text index
(``to_tsvector`` of every document, ~0.75 s of the 4,133); ``--without-fts`` drops it first
to show the methods' own costs.

Medians are reported with the goals: (c) >= 3x faster than (a), (c) <= 1.5x (b), validation
no slower than (c). The RSS check migrates two sizes in fresh subprocesses and prints peak
RSS of each (goal: under 250 MB and flat).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

import docstore
from docstore.embedded import EmbeddedServer, ensure_database
from docstore.migrate import Migrator
from docstore.migrate.legacy import DOCUMENT_COLUMNS, documents_copy_query

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from docstore.demo import build_sample_legacy

PLAN_IMPORT_SQL = """
CREATE TEMP TABLE temp_crates (id integer, name varchar(255), version varchar(50),
    last_updated timestamp, total_docs integer, total_tokens integer);
CREATE TEMP TABLE temp_doc_embeddings (id integer, crate_id integer, crate_name varchar(255),
    doc_path text, content text, embedding vector(3072), token_count integer,
    created_at timestamp);
\\COPY temp_crates FROM 'crates.csv' WITH CSV HEADER
\\COPY temp_doc_embeddings FROM 'doc_embeddings.csv' WITH CSV HEADER
INSERT INTO documents (doc_type, source_name, doc_path, content, embedding, token_count, created_at)
SELECT 'rust' as doc_type, de.crate_name as source_name, de.doc_path, de.content, de.embedding,
       de.token_count, de.created_at
FROM temp_doc_embeddings de;
INSERT INTO document_sources (doc_type, source_name, config, enabled, last_populated)
SELECT DISTINCT 'rust' as doc_type, c.name as source_name,
    jsonb_build_object('version', c.version, 'total_docs', c.total_docs,
                       'total_tokens', c.total_tokens) as config,
    true as enabled, c.last_updated as last_populated
FROM temp_crates c;
"""

SOURCES_PIPE_QUERY = (
    "SELECT 'rust'::varchar(50), c.name::varchar(255), jsonb_build_object('version',"
    " c.version, 'total_docs', c.total_docs, 'total_tokens', c.total_tokens), true,"
    " c.last_updated::timestamptz FROM crates c"
)


def sh(command: str, cwd: Path | None = None) -> None:
    subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], check=True, cwd=cwd, stdout=subprocess.DEVNULL
    )


async def empty_target(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "TRUNCATE documents, document_sources, docstore_migration_checkpoints,"
            " source_population_jobs RESTART IDENTITY CASCADE"
        )
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def plan_scripts(psql: str, src: str, tgt: str, workdir: Path) -> None:
    for table in ("crates", "doc_embeddings"):
        export = f"\\COPY {table} TO '{workdir}/{table}.csv' WITH CSV HEADER"
        sh(f"{psql} {shlex.quote(src)} -c {shlex.quote(export)}")
    (workdir / "migration.sql").write_text(PLAN_IMPORT_SQL)
    sh(f"{psql} -v ON_ERROR_STOP=1 {shlex.quote(tgt)} -f migration.sql", cwd=workdir)


def piped(psql: str, src: str, out: str, tgt: str, into: str) -> str:
    return f"{psql} {shlex.quote(src)} -c {shlex.quote(out)} | {psql} {shlex.quote(tgt)}" + (
        f" -c {shlex.quote(into)}"
    )


def binary_pipe(psql: str, src: str, tgt: str, max_id: int) -> None:
    query = documents_copy_query("'rust'", 3072).replace("$2", "0").replace("$3", str(max_id))
    columns = ", ".join(DOCUMENT_COLUMNS)
    out = f"COPY ({' '.join(query.split())}) TO STDOUT (FORMAT binary)"
    into = f"COPY documents ({columns}) FROM STDIN (FORMAT binary)"
    sh(piped(psql, src, out, tgt, into))
    out = f"COPY ({SOURCES_PIPE_QUERY}) TO STDOUT (FORMAT binary)"
    into = (
        "COPY document_sources (doc_type, source_name, config, enabled, last_populated)"
        " FROM STDIN (FORMAT binary)"
    )
    sh(piped(psql, src, out, tgt, into))


LAST_TIMINGS: dict[str, float] = {}


async def migrator_run(src: str, tgt: str) -> None:
    async with Migrator(src, tgt, validate=False) as m:
        report = await m.run()
    assert report.copied_documents > 0
    LAST_TIMINGS.update(report.timings)


async def migrator_validate(src: str, tgt: str) -> float:
    async with Migrator(src, tgt) as m:
        t0 = time.perf_counter()
        result = await m.validate()
        elapsed = time.perf_counter() - t0
    assert result.ok, result
    return elapsed


def rss_child(src: str, tgt: str) -> None:
    asyncio.run(migrator_run(src, tgt))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


async def main(args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory(prefix="docstore-bench-migrate-") as tmp:
        server = EmbeddedServer(Path(tmp), cleanup="delete").start()
        try:
            return await bench(args, server, Path(tmp))
        finally:
            server.close()


async def bench(args: argparse.Namespace, server: EmbeddedServer, tmp: Path) -> bool:
    psql = shlex.quote(str(server.bin_path / "psql"))
    admin = server.url("postgres")
    await ensure_database(admin, "legacy")
    await ensure_database(admin, "target")
    src, tgt = server.url("legacy"), server.url("target")
    t0 = time.perf_counter()
    facts = await build_sample_legacy(src, crates=args.crates, docs=args.rows)
    print(
        f"legacy database: {args.crates} crates, {args.rows} documents x 3072 "
        f"({facts['null_embeddings']} without embedding), built in {time.perf_counter() - t0:.1f} s"
    )
    async with docstore.connect(tgt) as store:  # creates the schema
        if args.without_fts:
            await store.execute("DROP INDEX idx_documents_content_fts")
    times: dict[str, list[float]] = {"plan": [], "pipe": [], "migrator": [], "validate": []}
    workdir = tmp / "export"
    workdir.mkdir()
    for round_ in range(args.repeat + 1):  # round 0 is a warm-up
        for name in ("plan", "pipe", "migrator"):
            await empty_target(tgt)
            start = time.perf_counter()
            if name == "plan":
                plan_scripts(psql, src, tgt, workdir)
            elif name == "pipe":
                binary_pipe(psql, src, tgt, facts["max_id"])
            else:
                await migrator_run(src, tgt)
            elapsed = time.perf_counter() - start
            if round_:
                times[name].append(elapsed)
        if round_:
            times["validate"].append(await migrator_validate(src, tgt))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmedian seconds over {args.repeat} rounds (after one warm-up round):")
    print(f"  (a) the plan's CSV scripts      {med['plan']:.3f}")
    print(f"  (b) psql binary pipe (floor)    {med['pipe']:.3f}")
    print(f"  (c) Migrator.run() no validate  {med['migrator']:.3f}")
    print(f"      Migrator.validate()         {med['validate']:.3f}")
    print(
        "  Migrator stages (last run): "
        + ", ".join(f"{k} {v:.3f}" for k, v in LAST_TIMINGS.items())
    )
    goals = [
        (
            "Migrator >= 3x faster than the plan's scripts",
            med["plan"] / med["migrator"] >= 3,
            f"{med['plan'] / med['migrator']:.2f}x",
        ),
        (
            "Migrator within 1.5x of the binary pipe",
            med["migrator"] / med["pipe"] <= 1.5,
            f"{med['migrator'] / med['pipe']:.2f}x",
        ),
        (
            "validation no slower than the copy",
            med["validate"] <= med["migrator"],
            f"{med['validate'] / med['migrator']:.2f}x of the copy",
        ),
    ]
    if args.rss_rows:
        peaks = []
        for rows in (args.rss_rows // 5, args.rss_rows):
            await ensure_database(admin, f"legacy{rows}")
            await ensure_database(admin, f"target{rows}")
            await build_sample_legacy(
                server.url(f"legacy{rows}"), crates=args.crates, docs=rows, fast=True
            )
            async with docstore.connect(server.url(f"target{rows}")):
                pass
            out = subprocess.run(  # noqa: ASYNC221 - a measured child, nothing else runs
                [
                    sys.executable,
                    __file__,
                    "--rss-child",
                    server.url(f"legacy{rows}"),
                    server.url(f"target{rows}"),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            peak = int(out.stdout.split()[-1])
            peaks.append(peak)
            print(f"peak RSS migrating {rows} documents: {peak} MB")
        goals.append(("peak RSS under 250 MB", max(peaks) < 250, f"{max(peaks)} MB"))
        goals.append(
            (
                "RSS flat in the row count (<= 1.2x)",
                peaks[1] <= 1.2 * peaks[0],
                f"{peaks[1] / peaks[0]:.2f}x",
            )
        )
    print()
    for name, ok, figure in goals:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {figure}")
    return all(ok for _, ok, _ in goals)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss-child":
        rss_child(sys.argv[2], sys.argv[3])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4133)
    parser.add_argument("--crates", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rss-rows", type=int, default=50_000)
    parser.add_argument(
        "--without-fts",
        action="store_true",
        help="drop the full-text index first (every method pays for it equally)",
    )
    sys.exit(0 if asyncio.run(main(parser.parse_args())) else 1)
