"""``docstore compat``: the legacy SQL views and ``search_similar_docs()``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from docstore import cli
from docstore.cli.base import DocTypeOption, UrlOption, async_command, console
from docstore.compat import LegacyDatabase

compat_app = typer.Typer(help="Legacy SQL compatibility: views and search_similar_docs().")
"""``docstore compat``: mounted on the app by :mod:`docstore.cli`."""
SchemaOption = Annotated[
    str | None,
    typer.Option("--schema", help="Schema for the views (default: first on search_path)."),
]


@compat_app.command("install-views")
@async_command
async def compat_install(
    url: UrlOption = None, schema: SchemaOption = None, doc_type: DocTypeOption = "rust"
) -> None:
    """Create read views crates, doc_embeddings, crate_stats and search_similar_docs()."""
    async with cli.connect(url) as store:
        used = await LegacyDatabase(store, doc_type).install_views(schema)
    console.print(
        f"legacy views and search_similar_docs() installed in schema {escape(repr(used))}"
        f" for doc type {escape(repr(doc_type))}"
    )


@compat_app.command("uninstall-views")
@async_command
async def compat_uninstall(url: UrlOption = None, schema: SchemaOption = None) -> None:
    """Drop the legacy compatibility views and function."""
    async with cli.connect(url) as store:
        legacy = LegacyDatabase(store)
        had = await legacy.installed_views(schema)
        used = await legacy.uninstall_views(schema)
    if had:
        console.print(f"legacy views removed from schema {escape(repr(used))}")
    else:
        console.print(f"no legacy views in schema {escape(repr(used))}: nothing to remove")


@compat_app.command("status")
@async_command
async def compat_status(url: UrlOption = None) -> None:
    """List the schemas holding the legacy views and whether each is up to date."""
    async with cli.connect(url, migrate=False) as store:
        found = await LegacyDatabase(store).views_status()
    if not found:
        console.print("no legacy views in this database")
    for install in found:
        console.print(
            f"schema {escape(repr(install.schema))}: doc type {escape(repr(install.doc_type))},"
            f" {_STATES[install.state]}"
        )


_STATES = {
    "current": "up to date",
    "stale": "stale: run `docstore init`",
    "newer": "made by a newer docstore: left as it is",
    "unknown": "doc type unknown: install it again"
    " (`docstore compat install-views --schema S --doc-type T`)",
}
