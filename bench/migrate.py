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
      read back (``verify.READ_BACK``'s columns) into /dev/null, nothing else. It shows how
      much of (c) / (b) is the schema's ``embedding_half`` and the read-back, which no
      implementation of the Migrator can remove, and how much is the Migrator's own checks.

Goals (issue 15, acceptance 2), on the medians of the rounds, for each loop: (c) ≥ 2.5×
faster than (a), (c) ≤ 1.4× (b). Every round's figures and the Migrator's stage timings are
printed. The RSS check runs ``Migrator.run()`` on two sizes of the generated corpus in fresh
subprocesses and prints each peak RSS (goal: flat, ≤ 1.2× from the smaller to the larger).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

import docstore
from docstore.cli.base import loop_factory as cli_loop_factory
from docstore.codecs import register_codecs
from docstore.demo import build_sample_legacy
from docstore.embedded import EmbeddedServer, ensure_database
from docstore.migrate import Migrator
from docstore.migrate.legacy import (
    DOCUMENT_COLUMNS,
    LEGACY_SCHEMA_SQL,
    ROLLBACK_COLUMNS,
    documents_copy_query,
)
from docstore.migrate.verify import READ_BACK

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
PLAN = SHARED / "seed" / "migration-plan.md"
CORPUS = SHARED / "corpora"

# Phase 1.1 of the seed plan, used when the plan file is not beside the repository.
PLAN_SCHEMA_FALLBACK = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE documents (
    id SERIAL PRIMARY KEY,
    doc_type VARCHAR(50) NOT NULL DEFAULT 'rust',
    source_name VARCHAR(255) NOT NULL,
    doc_path TEXT NOT NULL,
    content TEXT NOT NULL,
    metadata JSONB DEFAULT '{}',
    embedding vector(3072),
    token_count INTEGER,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(doc_type, source_name, doc_path)
);
CREATE TABLE document_sources (
    id SERIAL PRIMARY KEY,
    doc_type VARCHAR(50) NOT NULL DEFAULT 'rust',
    source_name VARCHAR(255) NOT NULL,
    config JSONB NOT NULL DEFAULT '{}',
    enabled BOOLEAN DEFAULT true,
    last_checked TIMESTAMPTZ,
    last_populated TIMESTAMPTZ,
    created_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(doc_type, source_name)
);
CREATE INDEX idx_documents_doc_type ON documents(doc_type);
CREATE INDEX idx_documents_source_name ON documents(source_name);
CREATE INDEX idx_documents_type_source ON documents(doc_type, source_name);
CREATE INDEX idx_documents_metadata ON documents USING gin(metadata);
CREATE OR REPLACE FUNCTION update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = CURRENT_TIMESTAMP;
    RETURN NEW;
END;
$$ language 'plpgsql';
CREATE TRIGGER update_documents_updated_at
    BEFORE UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
CREATE TRIGGER update_document_sources_updated_at
    BEFORE UPDATE ON document_sources
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
"""

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


def plan_schema_sql() -> str:
    """The ``sql`` block of the plan's Phase 1.1 (its CREATE TABLEs, indexes, triggers)."""
    if PLAN.exists():
        text = PLAN.read_text(encoding="utf-8")
        section = text[text.index("#### 1.1") :]
        found = re.search(r"```sql\n(.*?)```", section, re.S)
        if found:
            return found.group(1)
    return PLAN_SCHEMA_FALLBACK


def sh(command: str, cwd: Path | None = None) -> None:
    subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], check=True, cwd=cwd, stdout=subprocess.DEVNULL
    )


async def execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def empty_docstore(url: str) -> None:
    await execute(
        url,
        "TRUNCATE documents, document_sources, docstore_migration_checkpoints,"
        " source_population_jobs RESTART IDENTITY CASCADE; CHECKPOINT",
    )


async def empty_plan(url: str) -> None:
    await execute(url, "TRUNCATE documents, document_sources RESTART IDENTITY; CHECKPOINT")


# -- the real-text corpus -----------------------------------------------------------------------


def crate_of(path: str) -> str:
    """``std/collections/struct.HashMap.html`` → ``std::collections``; ``std/fn.x.html`` → std."""
    parts = path.split("/")
    return "::".join(parts[:2]) if len(parts) > 2 else parts[0]


async def build_real_legacy(url: str, rows: int) -> dict[str, int]:
    """A legacy database of ``rows`` real documentation passages (evenly spaced over the
    corpus) with their embeddings lifted to 3,072 dims."""
    sys.path.insert(0, str(CORPUS))
    from corpus import load  # type: ignore[import-not-found]

    texts, paths, vectors, _, _ = load()
    pick = np.unique(np.linspace(0, len(texts) - 1, num=min(rows, len(texts))).astype(int))
    crates = sorted({crate_of(paths[i]) for i in pick})
    crate_id = {name: i + 1 for i, name in enumerate(crates)}
    base = dt.datetime(2025, 6, 1, 12, 0, 0)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(LEGACY_SCHEMA_SQL)
        await register_codecs(conn, "public")
        await conn.copy_records_to_table(
            "crates",
            records=[(crate_id[n], n, "1.97.0", base, 0, 0) for n in crates],
            columns=["id", "name", "version", "last_updated", "total_docs", "total_tokens"],
        )
        await conn.copy_records_to_table(
            "doc_embeddings",
            records=(
                (
                    j + 1,
                    crate_id[crate_of(paths[i])],
                    crate_of(paths[i]),
                    paths[i],
                    texts[i],
                    vectors[i],
                    len(texts[i].split()),
                    base + dt.timedelta(seconds=j),
                )
                for j, i in enumerate(pick)
            ),
            columns=list(ROLLBACK_COLUMNS),  # doc_embeddings' columns
        )
        await conn.execute(
            """UPDATE crates c SET total_docs = s.n, total_tokens = s.t
                 FROM (SELECT crate_name, count(*) AS n, sum(token_count) AS t
                         FROM doc_embeddings GROUP BY 1) s WHERE s.crate_name = c.name;
               SELECT setval('crates_id_seq', (SELECT max(id) FROM crates));
               SELECT setval('doc_embeddings_id_seq', (SELECT max(id) FROM doc_embeddings))"""
        )
        await conn.execute("VACUUM ANALYZE crates")  # one statement each: not in a transaction
        await conn.execute("VACUUM ANALYZE doc_embeddings")
    finally:
        await conn.close()
    return {"max_id": len(pick), "null_embeddings": 0, "crates": len(crates), "docs": len(pick)}


# -- the three methods ------------------------------------------------------------------------


def plan_scripts(psql: str, src: str, plan: str, workdir: Path) -> None:
    for table in ("crates", "doc_embeddings"):
        export = f"\\COPY {table} TO '{workdir}/{table}.csv' WITH CSV HEADER"
        sh(f"{psql} {shlex.quote(src)} -c {shlex.quote(export)}")
    (workdir / "migration.sql").write_text(PLAN_IMPORT_SQL)
    sh(f"{psql} -v ON_ERROR_STOP=1 {shlex.quote(plan)} -f migration.sql", cwd=workdir)


def piped(psql: str, src: str, out: str, tgt: str, into: str) -> str:
    return f"{psql} {shlex.quote(src)} -c {shlex.quote(out)} | {psql} {shlex.quote(tgt)}" + (
        f" -c {shlex.quote(into)}"
    )


def documents_pipe(psql: str, src: str, tgt: str, low: int, high: int) -> str:
    """The shell pipe of the legacy rows ``(low, high]`` into ``documents`` on ``tgt``."""
    query = documents_copy_query("'rust'", 3072).replace("$2", str(low)).replace("$3", str(high))
    out = f"COPY ({' '.join(query.split())}) TO STDOUT (FORMAT binary)"
    into = f"COPY documents ({', '.join(DOCUMENT_COLUMNS)}) FROM STDIN (FORMAT binary)"
    return piped(psql, src, out, tgt, into)


def binary_pipe(psql: str, src: str, plan: str, max_id: int) -> None:
    sh(documents_pipe(psql, src, plan, 0, max_id))
    out = f"COPY ({SOURCES_PIPE_QUERY}) TO STDOUT (FORMAT binary)"
    into = (
        "COPY document_sources (doc_type, source_name, config, enabled, last_populated)"
        " FROM STDIN (FORMAT binary)"
    )
    sh(piped(psql, src, out, plan, into))


def at_once(commands: list[str]) -> None:
    """Run shell commands side by side; fail if any fails."""
    children = [
        subprocess.Popen(["bash", "-o", "pipefail", "-c", c], stdout=subprocess.DEVNULL)
        for c in commands
    ]
    if any(child.wait() for child in children):
        raise RuntimeError("a shell pipe failed")


def floor_of_migrator(psql: str, src: str, tgt: str, max_id: int) -> None:
    """(d): the least work any migrator into docstore's schema that proves what it stored
    must do — the rows piped in two streams (as ``Migrator.run()`` copies them), then every
    stored row read back in two streams (``verify.READ_BACK``'s columns) into /dev/null: no
    hashing, no preflight, sources, delta pass, stamps, counts, jobs or parity."""
    half = max_id // 2
    at_once([documents_pipe(psql, src, tgt, 0, half), documents_pipe(psql, src, tgt, half, max_id)])
    back = READ_BACK.replace("$1", "'rust'").replace(
        "metadata->>'legacy_id' = ANY($2::text[])",
        "(metadata->>'legacy_id')::bigint > {} AND (metadata->>'legacy_id')::bigint <= {}",
    )
    at_once(
        [
            f"{psql} {shlex.quote(tgt)} -c "
            + shlex.quote(f"COPY ({back.format(low, high)}) TO STDOUT (FORMAT binary)")
            + " > /dev/null"
            for low, high in ((0, half), (half, max_id))
        ]
    )


# (c) runs twice per round: on the event loop `docstore migrate` uses (uvloop where installed)
# and on asyncio's default loop (what a program calling Migrator.run() gets unless it chose one).
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {
    "cli": cli_loop_factory(),
    "asyncio": None,
}


def migrator_on(
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None, src: str, tgt: str
) -> dict[str, Any]:
    """``Migrator.run()`` on a new event loop of ``loop_factory`` (in a worker thread)."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(migrator_run(src, tgt))


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
    print(peak_rss_mb())


def peak_rss_mb() -> int:
    """This process image's peak RSS: VmHWM, not ru_maxrss, which Linux carries over from the
    parent across fork + exec (the parent here holds the corpora: it read 525 MB)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


# -- runs ---------------------------------------------------------------------------------


def header() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load {load},"
        f" python {sys.version.split()[0]}, docstore at {Path(docstore.__file__).parent}"
    )


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
    async with docstore.connect(tgt):  # creates docstore's schema
        pass
    await execute(plan, plan_schema_sql())
    print(
        f"\n[{corpus}] legacy database: {shape} x 3072, built in {time.perf_counter() - t0:.1f} s"
    )
    times: dict[str, list[float]] = {k: [] for k in ("plan", "pipe", *LOOPS, "floor")}
    stages: list[dict[str, float]] = []
    workdir = tmp / f"export-{corpus}"
    workdir.mkdir()
    for round_ in range(args.repeat + 1):  # round 0 is a warm-up
        for name in times:
            await (empty_plan(plan) if name in ("plan", "pipe") else empty_docstore(tgt))
            start = time.perf_counter()
            if name == "plan":
                plan_scripts(psql, src, plan, workdir)
            elif name == "pipe":
                binary_pipe(psql, src, plan, facts["max_id"])
            elif name == "floor":
                floor_of_migrator(psql, src, tgt, facts["max_id"])
            else:
                result = await asyncio.to_thread(migrator_on, LOOPS[name], src, tgt)
            elapsed = time.perf_counter() - start
            if round_:
                times[name].append(elapsed)
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
    return {"corpus": corpus, "shape": shape, "times": times, "stages": stages, "goals": goals}


async def rss_check(
    args: argparse.Namespace, server: EmbeddedServer
) -> list[tuple[str, bool, str]]:
    admin = server.url("postgres")
    peaks = []
    for rows in (args.rss_rows // 5, args.rss_rows):
        await ensure_database(admin, f"legacy{rows}")
        await ensure_database(admin, f"target{rows}")
        await build_sample_legacy(server.url(f"legacy{rows}"), crates=args.crates, docs=rows)
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
        print(f"peak RSS of Migrator.run() (with validation), {rows} documents: {peak} MB")
    return [
        ("peak RSS under 250 MB", max(peaks) < 250, f"{max(peaks)} MB"),
        (
            "RSS flat in the row count (<= 1.2x)",
            peaks[1] <= 1.2 * peaks[0],
            f"{peaks[0]} -> {peaks[1]} MB, {peaks[1] / peaks[0]:.2f}x",
        ),
    ]


def write_json(path: str, results: list[dict[str, Any]], goals: list[Any]) -> None:
    figures = {
        "header": header(),
        "corpora": [{k: v for k, v in r.items() if k != "goals"} for r in results],
        "goals": [{"goal": n, "met": ok, "figure": f} for n, ok, f in goals],
    }
    Path(path).write_text(json.dumps(figures, indent=2))


async def main(args: argparse.Namespace) -> bool:
    print(header())
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
    for name, ok, figure in goals:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {figure}")
    if args.json:
        write_json(args.json, results, goals)
    return all(ok for _, ok, _ in goals)


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
