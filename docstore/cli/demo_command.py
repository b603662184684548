"""``docstore demo``: the whole story on a throwaway embedded PostgreSQL."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.markup import escape

from docstore import cli
from docstore.cli.base import console, run_async, sigterm_ignored
from docstore.cli.progress import MigrationBars
from docstore.demo import DEMO_DOCS, build_sample_legacy, hash_embedding
from docstore.migrate import Migrator
from docstore.models import Document
from docstore.store import Store
from docstore.urls import with_database

_LEGACY = "rust_docs_vectors"
_BUILDING = "rust_docs_vectors_building"


async def _sample_legacy(url: str) -> str:
    """A legacy rust_docs_vectors database next to docstore's, built once per data dir: under
    another name, renamed when complete, so an interrupted build is started over, never taken
    for a finished (partly empty) legacy database by the next run."""
    admin = await asyncpg.connect(with_database(url, "postgres"))
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", _LEGACY):
            await admin.execute(f"DROP DATABASE IF EXISTS {_BUILDING}")
            await admin.execute(f"CREATE DATABASE {_BUILDING}")
            with console.status(
                "building a legacy database like the plan's (40 crates, 4,133 docs)"
            ):
                await build_sample_legacy(with_database(url, _BUILDING))
            await admin.execute(f"ALTER DATABASE {_BUILDING} RENAME TO {_LEGACY}")
    finally:
        await admin.close()
    return with_database(url, _LEGACY)


async def _demo(store: Store) -> None:
    dim = store.embedding_dim
    result = await store.documents.upsert_many(
        Document(
            source_name=source,
            doc_path=path,
            content=text,
            embedding=hash_embedding(text, dim),
            token_count=len(text.split()),
        )
        for source, path, text in DEMO_DOCS
    )
    console.print(
        f"upserted demo documents: {result.inserted} inserted, {result.updated} updated, "
        f"{result.unchanged} unchanged"
    )
    query = "how do I run async tasks on the runtime"
    hits = await store.search(hash_embedding(query, dim), limit=5)
    console.print(f"top documents for {query!r} (vector search):")
    console.print(hits)
    fused = await store.hybrid_search("async task", hash_embedding(query, dim), limit=3)
    console.print("hybrid search for 'async task' (full text + vector, fused by RRF):")
    console.print(fused)


def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Keep the embedded database here (default: a throwaway directory)."),
    ] = None,
) -> None:
    """The whole story on embedded PostgreSQL: build a legacy database like the plan's
    (40 crates, 4,133 documents x 3072), migrate it with progress bars, validate, search."""

    async def body(directory: Path) -> None:
        console.print(f"starting embedded PostgreSQL in {escape(str(directory))} ...")
        url = await cli.embedded_url(directory)
        legacy_url = await _sample_legacy(url)
        async with cli.connect(url) as store:
            report = await store.health()
            console.print(
                f"PostgreSQL {report.server_version}, pgvector {report.pgvector_version}, "
                f"schema version {report.schema_version}, {escape(repr(store))}"
            )
            bars = MigrationBars()
            with bars.progress:
                migration = await Migrator(legacy_url, store, progress=bars, build_index=True).run()
            console.print(migration.preflight)
            if migration.validation is not None:
                console.print(migration.validation)
            await _demo(store)

    if data_dir is not None:
        run_async(lambda: body(data_dir))
        return
    tmp = tempfile.TemporaryDirectory(prefix="docstore-demo-")
    try:
        run_async(lambda: body(Path(tmp.name)))
    finally:
        # stopping already (done, failed, Ctrl-C or SIGTERM): a SIGTERM now must not leave
        # the server running and the directory behind
        with sigterm_ignored():
            cli.release_embedded(Path(tmp.name))
            tmp.cleanup()
