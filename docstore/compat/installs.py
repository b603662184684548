"""Installing the legacy SQL (:mod:`docstore.compat.views`) and keeping it current.

The views and ``search_similar_docs()`` are SQL that docstore generates: the ranking rule,
its thresholds and the schemas it resolves names in are this docstore's, copied into the
database when they are installed. A newer docstore generates different SQL, and the copy in
the database would keep the old rule until someone installed it again. So each install is
stamped — a comment on its ``search_similar_docs()`` and on its ``crates`` and
``doc_embeddings`` views (a DBA's own comment there is replaced), JSON: the doc type it was
installed for, the :data:`GENERATION` of docstore's legacy SQL, a digest of the statements
that made it and an md5 of what the database then held (the functions' sources, settings,
security and volatility, the views' parsed queries and options, their write rules and
triggers: :mod:`docstore.compat.install_queries`) — and :func:`status` compares each install
with what this docstore would install in its place.

Which installs are this store's (:mod:`~docstore.compat.install_queries`): those whose views
read *this* store's ``documents`` and ``document_sources`` (``pg_depend``), or, their views
gone, whose function resolves names in the schema of this store's ``documents``; beside the
views' write guard in both cases. Another tenant's install in the same database (its own
tables in its own schema), a lookalike of another role's, the legacy database's own
``search_similar_docs`` — none is looked at or touched.

An install is ``"stale"`` when it was made by an older generation, or by this one with other
statements (docstore's tables or pgvector moved since), or when the database no longer holds
what it was stamped with (a view, trigger or the function dropped or altered by hand; a
restore, whose catalog has other OIDs, reads stale once too); ``"newer"`` when a
newer docstore made it (during a rolling upgrade the older processes leave it alone, instead
of the two releases undoing each other's); ``"unknown"`` when its doc type cannot be read.
An install made before stamps existed is stale, its doc type read from its function's source.

:func:`refresh` installs the stale ones again, each for its own doc type, one transaction
each (read committed), under an advisory lock per schema (many processes starting at once
refresh it once; a process that waited for another's refresh of the same install finds it
current and says nothing), waiting at most ``lock_timeout`` for each lock on the views and the
function (a legacy client's long transaction on a view is not queued behind) and
:data:`ADVISORY_WAIT` times that for the schema's advisory lock, with
``standard_conforming_strings`` on. A generation whose views change a column's type drops
and re-creates them, keeping the grants on the views and the function. ``docstore init`` and
:meth:`LegacyDatabase.connect <docstore.compat.LegacyDatabase.connect>` run it and report a
failure as a warning: the store works whatever the legacy views are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from docstore.arguments import finite_number
from docstore.compat import install_queries as queries
from docstore.compat import views
from docstore.errors import DocstoreError, SchemaError
from docstore.readonly.roles import grant_legacy_views, reader_roles
from docstore.store import Store

logger = logging.getLogger("docstore.compat")

GENERATION = 4
"""The generation of the legacy SQL :func:`~docstore.compat.views.install_sql` makes: raised
whenever that SQL changes (``tests/test_compat_refresh.py`` fails until it is, comparing
:data:`GENERATION_DIGEST` with the statements of a fixed install). 1: before stamps; 3: a
crate total recorded as null reads NULL (it read 0); ``search_similar_docs()`` through the
index returns a crate's documents without an embedding after the others, up to the limit, as
the legacy function does, and takes a query of another dimension the legacy way; 4: the
exact path stays a full scan at or below 2,000 dimensions, where the HNSW index is on the
column itself (:func:`~docstore.search.queries.unindexed`)."""
GENERATION_DIGEST = "2c43162a1155f8c226ab001f79851d19"
"""The digest (:func:`_digest`, first 32 hex digits) of :func:`canonical_statements`."""
STAMP_KEY = "docstore_compat"
LOCK_SPACE = 0x64636C76  # "dclv": (this, hashtext(schema)), one install of a schema at a time
REFRESH_LOCK_TIMEOUT = 2.0
"""Seconds a refresh waits for a lock (a view a legacy client reads in a long transaction;
:data:`ADVISORY_WAIT` times that for another process's install of the schema): then the
install stays as it is, with a warning."""
ADVISORY_WAIT = 2
"""A refresh waits this many times ``lock_timeout`` for another process's install of the
same schema (which may itself wait ``lock_timeout`` for a view's lock and then succeed)."""
LegacyViewsState = Literal["current", "stale", "newer", "unknown"]
"""What :attr:`LegacyViews.state` can be (``docstore.compat.LegacyViewsState``)."""

_SCHEMA_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)"
_LOCK = f"SELECT pg_advisory_xact_lock({LOCK_SPACE}, hashtext($1))"
_WRITABLE = "SELECT current_setting('transaction_read_only') = 'off' AND NOT pg_is_in_recovery()"
# the crate's scope in the function's source (kept as written), in every docstore's install
_SOURCE_DOC_TYPE = re.compile(
    r"d\.doc_type = '((?:[^']|'')*)' AND d\.source_name = target_crate_name"
)
# a view's columns or the function's result changed: CREATE OR REPLACE cannot, DROP first
_REPLACE_REFUSED = (asyncpg.InvalidTableDefinitionError, asyncpg.InvalidFunctionDefinitionError)


@dataclass(frozen=True)
class LegacyViews:
    """One install of the legacy views and ``search_similar_docs()`` over this store's tables."""

    schema: str
    doc_type: str | None
    """The doc type its views show (``None``: not recoverable; install it again by hand)."""
    state: LegacyViewsState
    """``"current"``: what this docstore would install in its place; ``"stale"``: to be
    installed again (:func:`refresh`); ``"newer"``: made by a newer docstore, left alone;
    ``"unknown"``: its doc type cannot be read (install it again with the right one)."""

    @property
    def up_to_date(self) -> bool:
        return self.state == "current"


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n;\n".join(parts).encode()).hexdigest()[:32]


def canonical_statements() -> list[str]:
    """Fixed installs' statements, one of each shape install_sql makes (one node and Citus; a
    dimension the index takes as is, and one it takes as ``halfvec``): their digest is
    :data:`GENERATION_DIGEST`."""
    return [
        statement
        for distributed in (False, True)
        for dim in (1536, 3072)
        for statement in views.install_sql(
            "compat", "rust", dim, distributed=distributed, search_path=["public", "public"]
        )
    ]


def _statements(store: Store, schema: str, doc_type: str, path: list[str]) -> list[str]:
    """What this docstore installs in ``schema`` (``path``: :data:`views.FUNCTION_SEARCH_PATH`)."""
    return views.install_sql(
        schema, doc_type, store.embedding_dim, distributed=store.distributed, search_path=path
    )


def _stamp(comments: list[str | None], source: str | None) -> dict[str, Any]:
    """An install's stamp, from the first of ``comments`` that is one; for an install older
    than stamps, its doc type from its function's source."""
    for comment in comments:
        try:
            data = json.loads(comment) if comment else None
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get(STAMP_KEY), str):
            return data
    found = _SOURCE_DOC_TYPE.search(source or "")
    return {"doc_type": found.group(1).replace("''", "'") if found else None, "generation": 1}


async def _rows(conn: asyncpg.Connection, schema: str | None) -> list[asyncpg.Record]:
    return await conn.fetch(queries.INSTALLS, schema, list(views.VIEW_NAMES), list(queries.GUARDS))


async def _read(conn: asyncpg.Connection, store: Store, schema: str | None) -> list[LegacyViews]:
    return [found for found, _ in await _found(conn, store, schema)]


async def _found(
    conn: asyncpg.Connection, store: Store, schema: str | None
) -> list[tuple[LegacyViews, list[str]]]:
    """The installs, each with the search path this docstore would give its function."""
    if not await conn.fetchval(queries.ANY_INSTALL):
        return []
    found = []
    for row in await _rows(conn, schema):
        stamp = _stamp(row["stamps"], row["source"])
        doc_type = stamp.get("doc_type")
        generation = stamp.get("generation")
        state: LegacyViewsState
        if not isinstance(doc_type, str):
            doc_type, state = None, "unknown"
        elif isinstance(generation, int) and generation > GENERATION:
            state = "newer"
        elif (
            generation == GENERATION
            and stamp.get(STAMP_KEY) == _digest(_statements(store, row[0], doc_type, row["path"]))
            and stamp.get("held") == row["held"]
        ):
            state = "current"
        else:
            state = "stale"
        found.append((LegacyViews(row["schema"], doc_type, state), list(row["path"])))
    return found


async def status(store: Store) -> list[LegacyViews]:
    """Every install of the legacy views over this store's tables, by schema."""
    result: list[LegacyViews] = await store.run(lambda conn: _read(conn, store, None))
    return result


async def install(store: Store, schema: str, doc_type: str) -> None:
    """(Re)create the views, their write guards and ``search_similar_docs()`` in ``schema`` for
    ``doc_type``, stamp them, and let the reader roles read them: one transaction."""
    async with store.transaction(isolation="read_committed") as conn:
        await conn.execute(_LOCK, schema)
        await _install(conn, store, schema, doc_type)


async def _install(
    conn: asyncpg.Connection,
    store: Store,
    schema: str,
    doc_type: str,
    path: list[str] | None = None,
) -> None:
    """``path``: :data:`views.FUNCTION_SEARCH_PATH`'s answer, when the caller just read it."""
    clash = [r[0] for r in await conn.fetch(views.LEGACY_TABLES_IN_SCHEMA, schema)]
    if clash:
        raise SchemaError(
            f"schema {schema!r} already has real legacy tables ({', '.join(sorted(clash))}):"
            " install the compatibility views in another schema (schema=...) and put it"
            " first on the legacy clients' search_path"
        )
    await conn.execute("SET LOCAL standard_conforming_strings = on")  # install_sql's quoting
    try:
        if not await conn.fetchval(_SCHEMA_EXISTS, schema):  # else CREATE needs more rights
            await conn.execute(f"CREATE SCHEMA {views._ident(schema)}")
        if path is None:
            path = [r[0] for r in await conn.fetch(views.FUNCTION_SEARCH_PATH)]
        statements = _statements(store, schema, doc_type, path)
        try:
            async with conn.transaction():  # a savepoint
                for statement in statements:
                    await conn.execute(statement)
        except _REPLACE_REFUSED:  # another generation's columns: drop, then create
            await _recreate(conn, store, schema, statements)
        await _stamp_install(conn, store, schema, doc_type, statements)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise SchemaError(
            f"cannot (re)install the legacy views in schema {schema!r}: {exc.args[0]} — run"
            " `docstore init` (or `docstore compat install-views`) as the role that owns them"
        ) from None
    await grant_legacy_views(conn, schema, views.VIEW_NAMES, await reader_roles(conn))


async def _recreate(
    conn: asyncpg.Connection, store: Store, schema: str, statements: list[str]
) -> None:
    """Drop the install and create it from ``statements``, giving its views and function back
    their owners and exactly their privileges (a legacy client's role the DBA let read them;
    columns' grants too, of the columns still there)."""
    names = list(views.VIEW_NAMES)
    saved = {r["obj"]: r for r in await conn.fetch(queries.GRANTS, schema, names)}
    for statement in [*views.uninstall_sql(schema, store.embedding_dim), *statements]:
        await conn.execute(statement)
    for obj, row in saved.items():
        await conn.execute(f"ALTER {obj} OWNER TO {row['owner']}")
    for row in await conn.fetch(queries.REVOKES, schema, names):
        before = saved.get(row["obj"])
        if before is None:  # new in this generation: its defaults
            continue
        for statement in [*row["revokes"], *before["grants"]]:
            await conn.execute(statement)
        for grant in before["column_grants"]:
            try:
                async with conn.transaction():  # a column this generation no longer has
                    await conn.execute(grant)
            except asyncpg.UndefinedColumnError:
                pass


async def _stamp_install(
    conn: asyncpg.Connection, store: Store, schema: str, doc_type: str, statements: list[str]
) -> None:
    """The stamp, on the function and on the two views that read docstore's tables (a view or
    the function dropped later, the others still tell what it was)."""
    held = await _rows(conn, schema)
    stamp = {
        STAMP_KEY: _digest(statements),
        "generation": GENERATION,
        "doc_type": doc_type,
        "held": held[0]["held"] if held else None,
    }
    literal = await conn.fetchval("SELECT quote_literal($1::text)", json.dumps(stamp))
    s = views._ident(schema)
    for target in (
        f"FUNCTION {views.function_signature(schema, store.embedding_dim)}",
        f"VIEW {s}.crates",
        f"VIEW {s}.doc_embeddings",
    ):
        await conn.execute(f"COMMENT ON {target} IS {literal}")


async def installed(store: Store, schema: str) -> list[str]:
    """What :func:`install` creates that ``schema`` holds, sorted (``"name()"``: a function)."""
    functions = ["search_similar_docs", views.GUARD_FUNCTION, views.RULE_FUNCTION]
    rows = await store.fetch(
        views.INSTALLED, schema, list(views.VIEW_NAMES), functions, [views.GUARD_TABLE]
    )
    return [r[0] for r in rows]


async def uninstall(store: Store, schema: str) -> None:
    """Drop what :func:`install` created in ``schema``: one transaction."""
    async with store.transaction(isolation="read_committed") as conn:
        await conn.execute(_LOCK, schema)
        for statement in views.uninstall_sql(schema, store.embedding_dim):
            await conn.execute(statement)


async def refresh(store: Store, *, lock_timeout: float = REFRESH_LOCK_TIMEOUT) -> list[str]:
    """Install every stale install (:func:`status`) again, each for its own doc type, each in
    its own transaction; returns the schemas refreshed. Then raises
    :class:`~docstore.errors.SchemaError` naming each install it could not refresh and why
    (its doc type unknown, a role that may not replace it, a read-only session, a lock not
    had within ``lock_timeout`` seconds); the others are refreshed all the same."""
    finite_number(lock_timeout, "lock_timeout", bounds=(0, _MAX_LOCK_TIMEOUT_MS / 1000))
    try:
        found = await status(store)
    except DocstoreError as exc:
        raise SchemaError(f"cannot read this store's legacy views: {_why(exc)}") from None
    refreshed: list[str] = []
    failed: list[str] = []
    for one in found:
        if one.state == "unknown":
            failed.append(
                f"the legacy views in schema {one.schema!r} are from an older docstore and"
                " their doc type cannot be read from them: install them again (`docstore compat"
                " install-views --schema S --doc-type T`)"
            )
        if one.state != "stale":
            continue
        try:
            if await _refresh_one(store, one.schema, lock_timeout):
                refreshed.append(one.schema)
        except DocstoreError as exc:
            failed.append(f"{one.schema!r}: {_why(exc)}")
    if refreshed:
        logger.info("refreshed the legacy views in %s", ", ".join(map(repr, refreshed)))
    if failed:
        raise SchemaError("legacy views left as they are: " + "; ".join(failed))
    return refreshed


async def _refresh_one(store: Store, schema: str, lock_timeout: float) -> bool:
    try:
        return await _refresh_locked(store, schema, lock_timeout)
    except _InstallBusy:
        # another process held the schema's install lock all that time: if it was refreshing
        # the same install, it is current now and there is nothing to say
        again = await store.run(lambda conn: _read(conn, store, schema))
        if again and again[0].state == "stale":
            raise SchemaError(
                "another session was installing them and held their lock for more than"
                f" {ADVISORY_WAIT * lock_timeout:g} s: run `docstore init` again once it ended"
            ) from None
        return False


async def _refresh_locked(store: Store, schema: str, lock_timeout: float) -> bool:
    # read committed: the look after the lock must see what another process did meanwhile
    async with store.transaction(isolation="read_committed") as conn:
        if not await conn.fetchval(_WRITABLE):
            raise SchemaError(
                "this session is read-only (a reader role, or a standby): run `docstore init`"
                " with a role that owns them"
            )
        # Another process refreshing the same install holds the schema's advisory lock while
        # it waits (up to lock_timeout each) for the views' locks: wait that out, then look.
        await _set_lock_timeout(conn, ADVISORY_WAIT * lock_timeout)
        try:
            await conn.execute(_LOCK, schema)
        except asyncpg.LockNotAvailableError:
            raise _InstallBusy from None
        await _set_lock_timeout(conn, lock_timeout)
        again = await _found(conn, store, schema)  # another may have done it meanwhile
        if not again or again[0][0].state != "stale" or again[0][0].doc_type is None:
            return False
        found, path = again[0]
        assert found.doc_type is not None
        await _install(conn, store, schema, found.doc_type, path)
        return True


class _InstallBusy(Exception):
    """The schema's install lock was not had in time."""


async def _set_lock_timeout(conn: asyncpg.Connection, seconds: float) -> None:
    # at least 1 ms (0 would mean no limit), at most what the setting takes
    ms = min(max(1, math.ceil(seconds * 1000)), _MAX_LOCK_TIMEOUT_MS)
    await conn.execute(f"SET LOCAL lock_timeout = {ms}")


_MAX_LOCK_TIMEOUT_MS = 2_147_483_647


def _why(exc: DocstoreError) -> str:
    if getattr(exc, "sqlstate", None) == "55P03":  # lock_not_available
        return (
            "a lock on them was held by another session (a long transaction reading them?):"
            " run `docstore init` again once it ended"
        )
    return str(exc) if isinstance(exc, SchemaError) else f"{type(exc).__name__}: {exc}"
