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
from dataclasses import dataclass
from importlib import resources

import asyncpg
from pydantic import BaseModel

from docstore.embedded import ensure_vector_extension
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

    @property
    def up_to_date(self) -> bool:
        return not self.pending


async def _applied_versions(conn: asyncpg.Connection) -> set[int]:
    if not await conn.fetchval("select to_regclass($1) is not null", VERSION_TABLE):
        return set()
    rows = await conn.fetch(f"select version from {VERSION_TABLE}")
    return {row["version"] for row in rows}


async def schema_status(conn: asyncpg.Connection) -> SchemaStatus:
    """Read the applied schema version and the stored embedding dimension."""
    applied = await _applied_versions(conn)
    dim = await conn.fetchval(
        "select nullif(atttypmod, -1) from pg_attribute "
        "where attrelid = to_regclass('documents') and attname = 'embedding' "
        "and not attisdropped"
    )
    return SchemaStatus(
        current=max(applied) if applied else None,
        latest=LATEST_VERSION,
        pending=[m.version for m in MIGRATIONS if m.version not in applied],
        embedding_dim=dim,
        distributed=await citus.is_distributed(conn),
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
    await conn.execute("select pg_advisory_lock($1)", SCHEMA_LOCK_KEY)
    try:
        await ensure_vector_extension(conn)
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )"""
        )
        status = await schema_status(conn)
        check_compatible(status, embedding_dim)
        done: list[int] = []
        for migration in MIGRATIONS:
            if migration.version not in status.pending:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql(embedding_dim))
                await conn.execute(
                    f"insert into {VERSION_TABLE} (version, name, checksum) values ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration.version)
        if distributed:
            await citus.distribute(conn)
        return done
    finally:
        await conn.execute("select pg_advisory_unlock($1)", SCHEMA_LOCK_KEY)


def check_compatible(status: SchemaStatus, embedding_dim: int) -> None:
    """Raise :class:`SchemaError` if this docstore cannot work with the database as it is."""
    if status.current is not None and status.current > LATEST_VERSION:
        raise SchemaError(
            f"the database's schema version {status.current} is newer than this docstore "
            f"knows ({LATEST_VERSION}): upgrade docstore"
        )
    if status.embedding_dim is not None and status.embedding_dim != embedding_dim:
        raise SchemaError(
            f"documents.embedding is vector({status.embedding_dim}) in the database but "
            f"DOCSTORE_EMBEDDING_DIM is {embedding_dim}: set DOCSTORE_EMBEDDING_DIM="
            f"{status.embedding_dim} or use another database"
        )
