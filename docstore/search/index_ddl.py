"""Index DDL on ``documents``: building and dropping docstore's fixed-name indexes safely when
several processes do it at once, and in whichever schema ``documents`` lives.

* **One build at a time.** Every app replica may call ``create_vector_index()`` at start-up,
  or an operator run ``docstore index create`` twice. :func:`index_lock` is a session
  advisory lock keyed on the index's qualified name, held on a connection of its own
  (``store.try_lock``: the build and the calibration after it may use every pooled
  connection) and waited for by polling (a waiting ``pg_advisory_lock`` would hold a snapshot
  that the running ``CREATE INDEX CONCURRENTLY`` waits for). The caller builds *and
  calibrates* under it; the next one finds both done and returns. Before, every caller ran
  ``DROP INDEX CONCURRENTLY IF EXISTS`` and ``CREATE INDEX``: one dropped or deadlocked with
  another's build in progress, often no caller succeeded and an INVALID index was left.
* **The table's own schema.** The names are schema-qualified with the schema of the
  ``documents`` the session resolves: an unqualified ``DROP INDEX`` follows the
  ``search_path`` and dropped another tenant's index (``tenantb, public``: tenant B's drop
  removed ``public``'s, and returned False).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator

import asyncpg

from docstore.core.surface import Queries
from docstore.errors import DocstoreError
from docstore.search.tuner import Progress

logger = logging.getLogger("docstore")

INDEX_BUILD_TIMEOUT = 24 * 3600.0
LOCK_POLL_SECONDS = 0.25
"""How often a caller waiting for another session's build of the same index asks again."""
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


@contextlib.asynccontextmanager
async def index_lock(db: Queries, name: str, progress: Progress | None) -> AsyncIterator[str]:
    """Hold the lock of index ``name`` (see the module docstring), waiting for another
    session's build, drop or calibration under it; yields the index's qualified name."""
    qualified = f"{await db.fetchval(_SCHEMA)}.{name}"
    key = int.from_bytes(hashlib.blake2b(qualified.encode(), digest_size=8).digest(), signed=True)
    async with db.try_lock(key) as locked:
        if locked:
            yield qualified
            return
    logger.info("index %s: waiting for another session's build or drop", qualified)
    if progress is not None:
        progress("index: waiting for another session's build", 0, 0)
    async with db.try_lock(key, poll=LOCK_POLL_SECONDS):
        yield qualified


async def build_index(
    db: Queries,
    qualified: str,
    sql: str,
    *,
    concurrently: bool,
    maintenance_work_mem: str | None,
    progress: Progress | None = None,
) -> None:
    """Build index ``qualified`` (one of docstore's fixed names, from :func:`index_lock`,
    which the caller holds) with ``sql`` on one connection: a leftover of the name (an
    INVALID index of a failed concurrent build, one on other columns) dropped first,
    ``maintenance_work_mem`` raised for the build only, ``progress`` fed from
    ``pg_stat_progress_create_index``."""
    async with db.acquire() as conn, _build_progress(db, conn, progress):
        try:
            await conn.execute(_drop_sql(qualified, concurrently))
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
        except DocstoreError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise db.translate(exc) from exc


async def drop_index(db: Queries, name: str, *, concurrently: bool) -> bool:
    """Drop index ``name`` of the ``documents`` this session resolves, if there is one —
    under its lock, so a build in progress elsewhere ends first; True if there was one."""
    async with index_lock(db, name, None) as qualified:
        existed = await db.fetchval("SELECT to_regclass($1) IS NOT NULL", qualified)
        await db.execute(_drop_sql(qualified, concurrently))
        return bool(existed)


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
