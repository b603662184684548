"""Cutover day (docs/cutover.md), end to end, on two throwaway embedded PostgreSQL servers.

An "old" server holds the legacy ``rust_docs_vectors`` database (built like ``docstore demo``
builds its sample); a "new" server holds an empty ``doc_server_db``. Every runbook step runs
the ``docstore`` command line the runbook shows, as a subprocess, with the environment the
runbook sets (``LEGACY_DATABASE_URL``, ``DATABASE_URL``, ``READ_ONLY``); between the steps,
Python checks what an operator should look at: exit codes, reports, the application's reads
and refused writes, the legacy SQL views, and the legacy database after a rollback that must
carry back what was written on the new database after the switch.

Any failed check prints ``FAILED`` and exits 1. Both servers and their data are deleted at
the end, whatever happens. Nothing printed contains a password or a vector value.

    python examples/cutover.py [--crates 40] [--docs 4133]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

import docstore
from docstore.codecs import register_codecs
from docstore.compat import LegacyDatabase
from docstore.config import with_database
from docstore.demo import build_sample_legacy, hash_embedding
from docstore.embedded import EmbeddedServer, ensure_database

LEGACY_DB = "rust_docs_vectors"
NEW_DB = "doc_server_db"
REPORT = "cutover-report.json"
# Variables of the operator's shell / the app's deployment that this rehearsal controls.
CONTROLLED = ("DATABASE_URL", "MCPDOCS_DATABASE_URL", "LEGACY_DATABASE_URL", "READ_ONLY")

# Legacy SQL an old client runs, on the legacy tables and on docstore's compatibility views.
# crate_id is compared through the crate it points at: crates.id is the source's id now.
DOC_ROWS = """
SELECT d.id, c.name AS crate, d.crate_name, d.doc_path, md5(d.content) AS content,
       md5(d.embedding::text) AS embedding, d.token_count, d.created_at
  FROM doc_embeddings d LEFT JOIN crates c ON c.id = d.crate_id
 ORDER BY d.crate_name, d.doc_path"""
CRATE_ROWS = (
    "SELECT name, version, last_updated, total_docs, total_tokens FROM crates ORDER BY name"
)
STATS_ROWS = (
    "SELECT name, version, last_updated, doc_count, total_tokens FROM crate_stats ORDER BY name"
)
SIMILAR = (
    "SELECT id, doc_path, md5(content) FROM search_similar_docs($1, $2, 5)"
    " WHERE similarity IS NOT NULL"  # the legacy function also returns NULL-embedding rows last
)


class CheckFailed(Exception):
    """A check of the rehearsal did not hold."""


class Rehearsal:
    """Runs the runbook's commands and checks, printing each step."""

    def __init__(self, workdir: Path, legacy_url: str, new_url: str) -> None:
        self.workdir = workdir
        self.legacy_url = legacy_url
        self.new_url = new_url
        self.checks = 0
        self.step_no = 0
        self.timings: list[tuple[str, float]] = []
        self.shell = dict(os.environ)  # main() removed docstore's variables from it
        # a mistake must never reach somebody's embedded database
        self.shell["DOCSTORE_EMBEDDED_DIR"] = str(workdir / "no-embedded-database-here")
        self.shell.setdefault("COLUMNS", "100")

    # -- output ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.step_no += 1
        print(f"\n== step {self.step_no}: {title}", flush=True)
        started = time.perf_counter()
        yield
        elapsed = time.perf_counter() - started
        self.timings.append((title, elapsed))
        print(f"   ({elapsed:.1f} s)", flush=True)

    def check(self, condition: bool, what: str) -> None:
        if not condition:
            raise CheckFailed(what)
        self.checks += 1
        print(f"   ok: {what}", flush=True)

    # -- the runbook's commands ---------------------------------------------------------------
    def operator_env(self, **overrides: str) -> dict[str, str]:
        """The operator's shell as the runbook sets it up: both URLs exported, no READ_ONLY."""
        env = dict(self.shell)
        env.update(LEGACY_DATABASE_URL=self.legacy_url, DATABASE_URL=self.new_url)
        env.update(overrides)
        return env

    def docstore(self, *args: str, expect: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``docstore ARGS`` as the runbook writes it; check its exit status."""
        shown = " ".join(f"{k}={self.placeholder(v)}" for k, v in env.items())
        print(f"   $ {shown + ' ' if shown else ''}docstore {shlex.join(args)}", flush=True)
        out = subprocess.run(
            [sys.executable, "-m", "docstore", *args],
            env=self.operator_env(**env),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=300,
        )
        for line in (out.stdout + out.stderr).rstrip().splitlines():
            print(f"   | {line}")
        self.check(
            out.returncode == expect,
            f"docstore {args[0]}: exit status {out.returncode}" + (" (expected)" if expect else ""),
        )
        return out

    def placeholder(self, value: str) -> str:
        """A URL as the runbook writes it (the real ones have no password, but still)."""
        return {self.legacy_url: "$LEGACY_DATABASE_URL", self.new_url: "$NEW_DB_URL"}.get(
            value, value
        )

    @contextlib.contextmanager
    def app_env(self, **env: str) -> Iterator[None]:
        """The application's deployment environment (docstore reads it at connect time)."""
        saved = {k: os.environ.get(k) for k in (*CONTROLLED, "DOCSTORE_EMBEDDED_DIR")}
        for key in CONTROLLED:
            os.environ.pop(key, None)
        os.environ["DOCSTORE_EMBEDDED_DIR"] = self.shell["DOCSTORE_EMBEDDED_DIR"]
        os.environ.update(env)
        shown = " ".join(f"{k}={self.placeholder(v)}" for k, v in env.items())
        print(f"   the app's environment: {shown}", flush=True)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextlib.asynccontextmanager
async def sql(url: str, *, vectors: bool = True) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection, as a legacy client (the old server, psql, a dashboard) opens one."""
    conn = await asyncpg.connect(url)
    try:
        if vectors:
            await register_codecs(conn, "public")
        yield conn
    finally:
        await conn.close()


async def rows(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    async with sql(url) as conn:
        return [tuple(r) for r in await conn.fetch(query, *args)]


async def expect_read_only_app(r: Rehearsal, probe: Any) -> None:
    """With READ_ONLY=true the app still reads, and every write raises ReadOnlyError."""
    async with docstore.connect() as store:
        health = await store.health()
        r.check(
            health.url_source == "DATABASE_URL" and health.read_only,
            "the app reads DATABASE_URL (it wins over MCPDOCS_DATABASE_URL) and is read-only",
        )
        hits = await store.search(probe["embedding"], limit=5)
        r.check(bool(hits) and hits[0].doc_path == probe["doc_path"], "the app serves searches")
        probe_doc = docstore.Document(
            source_name=probe["crate_name"],
            doc_path="read-only/probe.html",
            content="must not be written",
            embedding=probe["embedding"],
        )
        writes: list[Callable[[], Awaitable[object]]] = [
            lambda: store.documents.upsert(probe_doc),
            lambda: LegacyDatabase(store).upsert_crate("read-only-probe", "0.0.1"),
        ]
        for write in writes:
            try:
                await write()
            except docstore.ReadOnlyError:
                continue
            raise CheckFailed("a write went through although READ_ONLY=true")
        r.check(True, "writes raise docstore.ReadOnlyError (store.documents and LegacyDatabase)")


async def rehearse(r: Rehearsal, crates: int, docs: int) -> None:
    """docs/cutover.md, step by step (the step titles carry the runbook's times)."""
    legacy, new = r.legacy_url, r.new_url

    with r.step(f"stand-ins: legacy {LEGACY_DB} ({crates} crates, {docs} docs), empty {NEW_DB}"):
        built = await build_sample_legacy(legacy, crates=crates, docs=docs)
        r.check(built["max_id"] == docs, f"the legacy database holds {docs} documents")

    with r.step("T-7d  prepare the new database: docstore init, docstore health"):
        r.docstore("init")
        health = json.loads(r.docstore("health", "--json").stdout)
        r.check(
            health["schema_version"] == health["latest_schema_version"]
            and health["pgvector_version"] >= "0.8",
            f"schema v{health['schema_version']}, pgvector {health['pgvector_version']}",
        )

    with r.step("T-1d  preflight: docstore migrate --dry-run"):
        out = r.docstore("migrate", "--dry-run")
        r.check("nothing was written" in out.stdout, "preflight passes and writes nothing")
        out = r.docstore("migrate", "--dry-run", expect=1, READ_ONLY="true")
        r.check(
            "unset READ_ONLY to migrate" in out.stdout,
            "READ_ONLY=true in the operator's shell blocks the migration",
        )

    with r.step("T-1d  warm copy and index while the legacy server still writes"):
        r.docstore("migrate", "--report", "warm-report.json")
        r.docstore("index", "create")
        async with sql(legacy) as conn:  # the legacy server keeps working after the warm copy
            await conn.execute(
                "UPDATE doc_embeddings SET content = content || ' (edited late)' WHERE id = 7;"
                "INSERT INTO doc_embeddings (crate_id, crate_name, doc_path, content, token_count)"
                " VALUES (2, 'crate-1', 'crate-1/late.html', 'written after the warm copy', 5)"
            )
        r.check(True, "the legacy server edited 1 document and added 1 after the warm copy")

    with r.step("T+0   freeze the legacy database"):
        async with sql(with_database(legacy, "postgres"), vectors=False) as conn:
            await conn.execute(f"ALTER DATABASE {LEGACY_DB} SET default_transaction_read_only = on")
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE datname = '{LEGACY_DB}' AND pid <> pg_backend_pid()"
            )
        async with sql(legacy) as conn:
            try:
                await conn.execute("UPDATE crates SET version = 'x' WHERE id = 1")
            except asyncpg.ReadOnlySQLTransactionError:
                r.check(True, "a legacy client's write fails: read-only transaction")
            else:
                raise CheckFailed("the legacy database accepted a write after the freeze")

    with r.step(f"T+5   final copy: docstore migrate --report {REPORT}"):
        out = r.docstore("migrate", "--report", REPORT)
        report = docstore.MigrationReport.model_validate_json(
            (r.workdir / REPORT).read_text(encoding="utf-8")
        )
        r.check(report.ok and "validation: OK" in out.stdout, "validation: OK")
        r.check(report.delta_documents == 0, '"delta_documents": 0 (nothing wrote meanwhile)')
        r.check(
            report.skipped_chunks > 0 and 0 < report.copied_documents < docs,
            f"only changed chunks were copied again ({report.copied_documents} documents;"
            f" {report.skipped_chunks} chunk(s) left alone)",
        )

    with r.step("T+10  docstore validate"):
        out = r.docstore("validate")
        r.check("validation: OK" in out.stdout, "validation: OK")

    with r.step("T+12  legacy SQL on the new database, index check"):
        r.docstore("compat", "install-views")
        health = json.loads(r.docstore("health", "--json").stdout)
        r.check(
            health["vector_indexes"] == {"documents_embedding_hnsw_cosine": True},
            "the HNSW index is valid",
        )

    async with sql(legacy) as conn:
        probe = await conn.fetchrow(
            "SELECT crate_name, doc_path, embedding FROM doc_embeddings"
            " WHERE embedding IS NOT NULL ORDER BY id OFFSET 100 LIMIT 1"
        )
        assert probe is not None
        max_legacy_id = int(await conn.fetchval("SELECT max(id) FROM doc_embeddings"))

    with r.step("T+15  switch the app to the new database, still READ_ONLY=true"):
        # the deployment still carries the legacy server's MCPDOCS_DATABASE_URL: DATABASE_URL wins
        with r.app_env(DATABASE_URL=new, MCPDOCS_DATABASE_URL=legacy, READ_ONLY="true"):
            await expect_read_only_app(r, probe)
            async with await LegacyDatabase.connect() as db:
                mine = await db.search_similar_docs(probe["crate_name"], probe["embedding"], 5)
            theirs = await rows(legacy, SIMILAR, probe["embedding"], probe["crate_name"])
            r.check(
                [d.doc_path for d in mine] == [t[1] for t in theirs],
                "LegacyDatabase.search_similar_docs == the legacy database's function",
            )
        health = json.loads(
            r.docstore("health", "--json", DATABASE_URL=new, READ_ONLY="true").stdout
        )
        r.check(
            health["read_only"] and health["url_source"] == "DATABASE_URL",
            'what the app sees: "read_only": true, "url_source": "DATABASE_URL"',
        )
        for name, query in (
            ("doc_embeddings", DOC_ROWS),
            ("crates", CRATE_ROWS),
            ("crate_stats", STATS_ROWS),
        ):
            old_rows, new_rows = await rows(legacy, query), await rows(new, query)
            r.check(old_rows == new_rows, f"legacy SQL on {name}: the same {len(new_rows)} rows")
        for crate in ("crate-0", probe["crate_name"], f"crate-{crates - 1}"):
            r.check(
                await rows(legacy, SIMILAR, probe["embedding"], crate)
                == await rows(new, SIMILAR, probe["embedding"], crate),
                f"search_similar_docs(q, '{crate}', 5): the same ids and documents",
            )

    late = hash_embedding("written on the new database after the switch", 3072)
    after_switch = ["crate-2/after-switch.html", *(f"crate-new/page{i}.html" for i in range(3))]
    with r.step("T+20  GO: READ_ONLY removed; the app writes to the new database"):
        with r.app_env(DATABASE_URL=new):
            async with await LegacyDatabase.connect() as db:
                crate_id = await db.upsert_crate("crate-new", "0.1.0")
                pages = [(path, f"page {path}", late, 3) for path in after_switch[1:]]
                await db.insert_embeddings_batch(crate_id, "crate-new", pages)
                await db.insert_embedding(None, "crate-2", after_switch[0], "new", late, 4)
                await db.insert_embedding(
                    None, probe["crate_name"], probe["doc_path"], "edited after the switch",
                    probe["embedding"], 4,
                )  # fmt: skip
                victim = await db.store.fetchrow(
                    "SELECT id, doc_path FROM documents WHERE doc_type = 'rust'"
                    " AND source_name = 'crate-3' ORDER BY doc_path LIMIT 1"
                )
                assert victim is not None
                await db.store.documents.delete(victim["id"])
                gone = victim["doc_path"]
                total = await db.store.documents.count("rust")
        r.check(
            total == max_legacy_id + len(after_switch) - 1,
            f"4 documents added, 1 edited, 1 deleted: {total} documents",
        )
        r.docstore("health")
        r.docstore("index", "recall", "--sample", "100", "--limit", "10")

    with (
        r.step("R+0   ROLLBACK: READ_ONLY=true on the app again"),
        r.app_env(DATABASE_URL=new, READ_ONLY="true"),
    ):
        await expect_read_only_app(r, probe)

    with r.step("R+2   docstore rollback (the legacy database is still frozen)"):
        out = r.docstore("rollback")
        r.check(f"now holds {total:,} documents" in out.stdout, f"it now holds {total} documents")

    with r.step("R+5   the same legacy SQL on both databases"):
        old_docs, new_docs = await rows(legacy, DOC_ROWS), await rows(new, DOC_ROWS)
        r.check(
            [x[1:] for x in old_docs] == [x[1:] for x in new_docs],  # ids: see the next checks
            f"doc_embeddings: the same {len(old_docs)} rows (content, embedding, crate, ...)",
        )
        migrated = [x for x in new_docs if x[0] <= max_legacy_id]
        r.check(set(migrated) <= set(old_docs), f"{len(migrated)} migrated rows kept their ids")
        fresh = sorted(x[3] for x in old_docs if x[0] > max_legacy_id)
        r.check(fresh == after_switch, "the 4 documents written after the switch have new ids")
        async with sql(legacy) as conn:
            edited = await conn.fetchval(
                "SELECT content FROM doc_embeddings WHERE doc_path = $1", probe["doc_path"]
            )
            deleted = await conn.fetchval(
                "SELECT count(*) FROM doc_embeddings WHERE doc_path = $1", gone
            )
        r.check(edited == "edited after the switch", "the edit made after the switch is back")
        r.check(deleted == 0, "the document deleted after the switch is deleted")
        for name, query in (("crates", CRATE_ROWS), ("crate_stats", STATS_ROWS)):
            old_rows, new_rows = await rows(legacy, query), await rows(new, query)
            r.check(old_rows == new_rows, f"{name}: the same {len(new_rows)} rows (crate-new too)")
        for crate in ("crate-new", "crate-2", probe["crate_name"]):
            r.check(
                [x[1:] for x in await rows(legacy, SIMILAR, late, crate)]
                == [x[1:] for x in await rows(new, SIMILAR, late, crate)],
                f"search_similar_docs(q, '{crate}', 5): the same documents",
            )
        out = r.docstore("validate")
        r.check(
            "validation: OK" in out.stdout,
            "validation: OK (the rollback recorded the new legacy ids on the new database)",
        )

    with r.step("R+10  unfreeze the legacy database; the legacy server writes again"):
        async with sql(with_database(legacy, "postgres"), vectors=False) as conn:
            await conn.execute(f"ALTER DATABASE {LEGACY_DB} RESET default_transaction_read_only")
        async with sql(legacy) as conn:
            new_id = await conn.fetchval(
                "INSERT INTO doc_embeddings (crate_name, doc_path, content)"
                " VALUES ('crate-0', 'crate-0/after-rollback.html', 'the legacy server again')"
                " RETURNING id"
            )
        r.check(new_id > max_legacy_id + len(after_switch), f"a legacy insert works (id {new_id})")

    with r.step("later: retry the cutover from T-1d (docstore migrate, docstore validate)"):
        r.docstore("migrate", "--report", REPORT)
        report = docstore.MigrationReport.model_validate_json(
            (r.workdir / REPORT).read_text(encoding="utf-8")
        )
        r.check(report.delta_documents == 0, '"delta_documents": 0')
        out = r.docstore("validate")
        r.check("validation: OK" in out.stdout, "validation: OK, with the rows the rollback added")
        async with sql(new) as conn:
            ids = await conn.fetchval(
                "SELECT count(*) FROM documents WHERE doc_path = ANY($1::text[])"
                " AND metadata ? 'legacy_id'",
                after_switch,
            )
        r.check(ids == len(after_switch), "the documents written after the switch have legacy ids")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--crates", type=int, default=40, help="legacy crates (plan: 40)")
    parser.add_argument("--docs", type=int, default=4133, help="legacy documents (plan: 4,133)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    for key in list(os.environ):  # the rehearsal sets every variable docstore reads itself
        if key in CONTROLLED or key.startswith("DOCSTORE_"):
            del os.environ[key]
    with tempfile.TemporaryDirectory(prefix="docstore-cutover-") as tmp:
        workdir = Path(tmp)
        servers: list[EmbeddedServer] = []
        try:
            print("starting two embedded PostgreSQL servers (old and new) ...", flush=True)
            for name in ("old", "new"):
                servers.append(EmbeddedServer(workdir / name, cleanup="delete").start())
            old, new = servers
            asyncio.run(ensure_database(old.url("postgres"), LEGACY_DB))
            asyncio.run(ensure_database(new.url("postgres"), NEW_DB))
            rehearsal = Rehearsal(workdir, old.url(LEGACY_DB), new.url(NEW_DB))
            asyncio.run(rehearse(rehearsal, args.crates, args.docs))
        except CheckFailed as failure:
            print(f"   FAILED: {failure}", flush=True)
            print("\ncutover rehearsal FAILED", flush=True)
            return 1
        except Exception:
            traceback.print_exc()
            print("\ncutover rehearsal FAILED (unexpected error above)", flush=True)
            return 1
        finally:
            for server in servers:
                server.close()
    print(
        f"\ncutover rehearsal passed: {rehearsal.checks} checks in "
        f"{time.perf_counter() - started:.1f} s"
    )
    for title, seconds in rehearsal.timings:
        print(f"  {seconds:5.1f} s  {title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
