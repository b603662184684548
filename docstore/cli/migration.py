"""``docstore migrate``, ``validate`` and ``rollback``: the legacy database and docstore."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from docstore import cli
from docstore.cli.base import DocTypeOption, async_command, checked_url, console, err_console
from docstore.cli.progress import MigrationBars
from docstore.config import UrlSource, load_settings, redact_url, resolve_url
from docstore.errors import MigrationError
from docstore.migrate import Migrator
from docstore.migrate.resume import DEFAULT_RECONNECT_ATTEMPTS
from docstore.store import Store

SourceOption = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="Legacy rust_docs_vectors URL (default: LEGACY_DATABASE_URL).",
        show_default=False,
        callback=checked_url,
    ),
]
TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        help="docstore database URL (default: DATABASE_URL, MCPDOCS_DATABASE_URL, embedded).",
        show_default=False,
        callback=checked_url,
    ),
]


def _writable_report(ctx: typer.Context, value: Path | None) -> Path | None:
    """The report's directory must exist and be writable, checked before the run (not found
    out after it)."""
    if value is not None and not ctx.resilient_parsing:
        directory = value.parent
        if not directory.is_dir():
            raise typer.BadParameter(f"directory {str(directory)[:200]!r} does not exist")
        if not os.access(directory, os.W_OK) or value.is_dir():
            raise typer.BadParameter(f"cannot write {str(value)[:200]!r}")
    return value


def _legacy_url(source: str | None) -> str:
    url = source or load_settings().legacy_database_url
    if not url:
        raise MigrationError("no legacy database: pass --source URL or set LEGACY_DATABASE_URL")
    return url


async def _target(target: str | None, *, migrate: bool = True) -> Store:
    """The target store, once the command's arguments are checked; ``migrate=False`` (a dry
    run, validate) writes nothing into it, not even docstore's schema."""
    return await cli.connect(target, migrate=migrate)


def _say_where(legacy: str, store: Store) -> None:
    """Name both databases (redacted) before the command works on them: with no target
    configured the embedded server is the target, which a cutover never means."""
    # (not wrapped: an operator copies these)
    console.print(escape(f"source: {redact_url(legacy)}"), highlight=False, soft_wrap=True)
    console.print(
        escape(f"target: {store.url} ({store.url_source})"), highlight=False, soft_wrap=True
    )
    if store.url_source != UrlSource.EMBEDDED:
        return
    where = f"docstore's embedded PostgreSQL in {store.settings.embedded_dir}"
    console.print(
        escape(
            f"warning: the target is {where}: no --target, DATABASE_URL or MCPDOCS_DATABASE_URL"
        ),
        style="yellow",
        highlight=False,
    )


def _fail(why: str) -> NoReturn:
    """Exit 1 with the one ``error:`` line on stderr the CLI's exit statuses promise."""
    err_console.print(f"[bold red]error:[/] {escape(why)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


NEXT_STEPS = """next steps (docs/cutover.md):
  1. freeze the legacy database, then re-run `docstore migrate` (copies only what changed)
  2. `docstore validate`; point the app at the new database with READ_ONLY=true, smoke-test
  3. remove READ_ONLY; to go back: READ_ONLY=true on the app, then `docstore rollback`"""


@async_command
async def migrate(
    source: SourceOption = None,
    target: TargetOption = None,
    doc_type: DocTypeOption = "rust",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Preflight only.")] = False,
    restart: Annotated[bool, typer.Option(help="Forget checkpoints of earlier runs.")] = False,
    report: Annotated[
        Path | None, typer.Option(help="Save the report as JSON.", callback=_writable_report)
    ] = None,
    build_index: Annotated[
        bool, typer.Option(help="Build the HNSW and full-text indexes after.")
    ] = False,
    chunk_rows: Annotated[
        int,
        typer.Option(
            min=1, help="Documents per committed chunk (new ones: checkpointed ranges are kept)."
        ),
    ] = 2000,
    copy_streams: Annotated[
        int, typer.Option(min=1, max=16, help="Chunks copied at once (one snapshot).")
    ] = 2,
    reconnect_attempts: Annotated[
        int,
        typer.Option(min=0, help="Times a lost connection is resumed within the run (0: never)."),
    ] = DEFAULT_RECONNECT_ATTEMPTS,
) -> None:
    """Copy the legacy rust_docs_vectors database into docstore (resumable; validated)."""
    bars = MigrationBars()
    legacy = _legacy_url(source)
    async with await _target(target, migrate=not dry_run) as store:
        _say_where(legacy, store)
        migrator = Migrator(
            legacy,
            store,
            doc_type=doc_type,
            chunk_rows=chunk_rows,
            copy_streams=copy_streams,
            reconnect_attempts=reconnect_attempts,
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
            _fail("preflight found what blocks the migration (listed above)")
        return
    for warning in result.warnings:
        # warnings quote legacy data (crate names, doc paths such as "impl-Index-for-[T]")
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    console.print(
        f"copied {result.copied_documents:,} documents ({result.skipped_chunks} chunks already "
        f"done), {result.sources} sources, {result.population_jobs} population jobs in "
        f"{result.timings.get('total', 0):.1f} s"
    )
    if result.validation is not None:
        console.print(result.validation)
    if not result.ok:
        _fail("the copy finished, but validation found differences (listed above)")
    console.print(NEXT_STEPS, highlight=False)


@async_command
async def validate(
    source: SourceOption = None, target: TargetOption = None, doc_type: DocTypeOption = "rust"
) -> None:
    """Compare the legacy database with docstore row by row; exit 1 on any mismatch."""
    legacy = _legacy_url(source)
    async with await _target(target, migrate=False) as store:
        _say_where(legacy, store)
        result = await Migrator(legacy, store, doc_type=doc_type).validate()
    console.print(result)
    if not result.ok:
        _fail("validation found differences (listed above)")


@async_command
async def rollback(
    source: SourceOption = None,
    target: TargetOption = None,
    doc_type: DocTypeOption = "rust",
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Do the rollback in a transaction and undo it: counts only."
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Also delete legacy documents the target never received (refused otherwise).",
        ),
    ] = False,
) -> None:
    """Copy docstore's documents back into the legacy-shaped database (the plan's Phase 7)."""
    legacy = _legacy_url(source)
    settings = load_settings()
    if resolve_url(settings, target)[1] is UrlSource.EMBEDDED:  # refused before it starts
        raise MigrationError(
            "no --target, DATABASE_URL or MCPDOCS_DATABASE_URL: the target would be docstore's"
            f" embedded PostgreSQL in {settings.embedded_dir}, and rollback copies its documents"
            " over the legacy database's; pass --target (that server's URL, if it really is the"
            " one) to roll back from it"
        )
    async with await _target(target, migrate=False) as store:
        _say_where(legacy, store)
        result = await Migrator(legacy, store, doc_type=doc_type).rollback(
            force=force, dry_run=dry_run
        )
    holds = "would hold" if result.dry_run else "now holds"
    console.print(
        f"legacy database {holds} {result.documents:,} documents of {result.crates} crates "
        f"({result.deleted_documents} removed), {result.crate_configs} crate configs, "
        f"{result.population_jobs} population jobs ({result.seconds:.1f} s)"
        + (
            "; dry run: nothing was changed"
            if result.dry_run
            else f"; {result.recorded_legacy_ids} documents written after the cutover got "
            "legacy ids"
        )
    )
