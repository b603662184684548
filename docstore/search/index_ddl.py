"""Index DDL on ``documents``: building and dropping docstore's fixed-name indexes safely when
several processes do it at once, and in whichever schema ``documents`` lives.

* **One build at a time.** Every app replica may call ``create_vector_index()`` at start-up,
  or an operator run ``docstore index create`` twice. A build or drop holds a session advisory
  lock keyed on ``documents``' qualified name — the table's, not the index's: a vector and a
  text build side by side deadlocked — on the very connection that runs the DDL, asked for
  again every :data:`LOCK_POLL_SECONDS` on a connection checked out for that one attempt (a
  waiting ``pg_advisory_lock`` would hold a snapshot that the running ``CREATE INDEX
  CONCURRENTLY`` waits for; a caller polling on a connection it kept held it for the whole
  of another's build). On that connection, so a build whose client was killed keeps it until
  its backend ends (a lock on a connection of its own let a second build in beside the
  orphaned one: "tuple concurrently updated"), and no connection beyond the pool's is
  needed. The next caller finds the index built and returns it; ``after`` lets the
  builder take the calibration's lock before it lets go (:mod:`docstore.search.indexes`).
  Before, every caller ran ``DROP INDEX CONCURRENTLY IF EXISTS`` and ``CREATE INDEX``: one
  dropped or deadlocked with another's build in progress, often no caller succeeded and an
  INVALID index was left.
* **The table's own schema.** The names are schema-qualified with the schema of the
  ``documents`` the session resolves: an unqualified ``DROP INDEX`` follows the
  ``search_path`` and dropped another tenant's index (``tenantb, public``: tenant B's drop
  removed ``public``'s, and returned False).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg

from docstore.core.surface import Queries
from docstore.errors import DocstoreError
from docstore.search.tuner import Progress

logger = logging.getLogger("docstore")

INDEX_BUILD_TIMEOUT = 24 * 3600.0
LOCK_SPACE = 0x646F6378  # "docx": (this, hashtext(documents' qualified name)) advisory lock
_TRY_LOCK = "SELECT pg_try_advisory_lock($1, hashtext($2))"
_UNLOCK = "SELECT pg_advisory_unlock($1, hashtext($2))"
T = TypeVar("T")
LOCK_POLL_SECONDS = 0.25
"""How often a caller waiting for another session's index DDL asks again."""
BUILD_PROGRESS_SECONDS = 0.5
_SCHEMA = (
    "SELECT quote_ident(n.nspname) FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = 'documents'::regclass"
)
_BUILD_PROGRESS = """
SELECT phase,
       CASE WHEN tuples_total > 0 THEN tuples_done ELSE blocks_done END AS done,
       CASE WHEN tuples_total > 0 THEN tuples_total ELSE blocks_total END AS total
  FROM pg_stat_progress_create_index WHERE pid = $1
"""


async def build_index(
    db: Queries,
    name: str,
    sql: str,
    *,
    concurrently: bool,
    maintenance_work_mem: str | None,
    built: Callable[[asyncpg.Connection], Awaitable[bool]],
    before: Callable[[asyncpg.Connection], Awaitable[object]] | None = None,
    after: Callable[[], Awaitable[None]] | None = None,
    progress: Progress | None = None,
) -> bool:
    """Build index ``name`` (one of docstore's fixed names) with ``sql`` on one connection,
    under the lock (module docstring); True if this call built it, False if ``built(conn)``
    — asked on that connection once the lock is held (a pool of one has no other) — found
    it built by another session meanwhile. ``before(conn)`` runs under the lock just before
    a build, ``after()`` just after it, before the lock is let go. A leftover of the name (an
    INVALID index of a failed concurrent build, one on other columns) is dropped first;
    ``maintenance_work_mem`` is raised for the build only; ``progress`` is fed from
    ``pg_stat_progress_create_index``."""

    async def build(conn: asyncpg.Connection, schema: str) -> bool:
        if await built(conn):
            return False
        if before is not None:
            await before(conn)
        async with _build_progress(db, conn, progress):
            await conn.execute(_drop_sql(f"{schema}.{name}", concurrently))
            if maintenance_work_mem is not None:
                await conn.execute(
                    "SELECT set_config('maintenance_work_mem', $1, false)", maintenance_work_mem
                )
            try:
                # not bound by DOCSTORE_COMMAND_TIMEOUT: a timeout would leave an INVALID
                # index behind after a CONCURRENTLY build
                await conn.execute(sql, timeout=INDEX_BUILD_TIMEOUT)
            finally:
                await conn.execute("RESET maintenance_work_mem")
        if after is not None:
            await after()
        return True

    return await _locked(db, build, progress)


async def drop_index(db: Queries, name: str, *, concurrently: bool) -> bool:
    """Drop index ``name`` of the ``documents`` this session resolves, if there is one —
    under the lock, so a build in progress elsewhere ends first; True if there was one."""

    async def drop(conn: asyncpg.Connection, schema: str) -> bool:
        qualified = f"{schema}.{name}"
        existed = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", qualified)
        await conn.execute(_drop_sql(qualified, concurrently))
        return bool(existed)

    return await _locked(db, drop, None)


async def _locked(
    db: Queries,
    work: Callable[[asyncpg.Connection, str], Awaitable[T]],
    progress: Progress | None,
) -> T:
    """``work(conn, schema)`` on a pooled connection holding the index DDL lock of the
    ``documents`` it resolves (module docstring), released after (or with the session, if it
    breaks). The lock is asked for on a connection checked out for that one attempt: a
    caller waiting for another session's build holds no pooled connection meanwhile."""
    waited = False
    while True:
        async with db.acquire() as conn:
            try:
                schema = await conn.fetchval(_SCHEMA)
                table = f"{schema}.documents"
                if await conn.fetchval(_TRY_LOCK, LOCK_SPACE, table):
                    try:
                        return await work(conn, schema)
                    finally:
                        with contextlib.suppress(
                            asyncpg.PostgresError, asyncpg.InterfaceError, OSError
                        ):
                            await conn.execute(_UNLOCK, LOCK_SPACE, table)
            except DocstoreError:
                raise
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise db.translate(exc) from exc
        if not waited:
            waited = True
            logger.info("index DDL on %s: waiting for another session's build or drop", table)
        if progress is not None:
            progress("index: waiting for another session's build", 0, 0)
        await asyncio.sleep(LOCK_POLL_SECONDS)


def _drop_sql(qualified: str, concurrently: bool) -> str:
    return f"DROP INDEX {'CONCURRENTLY ' if concurrently else ''}IF EXISTS {qualified}"


@contextlib.asynccontextmanager
async def _build_progress(
    store: Queries, conn: asyncpg.Connection, progress: Progress | None
) -> AsyncIterator[None]:
    """While the body builds an index on ``conn``, report its phase and tuples (or blocks)
    done from another connection every :data:`BUILD_PROGRESS_SECONDS`."""
    if progress is None:
        yield
        return
    pid = conn.get_server_pid()

    async def poll() -> None:
        while True:
            await asyncio.sleep(BUILD_PROGRESS_SECONDS)
            with contextlib.suppress(DocstoreError):
                row = await store.fetchrow(_BUILD_PROGRESS, pid)
                if row is not None:
                    progress(
                        f"index: {row['phase']}", int(row["done"] or 0), int(row["total"] or 0)
                    )

    task = asyncio.get_running_loop().create_task(poll())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
