"""Installing the legacy SQL (:mod:`docstore.compat.views`) and keeping it current.

The views and ``search_similar_docs()`` are SQL that docstore generates: the ranking rule,
its thresholds and the schemas it resolves names in are this docstore's, copied into the
database when they are installed. A newer docstore generates different SQL, and the copy in
the database would keep the old rule until someone installed it again. So each install is
stamped (a comment on its ``search_similar_docs()``, JSON: the doc type it was installed for
and a digest of the statements that installed it), and :func:`status` compares every install
in the database with what this docstore would install in its place, today's tables and
pgvector's schema included. :func:`refresh` installs the stale ones again, each for its own
doc type; ``docstore init`` and :meth:`LegacyDatabase.connect
<docstore.compat.LegacyDatabase.connect>` (when the store migrates its schema) run it.

An install made before stamps existed has no stamp: it is stale, and its doc type is read
from its ``crates`` view's definition. Installs and refreshes of one schema take an advisory
lock, so many processes starting at once refresh it once (two concurrent ``CREATE OR
REPLACE`` of one function would fail with "tuple concurrently updated").
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass

import asyncpg

from docstore.compat import views
from docstore.errors import SchemaError
from docstore.readonly.roles import grant_legacy_views, reader_roles
from docstore.store import Store

logger = logging.getLogger("docstore.compat")

STAMP_KEY = "docstore_compat"
LOCK_SPACE = 0x64636C76  # "dclv": (this, hashtext(schema)), one install of a schema at a time
_LOCK = f"SELECT pg_advisory_xact_lock({LOCK_SPACE}, hashtext($1))"

# Every schema holding docstore's search_similar_docs (beside the views' write guard, which
# only an install of docstore makes): its stamp and its source.
_INSTALLS = f"""
SELECT n.nspname AS schema, obj_description(p.oid, 'pg_proc') AS stamp, p.prosrc AS source
  FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.proname = 'search_similar_docs'
   AND EXISTS (SELECT 1 FROM pg_proc g
                WHERE g.pronamespace = n.oid AND g.proname = '{views.GUARD_FUNCTION}')
   AND ($1::text IS NULL OR n.nspname = $1)
 ORDER BY n.nspname
"""
# the crate's scope in the function's source (kept as written), in every docstore's install
_SOURCE_DOC_TYPE = re.compile(
    r"d\.doc_type = '((?:[^']|'')*)' AND d\.source_name = target_crate_name"
)


@dataclass(frozen=True)
class LegacyViews:
    """One install of the legacy views and ``search_similar_docs()`` in the database."""

    schema: str
    doc_type: str | None
    """The doc type its views show (``None``: not recoverable; install it again by hand)."""
    up_to_date: bool
    """Whether it is what this docstore would install in its place (else :func:`refresh`)."""


def _digest(statements: list[str]) -> str:
    return hashlib.sha256("\n;\n".join(statements).encode()).hexdigest()


async def _statements(
    conn: asyncpg.Connection, store: Store, schema: str, doc_type: str
) -> list[str]:
    path = [r[0] for r in await conn.fetch(views.FUNCTION_SEARCH_PATH)]
    return views.install_sql(
        schema, doc_type, store.embedding_dim, distributed=store.distributed, search_path=path
    )


def _stamped_doc_type(stamp: str | None, source: str | None) -> tuple[str | None, str | None]:
    """(doc type, digest) of an install: from its stamp, else (an install older than stamps)
    the doc type from its function's source and no digest."""
    try:
        data = json.loads(stamp) if stamp else None
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get(STAMP_KEY), str):
        doc_type = data.get("doc_type")
        return (doc_type if isinstance(doc_type, str) else None), data[STAMP_KEY]
    found = _SOURCE_DOC_TYPE.search(source or "")
    return (found.group(1).replace("''", "'") if found else None), None


async def _read(conn: asyncpg.Connection, store: Store, schema: str | None) -> list[LegacyViews]:
    found = []
    for row in await conn.fetch(_INSTALLS, schema):
        doc_type, digest = _stamped_doc_type(row["stamp"], row["source"])
        current = doc_type is not None and digest == _digest(
            await _statements(conn, store, row["schema"], doc_type)
        )
        found.append(LegacyViews(row["schema"], doc_type, current))
    return found


async def status(store: Store) -> list[LegacyViews]:
    """Every install of the legacy views in the database, by schema."""
    async with store.acquire() as conn:
        return await _read(conn, store, None)


async def install(store: Store, schema: str, doc_type: str) -> None:
    """(Re)create the views, their write guards and ``search_similar_docs()`` in ``schema`` for
    ``doc_type``, stamp them, and let the reader roles read them: one transaction."""
    async with store.transaction() as conn:
        await conn.execute(_LOCK, schema)
        clash = [r[0] for r in await conn.fetch(views.LEGACY_TABLES_IN_SCHEMA, schema)]
        if clash:
            raise SchemaError(
                f"schema {schema!r} already has real legacy tables ({', '.join(sorted(clash))}):"
                " install the compatibility views in another schema (schema=...) and put it"
                " first on the legacy clients' search_path"
            )
        await _install(conn, store, schema, doc_type)


async def _install(conn: asyncpg.Connection, store: Store, schema: str, doc_type: str) -> None:
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {views._ident(schema)}")
        statements = await _statements(conn, store, schema, doc_type)
        for statement in statements:
            await conn.execute(statement)
        stamp = json.dumps({STAMP_KEY: _digest(statements), "doc_type": doc_type})
        literal = await conn.fetchval("SELECT quote_literal($1::text)", stamp)
        await conn.execute(
            f"COMMENT ON FUNCTION {views.function_signature(schema, store.embedding_dim)}"
            f" IS {literal}"
        )
    except asyncpg.InsufficientPrivilegeError as exc:
        raise SchemaError(
            f"cannot (re)install the legacy views in schema {schema!r}: {exc.args[0]} — run"
            " `docstore init` (or `docstore compat install-views`) as the role that owns them"
        ) from None
    await grant_legacy_views(conn, schema, views.VIEW_NAMES, await reader_roles(conn))


async def installed(store: Store, schema: str) -> list[str]:
    """What :func:`install` creates that ``schema`` holds, sorted (``"name()"``: a function)."""
    functions = ["search_similar_docs", views.GUARD_FUNCTION, views.RULE_FUNCTION]
    rows = await store.fetch(
        views.INSTALLED, schema, list(views.VIEW_NAMES), functions, [views.GUARD_TABLE]
    )
    return [r[0] for r in rows]


async def uninstall(store: Store, schema: str) -> None:
    """Drop what :func:`install` created in ``schema``: one transaction."""
    async with store.transaction() as conn:
        await conn.execute(_LOCK, schema)
        for statement in views.uninstall_sql(schema, store.embedding_dim):
            await conn.execute(statement)


async def refresh(store: Store) -> list[str]:
    """Install again every stale install (:func:`status`), each for its own doc type; returns
    the schemas refreshed. Raises :class:`~docstore.errors.SchemaError` for an install whose
    doc type cannot be told or that the connected role may not replace (the ones before it
    stay refreshed)."""
    refreshed = []
    for found in await status(store):
        if found.up_to_date:
            continue
        if found.doc_type is None:
            raise SchemaError(
                f"the legacy views in schema {found.schema!r} are from an older docstore and"
                " their doc type cannot be read from them: install them again"
                " (LegacyDatabase(store, doc_type).install_views(schema))"
            )
        async with store.transaction() as conn:
            await conn.execute(_LOCK, found.schema)  # then look again: another may have done it
            again = await _read(conn, store, found.schema)
            if again and not again[0].up_to_date and again[0].doc_type is not None:
                await _install(conn, store, found.schema, again[0].doc_type)
                refreshed.append(found.schema)
    if refreshed:
        logger.info("refreshed the legacy views in %s", ", ".join(map(repr, refreshed)))
    return refreshed
