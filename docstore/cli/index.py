"""``docstore index``: create, drop, list, calibrate and measure the HNSW index."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from docstore import cli
from docstore.cli.base import EXIT_ERROR, UrlOption, async_command, console
from docstore.cli.progress import PhaseBars
from docstore.search.indexes import MAX_CALIBRATION_SAMPLE
from docstore.search.queries import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    MAX_EF_SEARCH,
    MAX_LIMIT,
    MAX_OVERSAMPLE,
)
from docstore.search.recall import MAX_RECALL_SAMPLE
from docstore.search.results import VectorIndex
from docstore.search.tuning import Calibration, shortfall

index_app = typer.Typer(help="The HNSW vector index: create, drop, list, measure its recall.")
"""``docstore index``: mounted on the app by :mod:`docstore.cli`."""
MetricOption = Annotated[
    str, typer.Option("--metric", help="cosine, l2 or inner_product.", show_default=True)
]


def _print_indexes(indexes: list[VectorIndex]) -> None:
    table = Table(title="HNSW indexes on documents")
    for column in ("name", "metric", "opclass", "valid", "usable", "size"):
        table.add_column(column, overflow="fold")  # names copied into SQL: never elided
    for i in indexes:
        size = f"{i.size_bytes / 2**20:.1f} MiB"
        cells = (i.name, str(i.metric), i.opclass, str(i.valid), str(i.usable), size)
        table.add_row(*(Text(c) for c in cells))  # names from the database: never markup
    console.print(table)


@index_app.command("create")
@async_command
async def index_create(
    url: UrlOption = None,
    metric: MetricOption = "cosine",
    m: Annotated[int, typer.Option(help="HNSW links per node.", min=HNSW_M[0], max=HNSW_M[1])] = 16,
    ef_construction: Annotated[
        int,
        typer.Option(
            help="HNSW build candidate list (at least 2 x --m).",
            min=HNSW_EF_CONSTRUCTION[0],
            max=HNSW_EF_CONSTRUCTION[1],
        ),
    ] = 64,
    concurrently: Annotated[
        bool, typer.Option(help="Build without blocking writes (CREATE INDEX CONCURRENTLY).")
    ] = True,
    text: Annotated[
        bool, typer.Option("--text", help="Build the full-text index (search_text) instead.")
    ] = False,
    calibrate: Annotated[
        bool,
        typer.Option(help="Measure the cheapest settings meeting the recall target afterwards."),
    ] = True,
) -> None:
    """Build the HNSW index searches use (on the halfvec cast above 2,000 dimensions), then
    calibrate the search settings on it; or with --text the GIN full-text index."""
    if not text and ef_construction < 2 * m:  # pgvector's rule, a usage error like ranges
        raise typer.BadParameter(
            f"must be at least 2 x --m ({2 * m}), got {ef_construction}",
            param_hint="'--ef-construction'",
        )
    async with cli.connect(url) as store:
        if text:
            with console.status("building the full-text index ..."):
                await store.create_text_index(concurrently=concurrently)
            console.print("full-text index idx_documents_content_fts is ready")
            return
        with PhaseBars() as bars:
            await store.create_vector_index(
                metric,
                m=m,
                ef_construction=ef_construction,
                concurrently=concurrently,
                calibrate=calibrate,
                progress=bars,
            )
        _print_indexes(await store.vector_indexes())
        calibration = await store.tuner.calibration(metric)
        if calibrate and calibration is not None:
            _print_calibration(calibration)


@index_app.command("drop")
@async_command
async def index_drop(
    url: UrlOption = None,
    metric: MetricOption = "cosine",
    text: Annotated[bool, typer.Option("--text", help="Drop the full-text index.")] = False,
) -> None:
    """Drop docstore's HNSW index for a metric (searches then scan exactly), or --text."""
    name = "full-text" if text else metric
    async with cli.connect(url) as store:
        dropped = await (store.drop_text_index() if text else store.drop_vector_index(metric))
    name = escape(name)
    console.print(f"dropped the {name} index" if dropped else f"no {name} index to drop")


@index_app.command("list")
@async_command
async def index_list(url: UrlOption = None) -> None:
    """List the HNSW indexes on documents and whether searches can use them."""
    async with cli.connect(url, migrate=False) as store:
        _print_indexes(await store.vector_indexes())


def _recall_target(value: float | None) -> float | None:
    if value is not None and not 0 < value <= 1:
        raise typer.BadParameter(f"must be in (0, 1], got {value:g}")
    return value


@index_app.command("calibrate")
@async_command
async def index_calibrate(
    url: UrlOption = None,
    metric: MetricOption = "cosine",
    target: Annotated[
        float | None,
        typer.Option(
            help="Recall@10 to meet, in (0, 1] (default DOCSTORE_SEARCH_TARGET_RECALL, 0.98).",
            callback=_recall_target,
        ),
    ] = None,
    sample: Annotated[
        int,
        typer.Option(
            help="Probes when there are no recent queries.", min=1, max=MAX_CALIBRATION_SAMPLE
        ),
    ] = 100,
) -> None:
    """Measure the cheapest ANN settings that meet the recall target on this database's data
    (recent real queries, else probes) and store them for every process and replica."""
    async with cli.connect(url, migrate=False) as store:
        with PhaseBars() as bars:
            calibration = await store.calibrate_search(
                metric, target=target, sample=sample, progress=bars
            )
    _print_calibration(calibration)
    if not calibration.met_target:
        raise typer.Exit(EXIT_ERROR)


def _print_calibration(c: Calibration) -> None:
    table = Table(title=escape(f"search calibration ({c.metric}, {c.queries} {c.query_source})"))
    table.add_column("setting")
    table.add_column("value", justify="right")
    second = (
        f"ef_search {c.escalation_ef_search} when spread < {c.escalate_below:.4g}"
        f" ({c.escalation_rate:.0%} of queries)"
        if c.escalation_ef_search and c.escalate_below is not None
        else "none"
    )
    rows = [
        ("hnsw.ef_search", str(c.ef_search)),
        ("second pass", second),
        ("recall@10 (mean)", f"{c.expected_recall:.3f} (target {c.target_recall:.2f})"),
        ("lowest recall@10", f"{c.lowest_recall:.2f}"),
        ("latency (mean)", f"{c.expected_ms:.2f} ms"),
        ("exact scan", "" if c.exact_ms is None else f"{c.exact_ms:.2f} ms"),
        ("table rows", f"{c.table_rows:,}"),
        ("took", f"{c.seconds:.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if not c.met_target:
        console.print(
            f"[yellow]the target is not met: {escape(shortfall(c))} (a larger --m /"
            " --ef-construction may reach it)[/yellow]"
        )


@index_app.command("recall")
@async_command
async def index_recall(
    url: UrlOption = None,
    metric: MetricOption = "cosine",
    sample: Annotated[
        int, typer.Option(help="Stored vectors to use as queries.", min=1, max=MAX_RECALL_SAMPLE)
    ] = 100,
    limit: Annotated[int, typer.Option(help="k of recall@k.", min=1, max=MAX_LIMIT)] = 10,
    ef_search: Annotated[
        int | None, typer.Option(help="Override hnsw.ef_search.", min=1, max=MAX_EF_SEARCH)
    ] = None,
    oversample: Annotated[
        int | None,
        typer.Option(help="Candidates = limit x this.", min=1, max=MAX_OVERSAMPLE),
    ] = None,
    doc_type: Annotated[str | None, typer.Option(help="Only this doc_type.")] = None,
) -> None:
    """Measure ANN against the exact scan on your data: recall@k and latency of both."""
    async with cli.connect(url, migrate=False) as store:
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
