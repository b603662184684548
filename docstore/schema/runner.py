"""Apply docstore's versioned SQL migrations, once, under a PostgreSQL advisory lock.

Migrations are the files ``migrations/NNNN_name.sql`` shipped in the package. Applied versions
are recorded in ``docstore_schema_version``; applying is idempotent and safe when several
processes start at once: they queue on an advisory lock, and the first one does the work.
Each migration runs in its own transaction together with its version row, so a failed
migration leaves no trace.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

import asyncpg
from pydantic import BaseModel

from docstore.embedded import ensure_vector_extension, has_vector_extension
from docstore.errors import SchemaError
from docstore.schema import citus

VERSION_TABLE = "docstore_schema_version"
# An arbitrary, fixed 64-bit key: "docstore schema" in the advisory-lock namespace.
SCHEMA_LOCK_KEY = 0x646F6373_746F7265 & 0x7FFFFFFFFFFFFFFF
_DIM_TOKEN = "__EMBEDDING_DIM__"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One versioned schema step."""

    version: int
    name: str
    template: str

    def sql(self, embedding_dim: int) -> str:
        """The statement text with the embedding dimension filled in."""
        return self.template.replace(_DIM_TOKEN, str(int(embedding_dim)))

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()


def _load() -> tuple[Migration, ...]:
    folder = resources.files("docstore.schema") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise SchemaError("docstore's migrations are not numbered 1..N; the package is damaged")
    return tuple(found)


MIGRATIONS: tuple[Migration, ...] = _load()
LATEST_VERSION = MIGRATIONS[-1].version
ADDITIVE: frozenset[int] = frozenset({9})
"""Migrations after which the code of the version before still works (they only add: an index,
statistics, a table older code does not read). Recorded with the version row, so an *older*
docstore meeting a database a newer one upgraded can tell whether it may run (a rolling
deploy, a pod of the previous release restarting, a rollback of the code): it may when every
version beyond the ones it knows is additive. Every migration is classified
(``tests/test_schema_ahead.py``): additive here, else :data:`BREAKING`."""
BREAKING: frozenset[int] = frozenset(range(1, 9))
"""Migrations older code cannot work after (they change or add what it reads or writes)."""


class SchemaStatus(BaseModel):
    """Where a database stands relative to this docstore version."""

    current: int | None
    """Highest applied migration, or None when docstore's schema was never applied."""
    latest: int
    pending: list[int]
    embedding_dim: int | None
    """Dimension of ``documents.embedding`` in the database (None without the table)."""
    distributed: bool = False
    """``documents`` is a Citus distributed table (:mod:`docstore.schema.citus`)."""
    ahead: list[int] = []
    """Versions applied by a newer docstore, beyond :data:`LATEST_VERSION`."""
    ahead_breaking: list[int] = []
    """Those of :attr:`ahead` after which this docstore cannot work (not recorded additive)."""
    encoding: str = "UTF8"
    """The database's character encoding (``server_encoding``): docstore needs UTF8."""

    @property
    def up_to_date(self) -> bool:
        return not self.pending


async def _applied_versions(conn: asyncpg.Connection) -> dict[int, bool]:
    """Applied version → additive (``false`` where the column is not there yet: versions
    recorded by a docstore before it, which knows them all)."""
    if not await conn.fetchval("select to_regclass($1) is not null", VERSION_TABLE):
        return {}
    rows = await conn.fetch(
        f"select version, coalesce((to_jsonb(v) ->> 'additive')::boolean, false) as additive"
        f" from {VERSION_TABLE} v"
    )
    return {row["version"]: row["additive"] for row in rows}


async def schema_status(conn: asyncpg.Connection) -> SchemaStatus:
    """Read the applied schema version and the stored embedding dimension."""
    applied = await _applied_versions(conn)
    dim = await conn.fetchval(
        "select nullif(atttypmod, -1) from pg_attribute "
        "where attrelid = to_regclass('documents') and attname = 'embedding' "
        "and not attisdropped"
    )
    ahead = sorted(v for v in applied if v > LATEST_VERSION)
    return SchemaStatus(
        current=max(applied) if applied else None,
        latest=LATEST_VERSION,
        pending=[m.version for m in MIGRATIONS if m.version not in applied],
        ahead=ahead,
        ahead_breaking=[v for v in ahead if not applied[v]],
        embedding_dim=dim,
        distributed=await citus.is_distributed(conn),
        encoding=await conn.fetchval("select current_setting('server_encoding')"),
    )


async def apply_migrations(
    conn: asyncpg.Connection, *, embedding_dim: int, distributed: bool = False
) -> list[int]:
    """Bring the schema up to date; return the versions this call applied (``[]``: no-op).

    ``distributed``: then make ``documents`` and ``document_sources`` co-located Citus
    distributed tables by ``source_name`` (:func:`docstore.schema.citus.distribute`; the
    database must be a Citus coordinator), converting them if they exist as plain tables.

    Raises :class:`SchemaError` when pgvector is unavailable, when the database's embedding
    dimension differs from ``embedding_dim``, or when the database was written by a newer
    docstore.
    """
    if not distributed and await _up_to_date(conn, embedding_dim):
        return []
    await conn.execute("select pg_advisory_lock($1)", SCHEMA_LOCK_KEY)
    try:
        await ensure_vector_extension(conn)
        try:
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
                        version    integer PRIMARY KEY,
                        name       text NOT NULL,
                        checksum   text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now(),
                        additive   boolean NOT NULL DEFAULT false
                    )"""
            )
        except asyncpg.InsufficientPrivilegeError:
            denied = True
        else:
            denied = False
        if denied:  # outside the except block: no chained server error
            raise SchemaError(await _not_allowed(conn))
        status = await schema_status(conn)
        check_compatible(status, embedding_dim)
        if status.current is None:
            await _refuse_foreign_tables(conn)
        done: list[int] = []
        recorded = await _additive_column(conn) if status.pending else False
        for migration in MIGRATIONS:
            if migration.version not in status.pending:
                continue
            await _apply(conn, migration, embedding_dim, recorded)
            done.append(migration.version)
        if distributed:
            await citus.distribute(conn)
        return done
    finally:
        await conn.execute("select pg_advisory_unlock($1)", SCHEMA_LOCK_KEY)


# The version table's column telling older code it may run (ADDITIVE), added to a table an
# older docstore made; older code's inserts name their columns, so the default keeps them
# working.
_HAS_ADDITIVE = f"""select exists (select 1 from pg_attribute where attname = 'additive'
 and attrelid = '{VERSION_TABLE}'::regclass and not attisdropped)"""
_ADDITIVE_COLUMN = f"""
ALTER TABLE {VERSION_TABLE} ADD COLUMN IF NOT EXISTS additive boolean NOT NULL DEFAULT false;
UPDATE {VERSION_TABLE} SET additive = true
 WHERE version = ANY('{{{",".join(map(str, sorted(ADDITIVE)))}}}'::int[]) AND NOT additive
"""


async def _up_to_date(conn: asyncpg.Connection, embedding_dim: int) -> bool:
    """Nothing to apply: checked with reads only, so a role without DDL rights (an app role
    with DML grants only, a reader role, a hot standby) connects to an up-to-date database.
    Raises :class:`SchemaError` as :func:`check_compatible` does."""
    status = await schema_status(conn)
    check_compatible(status, embedding_dim)
    return status.up_to_date and await has_vector_extension(conn)


_FOREIGN_TABLES = """
select array_agg(name order by name) from unnest(array['documents', 'document_sources']) name
where to_regclass(name) is not null
"""


async def _refuse_foreign_tables(conn: asyncpg.Connection) -> None:
    """Tables of docstore's names that docstore did not create: refuse to guess what they are."""
    found = await conn.fetchval(_FOREIGN_TABLES)
    if found:
        raise SchemaError(
            f"this database already has {' and '.join(found)} but no {VERSION_TABLE}: they "
            "were not created by docstore (e.g. by the migration plan's Phase 1.1 SQL). docstore "
            "creates its own tables: use another database, or drop these tables if they hold "
            "nothing you need (`docstore migrate` copies the legacy data into docstore's)"
        )


async def _additive_column(conn: asyncpg.Connection) -> bool:
    """Whether the version table has the ``additive`` column, adding it to one an older
    docstore made: on its own, in a short transaction (a catalog change, no rewrite) that
    waits at most 5 s for its lock, so the migrations that follow do not keep every reader of
    the version table (each connect, ``health()``) waiting. A role that may not alter the
    table, or a lock not had, leaves it without: versions are then recorded without the
    flag (older code may not run after them, the conservative reading)."""
    if await conn.fetchval(_HAS_ADDITIVE):
        return True
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '5s'")
            await conn.execute(_ADDITIVE_COLUMN)
    except (asyncpg.InsufficientPrivilegeError, asyncpg.LockNotAvailableError):
        return False
    return True


async def _apply(
    conn: asyncpg.Connection, migration: Migration, embedding_dim: int, recorded: bool
) -> None:
    """One migration and its version row in one transaction (``recorded``: with its
    ``additive`` flag); a failure with a known cause becomes a :class:`SchemaError` saying
    what to do (asked after the rollback)."""
    try:
        async with conn.transaction():
            await conn.execute(migration.sql(embedding_dim))
            row = [migration.version, migration.name, migration.checksum]
            if recorded:
                await conn.execute(
                    f"insert into {VERSION_TABLE} (version, name, checksum, additive)"
                    " values ($1, $2, $3, $4)",
                    *row,
                    migration.version in ADDITIVE,
                )
            else:
                await conn.execute(
                    f"insert into {VERSION_TABLE} (version, name, checksum) values ($1, $2, $3)",
                    *row,
                )
    except asyncpg.InsufficientPrivilegeError as exc:
        if migration.version > 1:  # an upgrade by a role that does not own the tables
            raise SchemaError(
                f"schema migration {migration.version} ({migration.name}) needs privileges "
                f"this role lacks ({exc.args[0] if exc.args else exc}): run `docstore init` "
                "once as the owner of docstore's tables (until then connect with "
                "migrate=False / DOCSTORE_AUTO_MIGRATE=false to use the schema as it is)"
            ) from exc
        explain: Callable[[asyncpg.Connection], Awaitable[str]] | None = _not_allowed
    except asyncpg.PostgresError as exc:
        explain = _FAILURES.get((migration.version, exc.sqlstate or ""))
        if explain is None:
            raise
    else:
        return
    # outside the except block: the error (which may quote a stored value) is not its context
    assert explain is not None
    raise SchemaError(await explain(conn))


_BEYOND_HALF = """
select count(*), (array_agg(id order by id))[1:10] from documents
where embedding is not null
  and exists (select 1 from unnest(embedding::real[]) v where abs(v) > 65504)
"""


async def _beyond_half_precision(conn: asyncpg.Connection) -> str:
    row = await conn.fetchrow(_BEYOND_HALF)
    count, ids = (row[0], row[1] or []) if row is not None else (0, [])
    return (
        f"schema migration 3 (embedding_half) cannot be applied: {count} stored embedding(s) "
        f"hold values beyond half precision's ±65,504 (documents.id {', '.join(map(str, ids))}"
        f"{', …' if count > len(ids) else ''}); docstore refuses such values since that "
        "migration. Rescale or re-embed them (or set their embedding to NULL), then connect "
        "again; until then `connect(migrate=False)` works on the old schema"
    )


async def _not_allowed(conn: asyncpg.Connection) -> str:
    row = await conn.fetchrow("select current_user as role, current_schema() as schema")
    role, schema = (row["role"], row["schema"]) if row is not None else ("?", None)
    return (
        f"docstore's schema is not applied and role {role} may not create it here (permission "
        f"denied in schema {schema or '(none on the search_path)'}): run `docstore init` once "
        "as the database's owner (or a role with CREATE on that schema), then connect as this "
        "role; or GRANT CREATE ON SCHEMA to it"
    )


# (migration version, SQLSTATE) → what to tell the operator
_FAILURES: dict[tuple[int, str], Callable[[asyncpg.Connection], Awaitable[str]]] = {
    (3, "22003"): _beyond_half_precision,  # numeric_value_out_of_range in the halfvec cast
}


def ahead_warning(status: SchemaStatus) -> str | None:
    """What to tell an operator when a newer docstore upgraded the schema; None otherwise. A
    store opened before a newer docstore applied a migration it cannot work after (its
    ``health()``) is told so: a new connect would be refused."""
    if not status.ahead:
        return None
    if status.ahead_breaking:
        return (
            f"the schema is at version {status.current}, newer than this docstore knows"
            f" ({status.latest}), and this docstore cannot work after migration"
            f" {status.ahead_breaking[0]}: upgrade docstore (a new connect is refused)"
        )
    return (
        f"the schema is at version {status.current}, newer than this docstore knows"
        f" ({status.latest}); the migrations since only add what this docstore does not use:"
        " running as is, upgrade docstore"
    )


def check_compatible(status: SchemaStatus, embedding_dim: int) -> None:
    """Raise :class:`SchemaError` if this docstore cannot work with the database as it is."""
    if status.encoding != "UTF8":
        # text is Unicode end to end: in another encoding varchar limits count bytes, jsonb
        # refuses the \uXXXX escapes of non-ASCII metadata, and LATIN1 cannot hold most
        # characters — valid documents would fail inside PostgreSQL, after validation
        raise SchemaError(
            f"this database's encoding is {status.encoding}; docstore needs UTF8 (documents "
            "are Unicode text): use a database created with ENCODING 'UTF8' (e.g. CREATE "
            "DATABASE … TEMPLATE template0 ENCODING 'UTF8')"
        )
    if status.ahead_breaking:
        raise SchemaError(
            f"the database's schema version {status.current} is newer than this docstore "
            f"knows ({LATEST_VERSION}), and this docstore cannot work after migration"
            f" {status.ahead_breaking[0]}: upgrade docstore"
        )
    if status.embedding_dim is not None and status.embedding_dim != embedding_dim:
        raise SchemaError(
            f"documents.embedding is vector({status.embedding_dim}) in the database but "
            f"DOCSTORE_EMBEDDING_DIM is {embedding_dim}: set DOCSTORE_EMBEDDING_DIM="
            f"{status.embedding_dim} or use another database"
        )
