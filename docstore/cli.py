"""The ``docstore`` command line (typer + rich).

Every command resolves its database like :func:`docstore.connect` (``--url``, then
``DATABASE_URL``, ``MCPDOCS_DATABASE_URL``, the embedded server). Errors print one clean line
and exit with status 1; passwords are never printed (tracebacks show no local variables).
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from docstore.demo import DEMO_DOCS, hash_embedding
from docstore.embedded import embedded_url, release_embedded
from docstore.errors import DocstoreError
from docstore.models import Document
from docstore.search.results import VectorIndex
from docstore.store import Store, connect

app = typer.Typer(
    help="docstore: the Doc Server's data layer on PostgreSQL + pgvector.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Database URL (default: DATABASE_URL, MCPDOCS_DATABASE_URL, else embedded).",
        show_default=False,
    ),
]


def _run(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except DocstoreError as exc:
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        raise typer.Exit(1) from None


def _command(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Turn an async command body into a sync typer command with docstore's error handling."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return _run(lambda: fn(*args, **kwargs))

    return wrapper


@app.command()
@_command
async def init(url: UrlOption = None) -> None:
    """Create or upgrade docstore's schema (idempotent; safe to run from many processes)."""
    async with connect(url, migrate=False) as store:
        applied = await store.migrate()
        status = await store.schema_status()
    if applied:
        console.print(f"applied schema migrations {applied}; now at version {status.current}")
    else:
        console.print(f"schema already at version {status.current}: nothing to do")


@app.command()
@_command
async def health(
    url: UrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Check connectivity and print server, pgvector and schema versions."""
    async with connect(url, migrate=False) as store:
        report = await store.health()
    if as_json:
        console.print_json(report.model_dump_json())
        return
    table = Table(title="docstore health", show_header=False)
    for key, value in report.model_dump().items():
        table.add_row(key, str(value))
    console.print(table)


index_app = typer.Typer(help="The HNSW vector index: create, drop, list, measure its recall.")
app.add_typer(index_app, name="index")
MetricOption = Annotated[
    str, typer.Option("--metric", help="cosine, l2 or inner_product.", show_default=True)
]


def _print_indexes(indexes: list[VectorIndex]) -> None:
    table = Table(title="HNSW indexes on documents")
    for column in ("name", "metric", "opclass", "valid", "usable", "size"):
        table.add_column(column)
    for i in indexes:
        size = f"{i.size_bytes / 2**20:.1f} MiB"
        table.add_row(i.name, str(i.metric), i.opclass, str(i.valid), str(i.usable), size)
    console.print(table)


@index_app.command("create")
@_command
async def index_create(
    url: UrlOption = None,
    metric: MetricOption = "cosine",
    m: Annotated[int, typer.Option(help="HNSW links per node.")] = 16,
    ef_construction: Annotated[int, typer.Option(help="HNSW build candidate list.")] = 64,
    concurrently: Annotated[
        bool, typer.Option(help="Build without blocking writes (CREATE INDEX CONCURRENTLY).")
    ] = True,
) -> None:
    """Build the HNSW index searches use (on the halfvec cast above 2,000 dimensions)."""
    async with connect(url) as store:
        with console.status(f"building the HNSW index for {metric} ..."):
            await store.create_vector_index(
                metric, m=m, ef_construction=ef_construction, concurrently=concurrently
            )
        _print_indexes(await store.vector_indexes())


@index_app.command("drop")
@_command
async def index_drop(url: UrlOption = None, metric: MetricOption = "cosine") -> None:
    """Drop docstore's HNSW index for a metric (searches then scan exactly)."""
    async with connect(url) as store:
        dropped = await store.drop_vector_index(metric)
    console.print(f"dropped the {metric} index" if dropped else f"no {metric} index to drop")


@index_app.command("list")
@_command
async def index_list(url: UrlOption = None) -> None:
    """List the HNSW indexes on documents and whether searches can use them."""
    async with connect(url, migrate=False) as store:
        _print_indexes(await store.vector_indexes())


@index_app.command("recall")
@_command
async def index_recall(
    url: UrlOption = None,
    metric: MetricOption = "cosine",
    sample: Annotated[int, typer.Option(help="Stored vectors to use as queries.")] = 100,
    limit: Annotated[int, typer.Option(help="k of recall@k.")] = 10,
    ef_search: Annotated[int | None, typer.Option(help="Override hnsw.ef_search.")] = None,
    oversample: Annotated[int | None, typer.Option(help="Candidates = limit x this.")] = None,
    doc_type: Annotated[str | None, typer.Option(help="Only this doc_type.")] = None,
) -> None:
    """Measure ANN against the exact scan on your data: recall@k and latency of both."""
    async with connect(url, migrate=False) as store:
        with console.status(f"running {sample} queries twice (ANN and exact) ..."):
            report = await store.evaluate_recall(
                sample,
                limit,
                metric=metric,
                doc_type=doc_type,
                ef_search=ef_search,
                oversample=oversample,
            )
    console.print(report)


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


@app.command()
def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Keep the embedded database here (default: a throwaway directory)."),
    ] = None,
) -> None:
    """Run docstore end to end on an embedded PostgreSQL: schema, documents, a vector search."""

    async def body(directory: Path) -> None:
        console.print(f"starting embedded PostgreSQL in {directory} ...")
        async with connect(await embedded_url(directory)) as store:
            report = await store.health()
            console.print(
                f"PostgreSQL {report.server_version}, pgvector {report.pgvector_version}, "
                f"schema version {report.schema_version}, {store!r}"
            )
            await _demo(store)

    if data_dir is not None:
        _run(lambda: body(data_dir))
        return
    with tempfile.TemporaryDirectory(prefix="docstore-demo-") as tmp:
        try:
            _run(lambda: body(Path(tmp)))
        finally:
            release_embedded(Path(tmp))


def main() -> None:  # pragma: no cover - console entry point
    app()
