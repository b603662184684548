"""``docstore init`` and ``docstore health``: the schema and the connection."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from docstore import cli
from docstore.cli.base import UrlOption, async_command, console, err_console
from docstore.compat import LegacyDatabase
from docstore.errors import SchemaError


@async_command
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
    distributed: Annotated[
        bool,
        typer.Option(
            "--distributed",
            help="On a Citus coordinator: make documents and document_sources co-located"
            " distributed tables by source_name (converting existing ones; rows move to the"
            " shards).",
        ),
    ] = False,
) -> None:
    """Create or upgrade docstore's schema (idempotent; safe to run from many processes)."""
    password = None
    if reader_role is not None:
        password = os.environ.get("DOCSTORE_READER_PASSWORD") or typer.prompt(
            f"password for {reader_role}", hide_input=True, confirmation_prompt=True
        )
    async with cli.connect(url, migrate=False) as store:
        applied = await store.migrate(distributed=distributed)
        status = await store.schema_status()
        if reader_role is not None and password is not None:
            await store.create_reader_role(reader_role, password)
        if applied:
            console.print(f"applied schema migrations {applied}; now at version {status.current}")
        else:
            console.print(f"schema already at version {status.current}: nothing to do")
        if status.distributed:
            console.print("documents and document_sources are distributed by source_name (Citus)")
        if reader_role is not None:
            console.print(
                f"role {escape(reader_role)} can read docstore's tables and write nothing:"
                " connect a read-only service as it; `docstore health` then shows"
                " read_only_guarantee: role"
            )
        # the legacy SQL of an older docstore (or made before the tables or pgvector moved):
        # what cannot be refreshed is a warning, the schema's upgrade stands
        try:
            refreshed = await LegacyDatabase(store).refresh_views()
        except SchemaError as exc:
            refreshed = []
            err_console.print(f"warning: {escape(str(exc))}")
        for schema in refreshed:
            console.print(
                f"legacy views and search_similar_docs() in schema {escape(repr(schema))}"
                " brought up to date"
            )


@async_command
async def health(
    url: UrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Check connectivity and print server, pgvector and schema versions."""
    async with cli.connect(url, migrate=False) as store:
        report = await store.health()
    if as_json:
        console.print_json(report.model_dump_json())
        return
    table = Table(title="docstore health", show_header=False)
    for key, value in report.model_dump().items():
        table.add_row(key, Text(str(value)))  # values from the server: never markup
    console.print(table)
