"""The ``docstore`` command line (typer + rich).

Every command resolves its database like :func:`docstore.connect` (``--url``, then
``DATABASE_URL``, ``MCPDOCS_DATABASE_URL``, the embedded server); a malformed ``--url``,
``--source`` or ``--target`` is refused before anything connects, naming the option.

No command shows a traceback for a user error. Exit status, the same for every command
(:data:`EXIT_CODES`):

- 0: done.
- 1: the command failed: a docstore error (the database is unreachable, a setting or URL is
  invalid, the schema is missing, ...), a file or address that can't be used, or
  ``validate``/``migrate`` found differences. One line on stderr:
  ``error: <ErrorClass>: <message>``.
- 2: usage error: an unknown option, a missing or out-of-range option value (click's message).
- 70: internal error, a bug in docstore: the traceback, then an ``internal error:`` line.
- 130: interrupted (Ctrl-C).

Passwords are never printed: URLs in messages are redacted, and the secrets of every URL on
the command line or in the URL variables are scrubbed from whatever is printed, usage
errors and tracebacks included (tracebacks show no local variables).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import re
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperGroup

from docstore.compat import LegacyDatabase
from docstore.config import check_url, load_settings, redact_url, url_secrets, with_database
from docstore.demo import DEMO_DOCS, build_sample_legacy, hash_embedding
from docstore.embedded import embedded_url, release_embedded
from docstore.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    DocstoreError,
    MigrationError,
)
from docstore.metrics import MetricsSnapshot
from docstore.migrate import Migrator
from docstore.models import Document
from docstore.search.results import VectorIndex
from docstore.search.tuning import Calibration
from docstore.store import Store, connect

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    0: "done",
    EXIT_ERROR: "failed: a docstore error, a file or address that can't be used, or "
    "differences found (one 'error:' line on stderr)",
    EXIT_USAGE: "usage error: unknown option, missing or out-of-range value",
    EXIT_INTERNAL: "internal error: a bug in docstore (traceback on stderr)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
"""Every exit status of every command, documented in ``docstore --help``."""

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"()]+")
_URL_VARIABLES = (
    "DATABASE_URL",
    "DATABASE_READ_URL",
    "MCPDOCS_DATABASE_URL",
    "LEGACY_DATABASE_URL",
)
_ARGV = "docstore.argv"
_MIN_SECRET = 4
"""Shorter secrets are not scrubbed from output text (a one-letter password would mangle
every message); docstore's messages show URLs redacted anyway."""


def _secrets(argv: list[str]) -> list[str]:
    """Secrets of the URLs on the command line and in the URL variables, longest first."""
    urls = [a.partition("=")[2] if a.startswith("--") else a for a in argv if "://" in a]
    urls += [v for v in (os.environ.get(n) for n in _URL_VARIABLES) if v]
    found = {s for s in url_secrets(*urls) if len(s) >= _MIN_SECRET}
    return sorted(found, key=len, reverse=True)


def _clean(text: str, argv: list[str]) -> str:
    """``text`` safe to print: URL arguments redacted, every known secret scrubbed."""
    for arg in sorted((a for a in argv if "://" in a), key=len, reverse=True):
        text = text.replace(arg, redact_url(arg))
    for secret in _secrets(argv):
        text = text.replace(secret, "***")
    return _URL.sub(lambda m: redact_url(m[0]), text)


def _error_line(kind: str, message: str, argv: list[str]) -> None:
    text = re.sub(r"\s*\n\s*", " ", _clean(message, argv)).strip()
    err_console.print(
        f"[bold red]error:[/] {escape(kind)}{': ' if text else ''}{escape(text)}",
        highlight=False,
        soft_wrap=True,
    )


class _DocstoreGroup(TyperGroup):
    """Every command's errors, handled once: docstore errors and other user errors become one
    ``error:`` line and a documented exit status (see the module docstring), usage errors
    keep click's message with URL passwords redacted, bugs show a (scrubbed) traceback."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        argv = list(args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except typer.TyperException as exc:
            exc.message = _clean(exc.message, argv)
            raise
        ctx.meta[_ARGV] = argv
        return ctx

    def invoke(self, ctx: Any) -> Any:
        argv: list[str] = ctx.meta.get(_ARGV, [])
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except typer.TyperException as exc:  # click's usage errors: it prints them, exit 2
            exc.message = _clean(exc.message, argv)
            raise
        except DocstoreError as exc:
            _error_line(type(exc).__name__, str(exc), argv)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            # the interrupted work may leave asyncio futures nobody awaits (a connection the
            # driver was opening); asyncio would log them at exit, after this one line
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            _error_line("interrupted", "", argv)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as exc:  # a file, directory or address that can't be used
            if exc.errno == errno.EPIPE:
                raise  # stdout closed early (docstore stats | head): typer exits quietly
            _error_line(type(exc).__name__, str(exc), argv)
            raise typer.Exit(EXIT_ERROR) from None
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc))
            err_console.print(_clean(trace, argv), markup=False, highlight=False, soft_wrap=True)
            err_console.print(
                f"[bold red]internal error:[/] {escape(type(exc).__name__)}: this is a bug in "
                "docstore, not in your input or setup; please report it with the traceback "
                "above",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_INTERNAL) from None


app = typer.Typer(
    cls=_DocstoreGroup,
    help="docstore: the Doc Server's data layer on PostgreSQL + pgvector.",
    epilog="Exit status: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + ".",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")


def _checked_url(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """Refuse a malformed database URL option before anything connects, naming the option
    (an empty value means "not given", as in :func:`docstore.connect`)."""
    if value and not ctx.resilient_parsing:
        check_url(value, param.opts[0] if param.opts else str(param.name))
    return value


UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Database URL (default: DATABASE_URL, MCPDOCS_DATABASE_URL, else embedded).",
        show_default=False,
        callback=_checked_url,
    ),
]


def _run(work: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(work())  # type: ignore[arg-type]


def _command(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Turn an async command body into a sync typer command (errors: :class:`_DocstoreGroup`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return _run(lambda: fn(*args, **kwargs))

    return wrapper


@app.command()
@_command
async def init(
    url: UrlOption = None,
    reader_role: Annotated[
        str | None,
        typer.Option(
            "--reader-role",
            help="Also create a login role that can read docstore's tables and write nothing"
            " (password from DOCSTORE_READER_PASSWORD, else asked for).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create or upgrade docstore's schema (idempotent; safe to run from many processes)."""
    password = None
    if reader_role is not None:
        password = os.environ.get("DOCSTORE_READER_PASSWORD") or typer.prompt(
            f"password for {reader_role}", hide_input=True, confirmation_prompt=True
        )
    async with connect(url, migrate=False) as store:
        applied = await store.migrate()
        status = await store.schema_status()
        if reader_role is not None and password is not None:
            await store.create_reader_role(reader_role, password)
    if applied:
        console.print(f"applied schema migrations {applied}; now at version {status.current}")
    else:
        console.print(f"schema already at version {status.current}: nothing to do")
    if reader_role is not None:
        console.print(
            f"role {escape(reader_role)} can read docstore's tables and write nothing: connect"
            " a read-only service as it; `docstore health` then shows read_only_guarantee: role"
        )


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


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _mb(value: int | None) -> str:
    return "" if value is None else f"{value / 2**20:,.1f} MB"


def print_metrics(snapshot: MetricsSnapshot, title: str) -> None:
    """Render a metrics snapshot as rich tables (``docstore stats``)."""
    for heading, group in (
        ("operations", snapshot.operations),
        ("vector search by mode", snapshot.vector_search),
    ):
        table = Table(title=f"{title}: {heading}")
        for column in ("name", "calls", "errors", "mean ms", "p50 ms", "p95 ms", "p99 ms"):
            table.add_column(column, justify="left" if column == "name" else "right")
        for name, stats in group.items():
            table.add_row(
                name,
                str(stats.count),
                str(stats.errors),
                *(_ms(v) for v in (stats.mean_ms, stats.p50_ms, stats.p95_ms, stats.p99_ms)),
            )
        if group:
            console.print(table)
    pools = Table(title=f"{title}: connection pools")
    for column in ("role", "in use", "idle", "max", "waiting", "timeouts", "acquire p99 ms"):
        pools.add_column(column, justify="left" if column == "role" else "right")
    for pool in snapshot.pools:
        pools.add_row(
            pool.role,
            str(pool.in_use),
            str(pool.idle),
            str(pool.max_size),
            str(pool.waiting),
            str(pool.acquire_timeouts),
            _ms(pool.acquire.p99_ms),
        )
    console.print(pools)
    if snapshot.server_connections:
        states = ", ".join(f"{k} {v}" for k, v in sorted(snapshot.server_connections.items()))
        console.print(f"server connections with this application_name: {states}")
    if snapshot.errors:
        errors = Table(title=f"{title}: errors")
        for column in ("error", "sqlstate", "count"):
            errors.add_column(column)
        for e in snapshot.errors:
            errors.add_row(e.error, e.sqlstate or "", str(e.count))
        console.print(errors)
    retries = ", ".join(f"{k} {v}" for k, v in snapshot.retries.items()) or "none"
    console.print(f"retries: {retries}; replica fallbacks: {snapshot.replica_fallbacks}")
    if snapshot.disk is not None:
        disk = snapshot.disk
        growth = "" if disk.growth_bytes is None else f", growth {_mb(disk.growth_bytes)}"
        console.print(
            f"disk: database {_mb(disk.database_bytes)}, documents table"
            f" {_mb(disk.documents_table_bytes)}, its indexes {_mb(disk.documents_indexes_bytes)}"
            f"{growth}"
        )
        for name, size in sorted(disk.indexes.items(), key=lambda kv: -kv[1]):
            console.print(f"  {name}: {_mb(size)}")
    recall = snapshot.search_recall
    if recall is not None:
        measured = (
            "no sampled searches yet"
            if recall.estimate is None
            else f"{recall.estimate:.3f} over {recall.samples} sampled searches"
            + (" [red](under the target)[/red]" if recall.below_target else "")
        )
        settings = (
            f"calibrated ef_search {recall.ef_search}"
            + (f" / {recall.escalation_ef_search}" if recall.escalation_ef_search else "")
            + f" on {recall.calibration_source}"
            if recall.ef_search is not None
            else "not calibrated"
        )
        console.print(f"search recall: {measured}; target {recall.target:.2f}; {settings}")


@app.command()
@_command
async def stats(
    url: UrlOption = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Read a running process's metrics endpoint (http://host:port/metrics) "
            "instead of connecting.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Print metrics: operation latencies, pools, errors, retries and disk usage.

    Without --from, this process's own view: the database's disk usage and the server's count
    of connections with docstore's application_name (the Doc Server's too, when it uses the
    same name). With --from, what a running Doc Server or `docstore metrics serve` exports.
    """
    if source is not None:
        from docstore.prometheus import snapshot_from_text

        text = await asyncio.to_thread(_http_get, source)
        try:
            snapshot = snapshot_from_text(text)
        except (ValueError, KeyError, IndexError, TypeError):
            snapshot = None  # raised below, outside the parser's exception
        if snapshot is None:
            raise ConfigurationError(
                f"--from {redact_url(source)}: the response is not Prometheus metrics text "
                "(point --from at the /metrics endpoint of docstore's exporter)"
            )
        title = redact_url(source)
    else:
        async with connect(url, migrate=False) as store:
            snapshot = await store.metrics()
            title = store.url
    if as_json:
        console.print_json(snapshot.model_dump_json())
    else:
        print_metrics(snapshot, title)


def _http_get(url: str) -> str:
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise ConfigurationError("--from must be an http:// or https:// URL")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body: bytes = response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DatabaseUnavailableError(
            f"could not read {redact_url(url)}: {type(exc).__name__}"
        ) from None
    return body.decode("utf-8", "replace")


metrics_app = typer.Typer(help="Prometheus export of docstore's metrics.")
app.add_typer(metrics_app, name="metrics")


@metrics_app.command("serve")
@_command
async def metrics_serve(
    url: UrlOption = None,
    port: Annotated[int, typer.Option("--port", help="Port of /metrics.", min=1, max=65535)] = 9108,
    addr: Annotated[str, typer.Option("--addr", help="Address to listen on.")] = "127.0.0.1",
    disk_interval: Annotated[
        float,
        typer.Option("--disk-interval", help="Seconds between disk usage readings.", min=0),
    ] = 60.0,
    probe_interval: Annotated[
        float,
        typer.Option("--probe-interval", help="Seconds between health probes.", min=0.1),
    ] = 15.0,
) -> None:
    """Serve Prometheus metrics for a database: pools, disk usage, health-probe latency.

    The Doc Server exports its own operations by mounting
    docstore.prometheus.DocstoreCollector; this command is the standalone exporter.
    """
    from docstore.prometheus import serve

    async with connect(url, migrate=False) as store:
        console.print(f"serving metrics of {store.url} on http://{addr}:{port}/metrics")
        await serve(
            store,
            port,
            addr=addr,
            disk_refresh_seconds=disk_interval,
            probe_seconds=probe_interval,
        )


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
    async with connect(url) as store:
        if text:
            with console.status("building the full-text index ..."):
                await store.create_text_index(concurrently=concurrently)
            console.print("full-text index idx_documents_content_fts is ready")
            return
        with _PhaseBars() as bars:
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
@_command
async def index_drop(
    url: UrlOption = None,
    metric: MetricOption = "cosine",
    text: Annotated[bool, typer.Option("--text", help="Drop the full-text index.")] = False,
) -> None:
    """Drop docstore's HNSW index for a metric (searches then scan exactly), or --text."""
    name = "full-text" if text else metric
    async with connect(url) as store:
        dropped = await (store.drop_text_index() if text else store.drop_vector_index(metric))
    console.print(f"dropped the {name} index" if dropped else f"no {name} index to drop")


@index_app.command("list")
@_command
async def index_list(url: UrlOption = None) -> None:
    """List the HNSW indexes on documents and whether searches can use them."""
    async with connect(url, migrate=False) as store:
        _print_indexes(await store.vector_indexes())


@index_app.command("calibrate")
@_command
async def index_calibrate(
    url: UrlOption = None,
    metric: MetricOption = "cosine",
    target: Annotated[
        float | None,
        typer.Option(help="Recall@10 to meet (default DOCSTORE_SEARCH_TARGET_RECALL, 0.98)."),
    ] = None,
    sample: Annotated[int, typer.Option(help="Probes when there are no recent queries.")] = 100,
) -> None:
    """Measure the cheapest ANN settings that meet the recall target on this database's data
    (recent real queries, else probes) and store them for every process and replica."""
    async with connect(url, migrate=False) as store:
        with _PhaseBars() as bars:
            calibration = await store.calibrate_search(
                metric, target=target, sample=sample, progress=bars
            )
    _print_calibration(calibration)
    if not calibration.met_target:
        raise typer.Exit(EXIT_ERROR)


def _print_calibration(c: Calibration) -> None:
    table = Table(title=f"search calibration ({c.metric}, {c.queries} {c.query_source})")
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
            "[yellow]the target is not met at any setting: this index cannot reach it"
            " (rebuild with a larger --m / --ef-construction)[/yellow]"
        )


class _PhaseBars:
    """rich progress for long index work: one bar per phase (index build phases from
    pg_stat_progress_create_index, calibration steps), with counts and ETA."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _PhaseBars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total or None)
        self.progress.update(self.tasks[phase], completed=done, total=total or None)


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


SourceOption = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="Legacy rust_docs_vectors URL (default: LEGACY_DATABASE_URL).",
        show_default=False,
        callback=_checked_url,
    ),
]
TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        help="docstore database URL (default: DATABASE_URL, MCPDOCS_DATABASE_URL, embedded).",
        show_default=False,
        callback=_checked_url,
    ),
]
DocTypeOption = Annotated[str, typer.Option("--doc-type", help="doc_type of the legacy docs.")]


def _legacy_url(source: str | None) -> str:
    url = source or load_settings().legacy_database_url
    if not url:
        raise MigrationError("no legacy database: pass --source URL or set LEGACY_DATABASE_URL")
    return url


class _Bars:
    """rich progress bars fed by Migrator's progress callback: rows, MB/s, ETA."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TextColumn("{task.fields[mbps]:.1f} MB/s"),
            TimeRemainingColumn(),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}
        self.started = time.monotonic()

    def __call__(self, stage: str, done: int, total: int, nbytes: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, mbps=0.0)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self.progress.update(
            self.tasks[stage], completed=done, total=total, mbps=nbytes / elapsed / 1e6
        )


async def _target(target: str | None) -> Store:
    return await connect(target)


NEXT_STEPS = """next steps (docs/cutover.md):
  1. freeze the legacy database, then re-run `docstore migrate` (copies only what changed)
  2. `docstore validate`; point the app at the new database with READ_ONLY=true, smoke-test
  3. remove READ_ONLY; to go back: READ_ONLY=true on the app, then `docstore rollback`"""


@app.command()
@_command
async def migrate(
    source: SourceOption = None,
    target: TargetOption = None,
    doc_type: DocTypeOption = "rust",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Preflight only.")] = False,
    restart: Annotated[bool, typer.Option(help="Forget checkpoints of earlier runs.")] = False,
    report: Annotated[Path | None, typer.Option(help="Save the report as JSON.")] = None,
    build_index: Annotated[bool, typer.Option(help="Build the HNSW index after.")] = False,
    chunk_rows: Annotated[int, typer.Option(help="Documents per committed chunk.")] = 2000,
) -> None:
    """Copy the legacy rust_docs_vectors database into docstore (resumable; validated)."""
    bars = _Bars()
    async with await _target(target) as store:
        migrator = Migrator(
            _legacy_url(source),
            store,
            doc_type=doc_type,
            chunk_rows=chunk_rows,
            restart=restart,
            build_index=build_index,
            report_path=report,
            progress=bars,
        )
        with bars.progress:
            result = await migrator.run(dry_run=dry_run)
    console.print(result.preflight)
    if dry_run:
        console.print("dry run: nothing was written")
        if not result.preflight.ok:
            raise typer.Exit(1)
        return
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(
        f"copied {result.copied_documents:,} documents ({result.skipped_chunks} chunks already "
        f"done), {result.sources} sources, {result.population_jobs} population jobs in "
        f"{result.timings.get('total', 0):.1f} s"
    )
    if result.validation is not None:
        console.print(result.validation)
    if not result.ok:
        raise typer.Exit(1)
    console.print(NEXT_STEPS, highlight=False)


@app.command()
@_command
async def validate(
    source: SourceOption = None, target: TargetOption = None, doc_type: DocTypeOption = "rust"
) -> None:
    """Compare the legacy database with docstore row by row; exit 1 on any mismatch."""
    async with await _target(target) as store:
        result = await Migrator(_legacy_url(source), store, doc_type=doc_type).validate()
    console.print(result)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
@_command
async def rollback(
    source: SourceOption = None, target: TargetOption = None, doc_type: DocTypeOption = "rust"
) -> None:
    """Copy docstore's documents back into the legacy-shaped database (the plan's Phase 7)."""
    async with await _target(target) as store:
        result = await Migrator(_legacy_url(source), store, doc_type=doc_type).rollback()
    console.print(
        f"legacy database now holds {result.documents:,} documents of {result.crates} crates "
        f"({result.deleted_documents} removed), {result.crate_configs} crate configs, "
        f"{result.population_jobs} population jobs ({result.seconds:.1f} s); "
        f"{result.recorded_legacy_ids} documents written after the cutover got legacy ids"
    )


compat_app = typer.Typer(help="Legacy SQL compatibility: views and search_similar_docs().")
app.add_typer(compat_app, name="compat")
SchemaOption = Annotated[
    str | None,
    typer.Option("--schema", help="Schema for the views (default: first on search_path)."),
]


@compat_app.command("install-views")
@_command
async def compat_install(url: UrlOption = None, schema: SchemaOption = None) -> None:
    """Create read views crates, doc_embeddings, crate_stats and search_similar_docs()."""
    async with connect(url) as store:
        used = await LegacyDatabase(store).install_views(schema)
    console.print(f"legacy views and search_similar_docs() installed in schema {used!r}")


@compat_app.command("uninstall-views")
@_command
async def compat_uninstall(url: UrlOption = None, schema: SchemaOption = None) -> None:
    """Drop the legacy compatibility views and function."""
    async with connect(url) as store:
        used = await LegacyDatabase(store).uninstall_views(schema)
    console.print(f"legacy views removed from schema {used!r}")


async def _sample_legacy(url: str) -> str:
    """A legacy rust_docs_vectors database next to docstore's (built once per data dir)."""
    admin = with_database(url, "postgres")
    legacy_url = with_database(url, "rust_docs_vectors")
    conn = await asyncpg.connect(admin)
    try:
        exists = await conn.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = 'rust_docs_vectors'"
        )
        if not exists:
            await conn.execute("CREATE DATABASE rust_docs_vectors")
    finally:
        await conn.close()
    if not exists:
        with console.status("building a legacy database like the plan's (40 crates, 4,133 docs)"):
            await build_sample_legacy(legacy_url)
    return legacy_url


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
    """The whole story on embedded PostgreSQL: build a legacy database like the plan's
    (40 crates, 4,133 documents x 3072), migrate it with progress bars, validate, search."""

    async def body(directory: Path) -> None:
        console.print(f"starting embedded PostgreSQL in {directory} ...")
        url = await embedded_url(directory)
        legacy_url = await _sample_legacy(url)
        async with connect(url) as store:
            report = await store.health()
            console.print(
                f"PostgreSQL {report.server_version}, pgvector {report.pgvector_version}, "
                f"schema version {report.schema_version}, {store!r}"
            )
            bars = _Bars()
            with bars.progress:
                migration = await Migrator(legacy_url, store, progress=bars, build_index=True).run()
            console.print(migration.preflight)
            if migration.validation is not None:
                console.print(migration.validation)
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
